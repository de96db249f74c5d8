"""Egress IP in the model (docs/datapath.md row 18): selection, holder, members, elements.

The datapath is tested with real traffic in tests/nft/test_egressip_traffic.py; here the
decisions, and that the incremental index equals a fresh build after any changes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.core.elements import compile_table
from wholeip.core.index import ClusterIndex, build_state, build_state_from_objects
from wholeip.core.model import ClusterState
from wholeip.core.ruleset import skeleton_for, steer_slots
from wholeip.engine import Engine
from wholeip.names import (
    EGRESS_IP_ANNOTATION,
    EGRESS_NODE_ANNOTATION,
    EGRESS_SNAT,
    EGRESS_STEER,
    METALEG_LABEL,
    steer_slot_chain,
)
from wholeip.nft.diff import diff
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings

SETTINGS = ModelSettings()
NODES = [
    {
        "kind": "Node",
        "metadata": {"name": n},
        "spec": {"podCIDRs": [c4, c6]},
        "status": {"addresses": [{"type": "InternalIP", "address": a4}, {"type": "InternalIP", "address": a6}]},
    }
    for n, c4, c6, a4, a6 in (
        ("n1", "10.244.1.0/24", "fd00:1::/64", "192.0.2.11", "2001:db8:2::11"),
        ("n2", "10.244.2.0/24", "fd00:2::/64", "192.0.2.12", "2001:db8:2::12"),
        ("n3", "10.244.3.0/24", "fd00:3::/64", "192.0.2.13", "2001:db8:2::13"),
    )
]


def svc(
    name: str,
    ips: list[str],
    *,
    created: str = "2026-01-01T00:00:00Z",
    annotation: str | None = "true",
    label: str | None = None,
    node: str | None = None,
    whole: bool = False,
) -> dict[str, Any]:
    annotations = {}
    if annotation is not None:
        annotations[EGRESS_IP_ANNOTATION] = annotation
    if node is not None:
        annotations[EGRESS_NODE_ANNOTATION] = node
    if whole:
        annotations["networking.cozystack.io/wholeIP"] = "true"
    return {
        "kind": "Service",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": annotations,
            "labels": {METALEG_LABEL: label} if label is not None else {},
        },
        "spec": {"type": "LoadBalancer"},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


def eps(
    service: str, family: int, endpoints: list[tuple[str, str]], idx: int = 0, ready: bool = True
) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"namespace": "ns", "name": f"{service}-{idx}", "labels": {"kubernetes.io/service-name": service}},
        "addressType": f"IPv{family}",
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}, "nodeName": n} for a, n in endpoints],
    }


def l2(service: str, node: str, idx: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "ServiceL2Status",
        "metadata": {"namespace": "metallb-system", "name": f"l2-{service}-{idx}"},
        "status": {"node": node, "serviceName": service, "serviceNamespace": "ns"},
    }


def state(objs: list[dict[str, Any]], node: str = "n1") -> ClusterState:
    return build_state_from_objects([*NODES, *objs], node_name=node, settings=SETTINGS)


def reasons(st_: ClusterState) -> list[str]:
    return [p.reason for p in st_.problems]


MEMBERS = [
    svc("mail", ["203.0.113.50", "2001:db8:100::50"]),
    eps("mail", 4, [("10.244.1.10", "n1"), ("10.244.2.20", "n2")]),
    eps("mail", 6, [("fd00:1::10", "n1"), ("fd00:2::20", "n2")], idx=1),
    l2("mail", "n1"),
]


def test_the_holder_snats_every_member_and_the_other_node_steers_its_own() -> None:
    on_n1 = state(MEMBERS, "n1")
    assert on_n1.egress_snat == (
        ("10.244.1.10", "203.0.113.50"),
        ("10.244.2.20", "203.0.113.50"),
        ("fd00:1::10", "2001:db8:100::50"),
        ("fd00:2::20", "2001:db8:100::50"),
    )
    assert on_n1.egress_steer == ()
    on_n2 = state(MEMBERS, "n2")
    assert on_n2.egress_snat == ()
    assert on_n2.egress_steer == (("10.244.2.20", 1), ("fd00:2::20", 1))
    assert on_n2.egress_services == 1
    table = compile_table(on_n2, node_name="n2")
    assert table.elements[EGRESS_STEER[4]] == {("10.244.2.20", f"goto {steer_slot_chain(1)}")}
    assert not table.elements[EGRESS_SNAT[4]]
    # A node with no member and no IP held has nothing to do.
    on_n3 = state(MEMBERS, "n3")
    assert on_n3.egress_snat == on_n3.egress_steer == ()


def test_metalegs_label_selects_and_other_values_are_reported_and_not_served() -> None:
    labelled = [svc("mail", ["203.0.113.50"], annotation=None, label="true"), *MEMBERS[1:]]
    assert state(labelled).egress_snat[0] == ("10.244.1.10", "203.0.113.50")
    for annotation, label in (("yes", None), ("true", "TRUE"), (None, "1")):
        bad = [svc("mail", ["203.0.113.50"], annotation=annotation, label=label), *MEMBERS[1:]]
        s = state(bad)
        assert s.egress_snat == ()
        assert "InvalidEgressIPSelection" in reasons(s)
    off = state([svc("mail", ["203.0.113.50"], annotation="false"), *MEMBERS[1:]])
    assert off.egress_snat == ()
    assert "InvalidEgressIPSelection" not in reasons(off)


def test_the_holder_comes_from_l2_status_else_the_annotation_else_it_is_unknown() -> None:
    annotated = [svc("mail", ["203.0.113.50"], node="n2"), *MEMBERS[1:3]]
    assert state(annotated, "n2").egress_snat[0] == ("10.244.1.10", "203.0.113.50")
    # The status wins over the annotation.
    both = [*annotated, l2("mail", "n3")]
    assert state(both, "n3").egress_snat
    assert not state(both, "n2").egress_snat
    unknown = state([svc("mail", ["203.0.113.50"]), *MEMBERS[1:3]], "n2")
    assert unknown.egress_snat == unknown.egress_steer == ()
    assert "EgressNodeUnknown" in reasons(unknown)


def test_a_whole_ip_backend_keeps_its_whole_ip() -> None:
    objs = [
        *MEMBERS,
        svc("web", ["203.0.113.10"], annotation=None, whole=True),
        eps("web", 4, [("10.244.2.20", "n2")], idx=5),
    ]
    s = state(objs, "n1")
    assert ("10.244.2.20", "203.0.113.50") not in s.egress_snat
    assert ("10.244.1.10", "203.0.113.50") in s.egress_snat
    assert "EgressPodHasWholeIP" in reasons(s)
    assert state(objs, "n2").egress_steer == (("fd00:2::20", 1),)


def test_a_pod_of_two_egress_services_leaves_with_the_older_ones_ip() -> None:
    objs = [
        *MEMBERS,
        svc("relay", ["203.0.113.60"], created="2025-12-31T00:00:00Z"),
        eps("relay", 4, [("10.244.2.20", "n2")], idx=5),
        l2("relay", "n3"),
    ]
    on_n1 = state(objs, "n1")
    assert ("10.244.2.20", "203.0.113.50") not in on_n1.egress_snat
    assert "EgressPodClaimedByOlderService" in reasons(on_n1)
    assert state(objs, "n3").egress_snat == (("10.244.2.20", "203.0.113.60"),)
    # n2 steers that pod to n3 now, and its IPv6 address still to n1: two slots.
    assert state(objs, "n2").egress_steer == (("10.244.2.20", 2), ("fd00:2::20", 1))


def test_an_egress_ip_that_is_one_of_our_external_ips_is_refused() -> None:
    objs = [
        svc("mail", ["203.0.113.10"]),
        eps("mail", 4, [("10.244.1.10", "n1")]),
        l2("mail", "n1"),
        svc("web", ["203.0.113.10"], annotation=None, whole=True),
        eps("web", 4, [("10.244.2.20", "n2")], idx=5),
    ]
    s = state(objs, "n1")
    assert s.egress_snat == ()
    assert "EgressIPIsExternalIP" in reasons(s)


def test_an_egress_ip_that_is_a_mapped_pods_address_is_refused() -> None:
    """A 1:1-mapped pod's node takes every packet to that pod's address from outside
    (``notrack``, the stateless path): the replies to the egress IP would go to that pod."""
    mail = [svc("mail", ["10.244.2.20"]), eps("mail", 4, [("10.244.1.10", "n1")]), l2("mail", "n1")]
    web = [svc("web", ["203.0.113.10"], annotation=None, whole=True), eps("web", 4, [("10.244.2.20", "n2")], idx=5)]
    s = state([*mail, *web], "n1")
    assert s.egress_snat == ()
    assert "EgressIPIsPodAddress" in reasons(s)
    # Without the mapping it is served, and the index follows the mapping both ways.
    assert state(mail, "n1").egress_snat == (("10.244.1.10", "10.244.2.20"),)
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    index.update(services={("ns", "mail"): [mail[0]]}, slices={"ns/mail-0": mail[1]}, l2_statuses={"mail": mail[2]})
    assert index.state().egress_snat == (("10.244.1.10", "10.244.2.20"),)
    index.update(services={("ns", "web"): [web[0]]}, slices={"ns/web-5": web[1]})
    assert index.state().egress_snat == ()
    index.update(slices={"ns/web-5": None})
    assert index.state().egress_snat == (("10.244.1.10", "10.244.2.20"),)


def test_not_on_link_holders_leave_the_pods_alone_with_an_event() -> None:
    index = ClusterIndex(settings=SETTINGS, node_name="n2", nodes=NODES)
    index.update(
        services={("ns", "mail"): [MEMBERS[0]]},
        slices={"ns/mail-0": MEMBERS[1], "ns/mail-1": MEMBERS[2]},
        l2_statuses={"l2": MEMBERS[3]},
    )
    assert {h.node for h in index.egress.routes().values()} == {"n1"}
    assert index.elements[EGRESS_STEER[4]]
    touched: dict[str, set[Any]] = {}
    index.egress.set_routing({"n1"}, touched)
    assert not index.elements[EGRESS_STEER[4]]
    assert not index.elements[EGRESS_STEER[6]]
    assert touched[EGRESS_STEER[4]] == {("10.244.2.20", "goto steer_slot_1")}
    assert [p.reason for p in index.egress.problems] == ["EgressNodeNotOnLink"]
    index.egress.set_routing((), touched)
    assert index.elements[EGRESS_STEER[4]]


def test_a_holder_keeps_its_slot_while_others_come_and_go() -> None:
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    index.update(
        services={("ns", "a"): [svc("a", ["203.0.113.50"])], ("ns", "b"): [svc("b", ["203.0.113.60"])]},
        slices={"ns/a-0": eps("a", 4, [("10.244.1.10", "n1")]), "ns/b-0": eps("b", 4, [("10.244.1.11", "n1")], 1)},
        l2_statuses={"la": l2("a", "n3")},
    )
    assert {s: h.node for s, h in index.egress.routes().items()} == {1: "n3"}
    index.update(l2_statuses={"lb": l2("b", "n2")})
    assert {s: h.node for s, h in index.egress.routes().items()} == {1: "n3", 2: "n2"}
    index.update(l2_statuses={"la": None})  # a: holder unknown now
    assert {s: h.node for s, h in index.egress.routes().items()} == {2: "n2"}
    assert index.elements[EGRESS_STEER[4]] == {("10.244.1.11", "goto steer_slot_2")}


def test_the_slot_chains_keep_every_mark_bit_outside_the_mask() -> None:
    skel = skeleton_for(0x0000F000)
    assert steer_slots(0x0000F000) == 15
    rule = next(r for r in skel.rules if r.chain == steer_slot_chain(3))
    assert rule.expr == (
        {
            "mangle": {
                "key": {"meta": {"key": "mark"}},
                "value": {"|": [{"&": [{"meta": {"key": "mark"}}, 0xFFFF0FFF]}, 0x3000]},
            }
        },
    )
    assert not any(c.name == steer_slot_chain(16) for c in skel.chains)


# --------------------------------------------------------------------------- incremental == fresh

SERVICES = ["s0", "s1", "s2"]
PODS4 = [("10.244.1.10", "n1"), ("10.244.1.11", "n1"), ("10.244.2.20", "n2"), ("10.244.3.30", "n3")]
PODS6 = [("fd00:1::10", "n1"), ("fd00:2::20", "n2")]

egress_svc = st.builds(
    lambda name, ips, created, annotation, label, node, whole: svc(
        name, ips, created=created, annotation=annotation, label=label, node=node, whole=whole
    ),
    st.sampled_from(SERVICES),
    # 203.0.113.10: a whole-IP Service's external IP; 10.244.2.20: a pod's address.
    st.lists(
        st.sampled_from(["203.0.113.50", "203.0.113.60", "2001:db8:100::50", "203.0.113.10", "10.244.2.20"]),
        max_size=2,
    ),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"]),
    st.sampled_from(["true", "true", None, "bogus"]),
    st.sampled_from([None, None, "true"]),
    st.sampled_from([None, "n1", "n2", "n3"]),
    st.sampled_from([False, False, False, True]),
)
slice_change = st.builds(
    lambda s, family, picks, idx, ready: eps(s, family, picks, idx, ready),
    st.sampled_from(SERVICES),
    st.just(4),
    st.lists(st.sampled_from(PODS4), min_size=1, max_size=2, unique=True),
    st.integers(0, 1),
    st.sampled_from([True, True, False]),
) | st.builds(
    lambda s, picks, idx: eps(s, 6, picks, idx),
    st.sampled_from(SERVICES),
    st.lists(st.sampled_from(PODS6), min_size=1, max_size=2, unique=True),
    st.integers(2, 3),
)
change = st.one_of(
    st.tuples(st.just("svc"), egress_svc),
    st.tuples(st.just("del-svc"), st.sampled_from(SERVICES)),
    st.tuples(st.just("slice"), slice_change),
    st.tuples(st.just("del-slice"), st.sampled_from([f"{s}-{i}" for s in SERVICES for i in range(4)])),
    st.tuples(st.just("l2"), st.builds(l2, st.sampled_from(SERVICES), st.sampled_from(["n1", "n2", "n3"]))),
    st.tuples(st.just("del-l2"), st.sampled_from(SERVICES)),
    st.tuples(st.just("link"), st.sets(st.sampled_from(["n2", "n3"]))),
    # A holder's Node loses an address family, or gets another address.
    st.tuples(
        st.just("node"),
        st.tuples(st.sampled_from(["n2", "n3"]), st.sampled_from([["192.0.2.22"], ["2001:db8:2::22"], []])),
    ),
)


def _by_holder(index_or_state: Any, steer: tuple[tuple[str, int], ...], routes: dict[int, Any]) -> set[tuple[str, str]]:
    return {(pod, routes[slot].node) for pod, slot in steer}


# n1's pod leaves through n2, which then loses its IPv4 address and gets one back.
HOLDER_READDRESSED = [
    ("svc", svc("s0", ["203.0.113.50"])),
    ("slice", eps("s0", 4, [("10.244.1.10", "n1")])),
    ("l2", l2("s0", "n2")),
    ("node", ("n2", ["2001:db8:2::22"])),
    ("node", ("n2", ["192.0.2.22"])),
]

# An egress IP that becomes, and stops being, a whole-IP backend's address.
EGRESS_IP_BECOMES_MAPPED = [
    ("svc", svc("s0", ["10.244.2.20"], node="n1")),
    ("slice", eps("s0", 4, [("10.244.1.10", "n1")])),
    ("svc", svc("s1", ["203.0.113.50"], annotation=None, whole=True)),
    ("slice", eps("s1", 4, [("10.244.2.20", "n2")])),
    ("del-slice", "s1-0"),
]


@props(60)
@given(st.lists(change, min_size=10, max_size=40))
@example(HOLDER_READDRESSED)
@example(EGRESS_IP_BECOMES_MAPPED)
def test_incremental_equals_fresh_with_egress_services(changes: list[tuple[str, Any]]) -> None:
    """Random Services, slices and ServiceL2Status objects (shared pods, holders moving,
    whole-IP backends, on-link verdicts) into the index one at a time: its state equals a
    fresh build's but for slot numbers (stable in the index, dense in a fresh build), which
    are compared by the holder they stand for; and a fake kernel fed only the touched
    elements holds the index's table."""
    services: dict[str, dict[str, Any]] = {}
    slices: dict[str, dict[str, Any]] = {}
    statuses: dict[str, dict[str, Any]] = {}
    not_on_link: set[str] = set()
    nodes = {n["metadata"]["name"]: n for n in NODES}
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    engine = Engine(backend=FakeBackend())
    engine.sync(index.doc())
    for kind, arg in changes:
        if kind == "svc":
            services[arg["metadata"]["name"]] = arg
            touched = index.update(services={("ns", arg["metadata"]["name"]): [arg]})
        elif kind == "del-svc":
            services.pop(arg, None)
            touched = index.update(services={("ns", arg): []})
        elif kind == "slice":
            slices[arg["metadata"]["name"]] = arg
            touched = index.update(slices={f"ns/{arg['metadata']['name']}": arg})
        elif kind == "del-slice":
            slices.pop(arg, None)
            touched = index.update(slices={f"ns/{arg}": None})
        elif kind == "l2":
            key = arg["status"]["serviceName"]
            statuses[key] = arg
            touched = index.update(l2_statuses={key: arg})
        elif kind == "del-l2":
            statuses.pop(arg, None)
            touched = index.update(l2_statuses={arg: None})
        elif kind == "node":
            name, addresses = arg
            status = {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]}
            nodes[name] = {**nodes[name], "status": status}
            touched = index.update(nodes=list(nodes.values()))
        else:
            not_on_link = set(arg)
            touched = {}
            index.egress.set_routing(not_on_link, touched)
        fresh_index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=list(nodes.values()))
        fresh_index.update(
            services={("ns", k): [v] for k, v in services.items()},
            slices={f"ns/{k}": v for k, v in slices.items()},
            l2_statuses=dict(statuses),
        )
        fresh_index.egress.set_routing(not_on_link, {})
        fresh = fresh_index.state()
        if not not_on_link:
            assert fresh == build_state(
                services=services.values(),
                endpoint_slices=slices.values(),
                nodes=list(nodes.values()),
                node_name="n1",
                settings=SETTINGS,
                l2_statuses=statuses.values(),
            )
        now = index.state()
        assert now.egress_snat == fresh.egress_snat
        assert now.egress_services == fresh.egress_services
        assert _by_holder(index, now.egress_steer, index.egress.routes()) == _by_holder(
            fresh_index, fresh.egress_steer, fresh_index.egress.routes()
        )
        assert sorted(map(repr, now.problems)) == sorted(map(repr, fresh.problems))
        assert now.mappings == fresh.mappings
        result = engine.sync(index.doc(), touched=touched)
        assert not result.plan.rebuilt
        observed = engine.observe()
        assert observed is not None
        assert diff(index.doc(), observed).empty
