"""Pod ports on the node's address (the podnat annotation): parsing, decisions, elements,
and the incremental index against a fresh build."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.core.elements import compile_table
from wholeip.core.index import ClusterIndex, build_state, build_state_from_objects
from wholeip.core.podnat import parse_entries
from wholeip.engine import Engine
from wholeip.kube.pods import trim_pod
from wholeip.names import PODNAT_ADDR, PODNAT_ANNOTATION, PODNAT_PORT, PODNAT_SELF
from wholeip.nft.diff import diff
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings, PodNatSettings

HOST = PodNatSettings(
    default_sources=(ipaddress.ip_address("192.0.2.11"), ipaddress.ip_address("2001:db8:2::11")),
    host_addresses=frozenset({ipaddress.ip_address("192.0.2.11"), ipaddress.ip_address("192.0.2.111")}),
)
SETTINGS = ModelSettings(podnat=HOST)
NODES = [
    {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]},
    },
    {
        "kind": "Node",
        "metadata": {"name": "n2"},
        "spec": {"podCIDRs": ["10.244.2.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.12"}]},
    },
]


def pod(
    name: str,
    annotation: Any,
    *,
    ips: tuple[str, ...] = ("10.244.1.10",),
    created: str = "2026-01-01T00:00:00Z",
    node: str = "n1",
    phase: str = "Running",
) -> dict[str, Any]:
    value = annotation if isinstance(annotation, str) or annotation is None else json.dumps(annotation)
    return {
        "kind": "Pod",
        "metadata": {
            "namespace": "ns",
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": {PODNAT_ANNOTATION: value} if value is not None else {},
        },
        "spec": {"nodeName": node},
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    }


def whole_ip(name: str, ext: str, pod_ip: str) -> list[dict[str, Any]]:
    return [
        {
            "kind": "Service",
            "metadata": {
                "namespace": "ns",
                "name": name,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"networking.cozystack.io/wholeIP": "true"},
            },
            "spec": {},
            "status": {"loadBalancer": {"ingress": [{"ip": ext}]}},
        },
        {
            "kind": "EndpointSlice",
            "metadata": {"namespace": "ns", "name": f"{name}-1", "labels": {"kubernetes.io/service-name": name}},
            "addressType": f"IPv{ipaddress.ip_address(pod_ip).version}",
            "endpoints": [{"addresses": [pod_ip], "conditions": {"ready": True}, "nodeName": "n1"}],
        },
    ]


def state(*objs: dict[str, Any], model: ModelSettings = SETTINGS) -> Any:
    return build_state_from_objects([*NODES, *objs], node_name="n1", settings=model)


def reasons(st_: Any) -> list[tuple[str, str]]:
    return sorted((p.ref.name, p.reason) for p in st_.problems)


MAIL = {"entries": [{"srcPort": 25, "dstPort": 25}, {"srcPort": 587, "dstPort": 2587, "proto": "tcp"}]}


def test_the_annotation_is_read_as_podnat_writes_it() -> None:
    s = state(pod("mail", MAIL, ips=("10.244.1.10", "fd00:10:244:1::10")))
    got = {(p.address, p.protocol, p.port, p.pod_ip, p.pod_port) for p in s.pod_ports}
    assert got == {
        ("192.0.2.11", "tcp", 25, "10.244.1.10", 25),
        ("192.0.2.11", "tcp", 587, "10.244.1.10", 2587),
        ("2001:db8:2::11", "tcp", 25, "fd00:10:244:1::10", 25),
        ("2001:db8:2::11", "tcp", 587, "fd00:10:244:1::10", 2587),
    }
    assert s.podnat_pods == ("10.244.1.10", "fd00:10:244:1::10")
    assert not s.problems
    elements = compile_table(s, node_name="n1").elements
    assert (("192.0.2.11", "tcp", 587), "10.244.1.10") in elements[PODNAT_ADDR[4]]
    assert (("192.0.2.11", "tcp", 587), 2587) in elements[PODNAT_PORT[4]]
    assert ("fd00:10:244:1::10", "fd00:10:244:1::10") in elements[PODNAT_SELF[6]]


def test_the_annotation_key_default_is_the_one_declared_in_names() -> None:
    assert PodNatSettings().annotation == PODNAT_ANNOTATION


def test_external_ip_of_the_node_object_comes_before_the_default_route() -> None:
    nodes = [{**NODES[0], "status": {"addresses": [{"type": "ExternalIP", "address": "198.18.0.1"}]}}, NODES[1]]
    s = build_state_from_objects([*nodes, pod("mail", MAIL)], node_name="n1", settings=SETTINGS)
    assert {p.address for p in s.pod_ports} == {"198.18.0.1"}


def test_two_node_objects_of_one_name_decide_by_content_not_order() -> None:
    """A cluster file can hold a Node twice (two `kubectl get -o yaml` outputs joined): which
    one counts must not depend on the order; an informer's cache never holds both, and the
    index updated with both agrees with a fresh one."""
    twins = [
        {**NODES[0], "status": {"addresses": [{"type": "ExternalIP", "address": address}]}}
        for address in ("198.18.0.1", "198.18.0.2")
    ]
    got = set()
    for order in (twins, twins[::-1]):
        s = build_state_from_objects([*order, NODES[1], pod("mail", MAIL)], node_name="n1", settings=SETTINGS)
        got.add(frozenset(p.address for p in s.pod_ports))
        index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
        index.update(pod_objects={("ns", "mail"): pod("mail", MAIL)})
        index.update(nodes=[*order, NODES[1]])
        assert index.state() == s
    assert len(got) == 1, got
    assert got in ({frozenset({"198.18.0.1"})}, {frozenset({"198.18.0.2"})})


def test_include_and_exclude_networks_filter_the_automatic_address() -> None:
    model = ModelSettings(
        podnat=PodNatSettings(**{**_fields(HOST), "exclude_cidrs": (ipaddress.ip_network("192.0.2.0/24"),)})
    )
    s = state(pod("mail", MAIL), model=model)
    assert not s.pod_ports
    assert reasons(s) == [("mail", "PodNATNoAddress"), ("mail", "PodNATNoAddress")]
    model = ModelSettings(
        podnat=PodNatSettings(**{**_fields(HOST), "include_cidrs": (ipaddress.ip_network("192.0.2.0/28"),)})
    )
    assert {p.address for p in state(pod("mail", MAIL), model=model).pod_ports} == {"192.0.2.11"}


def _fields(s: PodNatSettings) -> dict[str, Any]:
    return {f: getattr(s, f) for f in s.__slots__}


def test_an_explicit_src_ip_must_be_this_nodes() -> None:
    entries = {
        "entries": [
            {"ifaceAuto": False, "srcIP": "192.0.2.111", "srcPort": 25, "dstPort": 25},
            {"ifaceAuto": False, "srcIP": "192.0.2.12", "srcPort": 26, "dstPort": 26},
        ]
    }
    s = state(pod("mail", entries))
    assert [(p.address, p.port) for p in s.pod_ports] == [("192.0.2.111", 25)]
    assert reasons(s) == [("mail", "PodNATAddressRefused")]


def test_an_explicit_src_ip_inside_the_cluster_networks_is_refused() -> None:
    """The host carries addresses of the cluster's networks (kube-proxy's IPVS mode puts every
    ClusterIP on kube-ipvs0, the CNI its gateway in the pod network): publishing on one would
    take that port from the node's pods."""
    host = PodNatSettings(
        **{
            **_fields(HOST),
            "host_addresses": HOST.host_addresses
            | {ipaddress.ip_address("10.96.0.1"), ipaddress.ip_address("10.244.1.1")},
        }
    )
    model = ModelSettings(podnat=host, service_cidrs=(ipaddress.ip_network("10.96.0.0/12"),))
    entries = {
        "entries": [
            {"srcIP": "10.96.0.1", "srcPort": 443, "dstPort": 8443},
            {"srcIP": "10.244.1.1", "srcPort": 80, "dstPort": 80},
            {"srcIP": "192.0.2.111", "srcPort": 25, "dstPort": 25},
        ]
    }
    s = state(pod("p", entries), model=model)
    assert [(p.address, p.port) for p in s.pod_ports] == [("192.0.2.111", 25)]
    messages = [p.message for p in s.problems if p.reason == "PodNATAddressRefused"]
    assert len(messages) == 2
    assert any("10.244.1.1 lies inside the cluster network 10.244.1.0/24" in m for m in messages), messages
    assert any("10.96.0.1 lies inside the cluster network 10.96.0.0/12" in m for m in messages), messages


