"""Delegated Services in the model: which endpoints each front-end gets on a node, the
elements, and a skeleton that does not grow with them (docs/datapath.md row 16)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Any

import pytest

from wholeip.core.delegated import frontend_elements
from wholeip.core.elements import compile_table
from wholeip.core.index import build_state, load
from wholeip.core.model import Frontend, ObjectRef
from wholeip.core.ruleset import SKELETON, SLOT_CLASSES, slot_count
from wholeip.engine import Engine
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings
from wholeip_testkit import synth

SETTINGS = ModelSettings(service_cidrs=(ipaddress.ip_network("10.96.0.0/12"), ipaddress.ip_network("fd00:10:96::/108")))
LABEL = {"service.kubernetes.io/service-proxy-name": "wholeip"}


def svc(name: str = "s", **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "ClusterIP",
        "clusterIPs": ["10.96.0.10", "fd00:10:96::10"],
        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
    }
    base.update(spec)
    return {
        "kind": "Service",
        "metadata": {"namespace": "ns", "name": name, "labels": LABEL, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": base,
    }


def eps(
    name: str, family: int, endpoints: list[dict[str, Any]], ports: dict[str, int] | None = None, *, tag: str = ""
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "ns",
            "name": f"{name}-{family}{tag}",
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": f"IPv{family}",
        "ports": [{"name": k, "port": v, "protocol": "TCP"} for k, v in (ports or {"http": 8080}).items()],
        "endpoints": endpoints,
    }


def ep(address: str, node: str = "n1", **conditions: bool) -> dict[str, Any]:
    return {"addresses": [address], "nodeName": node, "conditions": conditions}


def cluster_args(objects: list[dict[str, Any]], node: str = "n1") -> dict[str, Any]:
    """The arguments of build_state and load for these Services and slices on a dual-stack node."""
    return {
        "services": [o for o in objects if o["kind"] == "Service"],
        "endpoint_slices": [o for o in objects if o["kind"] == "EndpointSlice"],
        "nodes": synth.cluster(0, dual_stack=True),
        "node_name": node,
        "settings": SETTINGS,
    }


def fronts(objects: list[dict[str, Any]], node: str = "n1") -> list[Frontend]:
    return list(build_state(**cluster_args(objects, node)).frontends)


def by_key(fs: list[Frontend]) -> dict[tuple[int, str | None, int], Frontend]:
    return {(f.family, f.address, f.port): f for f in fs}


def test_ready_endpoints_with_the_named_target_port_of_their_own_slice() -> None:
    objects = [
        svc(),
        eps("s", 4, [ep("10.128.0.2"), ep("10.128.0.1", "n2")], {"http": 8080}),
        # another slice (a rolling update): its pods call the named port 9090
        eps("s", 4, [ep("10.128.0.3", "n2")], {"http": 9090}, tag="b"),
    ]
    f = by_key(fronts(objects))[(4, "10.96.0.10", 80)]
    assert f.endpoints == (("10.128.0.1", 8080), ("10.128.0.2", 8080), ("10.128.0.3", 9090))
    assert f.local_endpoints == ("10.128.0.2",)
    # no IPv6 slice: the IPv6 ClusterIP has no endpoint and refuses
    six = by_key(fronts(objects))[(6, "fd00:10:96::10", 80)]
    assert six.endpoints == ()
    assert ("svcrefuse6", (("fd00:10:96::10", "tcp", 80), "goto refuse")) in frontend_elements(six)


def test_a_named_target_port_a_slice_lacks_leaves_its_endpoints_out() -> None:
    objects = [svc(), eps("s", 4, [ep("10.128.0.1")], {"other": 1})]
    assert by_key(fronts(objects))[(4, "10.96.0.10", 80)].endpoints == ()


def test_unready_endpoints_are_left_out_and_terminating_ones_used_only_when_nothing_is_ready() -> None:
    ready = ep("10.128.0.1")
    unready = ep("10.128.0.2", ready=False)
    terminating = ep("10.128.0.3", ready=False, serving=True, terminating=True)
    f = by_key(fronts([svc(), eps("s", 4, [ready, unready, terminating])]))[(4, "10.96.0.10", 80)]
    assert [a for a, _ in f.endpoints] == ["10.128.0.1"]
    f = by_key(fronts([svc(), eps("s", 4, [unready, terminating])]))[(4, "10.96.0.10", 80)]
    assert [a for a, _ in f.endpoints] == ["10.128.0.3"]


def test_internal_traffic_policy_local_keeps_this_nodes_endpoints_and_drops_without() -> None:
    objects = [svc(internalTrafficPolicy="Local"), eps("s", 4, [ep("10.128.0.1", "n1"), ep("10.128.0.2", "n2")])]
    assert by_key(fronts(objects, "n1"))[(4, "10.96.0.10", 80)].endpoints == (("10.128.0.1", 8080),)
    objects = [svc(internalTrafficPolicy="Local"), eps("s", 4, [ep("10.128.0.2", "n2")])]
    f = by_key(fronts(objects, "n1"))[(4, "10.96.0.10", 80)]
    assert f.endpoints == ()
    assert ("svcrefuse4", (("10.96.0.10", "tcp", 80), "drop")) in frontend_elements(f)


def test_node_ports_by_traffic_policy_and_the_health_check() -> None:
    port = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": 30080}
    objects = [
        svc(type="NodePort", ports=[port], externalTrafficPolicy="Local", healthCheckNodePort=32000),
        eps("s", 4, [ep("10.128.0.1", "n1"), ep("10.128.0.2", "n2"), ep("10.128.0.3", "n2")]),
    ]
    state = build_state(
        services=objects[:1], endpoint_slices=objects[1:], nodes=synth.cluster(0), node_name="n2", settings=SETTINGS
    )
    np4 = by_key(list(state.frontends))[(4, None, 30080)]
    assert np4.endpoints == (("10.128.0.2", 8080), ("10.128.0.3", 8080))
    assert not np4.masquerade
    (health,) = state.health_checks
    assert (health.port, health.local_endpoints) == (32000, 2)
    cluster = [svc(type="NodePort", ports=[port]), objects[1]]
    np4 = by_key(fronts(cluster, "n2"))[(4, None, 30080)]
    assert len(np4.endpoints) == 3
    assert np4.masquerade
    names = {name for name, _ in frontend_elements(np4)}
    assert names == {"nodeport4", "npaddr4", "npport4", "npmasq4", "svcself4"}


def test_two_services_with_one_health_check_port_the_younger_is_told() -> None:
    """The API server allocates a healthCheckNodePort once; a cluster file can give two
    Services the same one. The older's health check answers; the younger learns it,
    and learns it no more once the older goes (incrementally as from a fresh index)."""

    def local(name: str, created: str, node_port: int) -> dict[str, Any]:
        port = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP", "nodePort": node_port}
        obj = svc(name, type="NodePort", ports=[port], externalTrafficPolicy="Local", healthCheckNodePort=32000)
        obj["spec"]["clusterIPs"] = [f"10.96.0.{node_port - 30000}"]
        obj["metadata"]["creationTimestamp"] = created
        return obj

    older, younger = local("a", "2026-01-01T00:00:00Z", 30080), local("b", "2026-01-02T00:00:00Z", 30081)
    objects = [younger, older, eps("a", 4, [ep("10.128.0.1")]), eps("b", 4, [ep("10.128.0.2"), ep("10.128.0.3")])]
    state = build_state(**cluster_args(objects))
    assert [(p.ref.name, p.reason) for p in state.problems] == [("b", "HealthCheckPortConflict")]
    assert "older Service ns/a" in state.problems[0].message
    ((port, ref, count),) = [(h.port, h.service.name, h.local_endpoints) for h in state.health_checks]
    assert (port, ref, count) == (32000, "a", 1)
    index = load(**cluster_args(objects))
    index.update(services={("ns", "a"): []})
    alone = build_state(**cluster_args(objects[:1] + objects[2:]))
    assert index.state() == alone
    assert not alone.problems
    assert [(h.service.name, h.local_endpoints) for h in alone.health_checks] == [("b", 2)]


def test_affinity_takes_the_client_hash_chain() -> None:
    objects = [svc(sessionAffinity="ClientIP"), eps("s", 4, [ep("10.128.0.1"), ep("10.128.0.2")])]
    f = by_key(fronts(objects))[(4, "10.96.0.10", 80)]
    assert ("svc4", (("10.96.0.10", "tcp", 80), "goto aff_256")) in frontend_elements(f)


def test_ipv6_affinity_takes_the_port_of_endpoints_that_share_one() -> None:
    objects = [svc(sessionAffinity="ClientIP"), eps("s", 6, [ep("fd00:10:244::1"), ep("fd00:10:244::2")])]
    f = by_key(fronts(objects))[(6, "fd00:10:96::10", 80)]
    assert ("svcuport6", (("fd00:10:96::10", "tcp", 80), 8080)) in frontend_elements(f)
    index = load(
        services=objects[:1], endpoint_slices=objects[1:], nodes=synth.cluster(0), node_name="n1", settings=SETTINGS
    )
    assert not [p for p in index.problems if p.reason == "AffinityPerFlow"]


def test_ipv6_affinity_over_endpoints_on_different_ports_spreads_per_flow_and_says_so() -> None:
    objects = [
        svc(sessionAffinity="ClientIP"),
        eps("s", 6, [ep("fd00:10:244::1")], {"http": 8080}, tag="a"),
        eps("s", 6, [ep("fd00:10:244::2")], {"http": 9090}, tag="b"),
        eps("s", 4, [ep("10.128.0.1")], {"http": 8080}, tag="a"),
        eps("s", 4, [ep("10.128.0.2")], {"http": 9090}, tag="b"),
    ]
    by = by_key(fronts(objects))
    assert not [e for name, e in frontend_elements(by[(6, "fd00:10:96::10", 80)]) if name == "svcuport6"]
    index = load(
        services=objects[:1], endpoint_slices=objects[1:], nodes=synth.cluster(0), node_name="n1", settings=SETTINGS
    )
    (problem,) = [p for p in index.problems if p.reason == "AffinityPerFlow"]
    assert "fd00:10:96::10" in problem.message
    assert not problem.warning
    # IPv4 keeps its affinity whatever the ports: no problem about it.
    assert "10.96.0.10" not in problem.message


def _affinity_index(*addresses: str, timeout: int | None = None) -> Any:
    spec: dict[str, Any] = {"sessionAffinity": "ClientIP"}
    if timeout is not None:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": timeout}}
    service = svc(**spec)
    index = load(
        services=[service],
        endpoint_slices=[eps("s", 4, [ep(a) for a in addresses])],
        nodes=synth.cluster(0),
        node_name="n1",
        settings=SETTINGS,
    )
    return index, service


KEY4 = ("10.96.0.10", "tcp", 80)


def test_an_endpoint_joining_starts_a_generation_that_keeps_the_previous_slots() -> None:
    index, _ = _affinity_index("10.128.0.1", "10.128.0.2")
    first = dict(index.elements["svcaddr4"])
    assert index.elements["svcafftime4"] == {(KEY4, "jump rec_10800_a")}
    assert index.elements["svcafftimeold4"] == {(KEY4, "jump rec_10800_b")}
    assert not index.elements["svcgenb4"]
    assert not index.elements["svcoldaddr4"]

    index.update(slices={"ns/s-4": eps("s", 4, [ep("10.128.0.1"), ep("10.128.0.2"), ep("10.128.0.3")])})
    # Generation b: clients recorded in a keep the slots they used (the old table).
    assert index.elements["svcgenb4"] == {KEY4}
    assert index.elements["svcafftime4"] == {(KEY4, "jump rec_10800_b")}
    assert index.elements["svcafftimeold4"] == {(KEY4, "jump rec_10800_a")}
    now = dict(index.elements["svcaddr4"])
    moved = {k for k in now if now[k] != first[k]}
    assert moved, "the new endpoint took no slot"
    assert "10.128.0.3" in {now[k] for k in moved}
    # The previous table holds the slots that differ (the others fall through to the
    # current table, which agrees).
    assert dict(index.elements["svcoldaddr4"]) == {k: first[k] for k in moved}

    # The newcomer goes again: generation a, the previous table is b's with its slots
    # given back to the remaining endpoints (its clients are not sent to a gone pod).
    index.update(slices={"ns/s-4": eps("s", 4, [ep("10.128.0.1"), ep("10.128.0.2")])})
    assert not index.elements["svcgenb4"]
    assert index.elements["svcafftime4"] == {(KEY4, "jump rec_10800_a")}
    old = dict(index.elements["svcoldaddr4"])
    assert set(old.values()) <= {"10.128.0.1", "10.128.0.2"}


def _three() -> list[dict[str, Any]]:
    return [ep("10.128.0.1"), ep("10.128.0.2"), ep("10.128.0.3")]


@pytest.mark.parametrize("later", [3, 4, 1])
def test_a_restarted_index_takes_the_generations_over_from_the_kernel(later: int) -> None:
    """The kernel's table, as the agent before the restart left it, gives a fresh index the
    same generations that index would have now: equal elements, also when the endpoints
    changed meanwhile (4: one more; 1: two gone)."""
    before, _ = _affinity_index("10.128.0.1", "10.128.0.2")
    before.update(slices={"ns/s-4": eps("s", 4, _three())})
    kernel = {k: set(v) for k, v in before.elements.items()}
    assert kernel["svcgenb4"]
    now = [ep(f"10.128.0.{i}") for i in range(1, 5)] if later == 4 else _three()[:later]
    before.update(slices={"ns/s-4": eps("s", 4, now)})  # what the old agent would have done
    fresh, _ = _affinity_index(*(e["addresses"][0] for e in now))
    adopted = fresh.delegated.adopt(kernel, {})
    assert adopted == 1
    assert fresh.elements == before.elements


def test_a_kernel_without_generations_adopts_nothing() -> None:
    index, _ = _affinity_index("10.128.0.1", "10.128.0.2")
    kernel = {k: set(v) for k, v in index.elements.items()}
    fresh, _ = _affinity_index("10.128.0.1", "10.128.0.2")
    assert fresh.delegated.adopt(kernel, {}) == 0
    assert fresh.delegated.adopt({}, {}) == 0
    assert fresh.elements == index.elements


def test_losing_affinity_or_the_service_leaves_no_generation_behind() -> None:
    index, service = _affinity_index("10.128.0.1", "10.128.0.2")
    index.update(slices={"ns/s-4": eps("s", 4, [ep("10.128.0.1"), ep("10.128.0.2"), ep("10.128.0.3")])})
    assert index.elements["svcoldaddr4"]
    plain = svc()
    index.update(services={("ns", "s"): [plain]})
    for name in ("svcgenb4", "svcoldaddr4", "svcoldport4", "svcafftime4", "svcafftimeold4"):
        assert not index.elements[name], name
    index.update(services={("ns", "s"): [service]})
    index.update(slices={"ns/s-4": eps("s", 4, [ep("10.128.0.1"), ep("10.128.0.4"), ep("10.128.0.3")])})
    assert index.elements["svcoldaddr4"]
    index.update(services={("ns", "s"): []})
    for name in ("svcgenb4", "svcoldaddr4", "svcoldport4", "svcafftime4", "svcafftimeold4", "svcaddr4"):
        assert not index.elements[name], name


@pytest.mark.parametrize(("seconds", "applied"), [(10800, 10800), (60, 60), (100, 120), (1, 1), (86400, 86400)])
def test_the_timeout_is_the_nearest_class_and_an_event_says_when_rounded(seconds: int, applied: int) -> None:
    index, _ = _affinity_index("10.128.0.1", timeout=seconds)
    assert index.elements["svcafftime4"] == {(KEY4, f"jump rec_{applied}_a")}
    rounded = [p for p in index.problems if p.reason == "AffinityTimeoutRounded"]
    if seconds == applied:
        assert not rounded
    else:
        (problem,) = rounded
        assert f"timeoutSeconds {seconds} is applied as {applied}" in problem.message


def test_unlabelled_and_annotation_only_services_are_not_delegated() -> None:
    plain = svc()
    plain["metadata"]["labels"] = {}
    annotated = svc("w")
    annotated["metadata"]["labels"] = {}
    annotated["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    other = svc("o")
    other["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "someone-else"}
    assert fronts([plain, annotated, other]) == []


def test_a_cluster_ip_claimed_twice_goes_to_the_older_service() -> None:
    old, new = svc("old"), svc("new")
    new["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    objects = [new, old, eps("old", 4, [ep("10.128.0.1")]), eps("new", 4, [ep("10.128.0.9")])]
    f = by_key(fronts(objects))[(4, "10.96.0.10", 80)]
    assert f.service.name == "old"
    index = load(
        services=[new, old],
        endpoint_slices=objects[2:],
        nodes=synth.cluster(0),
        node_name="n1",
        settings=SETTINGS,
    )
    assert any(p.reason == "FrontendConflict" and p.ref.name == "new" for p in index.problems)


@pytest.mark.parametrize("n", [1, 2, 3, 7, 8, 9, 16, 17, 100, 512, 600, 5000])
def test_slots_are_a_class_and_share_out_evenly(n: int) -> None:
    slots = slot_count(n)
    assert slots in SLOT_CLASSES
    if n <= 512:
        share = Counter(i % n for i in range(slots))
        assert len(share) == n
        assert max(share.values()) / min(share.values()) <= 9 / 8 or n <= 8


def test_ten_thousand_delegated_services_cost_the_rules_of_one() -> None:
    one = compile_table(
        build_state(
            services=[o for o in synth.delegated_cluster(1) if o["kind"] == "Service"],
            endpoint_slices=[o for o in synth.delegated_cluster(1) if o["kind"] == "EndpointSlice"],
            nodes=synth.cluster(0),
            node_name="n1",
            settings=SETTINGS,
        ),
        node_name="n1",
    )
    objects = synth.delegated_cluster(10_000, endpoints=3)
    state = build_state(
        services=[o for o in objects if o["kind"] == "Service"],
        endpoint_slices=[o for o in objects if o["kind"] == "EndpointSlice"],
        nodes=[o for o in objects if o["kind"] == "Node"],
        node_name="n1",
        settings=SETTINGS,
    )
    many = compile_table(state, node_name="n1")
    assert len(many.skeleton.rules) == len(one.skeleton.rules) == len(SKELETON.rules)
    assert len(many.skeleton.chains) == len(one.skeleton.chains)
    assert len(many.elements["svc4"]) == 10_000
    assert len(many.elements["svcaddr4"]) == 30_000
    assert ObjectRef("Service", "default", "dlg-9999") in {f.service for f in state.frontends}


def _problems(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((p.ref.name, p.reason) for p in build_state(**cluster_args(objects)).problems)


def test_unusable_ports_and_timeouts_are_reported_and_left_out_not_sent_to_the_kernel() -> None:
    """What the API server would refuse can still come in a cluster file: a numeric targetPort
    out of range would have nft refuse the whole table (every other Service's rules with it)."""
    good = svc("good", clusterIPs=["10.96.0.20"])
    bad = svc(
        "bad",
        type="NodePort",
        clusterIPs=["10.96.0.10"],
        ports=[
            {"name": "a", "port": 80, "targetPort": 70000, "protocol": "TCP"},
            {"name": "b", "port": 0, "protocol": "TCP"},
            {"name": "c", "port": 81, "protocol": "ICMP"},
            {"name": "d", "port": 82, "targetPort": 8082, "protocol": "TCP", "nodePort": 70000},
        ],
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}},
    )
    bad_slice = eps("bad", 4, [ep("10.128.0.1")])
    bad_slice["ports"] = []
    objects = [good, eps("good", 4, [ep("10.128.0.2")]), bad, bad_slice]
    assert _problems(objects) == [("bad", "InvalidAffinityTimeout")] + [("bad", "InvalidPort")] * 4
    served = by_key(fronts(objects))
    assert set(served) == {(4, "10.96.0.20", 80), (4, "10.96.0.10", 82)}  # no NodePort for d
    # The table goes to a kernel whole: nothing in it is refused.
    Engine(backend=FakeBackend()).sync(load(**cluster_args(objects)).doc())


