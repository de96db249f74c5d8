"""Compiler and engine on the fake backend: shape of the table, minimal transactions, drift."""

from __future__ import annotations

import json
import sys
import time

import pytest

from wholeip.core import index
from wholeip.core.elements import compile_table
from wholeip.engine import Engine, apply_plan
from wholeip.nft.backend import Rejected
from wholeip.nft.commands import as_json
from wholeip.nft.diff import diff
from wholeip.nft.doc import JSONObj, TableDoc
from wholeip.nft.fake import FakeBackend
from wholeip.nft.render import render_table
from wholeip.settings import ModelSettings
from wholeip_testkit import synth


def desired(n: int, *, node: str = "n1", pod_offset: int = 0, dual_stack: bool = True) -> TableDoc:
    objs = synth.cluster(n, dual_stack=dual_stack, pod_offset=pod_offset)
    state = index.build_state_from_objects(objs, node_name=node, settings=ModelSettings())
    return compile_table(state, node_name=node)


def test_no_rules_per_service() -> None:
    small, large = desired(1), desired(2000)
    assert small.skeleton == large.skeleton
    assert len(large.elements["ingress4"]) == 2000


def test_ingress_everywhere_egress_only_for_local_pods() -> None:
    n1, n2 = desired(10, node="n1"), desired(10, node="n2")
    assert n1.elements["ingress4"] == n2.elements["ingress4"]
    assert len(n1.elements["egress4"]) == len(n2.elements["egress4"]) == 5
    assert not n1.elements["egress4"] & n2.elements["egress4"]


def test_render_is_deterministic() -> None:
    objs = synth.cluster(30, dual_stack=True)
    a = compile_table(index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings()), node_name="n1")
    b = compile_table(
        index.build_state_from_objects(list(reversed(objs)), node_name="n1", settings=ModelSettings()), node_name="n1"
    )
    assert json.dumps(render_table(a)) == json.dumps(render_table(b))


def test_second_sync_sends_an_empty_transaction() -> None:
    backend = FakeBackend()
    engine = Engine(backend=backend)
    first = engine.sync(desired(100))
    assert first.plan.created
    # Creation: the skeleton, the typeof declarations, the elements (one transaction
    # below CREATE_CHUNK), the rules.
    assert len(backend.transactions) == 3
    assert not any("rule" in cmd["add"] for cmd in backend.transactions[1])
    assert all("rule" in cmd["add"] for cmd in backend.transactions[2])
    second = engine.sync(desired(100), full=True)
    assert second.plan.empty
    assert len(backend.transactions) == 3


