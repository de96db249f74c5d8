"""The incremental index agrees with a fresh build after any sequence of changes.

Random changes to a small universe of Services and EndpointSlices (few IPs, few
pods, tied creation times, so conflicts, shared pods and ties are common). After
every change the index, updated with only that change, must equal a model built
from scratch; and an engine fed only the touched elements must leave the fake
kernel holding exactly the fresh table.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.core.delegated import GENERATION_SETS, without_history
from wholeip.core.elements import compile_table
from wholeip.core.index import ClusterIndex, build_state, load
from wholeip.engine import Engine
from wholeip.nft.diff import diff
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings

SETTINGS = ModelSettings()
NODES = [
    {"kind": "Node", "metadata": {"name": n}, "spec": {"podCIDRs": [c]}, "status": {"addresses": [a]}}
    for n, c, a in (
        ("n1", "10.244.1.0/24", {"type": "InternalIP", "address": "192.0.2.11"}),
        ("n2", "10.244.2.0/24", {"type": "InternalIP", "address": "192.0.2.12"}),
    )
]
SERVICES = ["s0", "s1", "s2"]
EXT = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "2001:db8::1", "2001:db8::2", "10.244.1.99", "::ffff:192.0.2.13"]
PODS4 = ["10.244.1.10", "10.244.1.11", "10.244.2.20"]
PODS6 = ["fd00::10", "fd00::20"]

service_obj = st.builds(
    lambda name, ips, whole, labelled, created, icmp, ports, ranges: {
        "kind": "Service",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "creationTimestamp": created,
            "annotations": {
                **({"networking.cozystack.io/wholeIP": whole} if whole is not None else {}),
                **({"networking.cozystack.io/allowICMP": "true"} if icmp else {}),
            },
            "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"} if labelled else {},
        },
        "spec": {
            "ports": [{"name": f"p{p}", "protocol": proto, "port": p} for proto, p in ports],
            "loadBalancerSourceRanges": ranges,
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    },
    st.sampled_from(SERVICES),
    st.lists(st.sampled_from(EXT), min_size=1, max_size=3) | st.just([]),
    st.sampled_from(["true", "true", "true", None, "false", "bogus"]),
    st.booleans(),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", ""]),
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(["TCP", "UDP"]), st.sampled_from([53, 80, 443])), max_size=2),
    st.lists(st.sampled_from(["198.51.100.0/24", "2001:db8:f::/48", "bad"]), max_size=2),
)


def slice_obj(service: str, family: int, endpoints: list[tuple[str, bool, str]], idx: int) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "ns",
            "name": f"{service}-{idx}",
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": f"IPv{family}",
        "ports": [{"name": "p80", "protocol": "TCP", "port": 80}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": r}, "nodeName": n} for a, r, n in endpoints],
    }


READY = st.sampled_from([True, True, True, False])

slice_change = st.one_of(
    st.builds(
        lambda s, eps, idx: slice_obj(s, 4, eps, idx),
        st.sampled_from(SERVICES),
        st.lists(st.tuples(st.sampled_from(PODS4), READY, st.sampled_from(["n1", "n2"])), min_size=1, max_size=2),
        st.integers(0, 1),
    ),
    st.builds(
        lambda s, eps, idx: slice_obj(s, 6, eps, idx),
        st.sampled_from(SERVICES),
        st.lists(st.tuples(st.sampled_from(PODS6), READY, st.sampled_from(["n1", "n2"])), min_size=1, max_size=2),
        st.integers(2, 3),
    ),
)

POD_CIDRS = ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.0.0/16", "fd00::/64", "fd00::/120",
             "203.0.113.0/30", "2001:db8::/127", "bad"]  # fmt: skip
"""Pod CIDRs a Node may declare: the pods' (merging with their neighbours' or not), wider,
narrower, over external IPs, malformed."""
NODE_IPS = ["192.0.2.11", "192.0.2.12", "192.0.2.13", "203.0.113.2", "2001:db8::2", "10.244.1.11", "::ffff:203.0.113.1"]

node_obj = st.builds(
    lambda name, cidrs, addresses: {
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": cidrs},
        "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]},
    },
    st.sampled_from(["n1", "n2", "n3"]),
    st.lists(st.sampled_from(POD_CIDRS), max_size=2),
    st.lists(
        st.tuples(st.sampled_from(["InternalIP", "ExternalIP", "Hostname"]), st.sampled_from(NODE_IPS)), max_size=2
    ),
)
SERVICE_CIDRS = [
    ("10.96.0.0/12",),
    ("10.96.0.0/12", "203.0.113.2/32"),
    ("2001:db8::/64",),
    ("10.244.0.0/16", "fd00::/64"),
]

change = st.one_of(
    st.tuples(st.just("svc"), service_obj),
    st.tuples(st.just("del-svc"), st.sampled_from(SERVICES)),
    st.tuples(st.just("slice"), slice_change),
    st.tuples(st.just("slice"), slice_change),
    st.tuples(st.just("svc"), service_obj),
    st.tuples(st.just("del-slice"), st.sampled_from([f"{s}-{i}" for s in SERVICES for i in range(4)])),
    st.tuples(st.just("node"), node_obj),
    st.tuples(st.just("del-node"), st.sampled_from(["n1", "n2", "n3"])),
    st.tuples(st.just("service-cidrs"), st.sampled_from(SERVICE_CIDRS)),
)


def _svc(name: str, created: str, ips: list[str]) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "creationTimestamp": created,
            "annotations": {"networking.cozystack.io/wholeIP": "true"},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


# Found by this test: a pod's egress moves from its older Service (whose endpoint went
# unready) to the newer one; both contribute the self-hairpin element (pod . pod), so
# the removal of the old mapping's elements must come before the new one's additions.
EGRESS_MOVES = [
    ("slice", slice_obj("s1", 6, [("fd00::10", True, "n1")], 3)),
    ("slice", slice_obj("s2", 6, [("fd00::10", True, "n1")], 2)),
    ("svc", _svc("s1", "2026-01-02T00:00:00Z", ["2001:db8::2"])),
    ("svc", _svc("s2", "2026-01-01T00:00:00Z", ["2001:db8::1"])),
    ("slice", slice_obj("s2", 6, [("fd00::10", False, "n2")], 2)),
]


def _node(name: str, cidrs: list[str], addresses: list[str]) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": cidrs},
        "status": {"addresses": [{"type": "InternalIP", "address": a} for a in addresses]},
    }


# A Node address comes that an external IP spells in IPv6: the guard's message names it.
SPELLED_NODE = [
    ("svc", _svc("s0", "2026-01-01T00:00:00Z", ["::ffff:192.0.2.13"])),
    ("node", _node("n3", [], ["192.0.2.13"])),
    ("del-node", "n3"),
]
# No Node has pod CIDRs (every endpoint counts), then one has: the others no longer count.
FIRST_POD_CIDR = [
    ("del-node", "n1"),
    ("del-node", "n2"),
    ("slice", slice_obj("s0", 4, [("10.244.2.20", True, "n2")], 0)),
    ("svc", _svc("s0", "2026-01-01T00:00:00Z", ["203.0.113.1"])),
    ("node", _node("n1", ["10.244.1.0/24"], ["192.0.2.11"])),
    ("node", _node("n2", ["10.244.2.0/24"], ["192.0.2.12"])),
    ("node", _node("n2", ["10.244.3.0/24"], ["192.0.2.12"])),
]

# No Node has pod CIDRs (every endpoint counts): an endpoint comes at an external IP's
# address (refused), moves away (mapped again), a Service's own pod at its address; then
# the pod networks are known, and the endpoint outside them no longer counts.
POD_AT_EXTERNAL_IP = [
    ("del-node", "n1"),
    ("del-node", "n2"),
    ("svc", _svc("s0", "2026-01-01T00:00:00Z", ["203.0.113.1"])),
    ("slice", slice_obj("s0", 4, [("10.244.1.10", True, "n1")], 0)),
    ("svc", _svc("s1", "2026-01-01T00:00:01Z", ["203.0.113.2"])),
    ("slice", slice_obj("s1", 4, [("203.0.113.1", True, "n1")], 0)),
    ("slice", slice_obj("s1", 4, [("10.244.1.11", True, "n1")], 0)),
    ("svc", _svc("s2", "2026-01-01T00:00:02Z", ["203.0.113.3"])),
    ("slice", slice_obj("s2", 4, [("203.0.113.3", True, "n1")], 0)),
    ("slice", slice_obj("s1", 4, [("203.0.113.1", True, "n1")], 0)),
    ("node", _node("n1", ["10.244.1.0/24"], ["192.0.2.11"])),
    ("del-svc", "s1"),
]


@props(60)
@given(st.lists(change, min_size=10, max_size=40))
@example(POD_AT_EXTERNAL_IP)
@example(EGRESS_MOVES)
@example(SPELLED_NODE)
@example(FIRST_POD_CIDR)
def test_incremental_equals_fresh(changes: list[tuple[str, Any]]) -> None:
    _replay(changes, SETTINGS)


def _replay(changes: list[tuple[str, Any]], settings: ModelSettings) -> None:
    """Each change into the index alone; after each, the index equals a fresh build, and an
    engine fed the touched elements only leaves the fake kernel holding the fresh table."""
    services: dict[str, dict[str, Any]] = {}
    slices: dict[str, dict[str, Any]] = {}
    nodes = {n["metadata"]["name"]: n for n in NODES}
    index = ClusterIndex(settings=settings, node_name="n1", nodes=NODES)
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(index.doc())
    for kind, arg in changes:
        if kind == "svc":
            name = arg["metadata"]["name"]
            services[name] = arg
            touched = index.update(services={("ns", name): [arg]})
        elif kind == "del-svc":
            services.pop(arg, None)
            touched = index.update(services={("ns", arg): []})
        elif kind == "slice":
            name = arg["metadata"]["name"]
            slices[name] = arg
            touched = index.update(slices={f"ns/{name}": arg})
        elif kind == "del-slice":
            slices.pop(arg, None)
            touched = index.update(slices={f"ns/{arg}": None})
        elif kind == "node":
            nodes[arg["metadata"]["name"]] = arg
            touched = index.update(nodes=list(nodes.values()))
        elif kind == "del-node":
            nodes.pop(arg, None)
            touched = index.update(nodes=list(nodes.values()))
        else:
            nets = tuple(ipaddress.ip_network(n) for n in arg)
            settings = dataclasses.replace(settings, service_cidrs=nets)
            touched = index.update(settings=settings)
        fresh_state = build_state(
            services=services.values(),
            endpoint_slices=slices.values(),
            nodes=list(nodes.values()),
            node_name="n1",
            settings=settings,
        )
        assert index.state() == fresh_state
        fresh = compile_table(fresh_state, node_name="n1")
        assert without_history(index.elements) == without_history({k: set(v) for k, v in fresh.elements.items()})
        result = engine.sync(index.doc(), touched=touched)
        assert not result.plan.rebuilt
        assert not result.plan.created
        observed = engine.observe()
        assert observed is not None
        history = {k: observed.elements.get(k, frozenset()) for k in GENERATION_SETS}
        assert diff(dataclasses.replace(fresh, elements={**fresh.elements, **history}), observed).empty


def test_touched_sync_sends_only_the_change_at_ten_thousand() -> None:
    from wholeip_testkit import synth

    objs = synth.cluster(10_000, dual_stack=True)
    services = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    nodes = [o for o in objs if o["kind"] == "Node"]
    index = load(services=services, endpoint_slices=slices, nodes=nodes, node_name="n1", settings=SETTINGS)
    backend = FakeBackend()
    engine = Engine(backend=backend)
    engine.sync(index.doc())
    moved = dict(slices[0])
    eps = dict(moved["endpoints"][0])
    old_ip = eps["addresses"][0]
    eps["addresses"] = ["10.128.250.250" if ":" not in old_ip else "fd00:10:244::fa:fa"]
    moved["endpoints"] = [eps]
    meta = moved["metadata"]
    touched = index.update(slices={f"{meta['namespace']}/{meta['name']}": moved})
    result = engine.sync(index.doc(), touched=touched)
    # One mapping moved: ingress value and its ICMP data change, egress (if local) too,
    # with its row 15 ICMP key (external IP . pod IP).
    assert 1 <= result.plan.deleted <= 5
    assert 1 <= result.plan.added <= 5
    fresh = compile_table(
        build_state(
            services=services,
            endpoint_slices=[moved, *slices[1:]],
            nodes=nodes,
            node_name="n1",
            settings=SETTINGS,
        ),
        node_name="n1",
    )
    observed = engine.observe()
    assert observed is not None
    assert diff(fresh, observed).empty


def test_streamed_load_of_unique_keys_equals_a_flat_build() -> None:
    from wholeip.core.index import load_unique
    from wholeip_testkit import synth

    objs = synth.cluster(500, dual_stack=True)
    services = [o for o in objs if o["kind"] == "Service"]
    slices = [o for o in objs if o["kind"] == "EndpointSlice"]
    nodes = [o for o in objs if o["kind"] == "Node"]
    streamed = load_unique(
        services=iter(services),
        endpoint_slices=iter(slices),
        nodes=nodes,
        node_name="n1",
        settings=SETTINGS,
        batch=37,
    )
    flat = load(services=services, endpoint_slices=slices, nodes=nodes, node_name="n1", settings=SETTINGS)
    assert streamed.state() == flat.state()
    assert streamed.elements == flat.elements
    assert len(streamed.elements["ingress4"]) == 500


def test_backend_nodes_are_the_services_own_not_the_winner_of_its_lost_claim() -> None:
    older = {**_svc("old", "2026-01-01T00:00:00Z", ["203.0.113.1"])}
    newer = {**_svc("new", "2026-01-02T00:00:00Z", ["203.0.113.1"])}
    index = load(
        services=[older, newer],
        endpoint_slices=[
            slice_obj("old", 4, [("10.244.2.20", True, "n2")], 0),
            slice_obj("new", 4, [("10.244.1.10", True, "n1")], 0),
        ],
        nodes=NODES,
        node_name="n1",
        settings=SETTINGS,
    )
    assert index.backend_nodes("ns", "old") == ["n2"]
    assert index.backend_nodes("ns", "new") == []  # lost its only claim: no backend of its own
    state = index.state()
    assert state.backend_nodes("ns", "new") == []
    assert [p.reason for p in state.problems if p.ref.name == "new"] == ["ExternalIPConflict"]


def test_service_uids_survive_the_compact_index() -> None:
    """The index keeps a canonical UUID as 16 bytes; problems and mappings still carry the
    uid exactly as the API server wrote it (any other spelling is kept as it is)."""
    uids = ["0e8a1f5c-27b4-4a57-9a43-2f0d8e1c9b70", "0E8A1F5C-27B4-4A57-9A43-2F0D8E1C9B71", "uid-plain"]
    services = [
        {
            "kind": "Service",
            "metadata": {
                "namespace": "ns",
                "name": f"s{k}",
                "uid": uid,
                "annotations": {"networking.cozystack.io/wholeIP": "true"},
            },
            "status": {"loadBalancer": {"ingress": [{"ip": f"203.0.113.{k + 1}"}]}},
        }
        for k, uid in enumerate(uids)
    ]
    slices = [slice_obj("s0", 4, [("10.244.1.10", True, "n1")], 0)]
    state = load(services=services, endpoint_slices=slices, nodes=NODES, node_name="n1", settings=SETTINGS).state()
    assert [m.service.uid for m in state.mappings] == [uids[0]]
    waiting = {p.ref.name: p.ref.uid for p in state.problems if p.reason == "NoReadyEndpoint"}
    assert waiting == {"s1": uids[1], "s2": uids[2]}


# --------------------------------------------------------------------------- --lb-to-clusterip

LB_SETTINGS = ModelSettings(lb_to_clusterip=True)
LB_IPS = ["198.51.100.1", "198.51.100.2", "2001:db8:5::1", "203.0.113.1", "10.96.0.50", "192.0.2.11"]
"""LoadBalancer IPs of Services we do not manage: shared between them, one also a managed
external IP, two refused (inside the service network, a Node address)."""
CLUSTER_IPS = [["10.96.0.10"], ["10.96.0.11", "fd00:96::11"], ["fd00:96::12"], ["None"], []]

lb_service_obj = st.builds(
    lambda name, ips, cluster_ips, ports, created, kind, whole: {
        "kind": "Service",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "creationTimestamp": created,
            "annotations": {"networking.cozystack.io/wholeIP": "true"} if whole else {},
        },
        "spec": {
            "type": kind,
            "clusterIPs": cluster_ips,
            **({"clusterIP": cluster_ips[0]} if cluster_ips else {}),
            "ports": [{"name": f"p{p}", "protocol": proto, "port": p} for proto, p in ports],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    },
    st.sampled_from(SERVICES),
    st.lists(st.sampled_from(LB_IPS), min_size=1, max_size=3) | st.just([]),
    st.sampled_from(CLUSTER_IPS),
    st.lists(st.tuples(st.sampled_from(["TCP", "UDP", "SCTP"]), st.sampled_from([53, 80])), min_size=1, max_size=3),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", ""]),
    st.sampled_from(["LoadBalancer", "LoadBalancer", "LoadBalancer", "ClusterIP"]),
    st.sampled_from([False, False, False, True]),
)

lb_change = st.one_of(
    st.tuples(st.just("svc"), lb_service_obj),
    st.tuples(st.just("svc"), lb_service_obj),
    st.tuples(st.just("svc"), service_obj),
    st.tuples(st.just("del-svc"), st.sampled_from(SERVICES)),
    st.tuples(st.just("slice"), slice_change),
    st.tuples(st.just("node"), node_obj),
    st.tuples(st.just("service-cidrs"), st.sampled_from(SERVICE_CIDRS)),
)


@props(60)
@given(st.lists(lb_change, min_size=10, max_size=40))
def test_incremental_equals_fresh_with_lb_to_clusterip(changes: list[tuple[str, Any]]) -> None:
    """The same with ``--lb-to-clusterip``: Services we do not manage (sharing LoadBalancer
    IPs, changing ClusterIPs and ports, becoming managed and back, deleted) keep the
    ``lbclusterip`` maps equal to a fresh build's, one Service change at a time."""
    _replay(changes, LB_SETTINGS)