def test_a_labelled_load_balancers_unusable_port_is_reported_once() -> None:
    lb = svc("lb", type="LoadBalancer", ports=[{"name": "b", "port": 0, "protocol": "TCP"}])
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "203.0.113.5"}]}}
    assert _problems([lb]).count(("lb", "InvalidPort")) == 1


def test_a_port_listed_twice_is_served_as_first_listed_and_reported() -> None:
    """The API server refuses a Service that lists a protocol and port twice, or one
    nodePort twice; a cluster file can. The first entry counts; the others are told."""
    ports = [
        {"name": "a", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080},
        {"name": "b", "port": 80, "targetPort": 9090, "protocol": "TCP", "nodePort": 30081},
        {"name": "c", "port": 81, "targetPort": 8081, "protocol": "TCP", "nodePort": 30080},
        {"name": "d", "port": 80, "targetPort": 8082, "protocol": "UDP", "nodePort": 30080},
    ]
    objects = [svc(type="NodePort", ports=ports), eps("s", 4, [ep("10.128.0.1")])]
    state = build_state(**cluster_args(objects))
    got = {(f.address, f.protocol, f.port): f.endpoints for f in state.frontends if f.family == 4}
    assert got == {
        ("10.96.0.10", "tcp", 80): (("10.128.0.1", 8080),),
        ("10.96.0.10", "tcp", 81): (("10.128.0.1", 8081),),
        ("10.96.0.10", "udp", 80): (("10.128.0.1", 8082),),
        (None, "tcp", 30080): (("10.128.0.1", 8080),),
        (None, "udp", 30080): (("10.128.0.1", 8082),),
    }
    messages = sorted(p.message for p in state.problems if p.reason == "InvalidPort")
    assert len(messages) == 2, messages
    assert "TCP/80 is listed before" in messages[0]
    assert "TCP nodePort 30080 is listed before; no NodePort" in messages[1]