def test_a_src_ip_that_is_a_services_external_ip_is_refused_while_it_is() -> None:
    """A host address (a secondary one, not in the Node object) that is also a Service's
    external IP: its traffic goes to that Service's pod, so a port published on it would be
    dead. Refused, and published again once the Service lets it go (incrementally too)."""
    entries = {"entries": [{"srcIP": "192.0.2.111", "srcPort": 25, "dstPort": 25}]}
    svc, sl = whole_ip("mail", "192.0.2.111", "10.244.1.20")
    s = state(pod("p", entries), svc, sl)
    assert not s.pod_ports
    (problem,) = [p for p in s.problems if p.ref.name == "p"]
    assert problem.reason == "PodNATAddressRefused"
    assert "srcIP 192.0.2.111 is the external IP of Service ns/mail" in problem.message
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    index.update(
        pod_objects={("ns", "p"): pod("p", entries)}, services={("ns", "mail"): [svc]}, slices={"ns/mail-1": sl}
    )
    assert index.state() == s
    index.update(services={("ns", "mail"): []})
    assert [(p.address, p.port) for p in index.state().pod_ports] == [("192.0.2.111", 25)]
    assert index.state() == state(pod("p", entries))
    index.update(services={("ns", "mail"): [svc]})
    assert not index.state().pod_ports