def test_lb_to_clusterip_elements_follow_their_service() -> None:
    svc = {
        "kind": "Service",
        "metadata": {"namespace": "ns", "name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "type": "LoadBalancer",
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}, {"ip": "2001:db8:5::1"}]}},
    }
    index = ClusterIndex(settings=LB_SETTINGS, node_name="n1", nodes=NODES)
    assert index.elements["localpods4"] == {"10.244.1.0/24"}
    touched = index.update(services={("ns", "web"): [svc]})
    want4 = {(("198.51.100.1", "tcp", 80), "10.96.0.10"), (("198.51.100.1", "udp", 53), "10.96.0.10")}
    want6 = {(("2001:db8:5::1", "tcp", 80), "fd00:96::10"), (("2001:db8:5::1", "udp", 53), "fd00:96::10")}
    assert index.elements["lbclusterip4"] == want4
    assert index.elements["lbclusterip6"] == want6
    assert touched == {"lbclusterip4": want4, "lbclusterip6": want6}
    # A younger Service sharing the IP on another port gets its own element; on the same port
    # it waits behind the older one.
    other = {
        **svc,
        "metadata": {"namespace": "ns", "name": "dns", "creationTimestamp": "2026-01-02T00:00:00Z"},
        "spec": {
            **svc["spec"],
            "clusterIPs": ["10.96.0.20"],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 8080}],
        },
    }
    index.update(services={("ns", "dns"): [other]})
    assert index.elements["lbclusterip4"] == want4 | {(("198.51.100.1", "tcp", 8080), "10.96.0.20")}
    index.update(services={("ns", "web"): []})
    assert index.elements["lbclusterip4"] == {
        (("198.51.100.1", "udp", 53), "10.96.0.20"),
        (("198.51.100.1", "tcp", 8080), "10.96.0.20"),
    }
    assert index.elements["lbclusterip6"] == set()
    # Once managed (whole IP), the Service is left out.
    managed = {**other, "metadata": {**other["metadata"], "annotations": {"networking.cozystack.io/wholeIP": "true"}}}
    index.update(services={("ns", "dns"): [managed]})
    assert index.elements["lbclusterip4"] == set()


