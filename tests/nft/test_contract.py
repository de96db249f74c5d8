"""One contract, two backends: the fake must do what nf_tables does with our commands.

Every test runs against FakeBackend and against the kernel in a fresh network
namespace (the ``backend`` fixture), so a difference between them fails here
instead of hiding in the agent's unit tests.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from wholeip.core import index, model
from wholeip.core.elements import compile_table
from wholeip.engine import apply_plan
from wholeip.nft.backend import Backend, Exists, NftError, NotFound, Rejected
from wholeip.nft.diff import diff
from wholeip.nft.listing import parse_listing
from wholeip.settings import ModelSettings
from wholeip_testkit import synth

T = {"family": "inet", "table": "t"}


def _table(backend: Backend) -> None:
    backend.transact([{"add": {"table": {"family": "inet", "name": "t"}}}])


def _map(backend: Backend) -> None:
    _table(backend)
    backend.transact([{"add": {"map": {**T, "name": "m", "type": "ipv4_addr", "map": "ipv4_addr"}}}])


def _elems(backend: Backend, name: str) -> list[Any]:
    listing = backend.list_table("inet", "t") or []
    for obj in listing:
        body = obj.get("map") or obj.get("set")
        if body and body["name"] == name:
            return list(body.get("elem", []))
    raise AssertionError(f"no set {name}")


def test_missing_table_lists_as_none(backend: Backend) -> None:
    assert backend.list_table("inet", "nope") is None


def test_add_table_is_idempotent_create_is_not(backend: Backend) -> None:
    _table(backend)
    _table(backend)
    with pytest.raises(Exists):
        backend.transact([{"create": {"table": {"family": "inet", "name": "t"}}}])


def test_elements_add_idempotent_other_data_exists(backend: Backend) -> None:
    _map(backend)
    add = {"add": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.1"]]}}}
    backend.transact([add])
    backend.transact([add])
    with pytest.raises(Exists):
        backend.transact([{"add": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.2"]]}}}])
    assert _elems(backend, "m") == [["192.0.2.1", "10.0.0.1"]]


def test_delete_element_matches_key_only_and_missing_is_not_found(backend: Backend) -> None:
    _map(backend)
    backend.transact([{"add": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.1"]]}}}])
    backend.transact([{"delete": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.9.9.9"]]}}}])
    assert _elems(backend, "m") == []
    with pytest.raises(NotFound):
        backend.transact([{"delete": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.1"]]}}}])


def test_wrong_family_element_is_rejected(backend: Backend) -> None:
    _map(backend)
    with pytest.raises(Rejected):
        backend.transact([{"add": {"element": {**T, "name": "m", "elem": [["2001:db8::1", "10.0.0.1"]]}}}])


def test_missing_set_table_chain_are_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.transact([{"delete": {"table": {"family": "inet", "name": "t"}}}])
    _map(backend)
    with pytest.raises(NotFound):
        backend.transact([{"add": {"element": {**T, "name": "zz", "elem": [["192.0.2.1", "10.0.0.1"]]}}}])
    with pytest.raises(NotFound):
        backend.transact([{"flush": {"chain": {**T, "name": "nochain"}}}])


def test_transactions_are_atomic(backend: Backend) -> None:
    _map(backend)
    with pytest.raises(NotFound):
        backend.transact(
            [
                {"add": {"element": {**T, "name": "m", "elem": [["192.0.2.5", "10.0.0.5"]]}}},
                {"add": {"element": {**T, "name": "missing", "elem": [["192.0.2.6", "10.0.0.6"]]}}},
            ]
        )
    assert _elems(backend, "m") == []


def test_a_transaction_written_as_text_is_one_transaction(backend: Backend) -> None:
    """``transact_text`` (a new table's fill) applies and refuses as ``transact`` does:
    all or nothing, the same errors; text that is no JSON is refused."""
    _map(backend)

    def add(key: str, value: str) -> dict[str, Any]:
        return {"add": {"element": {**T, "name": "m", "elem": [[key, value]]}}}

    backend.transact_text(json.dumps({"nftables": [add("192.0.2.1", "10.0.0.1")]}))
    assert len(_elems(backend, "m")) == 1
    with pytest.raises(Exists):
        backend.transact_text(json.dumps({"nftables": [add("192.0.2.2", "10.0.0.2"), add("192.0.2.1", "10.0.0.9")]}))
    with pytest.raises(NotFound):
        backend.transact_text(
            json.dumps(
                {
                    "nftables": [
                        add("192.0.2.3", "10.0.0.3"),
                        {"add": {"element": {**T, "name": "missing", "elem": [["192.0.2.6", "10.0.0.6"]]}}},
                    ]
                }
            )
        )
    with pytest.raises(NftError):
        backend.transact_text('{"nftables": [{"add": ')
    assert len(_elems(backend, "m")) == 1


def test_overlapping_intervals_are_rejected(backend: Backend) -> None:
    _table(backend)
    backend.transact([{"add": {"set": {**T, "name": "s", "type": "ipv4_addr", "flags": ["interval"]}}}])
    with pytest.raises(Rejected):
        backend.transact(
            [
                {
                    "add": {
                        "element": {
                            **T,
                            "name": "s",
                            "elem": [
                                {"prefix": {"addr": "10.0.0.0", "len": 8}},
                                {"prefix": {"addr": "10.1.0.0", "len": 16}},
                            ],
                        }
                    }
                }
            ]
        )


def test_references_are_checked(backend: Backend) -> None:
    _table(backend)
    backend.transact(
        [
            {"add": {"set": {**T, "name": "s", "type": "ipv4_addr"}}},
            {
                "add": {
                    "chain": {**T, "name": "c", "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}
                }
            },
        ]
    )
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    with pytest.raises(NotFound):
        backend.transact(
            [{"add": {"rule": {**T, "chain": "c", "expr": [{"match": {"op": "==", "left": daddr, "right": "@nope"}}]}}}]
        )
    with pytest.raises(NotFound):
        backend.transact([{"add": {"rule": {**T, "chain": "c", "expr": [{"jump": {"target": "nochain"}}]}}}])
    backend.transact(
        [{"add": {"rule": {**T, "chain": "c", "expr": [{"match": {"op": "==", "left": daddr, "right": "@s"}}]}}}]
    )
    with pytest.raises(Rejected):
        backend.transact([{"delete": {"set": {**T, "name": "s"}}}])


def _state(n: int, *, dual_stack: bool = True, pod_offset: int = 0) -> model.ClusterState:
    objs = synth.cluster(n, dual_stack=dual_stack, pod_offset=pod_offset)
    return index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings())


def test_compiled_table_round_trips(backend: Backend) -> None:
    """What we send, listed back and parsed, compares equal: the next diff is empty."""
    desired = compile_table(_state(50), node_name="n1")
    plan = diff(desired, None)
    apply_plan(backend, plan)
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    current = parse_listing(listing, family="inet", name="wholeip")
    assert diff(desired, current).empty
    assert len(current.elements["ingress4"]) == 50
    assert len(current.elements["egress6"]) == 25
    assert len(current.elements["selfhairpin4"]) == 25
    tags = [o["rule"]["comment"] for o in listing if "rule" in o]
    assert tags == [r.tag for c in desired.skeleton.chains for r in desired.skeleton.rules if r.chain == c.name]


def test_read_table_is_the_parsed_listing(backend: Backend) -> None:
    """What a full sync reads (the kernel's backend reads elements over netlink) is what
    the listing shows; tests/nft/test_netlink.py checks every kind of set."""
    assert backend.read_table("inet", "wholeip") is None
    desired = compile_table(_state(30), node_name="n1")
    apply_plan(backend, diff(desired, None))
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    read = backend.read_table("inet", "wholeip")
    assert read == parse_listing(listing, family="inet", name="wholeip")
    assert read is not None
    assert diff(desired, read).empty


def test_mapping_change_is_a_small_diff_that_applies(backend: Backend) -> None:
    first = compile_table(_state(20), node_name="n1")
    apply_plan(backend, diff(first, None))
    second = compile_table(_state(20, pod_offset=1), node_name="n1")
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    plan = diff(second, parse_listing(listing, family="inet", name="wholeip"))
    assert not plan.rebuilt
    assert not plan.chains_rebuilt
    apply_plan(backend, plan)
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    assert diff(second, parse_listing(listing, family="inet", name="wholeip")).empty


def test_foreign_rule_in_our_chain_is_seen_and_removed(backend: Backend) -> None:
    desired = compile_table(_state(3), node_name="n1")
    apply_plan(backend, diff(desired, None))
    backend.transact(
        [
            {
                "add": {
                    "rule": {
                        "family": "inet",
                        "table": "wholeip",
                        "chain": "raw_prerouting",
                        "expr": [{"accept": None}],
                    }
                }
            }
        ]
    )
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    plan = diff(desired, parse_listing(listing, family="inet", name="wholeip"))
    assert plan.chains_rebuilt == ("raw_prerouting",)
    apply_plan(backend, plan)
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    assert diff(desired, parse_listing(listing, family="inet", name="wholeip")).empty


def test_rebuild_replaces_a_foreign_set_and_keeps_other_tables(backend: Backend) -> None:
    backend.transact(
        [
            {"add": {"table": {"family": "ip", "name": "foreign"}}},
            {"add": {"chain": {"family": "ip", "table": "foreign", "name": "keep"}}},
        ]
    )
    desired = compile_table(_state(3), node_name="n1")
    apply_plan(backend, diff(desired, None))
    backend.transact([{"add": {"set": {"family": "inet", "table": "wholeip", "name": "extra", "type": "ipv4_addr"}}}])
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    plan = diff(desired, parse_listing(listing, family="inet", name="wholeip"))
    assert plan.rebuilt
    apply_plan(backend, plan)
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    assert diff(desired, parse_listing(listing, family="inet", name="wholeip")).empty
    foreign = backend.list_table("ip", "foreign")
    assert foreign is not None
    assert any(o.get("chain", {}).get("name") == "keep" for o in foreign)


def test_verdict_map_elements_need_their_chain(backend: Backend) -> None:
    _table(backend)
    backend.transact([{"add": {"map": {**T, "name": "v", "type": "ipv4_addr", "map": "verdict"}}}])
    jump = {"add": {"element": {**T, "name": "v", "elem": [["192.0.2.1", {"jump": {"target": "c"}}]]}}}
    with pytest.raises(NotFound):
        backend.transact([jump])
    backend.transact([{"add": {"chain": {**T, "name": "c"}}}, jump])
    assert _elems(backend, "v") == [["192.0.2.1", {"jump": {"target": "c"}}]]


def test_per_port_table_round_trips(backend: Backend) -> None:
    objs = synth.cluster(3)
    svc = objs[2]
    svc["metadata"]["annotations"] = {"networking.cozystack.io/allowICMP": "true"}
    svc["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    svc["spec"] = {
        "ports": [{"port": 53, "protocol": "UDP"}],
        "loadBalancerSourceRanges": ["198.51.100.0/24", "192.0.2.7/32"],
    }
    state = index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    desired = compile_table(state, node_name="n1")
    assert desired.elements["dispatch4"]
    apply_plan(backend, diff(desired, None))
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    assert diff(desired, parse_listing(listing, family="inet", name="wholeip")).empty


def test_overlap_inside_a_concatenation_exists(backend: Backend) -> None:
    _table(backend)
    backend.transact([{"add": {"set": {**T, "name": "c", "type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]}}}])
    net = {"prefix": {"addr": "198.51.100.0", "len": 24}}
    backend.transact([{"add": {"element": {**T, "name": "c", "elem": [{"concat": ["192.0.2.1", net]}]}}}])
    with pytest.raises(Exists):
        backend.transact(
            [{"add": {"element": {**T, "name": "c", "elem": [{"concat": ["192.0.2.1", "198.51.100.7"]}]}}}]
        )
    backend.transact([{"add": {"element": {**T, "name": "c", "elem": [{"concat": ["192.0.2.2", "198.51.100.7"]}]}}}])


def test_typeof_declaration_lists_like_the_kernel(backend: Backend) -> None:
    _table(backend)
    backend.declare(
        "add map inet t fix { typeof ip daddr . @th,160,32 : @th,32,16; }; "
        "add set inet t guard { typeof ip6 daddr . @th,128,128; }"
    )
    backend.transact(
        [
            {"add": {"element": {**T, "name": "fix", "elem": [[{"concat": ["192.0.2.1", 3221225985]}, 12301]]}}},
            {
                "add": {
                    "element": {
                        **T,
                        "name": "guard",
                        "elem": [{"concat": ["2001:db8::1", "0x20010db8000000000000000000000001"]}],
                    }
                }
            },
        ]
    )
    listing = backend.list_table("inet", "t")
    assert listing is not None
    decls = {o[k]["name"]: (o[k]["type"], o[k].get("map")) for o in listing for k in ("set", "map") if k in o}
    assert decls == {"fix": (["ipv4_addr", "integer"], "integer"), "guard": (["ipv6_addr", "integer"], None)}
    assert _elems(backend, "fix") == [[{"concat": ["192.0.2.1", 3221225985]}, 12301]]
    with pytest.raises(Rejected):
        backend.declare("add map inet t broken { typeof nonsense; }")


def test_check_changes_nothing_and_refuses_what_transact_would(backend: Backend) -> None:
    _map(backend)
    add = {"add": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.1"]]}}}
    backend.check([add])
    assert _elems(backend, "m") == []
    backend.transact([add])
    with pytest.raises(Exists):
        backend.check([{"add": {"element": {**T, "name": "m", "elem": [["192.0.2.1", "10.0.0.2"]]}}}])
    with pytest.raises(NotFound):
        backend.check([{"delete": {"element": {**T, "name": "m", "elem": ["192.0.2.9"]}}}])
    assert _elems(backend, "m") == [["192.0.2.1", "10.0.0.1"]]


def test_zone_ids_are_refused(backend: Backend) -> None:
    _table(backend)
    backend.transact([{"add": {"map": {**T, "name": "m6", "type": "ipv6_addr", "map": "ipv6_addr"}}}])
    with pytest.raises(Rejected):
        backend.transact([{"add": {"element": {**T, "name": "m6", "elem": [["fe80::1%eth0", "fd00::1"]]}}}])