def test_an_empty_src_ip_is_no_src_ip() -> None:
    """podnat-controller writes ``"srcIP": ""`` for none: the automatic address."""
    s = state(pod("p", {"entries": [{"srcIP": "", "srcPort": 25, "dstPort": 25}]}))
    assert [(p.address, p.port) for p in s.pod_ports] == [("192.0.2.11", 25)]
    assert not s.problems
    s = state(pod("p", {"entries": [{"srcIP": "", "ifaceAuto": False, "srcPort": 25, "dstPort": 25}]}))
    assert reasons(s) == [("p", "InvalidPodNATAnnotation")]


def test_restricted_ports_are_refused_one_by_one() -> None:
    s = state(pod("p", {"entries": [{"srcPort": 22, "dstPort": 2222}, {"srcPort": 80, "dstPort": 80}]}))
    assert [p.port for p in s.pod_ports] == [80]
    assert reasons(s) == [("p", "PodNATPortRestricted")]
    model = ModelSettings(podnat=PodNatSettings(**{**_fields(HOST), "restricted_ports": frozenset({80})}))
    s = state(pod("p", {"entries": [{"srcPort": 22, "dstPort": 2222}, {"srcPort": 80, "dstPort": 80}]}), model=model)
    assert [p.port for p in s.pod_ports] == [22]


def test_the_older_pod_wins_a_port_and_the_other_is_told() -> None:
    one = {"entries": [{"srcPort": 8080, "dstPort": 80}]}
    old = pod("old", one, ips=("10.244.1.10",), created="2026-01-01T00:00:00Z")
    new = pod("new", one, ips=("10.244.1.11",), created="2026-01-02T00:00:00Z")
    for objs in ((old, new), (new, old)):
        s = state(*objs)
        assert [(p.pod.name, p.pod_ip) for p in s.pod_ports] == [("old", "10.244.1.10")]
        assert reasons(s) == [("new", "PodNATPortConflict")]


