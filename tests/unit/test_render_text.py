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
from wholeip.nft.commands import Add, Command, Delete, Flush, as_json, as_text, element_count, in_transactions
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


@given(
    st.lists(st.tuples(st.sampled_from(("add", "delete", "flush")), st.integers(0, 9)), max_size=8),
    st.integers(1, 7),
)
def test_in_transactions_keeps_the_order_and_holds_at_most_so_many_elements_each(
    shape: list[tuple[str, int]], most: int
) -> None:
    """A step of the early fill (``commands.in_transactions``): the same commands in the same
    order, element commands split where a transaction is full, none over ``most``."""
    decl = SetDecl("ingress4", ("ipv4_addr",), data="ipv4_addr")
    commands: list[Command] = []
    for n, (verb, count) in enumerate(shape):
        if verb == "flush":
            commands.append(Flush(T, decl))
            continue
        elems = {(f"203.0.113.{n * 10 + i}", f"10.0.0.{i}") for i in range(count)}
        commands.append((Add if verb == "add" else Delete)(T, Elements(decl, elems)))
    transactions = in_transactions(commands, most)
    assert all(element_count(t) <= most for t in transactions)
    assert all(transactions)  # (none empty)
    sent = [c for t in transactions for c in t]

    def flat(cmds: list[Command]) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for c in cmds:
            els = c.elements
            out += [(c.verb, e) for e in els.elems] if els is not None else [(c.verb, None)]
        return out

    assert flat(sent) == flat(commands)
