"""The model: which Services are managed, with which IPs and backends, and what is refused."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from wholeip.core.index import build_state_from_objects
from wholeip.core.model import ClusterState, Mode
from wholeip.settings import ModelSettings


def node(name: str = "n1", cidrs: tuple[str, ...] = ("10.244.1.0/24",), ip: str = "192.0.2.11") -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDRs": list(cidrs)},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }


def svc(
    name: str = "web",
    *,
    ips: tuple[str, ...] = ("203.0.113.10",),
    annotations: dict[str, Any] | None = None,
    labels: dict[str, Any] | None = None,
    created: str = "2026-01-01T00:00:00Z",
    namespace: str = "default",
    spec: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": {"networking.cozystack.io/wholeIP": "true"} if annotations is None else annotations,
            "labels": labels or {},
        },
        "spec": spec or {},
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}},
    }


def eps(
    service: str = "web",
    addrs: tuple[str, ...] = ("10.244.1.10",),
    *,
    family: str = "IPv4",
    ready: Any = True,
    node_name: str = "n1",
    namespace: str = "default",
) -> dict[str, Any]:
    cond = {} if ready is None else {"ready": ready}
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{service}-{family}-{addrs[:1]}",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": family,
        "endpoints": [{"addresses": [a], "nodeName": node_name, "conditions": cond} for a in addrs],
    }


def build(*objs: dict[str, Any], settings: ModelSettings | None = None) -> ClusterState:
    return build_state_from_objects(list(objs), node_name="n1", settings=settings or ModelSettings())


def reasons(state: ClusterState) -> list[str]:
    return [p.reason for p in state.problems]


def test_annotated_service_maps_external_ip_to_ready_pod() -> None:
    state = build(node(), svc(), eps())
    assert len(state.mappings) == 1
    m = state.mappings[0]
    assert (str(m.external_ip), str(m.pod_ip), m.node_name, m.mode, m.egress) == (
        "203.0.113.10",
        "10.244.1.10",
        "n1",
        Mode.WHOLE_IP,
        True,
    )
    assert state.problems == ()


@pytest.mark.parametrize(
    ("annotations", "labels", "expected"),
    [
        ({"networking.cozystack.io/wholeIP": "true"}, {}, Mode.WHOLE_IP),
        ({"networking.cozystack.io/wholeIP": "false"}, {}, None),
        ({}, {}, None),
        ({}, {"service.kubernetes.io/service-proxy-name": "wholeip"}, Mode.PER_PORT),
        ({}, {"service.kubernetes.io/service-proxy-name": "other"}, None),
        (
            {"networking.cozystack.io/wholeIP": "true"},
            {"service.kubernetes.io/service-proxy-name": "wholeip"},
            Mode.WHOLE_IP,
        ),
        (
            {"networking.cozystack.io/wholeIP": "false"},
            {"service.kubernetes.io/service-proxy-name": "wholeip"},
            Mode.PER_PORT,
        ),
    ],
)
def test_which_services_are_managed(annotations: dict[str, str], labels: dict[str, str], expected: Mode | None) -> None:
    state = build(node(), svc(annotations=annotations, labels=labels), eps())
    modes = [m.mode for m in state.mappings]
    assert modes == ([] if expected is None else [expected])


def test_proxy_name_is_configurable_for_cozy_proxy_migration() -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "cozy-proxy"}
    assert build(node(), svc(annotations={}, labels=labels), eps()).mappings == ()
    state = build(node(), svc(annotations={}, labels=labels), eps(), settings=ModelSettings(proxy_name="cozy-proxy"))
    assert [m.mode for m in state.mappings] == [Mode.PER_PORT]


def test_malformed_annotation_is_a_problem_not_a_crash() -> None:
    state = build(node(), svc(annotations={"networking.cozystack.io/wholeIP": "yes please"}), eps())
    assert state.mappings == ()
    assert reasons(state) == ["InvalidAnnotation"]


# The Kubernetes convention for boolean annotations: exactly "true" or "false". A lenient
# reader took these for "true" (issue 15 item 7); they are invalid and read as absent.
NOT_QUITE_TRUE = ("TRUE", "True", " true", "True ", "true\n", "yes", "1", "")


@pytest.mark.parametrize("value", NOT_QUITE_TRUE)
def test_whole_ip_annotation_must_be_exactly_true(value: str) -> None:
    state = build(node(), svc(annotations={"networking.cozystack.io/wholeIP": value}), eps())
    assert state.mappings == ()
    assert [(p.reason, p.warning) for p in state.problems] == [("InvalidAnnotation", True)]
    assert "Service not managed" in state.problems[0].message
    assert repr(value) in state.problems[0].message


@pytest.mark.parametrize("value", NOT_QUITE_TRUE)
def test_a_labelled_service_with_an_invalid_whole_ip_value_stays_per_port(value: str) -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    state = build(node(), svc(annotations={"networking.cozystack.io/wholeIP": value}, labels=labels), eps())
    assert [m.mode for m in state.mappings] == [Mode.PER_PORT]
    assert reasons(state) == ["InvalidAnnotation"]
    assert "forwarding only the listed ports" in state.problems[0].message


@pytest.mark.parametrize(("value", "allowed"), [("true", True), ("false", False)])
def test_allow_icmp_exact_values_are_taken_without_a_problem(value: str, allowed: bool) -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    annotations = {"networking.cozystack.io/allowICMP": value}
    state = build(node(), svc(annotations=annotations, labels=labels), eps())
    assert [m.allow_icmp for m in state.mappings] == [allowed]
    assert state.problems == ()


@pytest.mark.parametrize("value", NOT_QUITE_TRUE)
def test_allow_icmp_must_be_exactly_true(value: str) -> None:
    labels = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    annotations = {"networking.cozystack.io/allowICMP": value}
    state = build(node(), svc(annotations=annotations, labels=labels), eps())
    assert [m.allow_icmp for m in state.mappings] == [False]
    assert reasons(state) == ["InvalidAnnotation"]
    assert "ICMP echo requests are dropped" in state.problems[0].message


def test_service_without_ip_is_skipped_with_reason() -> None:
    state = build(node(), svc(ips=()), eps())
    assert state.mappings == ()
    assert reasons(state) == ["NoExternalIP"]


def test_invalid_ip_in_status_is_reported() -> None:
    state = build(node(), svc(ips=("not-an-ip", "203.0.113.10")), eps())
    assert [str(m.external_ip) for m in state.mappings] == ["203.0.113.10"]
    assert reasons(state) == ["InvalidExternalIP"]


def test_dual_stack_maps_each_family_to_its_own_backend() -> None:
    state = build(
        node(cidrs=("10.244.1.0/24", "fd00:10:244:1::/64")),
        svc(ips=("203.0.113.10", "2001:db8:100::10")),
        eps(),
        eps(addrs=("fd00:10:244:1::10",), family="IPv6"),
    )
    pairs = {(str(m.external_ip), str(m.pod_ip)) for m in state.mappings}
    assert pairs == {("203.0.113.10", "10.244.1.10"), ("2001:db8:100::10", "fd00:10:244:1::10")}


def test_ipv6_only_service() -> None:
    state = build(
        node(cidrs=("fd00:10:244:1::/64",)),
        svc(ips=("2001:db8:100::10",)),
        eps(addrs=("fd00:10:244:1::10",), family="IPv6"),
    )
    assert [(m.external_ip.version, str(m.pod_ip)) for m in state.mappings] == [(6, "fd00:10:244:1::10")]


def test_family_without_endpoint_is_reported() -> None:
    state = build(node(), svc(ips=("203.0.113.10", "2001:db8:100::10")), eps())
    assert [m.external_ip.version for m in state.mappings] == [4]
    assert reasons(state) == ["NoReadyEndpoint"]


def test_not_ready_endpoints_are_not_backends_and_nil_ready_means_ready() -> None:
    assert build(node(), svc(), eps(ready=False)).mappings == ()
    assert len(build(node(), svc(), eps(ready=None)).mappings) == 1


def test_endpoint_without_address_is_skipped_with_reason() -> None:
    slice_ = eps()
    slice_["endpoints"].append({"addresses": [], "conditions": {"ready": True}})
    state = build(node(), svc(), slice_)
    assert len(state.mappings) == 1
    assert "EndpointWithoutAddress" in reasons(state)


def test_several_ready_endpoints_pick_lowest_and_warn() -> None:
    state = build(node(), svc(), eps(addrs=("10.244.1.30", "10.244.1.9")))
    assert [str(m.pod_ip) for m in state.mappings] == ["10.244.1.9"]
    assert reasons(state) == ["SeveralReadyEndpoints"]


def test_conflicting_claims_oldest_wins() -> None:
    old = svc("old", created="2025-01-01T00:00:00Z")
    new = svc("new", created="2026-01-01T00:00:00Z")
    state = build(node(), new, old, eps("old"), eps("new", ("10.244.1.11",)))
    assert [(m.service.name, str(m.pod_ip)) for m in state.mappings] == [("old", "10.244.1.10")]
    assert [(p.ref.name, p.reason) for p in state.problems] == [("new", "ExternalIPConflict")]


def test_same_age_conflict_is_broken_by_namespace_and_name() -> None:
    a, b = svc("b"), svc("a")
    state = build(node(), a, b, eps("a"), eps("b", ("10.244.1.11",)))
    assert [m.service.name for m in state.mappings] == ["a"]


def conflict_messages(state: ClusterState) -> list[tuple[str, str]]:
    return [(p.ref.name, p.message) for p in state.problems if p.reason == "ExternalIPConflict"]


def test_a_conflict_decided_by_age_names_the_older_service_and_its_time() -> None:
    old = svc("old", created="2025-01-01T00:00:00Z")
    new = svc("new", created="2025-01-01T00:00:01Z")  # one second later is older enough
    state = build(node(), new, old, eps("old"), eps("new", ("10.244.1.11",)))
    assert conflict_messages(state) == [
        (
            "new",
            "external IP 203.0.113.10 is already claimed by the older Service default/old"
            " (created 2025-01-01T00:00:00Z)",
        )
    ]


def test_a_conflict_within_one_second_says_the_name_order_decided() -> None:
    # creationTimestamp counts whole seconds: "zeta" may have been created first, but
    # within the same second "alpha" wins by name, and the Event must not call it older.
    first = svc("zeta", created="2026-01-01T00:00:00Z")
    second = svc("alpha", created="2026-01-01T00:00:00Z")
    state = build(node(), first, second, eps("zeta"), eps("alpha", ("10.244.1.11",)))
    assert [m.service.name for m in state.mappings] == ["alpha"]
    [(loser, message)] = conflict_messages(state)
    assert loser == "zeta"
    assert message == (
        "external IP 203.0.113.10 is claimed by Service default/alpha as well and both Services were created in"
        " the same second (2026-01-01T00:00:00Z; creationTimestamp has one-second resolution), so namespace/name"
        " order decided: default/alpha comes before default/zeta"
    )
    assert "older" not in message


def test_a_conflict_between_services_without_timestamps_says_the_name_order_decided() -> None:
    state = build(node(), svc("b", created=""), svc("a", created="garbage"), eps("a"), eps("b", ("10.244.1.11",)))
    [(loser, message)] = conflict_messages(state)
    assert loser == "b"
    assert "neither Service has a valid creationTimestamp, so namespace/name order decided" in message
    assert "older" not in message


def test_two_services_for_one_pod_egress_from_the_oldest() -> None:
    old = svc("old", ips=("203.0.113.10",), created="2025-01-01T00:00:00Z")
    new = svc("new", ips=("203.0.113.11",))
    state = build(node(), new, old, eps("old"), eps("new"))
    egress = {m.service.name: m.egress for m in state.mappings}
    assert egress == {"old": True, "new": False}


@pytest.mark.parametrize(
    "ip",
    ["127.0.0.1", "169.254.1.1", "224.0.0.5", "0.0.0.0", "10.244.1.99", "10.96.0.10", "192.0.2.11", "::1", "fe80::1"],
)
def test_guarded_addresses_are_refused(ip: str) -> None:
    state = build(node(), svc(ips=(ip,)), eps())
    assert state.mappings == ()
    assert reasons(state) == ["ExternalIPRefused"]


def test_spec_external_ips_only_when_allowed() -> None:
    service = svc(ips=(), spec={"externalIPs": ["203.0.113.20"]})
    assert build(node(), service, eps()).mappings == ()
    state = build(node(), service, eps(), settings=ModelSettings(allow_spec_external_ips=True))
    assert [str(m.external_ip) for m in state.mappings] == ["203.0.113.20"]


def test_cluster_networks_merge_nodes_pods_and_services() -> None:
    state = build(node(), node("n2", ("10.244.2.0/24",), "192.0.2.12"))
    nets = {str(n) for n in state.cluster_networks}
    assert nets == {"10.244.1.0/24", "10.244.2.0/24", "10.96.0.0/12", "192.0.2.11/32", "192.0.2.12/32"}


def test_cluster_cidr_override_replaces_node_pod_cidrs() -> None:
    settings = ModelSettings(cluster_cidrs=(ipaddress.ip_network("10.244.0.0/16"),))
    nets = {str(n) for n in build(node(), settings=settings).cluster_networks}
    assert "10.244.0.0/16" in nets
    assert "10.244.1.0/24" not in nets


@pytest.mark.parametrize(
    "garbage",
    [
        {"kind": "Service"},
        {"kind": "Service", "metadata": "x", "spec": [], "status": 3},
        {
            "kind": "Service",
            "metadata": {"name": "x", "annotations": {"networking.cozystack.io/wholeIP": "true"}},
            "status": {"loadBalancer": {"ingress": "nope"}},
        },
        {
            "kind": "EndpointSlice",
            "metadata": {"labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [None, {"addresses": "10.0.0.1"}],
        },
        {
            "kind": "Node",
            "spec": {"podCIDRs": ["nope", None]},
            "status": {"addresses": [{"type": "InternalIP", "address": 7}]},
        },
        {
            "kind": "EndpointSlice",
            "metadata": {"labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["fd00::1"]}],
        },
    ],
)
def test_malformed_objects_never_raise_and_do_not_hurt_others(garbage: dict[str, Any]) -> None:
    state = build(node(), svc(), eps(), garbage)
    assert [str(m.external_ip) for m in state.mappings] == ["203.0.113.10"]


def test_state_does_not_depend_on_object_order() -> None:
    objs = [
        node(),
        svc("a", ips=("203.0.113.1",)),
        svc("b", ips=("203.0.113.2",)),
        eps("a"),
        eps("b", ("10.244.1.11",)),
    ]
    assert build(*objs) == build(*reversed(objs))


def per_port_svc(ports: list[dict[str, Any]]) -> dict[str, Any]:
    return svc(annotations={}, labels={"service.kubernetes.io/service-proxy-name": "wholeip"}, spec={"ports": ports})


def test_per_port_ports_and_refused_translation() -> None:
    service = per_port_svc(
        [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "web", "port": 80, "targetPort": 8080},
            {"name": "ssh", "port": 22, "targetPort": 22, "protocol": "TCP"},
            {"name": "bad", "port": 0},
            {"name": "sctp", "port": 3868, "protocol": "SCTP"},
        ]
    )
    state = build(node(), service, eps())
    assert [(p.protocol, p.port) for p in state.mappings[0].ports] == [("sctp", 3868), ("tcp", 22), ("udp", 53)]
    assert sorted(reasons(state)) == ["InvalidPort", "PortTranslationUnsupported"]


def test_named_target_port_resolves_through_the_endpoint_slice() -> None:
    service = per_port_svc(
        [{"name": "web", "port": 80, "targetPort": "http"}, {"name": "alt", "port": 81, "targetPort": "alt"}]
    )
    slice_ = eps()
    slice_["ports"] = [{"name": "web", "port": 80, "protocol": "TCP"}, {"name": "alt", "port": 8081, "protocol": "TCP"}]
    state = build(node(), service, slice_)
    assert [p.port for p in state.mappings[0].ports] == [80]
    assert reasons(state) == ["PortTranslationUnsupported"]


@pytest.mark.parametrize("order", [1, -1])
def test_named_target_port_comes_from_the_chosen_pods_slice(order: int) -> None:
    """A rolling update where the named port moved: the old pods' slice says http -> 8080,
    the new pods' says http -> 80. The pod forwarded to (the lowest address, here a new
    one) decides, whatever the slices' names, not the last slice read."""
    service = per_port_svc([{"name": "web", "port": 80, "targetPort": "http"}])
    new_pods, old_pods = eps(addrs=("10.244.1.10",)), eps(addrs=("10.244.1.20",))
    new_pods["ports"] = [{"name": "web", "port": 80, "protocol": "TCP"}]
    old_pods["ports"] = [{"name": "web", "port": 8080, "protocol": "TCP"}]
    new_pods["metadata"]["name"], old_pods["metadata"]["name"] = ("web-a", "web-b")[::order]
    state = build(node(), service, new_pods, old_pods)
    (mapping,) = state.mappings
    assert str(mapping.pod_ip) == "10.244.1.10"
    assert [(p.protocol, p.port) for p in mapping.ports] == [("tcp", 80)]
    assert "PortTranslationUnsupported" not in reasons(state)

    # Once the new pod is gone, the old one is chosen and its port is refused, as before.
    state = build(node(), service, old_pods)
    assert state.mappings[0].ports == ()
    assert "PortTranslationUnsupported" in reasons(state)