def test_creation_fills_in_chunks_before_any_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new table's elements go in transactions of at most CREATE_CHUNK elements, all of
    them before the one transaction that adds every rule."""
    from wholeip.nft import diff as diffmod

    monkeypatch.setattr(diffmod, "CREATE_CHUNK", 7)
    backend = FakeBackend()
    doc = desired(10)
    plan = Engine(backend=backend).sync(doc).plan
    total = sum(len(e) for e in doc.elements.values())
    assert plan.added == total
    fills = backend.transactions[1:-1]
    assert len(fills) == -(-total // 7)
    sizes = [sum(len(cmd["add"]["element"]["elem"]) for cmd in tx) for tx in fills]
    assert max(sizes) == 7
    assert sum(sizes) == total
    assert not any("rule" in cmd["add"] for tx in backend.transactions[:-1] for cmd in tx)
    assert all("rule" in cmd["add"] for cmd in backend.transactions[-1])
    assert Engine(backend=backend).sync(doc, full=True).plan.empty  # the kernel holds exactly doc


def test_restarted_engine_commits_only_the_difference() -> None:
    backend = FakeBackend()
    Engine(backend=backend).sync(desired(100))
    restarted = Engine(backend=backend)
    assert restarted.sync(desired(100)).plan.empty  # first sync of a new engine is full
    result = restarted.sync(desired(100, pod_offset=1))
    # Every pod moves one slot: all 200 ingress values, all 100 local egress values and
    # all 100 IPv4 ICMP compensations change; the self-hairpin sets (pod . pod) lose one
    # pod and gain one per family; the IPv6 ICMP guard (external IP only) stays. The 100
    # local egress mappings' row 15 elements (external IP . pod IP, icmpfix4/icmpguard6)
    # change keys.
    assert (result.plan.added, result.plan.deleted) == (502, 502)
    assert not result.plan.rebuilt


def test_plan_names_the_removed_elements_with_their_old_values() -> None:
    engine = Engine(backend=FakeBackend())
    before = desired(4)
    assert not engine.sync(before).plan.removed  # creation removes nothing
    after = desired(4, pod_offset=1)
    removed = engine.sync(after).plan.removed
    assert removed["ingress4"] == before.elements["ingress4"] - after.elements["ingress4"]
    assert len(removed["ingress4"]) == 4
    assert "cluster4" not in removed  # interval sets are compared by cover, never listed
    # A rebuild (here: the skeleton differs) removes whatever the new table lacks.
    from wholeip.nft.diff import rebuild

    plan = rebuild(desired(2), before)
    assert plan.removed["ingress4"] == before.elements["ingress4"] - desired(2).elements["ingress4"]


def test_failed_commit_keeps_old_state_and_forces_full_sync() -> None:
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(desired(10))
    backend.fail_next = Rejected("boom")
    with pytest.raises(Rejected):
        engine.sync(desired(10, pod_offset=1))
    assert engine.last is None
    listing = backend.list_table("inet", "wholeip")
    assert listing is not None
    result = engine.sync(desired(10, pod_offset=1))
    assert result.full
    assert result.plan.added > 0


@pytest.mark.parametrize(
    "damage",
    [
        [{"delete": {"table": {"family": "inet", "name": "wholeip"}}}],
        [{"flush": {"map": {"family": "inet", "table": "wholeip", "name": "ingress4"}}}],
        [{"delete": {"element": {"family": "inet", "table": "wholeip", "name": "ingress4", "elem": ["100.64.0.1"]}}}],
        [
            {
                "add": {
                    "element": {
                        "family": "inet",
                        "table": "wholeip",
                        "name": "ingress4",
                        "elem": [["198.51.100.99", "10.0.0.1"]],
                    }
                }
            }
        ],
        [{"flush": {"chain": {"family": "inet", "table": "wholeip", "name": "stateless_postrouting"}}}],
        [
            {
                "add": {
                    "rule": {"family": "inet", "table": "wholeip", "chain": "raw_prerouting", "expr": [{"drop": None}]}
                }
            }
        ],
    ],
    ids=["table-deleted", "map-flushed", "element-deleted", "element-added", "chain-flushed", "rule-inserted"],
)
def test_full_sync_repairs_drift_and_reports_it(damage: list[dict[str, object]]) -> None:
    backend = FakeBackend()
    engine = Engine(backend=backend)
    want = desired(10)
    engine.sync(want)
    assert engine.sync(want).plan.empty  # normal sync trusts memory
    backend.transact(damage)
    assert engine.sync(want).plan.empty  # still trusts memory: no listing on the hot path
    repaired = engine.sync(want, full=True)
    assert repaired.drift
    assert not repaired.plan.empty
    assert engine.sync(want, full=True).plan.empty


def test_cleanup_touches_only_our_table() -> None:
    backend = FakeBackend()
    backend.transact([{"add": {"table": {"family": "ip", "name": "other"}}}])
    engine = Engine(backend=backend)
    engine.sync(desired(3))
    assert engine.cleanup()
    assert not engine.cleanup()
    assert backend.list_table("inet", "wholeip") is None
    assert backend.list_table("ip", "other") is not None


def _per_port(
    i: int, ports: int = 5, *, ranges: tuple[str, ...] = (), icmp: bool = False, pod_offset: int = 0
) -> list[dict[str, object]]:
    objs = synth.service(i, pod_offset=pod_offset)
    svc = objs[0]
    meta = svc["metadata"]
    meta["annotations"] = {"networking.cozystack.io/allowICMP": "true"} if icmp else {}
    meta["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    svc["spec"] = {
        "ports": [{"name": f"p{k}", "port": 1000 + k, "protocol": "UDP" if k % 2 else "TCP"} for k in range(ports)],
        "loadBalancerSourceRanges": list(ranges),
    }
    return objs


def test_per_port_services_are_elements_only_at_ten_thousand() -> None:
    objs: list[dict[str, object]] = [synth.node("n1", 0), synth.node("n2", 1)]
    for i in range(10_000):
        objs += _per_port(i, ranges=("198.51.100.0/24",) if i % 3 == 0 else ())
    state = index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    doc = compile_table(state, node_name="n1")
    assert doc.skeleton == desired(1).skeleton  # the same fixed rules as one whole-IP Service
    elements = sum(map(len, doc.elements.values()))
    print(f"\n10,000 per-port Services x 5 ports: {len(doc.skeleton.rules)} rules, {elements} elements")
    # Keyed by external IP: 5 ports each. The pods on n1 (each behind one filter) are also
    # filtered on n1 for UDP arriving at another node, keyed by pod IP: their 2 UDP ports.
    local = [m for m in state.mappings if m.node_name == "n1"]
    assert 0 < len(local) < 10_000
    assert len(doc.elements["ports4"]) == 50_000 + 2 * len(local)
    assert len(doc.elements["dispatch4"]) == 10_000
    assert doc.elements["arrive4"] == {(str(m.pod_ip), "jump per_port4") for m in local}
    assert doc.elements["away4"] == {str(m.external_ip) for m in state.mappings if m.node_name == "n2"}
    assert len(doc.elements["sources4"]) == 3334 + sum(1 for m in local if m.source_ranges)


def test_mode_switch_is_an_element_change() -> None:
    base: list[dict[str, object]] = [synth.node("n1", 0), synth.node("n2", 1)]
    whole = base + synth.service(0)
    per_port = base + _per_port(0, ports=2, icmp=True)
    a = compile_table(index.build_state_from_objects(whole, node_name="n1", settings=ModelSettings()), node_name="n1")
    b = compile_table(
        index.build_state_from_objects(per_port, node_name="n1", settings=ModelSettings()), node_name="n1"
    )
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(a)
    plan = engine.sync(b).plan
    assert not plan.rebuilt
    assert not plan.chains_rebuilt
    assert b.elements["dispatch4"] == {("100.64.0.1", "jump per_port4")}
    # The pod (10.128.0.10) is on n1: its UDP port is also kept under its own IP, for
    # UDP that arrives at another node; TCP and ICMP are filtered where they arrive.
    assert b.elements["arrive4"] == {("10.128.0.10", "jump per_port4")}
    assert b.elements["ports4"] == {
        ("100.64.0.1", "tcp", 1000),
        ("100.64.0.1", "udp", 1001),
        ("10.128.0.10", "udp", 1001),
    }
    assert b.elements["icmp4"] == {"100.64.0.1"}
    assert b.elements["filtered4"] == {"100.64.0.1", "10.128.0.10"}
    assert b.elements["away4"] == set()


@pytest.mark.parametrize(
    "case", ["same-udp-ports", "other-udp-ports", "same-ranges-other-ports", "other-ranges", "one-unfiltered"]
)
def test_a_pod_behind_two_filters(case: str) -> None:
    """Services 0 and 2 share pod 10.128.0.10 on n1 (their TCP ports differ: filtered where
    TCP arrives anyway). n1 filters UDP that arrived at n2 under the pod IP by what either
    Service lets in (n2 sends it on), unless that is not one set: different source ranges."""
    svc0 = _per_port(0, ports=2)  # tcp 1000, udp 1001
    svc2 = _per_port(2, ports=4, pod_offset=-1)  # tcp 1000, udp 1001, tcp 1002, udp 1003
    spec0, spec2 = svc0[0]["spec"], svc2[0]["spec"]
    if case not in ("other-udp-ports", "same-ranges-other-ports"):
        spec2["ports"] = [p for p in spec2["ports"] if p["port"] != 1003]  # type: ignore[index]
    if case in ("other-ranges", "same-ranges-other-ports"):
        spec0["loadBalancerSourceRanges"] = ["198.51.100.0/24"]  # type: ignore[index]
    if case == "same-ranges-other-ports":
        spec2["loadBalancerSourceRanges"] = ["198.51.100.0/24"]  # type: ignore[index]
    if case == "one-unfiltered":
        svc2[0]["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}  # type: ignore[index]
    objs: list[dict[str, object]] = [synth.node("n1", 0), synth.node("n2", 1), *svc0, *svc2]
    states = {
        node: index.build_state_from_objects(objs, node_name=node, settings=ModelSettings()) for node in ("n1", "n2")
    }
    assert {str(m.pod_ip) for m in states["n1"].mappings} == {"10.128.0.10"}
    n1, n2 = (compile_table(states[node], node_name=node).elements for node in ("n1", "n2"))
    pod = "10.128.0.10"
    at_pod = {e for e in n1["ports4"] if e[0] == pod}
    filtered = {"100.64.0.1"} if case == "one-unfiltered" else {"100.64.0.1", "100.64.0.3"}
    for doc in (n1, n2):  # keyed by external IP: each Service's own filter, on every node
        assert {e for e, _ in doc["dispatch4"]} == filtered
    if case == "same-udp-ports":
        assert n1["arrive4"] == {(pod, "jump per_port4")}
        assert at_pod == {(pod, "udp", 1001)}
        assert n2["away4"] == filtered
    elif case in ("other-udp-ports", "same-ranges-other-ports"):  # the union: what either lets in
        assert n1["arrive4"] == {(pod, "jump per_port4")}
        assert at_pod == {(pod, "udp", 1001), (pod, "udp", 1003)}
        assert n2["away4"] == filtered
        ranged = case == "same-ranges-other-ports"
        assert (pod in n1["ranged4"]) is ranged
        assert ((pod, "198.51.100.0/24") in n1["sources4"]) is ranged
    elif case == "one-unfiltered":  # the pod takes all UDP through 100.64.0.3: no filter at n1
        assert not n1["arrive4"]
        assert not at_pod
        assert n2["away4"] == filtered
    else:
        assert not n1["arrive4"]
        assert not at_pod
        assert not n2["away4"]
    assert not n1["away4"]
    assert not n2["arrive4"]


def test_whole_ip_with_source_ranges_dispatches_to_the_range_check() -> None:
    objs = [synth.node("n1", 0), *synth.service(0)]
    objs[1]["spec"]["loadBalancerSourceRanges"] = ["198.51.100.0/25", "198.51.100.128/25", "192.0.2.7/32"]
    doc = compile_table(index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings()), node_name="n1")
    assert doc.elements["dispatch4"] == {("100.64.0.1", "jump whole_ip4")}
    # The pod is on n1, which also checks the ranges under the pod IP (UDP/SCTP arriving elsewhere).
    assert doc.elements["arrive4"] == {("10.128.0.10", "jump whole_ip4")}
    # Adjacent ranges collapse: the kernel refuses overlapping or duplicate intervals.
    assert doc.elements["sources4"] == {
        (key, net) for key in ("100.64.0.1", "10.128.0.10") for net in ("198.51.100.0/24", "192.0.2.7")
    }


class _Poisoned(FakeBackend):
    """A kernel that refuses any transaction adding one particular element."""

    def __init__(self, poison: str) -> None:
        super().__init__()
        self.poison = poison

    def _refuse(self, commands: object) -> None:
        if any(self.poison in json.dumps(c) for c in commands if "add" in c):  # type: ignore[attr-defined]
            raise Rejected("Error: Could not process rule: Invalid argument", detail=self.poison)

    def transact(self, commands: list[dict[str, object]]) -> None:  # type: ignore[override]
        self._refuse(commands)
        super().transact(commands)

    def check(self, commands: list[dict[str, object]]) -> None:  # type: ignore[override]
        self._refuse(commands)
        super().check(commands)


def test_a_rejected_element_is_isolated_and_every_other_change_lands() -> None:
    backend = _Poisoned("100.64.0.7")  # synth's 8th external IP
    engine = Engine(backend=backend)
    before = desired(5)
    engine.sync(before)  # 100.64.0.7 is not there yet: the table is created
    after = desired(20)
    transactions = len(backend.transactions)
    result = engine.sync(after)
    # Every element change about 100.64.0.7 is refused; the rest lands in ONE transaction.
    assert {r.set_name for r in result.rejected} >= {"ingress4", "icmpfix4"}
    assert all(r.op == "add" for r in result.rejected)
    assert len(backend.transactions) == transactions + 1
    assert "100.64.0.7" in json.dumps(result.rejected[0].element)
    assert engine.last is None  # the next sync compares with the kernel
    observed = engine.observe()
    assert observed is not None
    # Every other Service's mapping is in the kernel, the poisoned one is not.
    want = {e for e in after.elements["ingress4"] if e[0] != "100.64.0.7"}  # type: ignore[index]
    assert set(observed.elements["ingress4"]) == want
    again = engine.sync(after)
    assert [r.element for r in again.rejected] == [r.element for r in result.rejected]
    assert again.plan.added == len(result.rejected)  # only the rejected changes are tried again


def test_a_refusal_that_does_not_reproduce_leaves_the_old_table_and_fails() -> None:
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(desired(3))
    backend.fail_next = Rejected("transient")
    with pytest.raises(Rejected):
        engine.sync(desired(6))
    observed = engine.observe()
    assert observed is not None
    assert len(observed.elements["ingress4"]) == 3  # nothing of the refused plan landed
    assert engine.sync(desired(6)).plan.added > 0  # the retry (full) applies it


def test_source_ranges_of_one_family_deny_the_other_family_instead_of_opening_it() -> None:
    svc = {
        "kind": "Service",
        "metadata": {
            "namespace": "default",
            "name": "ds",
            "annotations": {"networking.cozystack.io/wholeIP": "true"},
        },
        "spec": {"loadBalancerSourceRanges": ["2001:db8:f::/48"]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"ip": "2001:db8:1::9"}]}},
    }
    slices = [
        {
            "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": f"ds-{f}", "labels": {"kubernetes.io/service-name": "ds"}},
            "addressType": f"IPv{f}",
            "endpoints": [{"addresses": [a], "nodeName": "n1"}],
        }
        for f, a in ((4, "10.244.1.9"), (6, "fd00::9"))
    ]
    state = index.build_state_from_objects([svc, *slices], node_name="n1", settings=ModelSettings())
    doc = compile_table(state, node_name="n1")
    assert ("203.0.113.9", "jump whole_ip4") in doc.elements["dispatch4"]
    assert "203.0.113.9" in doc.elements["ranged4"]
    assert not doc.elements["sources4"]  # nobody outside may reach the IPv4 address
    assert "10.244.1.9" in doc.elements["ranged4"]  # nor the pod, filtered at its node
    # (The pod's own IP keys the same check at its node, n1.)
    assert doc.elements["sources6"] == {("2001:db8:1::9", "2001:db8:f::/48"), ("fd00::9", "2001:db8:f::/48")}


class CountingBackend(FakeBackend):
    """Counts every read of the kernel's table (listing or ``read_table``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def list_table(self, family: str, name: str) -> list[JSONObj] | None:
        self.reads += 1
        return super().list_table(family, name)


