"""core.decode is the inverse of core.elements: encode, decode, encode again gives the same elements."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from tests.unit.test_properties import Cluster, clusters, props

from wholeip.core.decode import MAPPING_SETS, decode
from wholeip.core.elements import elements
from wholeip.core.model import ClusterState, Mapping1to1, Mode, ObjectRef, PortSpec
from wholeip.names import CLUSTER, EGRESS, INGRESS
from wholeip.settings import IPNetwork


def _net_order(n: IPNetwork) -> tuple[int, int]:
    return (int(n.network_address), n.prefixlen)


def _expected(m: Mapping1to1, node_name: str, here: set[object]) -> tuple[object, ...]:
    v = m.external_ip.version
    per_port = m.mode is Mode.PER_PORT
    return (
        str(m.external_ip),
        str(m.pod_ip),
        m.mode,
        m.allow_icmp and per_port,
        tuple(sorted(set(m.ports))) if per_port else (),
        bool(m.source_ranges) or m.closed,  # ranges that were all invalid: ranged, no sources
        tuple(sorted({r for r in m.source_ranges if r.version == v}, key=_net_order)),
        m.pod_ip in here,
        m.egress and m.node_name == node_name,
    )


@props(150)
@given(clusters())
def test_decoding_the_elements_gives_back_the_mappings_and_encodes_to_the_same_elements(c: Cluster) -> None:
    state = c.state()
    elems = elements(state, node_name=c.node_name)
    decoded = decode(elems, node_name=c.node_name)
    # Every element is explained by a mapping or the cluster networks, and encoding the
    # decoded mappings again gives exactly the table's elements, set by set.
    assert decoded.stray == {}
    again: dict[str, set[object]] = {name: set() for name in MAPPING_SETS}
    for name, elem in ((CLUSTER[n.version], str(n)) for n in decoded.cluster_networks):
        again[name].add(elem)
    for m in decoded.mappings:
        for name, elem in m.elements(node_name=c.node_name):
            again[name].add(elem)
    assert {k: frozenset(v) for k, v in again.items()} == {k: v for k, v in elems.items() if k in MAPPING_SETS}
    # And the mappings are the model's, as far as the table keeps them.
    got = [
        (
            d.external_ip,
            d.pod_ip,
            d.mode,
            d.allow_icmp,
            d.ports,
            d.ranged,
            d.source_ranges,
            d.pod_here,
            d.egress,
        )
        for d in decoded.mappings
    ]
    # A pod is here when its egress leaves here (an address that two nodes' pods claim
    # goes with the one whose mapping gives it its egress).
    here: set[object] = {m.pod_ip for m in state.mappings if m.egress and m.node_name == c.node_name}
    want = sorted(
        (_expected(m, c.node_name, here) for m in state.mappings),
        key=lambda t: (ipaddress.ip_address(str(t[0])).version, int(ipaddress.ip_address(str(t[0])))),
    )
    assert got == want, (got, want)
    assert decoded.cluster_networks == state.cluster_networks


def _state(*mappings: Mapping1to1) -> ClusterState:
    return ClusterState(
        mappings=mappings,
        cluster_networks=(ipaddress.ip_network("10.244.0.0/16"),),
        problems=(),
        managed_services=tuple(m.service for m in mappings),
    )


def _mapping(ext: str, pod: str, node: str, **kw: object) -> Mapping1to1:
    fields: dict[str, object] = {
        "mode": Mode.WHOLE_IP,
        "allow_icmp": False,
        "ports": (),
        "source_ranges": (),
        "egress": True,
    }
    fields.update(kw)
    return Mapping1to1(
        service=ObjectRef("Service", "default", ext),
        external_ip=ipaddress.ip_address(ext),
        pod_ip=ipaddress.ip_address(pod),
        node_name=node,
        **fields,  # type: ignore[arg-type]
    )


def test_a_per_port_mapping_with_ranges_on_another_node_reads_back() -> None:
    m = _mapping(
        "198.51.100.7",
        "10.244.2.7",
        "n2",
        mode=Mode.PER_PORT,
        allow_icmp=True,
        ports=(PortSpec("tcp", 443), PortSpec("udp", 53)),
        source_ranges=(ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8::/32")),
    )
    (d,) = decode(elements(_state(m), node_name="n1")).mappings
    assert (d.external_ip, d.pod_ip, d.mode, d.allow_icmp) == ("198.51.100.7", "10.244.2.7", Mode.PER_PORT, True)
    assert d.ports == (PortSpec("tcp", 443), PortSpec("udp", 53))
    assert d.source_ranges == (ipaddress.ip_network("203.0.113.0/24"),)
    assert (d.pod_here, d.egress, d.away) == (False, False, True)


def test_elements_no_mapping_explains_are_stray() -> None:
    m = _mapping("198.51.100.7", "10.244.1.7", "n1")
    elems = {k: set(v) for k, v in elements(_state(m), node_name="n1").items()}
    elems[INGRESS[4]].clear()  # the ingress element deleted by hand: the rest is left over
    decoded = decode({k: frozenset(v) for k, v in elems.items()})
    assert decoded.mappings == ()
    assert decoded.stray[EGRESS[4]] == frozenset({("10.244.1.7", "198.51.100.7")})
