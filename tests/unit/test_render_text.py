"""Element transactions written straight as JSON text (``commands.as_text``) against the
objects ``as_json`` builds: equal once parsed, for every set of real tables (every
capability's shapes: concatenations, verdicts, intervals, marks) and for parts that
JSON has to escape, wide integers, prefixes and malformed map elements."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import Cluster, clusters, props

from wholeip.core.index import load
from wholeip.nft.commands import Add, Delete, as_json, as_text
from wholeip.nft.doc import SetDecl
from wholeip.nft.render import Elements, Table
from wholeip.settings import ModelSettings
from wholeip_testkit import synth

T = Table("inet", "wholeip")


def _same(commands: list[Any]) -> None:
    """The text parses to what the objects encode to (what libnftables reads); what cannot
    be rendered is refused alike."""
    try:
        expected = json.loads(json.dumps({"nftables": as_json(commands)}))
    except ValueError as exc:
        with pytest.raises(type(exc)):
            as_text(commands)
        return
    assert json.loads(as_text(commands)) == expected


@pytest.mark.parametrize("objects", [synth.cluster(30, dual_stack=True), synth.delegated_cluster(10, dual_stack=True)])
def test_every_set_of_synthetic_tables(objects: list[dict[str, Any]]) -> None:
    """Whole-IP and delegated Services (verdict maps, concatenations with ports, intervals)."""
    by_kind = {k: [o for o in objects if o["kind"] == k] for k in ("Service", "EndpointSlice", "Node")}
    doc = load(
        services=by_kind["Service"],
        endpoint_slices=by_kind["EndpointSlice"],
        nodes=by_kind["Node"],
        node_name="n1",
        settings=ModelSettings(),
    ).doc()
    filled = 0
    for decl in doc.skeleton.sets:
        elems = doc.elements.get(decl.name, set())
        filled += bool(elems)
        _same([Add(T), Add(T, decl), Add(T, Elements(decl, elems, ordered=False)), Delete(T, Elements(decl, elems))])
    assert filled >= 3


@props(60)
@given(clusters())
def test_every_set_of_the_property_clusters(c: Cluster) -> None:
    doc = load(
        services=c.services, endpoint_slices=c.slices, nodes=c.nodes, node_name=c.node_name, settings=c.settings
    ).doc()
    _same([Add(T, Elements(decl, doc.elements.get(decl.name, set()))) for decl in doc.skeleton.sets])


_PART = st.one_of(
    st.text(max_size=8),
    st.sampled_from(("10.0.0.0/8", "2001:db8::/64", "10.0.0.1-10.0.0.9", 'a"b', "a\\b", "é", "\x00")),
    st.integers(-(1 << 70), 1 << 70),
    st.sampled_from((1 << 53, (1 << 53) - 1, -(1 << 53), 0)),
)


@props(200)
@given(
    st.sampled_from((None, "verdict", "ipv4_addr")),
    st.booleans(),
    st.lists(st.one_of(_PART, st.tuples(_PART, _PART), st.tuples(_PART, _PART, _PART)), max_size=6),
)
def test_parts_json_must_escape_or_widen(data: str | None, interval: bool, keys: list[Any]) -> None:
    decl = SetDecl("s", ("ipv4_addr",), data=data, flags=("interval",) if interval else ())
    if data is None:
        elems: list[Any] = keys
    elif data == "verdict":
        elems = [(k, v) for k, v in zip(keys, ("accept", "goto c1", 'jump x"y', "drop"), strict=False)]
    else:
        elems = [(k, k) for k in keys]
    _same([Add(T, Elements(decl, elems, ordered=False))])


def test_a_map_element_that_is_no_pair_is_refused_alike() -> None:
    decl = SetDecl("m", ("ipv4_addr",), data="ipv4_addr")
    for bad in ("10.0.0.1", ("10.0.0.1",), ("a", "b", "c")):
        cmd = [Add(T, Elements(decl, [bad], ordered=False))]
        with pytest.raises(ValueError, match="is not a \\(key, value\\) pair"):
            as_json(cmd)
        with pytest.raises(ValueError, match="is not a \\(key, value\\) pair"):
            as_text(cmd)