def test_a_normal_sync_never_reads_the_kernel() -> None:
    """Issue 6's observe cost: only a full sync (start-up, the resync timer, after a failure)
    reads the table back; a sync of changes trusts the engine's memory of its last commit."""
    backend = CountingBackend()
    engine = Engine(backend=backend)
    engine.sync(desired(20))  # the first sync is full: it reads once
    first = backend.reads
    assert first >= 1
    for offset in range(1, 6):
        assert engine.sync(desired(20, pod_offset=offset)).plan.added > 0
    assert backend.reads == first
    engine.sync(desired(20, pod_offset=5), full=True)
    assert backend.reads > first


def _ranged_service(ranges: list[str], *, per_port: bool) -> list[dict[str, object]]:
    """A dual-stack Service (whole-IP or per-port) with these source ranges, its pod on n1."""
    meta: dict[str, object] = {"namespace": "default", "name": "r"}
    if per_port:
        meta["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    else:
        meta["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    svc = {
        "kind": "Service",
        "metadata": meta,
        "spec": {"ports": [{"port": 53, "protocol": "UDP"}], "loadBalancerSourceRanges": ranges},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"ip": "2001:db8:1::9"}]}},
    }
    slices = [
        {
            "kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": f"r-{f}", "labels": {"kubernetes.io/service-name": "r"}},
            "addressType": f"IPv{f}",
            "endpoints": [{"addresses": [a], "nodeName": "n1"}],
        }
        for f, a in ((4, "10.244.1.9"), (6, "fd00::9"))
    ]
    return [svc, *slices]