def test_malformed_annotations_publish_nothing_of_that_pod_only() -> None:
    bad = [
        "{not json",
        {"entries": "x"},
        {"entries": [{"srcPort": 0, "dstPort": 1}]},
        {"entries": [{"srcPort": 80}]},
        {"entries": [{"srcPort": 80, "dstPort": 80, "proto": "icmp"}]},
        {"entries": [{"srcPort": 80, "dstPort": 80, "ifaceAuto": False}]},
        {"entries": [{"srcPort": 80, "dstPort": 80, "srcIP": "nope"}]},
        {"entries": [{"srcPort": 80, "dstPort": 80, "bogus": 1}]},
        {"entries": [{"srcPort": 80, "dstPort": 80}, {"srcPort": 80, "dstPort": 81}]},
        {"entries": [{"srcPort": 80, "dstPort": 80}, {"srcPort": 81, "dstPort": 81, "extra": True}]},
        # 2 KB of brackets: past the JSON decoder's recursion limit (RecursionError, not ValueError).
        '{"entries": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    good = pod("good", {"entries": [{"srcPort": 9000, "dstPort": 9000, "proto": "udp"}]}, ips=("10.244.1.11",))
    for value in bad:
        s = state(pod("bad", value), good)
        assert [p.pod.name for p in s.pod_ports] == ["good"], value
        assert reasons(s) == [("bad", "InvalidPodNATAnnotation")], value


def test_only_running_pods_of_this_node_with_an_address() -> None:
    assert not state(pod("p", MAIL, node="n2")).pod_ports
    assert not state(pod("p", MAIL, phase="Pending")).pod_ports
    assert not state(pod("p", MAIL, ips=())).pod_ports
    terminating = pod("p", MAIL)
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not state(terminating).pod_ports
    assert state(pod("p", MAIL)).pod_ports


def test_a_host_network_pod_publishes_nothing_and_is_told() -> None:
    """Its addresses are the node's: it listens there itself, and its (node, node) self element
    would masquerade the node's DNATed flows to itself. The informer keeps the field."""
    host = pod("h", MAIL, ips=("192.0.2.11",))
    host["spec"]["hostNetwork"] = True
    trimmed = trim_pod(host, annotation=PODNAT_ANNOTATION)
    assert trimmed["spec"]["hostNetwork"] is True
    s = state(trimmed)
    assert not s.pod_ports
    assert not s.podnat_pods
    assert reasons(s) == [("h", "InvalidPodNATAnnotation")]


def test_sctp_and_udp_and_an_explicit_v6_source() -> None:
    entries = {
        "entries": [
            {"srcPort": 5000, "dstPort": 5001, "proto": "UDP"},
            {"srcPort": 5000, "dstPort": 5002, "proto": "sctp"},
            {"srcIP": "2001:db8:2::11", "srcPort": 6000, "dstPort": 6000},
        ]
    }
    s = state(pod("p", entries, ips=("10.244.1.10", "fd00:10:244:1::10")))
    got = {(p.address, p.protocol, p.port, p.pod_port) for p in s.pod_ports}
    assert ("192.0.2.11", "udp", 5000, 5001) in got
    assert ("192.0.2.11", "sctp", 5000, 5002) in got
    assert ("2001:db8:2::11", "tcp", 6000, 6000) in got
    assert ("192.0.2.11", "tcp", 6000, 6000) not in got


def test_a_whole_ip_backend_does_not_publish_on_the_nodes_address_of_that_family() -> None:
    s = state(pod("p", MAIL, ips=("10.244.1.10", "fd00:10:244:1::10")), *whole_ip("svc", "203.0.113.10", "10.244.1.10"))
    assert {p.address for p in s.pod_ports} == {"2001:db8:2::11"}
    assert reasons(s) == [("p", "PodNATOnManagedPod")]


def test_parse_entries_defaults() -> None:
    entries, error = parse_entries('{"entries":[{"srcPort":25,"dstPort":26}]}')
    assert error is None
    assert entries[0].auto
    assert entries[0].protocol == "tcp"
    assert entries[0].src_ip is None


# --------------------------------------------------------------------------- incremental == fresh

POD_NAMES = ["a", "b", "c"]
POD_IPS = ["10.244.1.10", "10.244.1.11", "fd00:10:244:1::10"]
pod_obj = st.builds(
    lambda name, ips, entries, created, node, phase, broken: pod(
        name,
        "{oops" if broken else {"entries": entries},
        ips=tuple(ips),
        created=created,
        node=node,
        phase=phase,
    ),
    st.sampled_from(POD_NAMES),
    st.lists(st.sampled_from(POD_IPS), min_size=1, max_size=2, unique=True),
    st.lists(
        st.fixed_dictionaries(
            {
                "srcPort": st.sampled_from([22, 25, 80]),
                "dstPort": st.sampled_from([25, 8080]),
                "proto": st.sampled_from(["tcp", "udp"]),
            },
            optional={"srcIP": st.sampled_from(["192.0.2.11", "192.0.2.111", "192.0.2.12", "2001:db8:2::11"])},
        ),
        max_size=3,
    ),
    st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", ""]),
    st.sampled_from(["n1", "n1", "n1", "n2"]),
    st.sampled_from(["Running", "Running", "Running", "Pending"]),
    st.sampled_from([False, False, False, False, True]),
)
change = st.one_of(
    st.tuples(st.just("pod"), pod_obj),
    st.tuples(st.just("pod"), pod_obj),
    st.tuples(st.just("del-pod"), st.sampled_from(POD_NAMES)),
    # (s2's external IP is a host address an explicit srcIP names: the pods' entries on it
    # are refused while it is claimed)
    st.tuples(st.just("svc"), st.tuples(st.sampled_from(["s0", "s1", "s2"]), st.sampled_from(POD_IPS))),
    st.tuples(st.just("del-svc"), st.sampled_from(["s0", "s1", "s2"])),
    # This node's addresses change: its ExternalIP (the automatic address), an explicit srcIP's.
    st.tuples(
        st.just("node"),
        st.lists(
            st.tuples(st.sampled_from(["InternalIP", "ExternalIP"]), st.sampled_from(["192.0.2.12", "198.18.0.1"])),
            max_size=2,
        ),
    ),
    # The other Node's pod network comes to hold, or no longer holds, a host address an
    # explicit srcIP names (192.0.2.111): the guard moves under the pods.
    st.tuples(st.just("n2cidr"), st.sampled_from(["10.244.2.0/24", "192.0.2.96/27"])),
    # A delegated Service's NodePort and health check come, move or go over published ports.
    st.tuples(st.just("np"), st.sampled_from([None, (25, 80), (80, 22), (8080, 25)])),
)


@given(st.lists(change, min_size=5, max_size=30))
@props(150)
def test_incremental_equals_fresh_with_pods(changes: list[tuple[str, Any]]) -> None:
    """Each change into the index alone; after each, state and elements equal a fresh build and
    an engine fed only the touched elements leaves the fake kernel holding the fresh table."""
    pods: dict[str, dict[str, Any]] = {}
    services: dict[str, list[dict[str, Any]]] = {}
    nodes = NODES
    node_ports: list[dict[str, Any]] = []
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    engine = Engine(backend=FakeBackend())
    engine.sync(index.doc())
    for kind, arg in changes:
        if kind == "pod":
            name = arg["metadata"]["name"]
            pods[name] = arg
            touched = index.update(pod_objects={("ns", name): arg})
        elif kind == "del-pod":
            pods.pop(arg, None)
            touched = index.update(pod_objects={("ns", arg): None})
        elif kind == "svc":
            name, pod_ip = arg
            ext = {"s0": "203.0.113.1", "s1": "2001:db8:100::1", "s2": "192.0.2.111"}[name]
            svc, sl = whole_ip(name, ext, pod_ip)
            services[name] = [svc, sl]
            touched = index.update(services={("ns", name): [svc]}, slices={f"ns/{name}-1": sl})
        elif kind == "del-svc":
            services.pop(arg, None)
            touched = index.update(services={("ns", arg): []}, slices={f"ns/{arg}-1": None})
        elif kind == "np":
            node_ports = [] if arg is None else [_node_port_service(*arg)]
            touched = index.update(services={("ns", "np"): node_ports})
        elif kind == "n2cidr":
            nodes = [nodes[0], {**NODES[1], "spec": {"podCIDRs": [arg]}}]
            touched = index.update(nodes=nodes)
        else:
            addresses = [{"type": t, "address": a} for t, a in arg]
            nodes = [{**NODES[0], "status": {"addresses": addresses}}, nodes[1]]
            touched = index.update(nodes=nodes)
        fresh_state = build_state(
            services=[*(objs[0] for objs in services.values()), *node_ports],
            endpoint_slices=[objs[1] for objs in services.values()],
            nodes=nodes,
            node_name="n1",
            settings=SETTINGS,
            pods=pods.values(),
        )
        assert index.state() == fresh_state
        fresh = compile_table(fresh_state, node_name="n1")
        assert index.elements == {k: set(v) for k, v in fresh.elements.items()}
        result = engine.sync(index.doc(), touched=touched)
        assert not result.plan.rebuilt
        observed = engine.observe()
        assert observed is not None
        assert diff(fresh, observed).empty


def test_one_pod_change_at_ten_thousand_pods_touches_its_own_elements() -> None:
    """A pod change costs the size of the change: it touches its own elements only."""
    pods = [
        pod(f"p{i}", {"entries": [{"srcPort": 10000 + i, "dstPort": 80}]}, ips=(f"10.{i // 250}.{i % 250}.1",))
        for i in range(10_000)
    ]
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=NODES)
    index.update(pod_objects={("ns", p["metadata"]["name"]): p for p in pods})
    assert len(index.elements[PODNAT_ADDR[4]]) == 10_000
    moved = pod("p7", {"entries": [{"srcPort": 10007, "dstPort": 81}]}, ips=("10.0.7.1",))
    touched = index.update(pod_objects={("ns", "p7"): moved})
    # Its port element changes; its self element is checked again (taken away and put back).
    assert touched == {
        PODNAT_PORT[4]: {(("192.0.2.11", "tcp", 10007), 80), (("192.0.2.11", "tcp", 10007), 81)},
        PODNAT_SELF[4]: {("10.0.7.1", "10.0.7.1")},
    }
    assert ("10.0.7.1", "10.0.7.1") in index.elements[PODNAT_SELF[4]]


