"""The address guards (issue 15 item 6): one classification of special addresses, used by
every guard, so that no IPv4 address slips past one in an IPv6 spelling.

A property test draws addresses from every special range of both families and checks
that the guard refuses them as external IPs with that range's reason, and draws ordinary
unicast addresses and checks that they pass. The ranges are written here again, from the
RFCs, not imported from the model: the test must not agree with a mistake in it.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_properties import props

from wholeip.core.index import ClusterIndex, build_state_from_objects
from wholeip.core.model import IPAddress, normalised, refusal
from wholeip.settings import ModelSettings

NODE_IPS = frozenset({ipaddress.ip_address("192.0.2.11"), ipaddress.ip_address("2001:db8:2::11")})
CLUSTER = (ipaddress.ip_network("10.244.0.0/16"), ipaddress.ip_network("10.96.0.0/12"))

# (range, what the Event must say it is); nested ranges: the narrower one first.
SPECIAL = (
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", '"this network"'),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address"),
    ("::/96", "an IPv4-compatible IPv6 address"),
    ("64:ff9b::/96", "NAT64 well-known prefix"),
    ("64:ff9b:1::/48", "local-use NAT64 prefix"),
    ("fec0::/10", "site-local"),
    ("fe80::/10", "a link-local address"),
    ("ff00::/8", "a multicast address"),
)


def _in(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> st.SearchStrategy[IPAddress]:
    first = int(net.network_address)
    return st.integers(first, first + net.num_addresses - 1).map(
        lambda n: ipaddress.ip_address(n) if net.version == 4 else ipaddress.IPv6Address(n)
    )


def _expected_reason(ip: IPAddress) -> str:
    for text, reason in SPECIAL:
        if ip in ipaddress.ip_network(text):
            return reason
    raise AssertionError(f"{ip} is in no special range")


special_addresses = st.one_of(*(_in(ipaddress.ip_network(text)) for text, _ in SPECIAL))

# Ordinary unicast: IPv4 outside every special range, global IPv6 and unique local IPv6.
ordinary_v4 = st.one_of(
    _in(ipaddress.ip_network("1.0.0.0/8")),
    st.integers(int(ipaddress.ip_address("8.0.0.0")), int(ipaddress.ip_address("126.255.255.255"))).map(
        ipaddress.IPv4Address
    ),
    st.integers(int(ipaddress.ip_address("128.0.0.0")), int(ipaddress.ip_address("223.255.255.255"))).map(
        ipaddress.IPv4Address
    ),
).filter(lambda ip: ip not in ipaddress.ip_network("169.254.0.0/16"))
ordinary_v6 = st.one_of(_in(ipaddress.ip_network("2000::/3")), _in(ipaddress.ip_network("fc00::/7")))


@props(300)
@given(ip=special_addresses)
def test_every_special_address_is_refused_with_its_reason(ip: IPAddress) -> None:
    why = refusal(ip, cluster=(), node_ips=frozenset())
    assert why is not None, ip
    assert why.startswith(f"{ip} is "), why
    assert _expected_reason(ip) in why, why


@props(300)
@given(ip=st.one_of(ordinary_v4, ordinary_v6))
def test_ordinary_unicast_addresses_pass(ip: IPAddress) -> None:
    assert refusal(ip, cluster=(), node_ips=frozenset()) is None, ip


@props(200)
@given(v4=st.one_of(ordinary_v4, special_addresses.filter(lambda a: a.version == 4)))
def test_every_ipv6_spelling_of_an_ipv4_address_is_refused_and_names_it(v4: IPAddress) -> None:
    for spelling, kind in (
        (f"::ffff:{v4}", "an IPv4-mapped IPv6 address"),
        (f"64:ff9b::{v4}", "NAT64 well-known prefix"),
        (f"::{v4}", "an IPv4-compatible IPv6 address"),
    ):
        ip = ipaddress.ip_address(spelling)
        if str(ip) in ("::", "::1"):
            continue  # ::0.0.0.0 and ::0.0.0.1 are IPv6's own unspecified and loopback addresses
        why = refusal(ip, cluster=CLUSTER, node_ips=NODE_IPS)
        assert why is not None
        assert kind in why
        assert f"(of {v4}" in why
        assert normalised(ip) == v4


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("::ffff:192.0.2.11", "{} is an IPv4-mapped IPv6 address (of 192.0.2.11, a Node address)"),
        (
            "::ffff:10.244.1.10",
            "{} is an IPv4-mapped IPv6 address (of 10.244.1.10, inside the cluster network 10.244.0.0/16)",
        ),
        ("::ffff:127.0.0.1", "{} is an IPv4-mapped IPv6 address (of 127.0.0.1, a loopback address)"),
        ("::203.0.113.52", "{} is an IPv4-compatible IPv6 address (deprecated) (of 203.0.113.52)"),
        (
            "64:ff9b::10.96.0.1",
            "{} is an address of the NAT64 well-known prefix 64:ff9b::/96"
            " (of 10.96.0.1, inside the cluster network 10.96.0.0/12)",
        ),
        ("fec0::1", "fec0::1 is a deprecated site-local address (fec0::/10)"),
        ("0.1.2.3", '0.1.2.3 is an address of "this network" (0.0.0.0/8)'),
        ("240.0.0.1", "240.0.0.1 is a reserved address (240.0.0.0/4)"),
        ("192.0.2.11", "192.0.2.11 is a Node address"),
        ("10.244.1.10", "10.244.1.10 lies inside the cluster network 10.244.0.0/16"),
    ],
)
def test_the_reason_names_the_range_and_what_the_ipv4_address_is(ip: str, message: str) -> None:
    # "{}": the address as this Python prints it (3.13 prints IPv4-mapped ones dotted).
    address = ipaddress.ip_address(ip)
    assert refusal(address, cluster=CLUSTER, node_ips=NODE_IPS) == message.format(address)


# --------------------------------------------------------------------------- through the model


def _node(address: str) -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": "n1"},
        "spec": {"podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def _svc(ip: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"namespace": "default", "name": "s", "annotations": {"networking.cozystack.io/wholeIP": "true"}},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
    }


def _slice(family: str, address: str) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": f"s-{family}", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": family,
        "endpoints": [{"addresses": [address], "nodeName": "n1"}],
    }


@pytest.mark.parametrize(
    "ext", ["::ffff:127.0.0.1", "::ffff:192.0.2.11", "::ffff:10.244.1.10", "::203.0.113.52", "64:ff9b::1", "fec0::1"]
)
def test_the_issues_ipv6_spellings_are_refused_as_external_ips(ext: str) -> None:
    objs = [_node("192.0.2.11"), _svc(ext), _slice("IPv6", "fd00:10:244:1::10")]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert state.mappings == ()
    assert [p.reason for p in state.problems] == ["ExternalIPRefused"]


@pytest.mark.parametrize("ext", ["0.0.0.1", "240.0.0.1", "255.255.255.254"])
def test_this_network_and_reserved_ipv4_are_refused_as_external_ips(ext: str) -> None:
    objs = [_node("192.0.2.11"), _svc(ext), _slice("IPv4", "10.244.1.10")]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert state.mappings == ()
    assert [p.reason for p in state.problems] == ["ExternalIPRefused"]


def test_a_node_address_in_an_ipv6_spelling_guards_its_ipv4_address() -> None:
    objs = [_node("::ffff:192.0.2.11"), _svc("192.0.2.11"), _slice("IPv4", "10.244.1.10")]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert state.mappings == ()
    assert [p.message for p in state.problems] == ["external IP refused: 192.0.2.11 is a Node address"]


@pytest.mark.parametrize("pod", ["::ffff:10.244.1.10", "::1", "64:ff9b::a00:10a", "ff02::1"])
def test_a_pod_address_in_an_ipv6_spelling_or_special_is_no_backend(pod: str) -> None:
    # No IPv6 pod networks are known (the node lists IPv4 ones only), so the pod-network
    # check does not apply to IPv6 endpoints: the address guard still does.
    objs = [_node("192.0.2.11"), _svc("2001:db8:1::1"), _slice("IPv6", pod)]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert state.mappings == ()
    assert sorted(p.reason for p in state.problems) == ["InvalidEndpointAddress", "NoReadyEndpoint"]


def test_a_class_e_pod_address_is_still_a_backend() -> None:
    node = _node("192.0.2.11")
    node["spec"]["podCIDRs"] = ["240.1.0.0/24"]
    objs = [node, _svc("203.0.113.5"), _slice("IPv4", "240.1.0.10")]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert [str(m.pod_ip) for m in state.mappings] == ["240.1.0.10"]


# --------------------------------------------------------------------------- the control plane (issue 15 item 1)


def _api_slice(family: str, *addresses: str, name: str = "kubernetes") -> dict[str, Any]:
    """The EndpointSlice the API server keeps for the ``default/kubernetes`` Service."""
    return {
        "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": family,
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
        "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
    }


def _dual(v4: str, v6: str) -> list[dict[str, Any]]:
    svc = _svc(v4)
    svc["status"]["loadBalancer"]["ingress"].append({"ip": v6})
    return [svc, _slice("IPv4", "10.244.1.10"), _slice("IPv6", "fd00:10:244:1::10")]


@pytest.mark.parametrize(("v4", "v6"), [("198.51.100.7", "2001:db8:5::7")])
def test_the_configured_api_server_address_is_refused_in_both_families(v4: str, v6: str) -> None:
    settings = ModelSettings(control_plane_ips=(ipaddress.ip_address(v4), ipaddress.ip_address(v6)))
    state = build_state_from_objects([_node("192.0.2.11"), *_dual(v4, v6)], node_name="n1", settings=settings)
    assert state.mappings == ()
    assert sorted(p.message for p in state.problems) == [
        f"external IP refused: {ip} is the API server's address (the API server address the agent is configured with)"
        for ip in sorted((v4, v6))
    ]
    assert {p.reason for p in state.problems} == {"ExternalIPRefused"}
    # Without the setting the same addresses map: nothing else refuses them.
    assert (
        len(
            build_state_from_objects(
                [_node("192.0.2.11"), *_dual(v4, v6)], node_name="n1", settings=ModelSettings()
            ).mappings
        )
        == 2
    )


def test_the_endpoints_of_the_kubernetes_service_are_refused_in_both_families() -> None:
    objs = [
        _node("192.0.2.11"),
        *_dual("198.51.100.7", "2001:db8:5::7"),
        _api_slice("IPv4", "198.51.100.7", "198.51.100.8"),
        _api_slice("IPv6", "2001:db8:5::7", name="kubernetes-v6"),
    ]
    state = build_state_from_objects(objs, node_name="n1", settings=ModelSettings())
    assert state.mappings == ()
    assert sorted(p.message for p in state.problems) == [
        f"external IP refused: {ip} is the API server's address (an endpoint of the Service default/kubernetes)"
        for ip in ("198.51.100.7", "2001:db8:5::7")
    ]


def test_an_ipv6_spelling_of_the_api_servers_address_says_whose_it_is() -> None:
    api = ipaddress.ip_address("198.51.100.7")
    why = refusal(
        ipaddress.ip_address("::ffff:198.51.100.7"),
        cluster=(),
        node_ips=frozenset(),
        control_plane={api: "the API server address the agent is configured with"},
    )
    assert why is not None
    assert why.endswith(
        "(of 198.51.100.7, the API server's address (the API server address the agent is configured with))"
    )


def test_the_kubernetes_services_endpoints_are_followed_one_change_at_a_time() -> None:
    """The agent's index: a mapping made before the API server moved onto its address is
    taken away when the default/kubernetes slice says so, and given back when it no longer does."""
    index = ClusterIndex(settings=ModelSettings(), node_name="n1", nodes=[_node("192.0.2.11")])
    svc = _svc("198.51.100.7")
    index.update(services={("default", "s"): [svc]}, slices={"default/s-IPv4": _slice("IPv4", "10.244.1.10")})
    assert [str(m.external_ip) for m in index.mappings()] == ["198.51.100.7"]
    touched = index.update(slices={"default/kubernetes": _api_slice("IPv4", "198.51.100.7")})
    assert index.mappings() == []
    assert ("198.51.100.7", "10.244.1.10") in touched["ingress4"]
    assert [p.reason for p in index.problems] == ["ExternalIPRefused"]
    index.update(slices={"default/kubernetes": _api_slice("IPv4", "198.51.100.9")})
    assert [str(m.external_ip) for m in index.mappings()] == ["198.51.100.7"]
    index.update(slices={"default/kubernetes": None})
    assert [str(m.external_ip) for m in index.mappings()] == ["198.51.100.7"]
    assert index.problems == []