@pytest.mark.parametrize("per_port", [False, True], ids=["whole-ip", "per-port"])
def test_source_ranges_that_are_all_invalid_admit_no_outside_source(per_port: bool) -> None:
    """Issue 15 item 3: ranges that are all invalid used to leave the Service unfiltered
    (whole-IP) or filtered by port only, i.e. open to every source. Fail closed: each
    address (and the pod, at its node) is ranged with no allowed source."""
    objs = _ranged_service(["foo", "10.0.0.0/33"], per_port=per_port)
    state = index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    problems = [(p.reason, p.message) for p in state.problems]
    assert [r for r, _ in problems] == ["InvalidSourceRange", "InvalidSourceRange"]
    assert all("no source outside the cluster is admitted" in m for _, m in problems)
    assert {m.closed for m in state.mappings} == {True}
    doc = compile_table(state, node_name="n1")
    chain = "per_port" if per_port else "whole_ip"
    for v, ext, pod in ((4, "203.0.113.9", "10.244.1.9"), (6, "2001:db8:1::9", "fd00::9")):
        assert (ext, f"jump {chain}{v}") in doc.elements[f"dispatch{v}"]
        assert doc.elements[f"ranged{v}"] == {ext, pod}
        assert not doc.elements[f"sources{v}"]
        assert (pod, f"jump {chain}{v}") in doc.elements[f"arrive{v}"]