def _node_port_service(node_port: int = 30080, health: int = 30999) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {
            "namespace": "ns",
            "name": "np",
            "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "type": "NodePort",
            "clusterIPs": ["10.96.0.10"],
            "externalTrafficPolicy": "Local",
            "healthCheckNodePort": health,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": node_port}],
        },
    }


def test_a_delegated_services_node_port_and_health_check_are_not_published() -> None:
    """Both hold their port on every address of the node (the agent serves them): a pod's
    entry for one would DNAT it away, first in the chain, so the Service keeps it."""
    model = ModelSettings(podnat=HOST, service_cidrs=(ipaddress.ip_network("10.96.0.0/12"),))
    entries = {
        "entries": [
            {"srcPort": 30080, "dstPort": 80},
            {"srcPort": 30999, "dstPort": 80},
            {"srcPort": 30080, "dstPort": 80, "proto": "udp"},  # (the NodePort is TCP)
        ]
    }
    thief = pod("thief", entries)
    s = state(_node_port_service(), thief, model=model)
    assert [(p.protocol, p.port) for p in s.pod_ports] == [("udp", 30080)]
    messages = sorted(p.message for p in s.problems if p.reason == "PodNATPortConflict")
    assert messages == [
        "TCP port 30080 is the NodePort of Service ns/np on every address of the node; not published",
        "TCP port 30999 is the health check port of Service ns/np on every address of the node; not published",
    ]
    # In the index, in either order, and the ports come back when the Service goes.
    index = ClusterIndex(settings=model, node_name="n1", nodes=NODES)
    index.update(pod_objects={("ns", "thief"): thief})
    assert len(index.state().pod_ports) == 3
    index.update(services={("ns", "np"): [_node_port_service()]})
    assert index.state() == s
    index.update(services={("ns", "np"): [_node_port_service(node_port=30081, health=31000)]})
    assert {(p.protocol, p.port) for p in index.state().pod_ports} == {("tcp", 30080), ("tcp", 30999), ("udp", 30080)}
    index.update(services={("ns", "np"): []})
    assert len(index.state().pod_ports) == 3