def test_zone_ids_are_refused_everywhere() -> None:
    """Regression (property tests): Python's ipaddress parses "2001:db8::1%eth0" (IPv6 zone id)
    and the model took it; nft cannot resolve it, so one such external IP made the kernel refuse
    the whole table, and a zoned pod IP made every full sync rewrite its elements."""
    state = build(
        node(cidrs=("10.244.1.0/24", "fd00:10:244:1::%eth0/64")),
        svc("ext", ips=("2001:db8:1::1%eth0",)),
        eps("ext", ("fd00:10:244:1::a",), family="IPv6"),
        svc("pod", ips=("2001:db8:1::2",), spec={"loadBalancerSourceRanges": ["2001:db8:2::%eth0/48"]}),
        eps("pod", ("fd00:10:244:1::b%2",), family="IPv6"),
    )
    assert state.mappings == ()
    assert "%" not in " ".join(str(n) for n in state.cluster_networks)
    assert sorted(reasons(state)) == [
        "InvalidEndpointAddress",
        "InvalidExternalIP",
        "InvalidPodCIDR",
        "InvalidSourceRange",
        "NoExternalIP",
        "NoReadyEndpoint",
    ]


@pytest.mark.parametrize("port", [True, False, 80.0, "80"])
def test_a_port_that_is_not_an_integer_is_refused(port: Any) -> None:
    """Regression (property tests): ``port: true`` passed the isinstance(port, int) check as
    port 1; the fake backend then refused the whole table (the kernel took it as port 1)."""
    state = build(node(), per_port_svc([{"port": port, "targetPort": port}, {"port": 53, "protocol": "UDP"}]), eps())
    assert [(p.protocol, p.port) for p in state.mappings[0].ports] == [("udp", 53)]
    assert reasons(state) == ["InvalidPort"]


def test_same_age_duplicates_in_a_flat_list_do_not_depend_on_input_order() -> None:
    """Regression (property tests): a flat list holding one Service twice with equal creation
    times used the first in input order; one EndpointSlice twice, the last. build_state
    promises an equal state for any order."""
    first, second = svc(ips=("203.0.113.1",)), svc(ips=("203.0.113.2",))
    on_n1, on_n2 = eps(node_name="n1"), eps(node_name="n2")
    assert build(node(), first, second, on_n1, on_n2) == build(node(), on_n2, on_n1, second, first)
    state = build(node(), first, second, on_n1, on_n2)
    assert [str(m.external_ip) for m in state.mappings] == ["203.0.113.1"]
    assert "DuplicateObject" in reasons(state)