def test_a_mix_of_valid_and_invalid_source_ranges_keeps_the_valid_ones() -> None:
    objs = _ranged_service(["foo", "198.51.100.0/24", "2001:db8:f::/48", "10.0.0.0/33"], per_port=False)
    state = index.build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    problems = [(p.reason, p.message) for p in state.problems]
    assert [r for r, _ in problems] == ["InvalidSourceRange", "InvalidSourceRange"]
    assert all("ignored, the valid entries still apply" in m for _, m in problems)
    assert {m.closed for m in state.mappings} == {False}
    doc = compile_table(state, node_name="n1")
    assert doc.elements["sources4"] == {("203.0.113.9", "198.51.100.0/24"), ("10.244.1.9", "198.51.100.0/24")}
    assert doc.elements["sources6"] == {("2001:db8:1::9", "2001:db8:f::/48"), ("fd00::9", "2001:db8:f::/48")}


def test_no_source_ranges_at_all_leave_a_whole_ip_unfiltered() -> None:
    state = index.build_state_from_objects(
        _ranged_service([], per_port=False), node_name="n1", settings=ModelSettings()
    )
    assert state.problems == ()
    doc = compile_table(state, node_name="n1")
    assert not doc.elements["dispatch4"]
    assert not doc.elements["ranged4"]