def test_lb_to_clusterip_off_keeps_the_sets_empty() -> None:
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    svc = {
        "kind": "Service",
        "metadata": {"namespace": "ns", "name": "web"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
    }
    assert index.update(services={("ns", "web"): [svc]}) == {}
    assert not any(index.elements[n] for n in ("lbclusterip4", "lbclusterip6", "localpods4", "localpods6"))
    assert index.state().lb_redirects == ()


def test_a_node_without_pod_cidrs_is_told_its_pods_are_not_redirected() -> None:
    nodes = [{"kind": "Node", "metadata": {"name": "n1"}, "spec": {}}]
    index = ClusterIndex(settings=LB_SETTINGS, node_name="n1", nodes=nodes)
    assert [p.reason for p in index.problems] == ["NoPodCIDR"]
    assert index.elements["localpods4"] == set()


def test_an_index_let_go_is_freed_at_once_even_frozen() -> None:
    """No reference cycle in an index (its sub-indexes call back into it weakly): reference
    counting frees it the moment it is let go. The agent freezes what it keeps
    (``gc.freeze``), which the cyclic collector never looks at again, so with a cycle every
    index a rebuild replaced (a relist, a quarantine scan) stayed: a whole index per rebuild."""
    import gc
    import weakref

    from tests.unit.test_egressip import MEMBERS, l2
    from tests.unit.test_podnat import MAIL, pod
    from tests.unit.test_podnat import SETTINGS as PODNAT

    from wholeip.core.gcpause import freeze_kept, unfreeze_kept
    from wholeip.core.index import load_objects
    from wholeip_testkit import synth

    settings = dataclasses.replace(PODNAT, lb_to_clusterip=True, proxy_name="wholeip")
    objects = [*synth.cluster(3), *synth.delegated_cluster(3), *MEMBERS, l2("mail", "n1"), pod("mail", MAIL)]
    was_enabled = gc.isenabled()
    gc.disable()
    freeze_kept()
    try:
        index = load_objects(objects, node_name="n1", settings=settings)
        index.update(services={("ns", "gone"): []}, slices={"ns/gone-1": None})  # (the update path too)
        state = index.state()  # (every sub-index holds something)
        assert state.frontends
        assert state.egress_snat
        assert state.pod_ports
        assert state.mappings
        del state
        gone = weakref.ref(index)
        del index
        assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    finally:
        unfreeze_kept()
        if was_enabled:
            gc.enable()