class _SlowFill(FakeBackend):
    """Records each element transaction's start and end; ``fail_at``: which one is refused
    (through the fake's own ``fail_next``)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.events: list[tuple[str, int]] = []
        self._sending = 0

    def transact_text(self, text: str) -> None:
        self._sending += 1
        number = self._sending
        self.events.append(("start", number))
        time.sleep(0.002)  # (long enough for the renderer to run ahead, if it could send)
        if number == self.fail_at:
            self.fail_next = Rejected(f"transaction {number} refused")
        try:
            super().transact_text(text)
        finally:
            self.events.append(("end", number))


def test_fill_is_sent_in_order_one_transaction_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """The element transactions of a new table go in the plan's order, each sent only once
    the one before it is committed, although the next is rendered meanwhile."""
    from wholeip.nft import diff as diffmod

    monkeypatch.setattr(diffmod, "CREATE_CHUNK", 5)
    interval = sys.getswitchinterval()
    backend = _SlowFill()
    doc = desired(12)
    plan = Engine(backend=backend).sync(doc).plan
    assert len(plan.fill) > 3
    count = len(plan.fill)
    assert backend.events == [(what, k) for k in range(1, count + 1) for what in ("start", "end")]
    assert backend.transactions[1 : count + 1] == [json.loads(json.dumps(as_json(tx))) for tx in plan.fill]
    assert sys.getswitchinterval() == interval
    assert Engine(backend=backend).sync(doc, full=True).plan.empty


def test_a_refused_fill_transaction_stops_the_fill(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first refusal is raised; no element transaction after it and no rule is sent."""
    from wholeip.nft import diff as diffmod

    monkeypatch.setattr(diffmod, "CREATE_CHUNK", 5)
    interval = sys.getswitchinterval()
    backend = _SlowFill(fail_at=2)
    with pytest.raises(Rejected, match="transaction 2 refused"):
        apply_plan(backend, diff(desired(12), None))
    assert backend.events == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    assert len(backend.transactions) == 2  # the table's skeleton, the first fill
    assert not any("rule" in cmd["add"] for tx in backend.transactions for cmd in tx)
    assert sys.getswitchinterval() == interval
