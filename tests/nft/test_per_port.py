"""Per-port mode, the ICMP policy and source ranges, with real traffic (IPv4 and IPv6).

The Service of pod A is switched between configurations with ``wholeip apply``
on both nodes; each test states the configuration it needs, so the order of
tests does not matter. Every assertion here fails if its rule is removed: a
dropped port would pass without the port filter, a refused source without the
range check, a UDP reply without the flow memory.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.nft.test_datapath import EXT_A, FAMILIES, addr, cluster

from wholeip.names import FLOWS
from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Node, Topology
from wholeip_testkit.traffic import bulk, exchange, ping

pytestmark = pytest.mark.kernel

TCP_PORT, UDP_PORT = 8080, 5353
OTHER_TCP, OTHER_UDP = 8081, 5354


EXT_B = {4: "203.0.113.20", 6: "2001:db8:100::20"}
EXT_B2 = {4: "203.0.113.21", 6: "2001:db8:100::21"}


def configure(
    topo: Topology,
    tmp: Path,
    *,
    per_port: bool = True,
    icmp: bool = False,
    ranges: tuple[str, ...] = (),
    b_per_port: bool = False,
    b2: bool = False,
    b2_ranges: tuple[str, ...] = (),
) -> None:
    """Service ``a`` on pod A as asked; with ``b_per_port`` also a per-port Service ``b``
    on pod B (n2), listing one TCP port only; with ``b2`` a younger per-port Service ``b2``
    on pod B too, listing that TCP port and a UDP port, with ``b2_ranges`` as its source
    ranges (so pod B's Services filter UDP differently)."""
    doc = cluster()
    if b_per_port:
        doc["items"] += _per_port_service("b", "pod_b", EXT_B, "2026-01-01T00:00:00Z")
    if b2:
        b2_objs = _per_port_service("b2", "pod_b", EXT_B2, "2026-01-02T00:00:00Z")
        b2_objs[0]["spec"]["ports"].append({"name": "dns", "port": UDP_PORT, "protocol": "UDP"})
        b2_objs[0]["spec"]["loadBalancerSourceRanges"] = list(b2_ranges)
        doc["items"] += b2_objs
    svc: dict[str, Any] = next(i for i in doc["items"] if i["kind"] == "Service")
    annotations = {"networking.cozystack.io/allowICMP": "true"} if icmp else {}
    if not per_port:
        annotations["networking.cozystack.io/wholeIP"] = "true"
    svc["metadata"]["annotations"] = annotations
    svc["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    svc["spec"]["ports"] = [
        {"name": "web", "port": TCP_PORT, "protocol": "TCP"},
        {"name": "dns", "port": UDP_PORT, "protocol": "UDP"},
    ]
    svc["spec"]["loadBalancerSourceRanges"] = list(ranges)
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    for node in ("n1", "n2"):
        argv = [sys.executable, "-m", "wholeip", "apply", "-f", str(path), "--node-name", node]
        result = topo.exec(node, [*argv, "--service-cidr", "10.96.0.0/12,fd00:10:96::/112"])
        assert result.returncode == 0, result.stderr
        # Each configuration starts without flow memory. A filtered pod's UDP replies to an
        # earlier test's client are remembered for 180 s (``flows4/6``: replies to them pass
        # as the pod's own flows, as they should), and a later client's random port can be
        # that very one: a refusal asserted then failed (seen once, per-port-4).
        for v in (4, 6):
            flushed = topo.exec(node, ["nft", "flush", "set", "inet", "wholeip", FLOWS[v]])
            assert flushed.returncode == 0, flushed.stderr


def _per_port_service(name: str, pod: str, ext: dict[int, str], created: str) -> list[dict[str, Any]]:
    svc = Sandbox.service_manifest(name, ports=(TCP_PORT,))
    svc["metadata"] |= {"creationTimestamp": created}
    svc["metadata"]["labels"] = {"service.kubernetes.io/service-proxy-name": "wholeip"}
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": ext[4]}, {"ip": ext[6]}]}}
    return [svc, *Sandbox.slices_manifest(name, pod)]


@contextlib.contextmanager
def arriving_at(topo: Topology, tmp_path: Path, ext: str, node: Node, **config: Any) -> Iterator[None]:
    """Configured as asked, with the router sending ``ext`` to ``node`` (docs/datapath.md row 12: an L2
    speaker on another node); on the way out the default configuration and route again."""
    home: Node = "n2" if ext in EXT_B.values() else "n1"
    topo.route_external(ext, node)
    try:
        configure(topo, tmp_path, **config)
        yield
    finally:
        topo.route_external(ext, home)
        configure(topo, tmp_path)


@pytest.fixture
def per_port(topo: Topology, tmp_path: Path) -> Topology:
    configure(topo, tmp_path)
    return topo


@pytest.mark.parametrize("family", FAMILIES)
def test_listed_ports_pass_unlisted_are_dropped(per_port: Topology, family: int) -> None:
    for proto, listed, other in (("tcp", TCP_PORT, OTHER_TCP), ("udp", UDP_PORT, OTHER_UDP)):
        ok = exchange(per_port, client="ext", server="pod_a", addr=EXT_A[family], proto=proto, port=listed)  # type: ignore[arg-type]
        assert ok.ok, (proto, ok.error)
        assert ok.server_peer == addr("ext", family)
        assert ok.client_reply_from == EXT_A[family]
        dropped = exchange(
            per_port,
            client="ext",
            server="pod_a",
            addr=EXT_A[family],
            proto=proto,
            port=other,
            timeout=1.0,  # type: ignore[arg-type]
        )
        assert not dropped.ok
        assert dropped.server_peer is None, "the pod must not see a packet to an unlisted port"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_listed_protocol_on_another_port_is_dropped(per_port: Topology, family: int) -> None:
    udp_on_tcp_port = exchange(
        per_port, client="ext", server="pod_a", addr=EXT_A[family], proto="udp", port=TCP_PORT, timeout=1.0
    )
    assert udp_on_tcp_port.server_peer is None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_egress_and_its_replies_are_not_filtered(per_port: Topology, family: int, proto: str) -> None:
    r = exchange(per_port, client="pod_a", server="ext", addr=addr("ext", family), proto=proto, port=OTHER_UDP)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_hairpin_is_filtered_by_port_too(per_port: Topology, family: int) -> None:
    assert exchange(per_port, client="pod_b", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT).ok
    blocked = exchange(
        per_port, client="pod_b", server="pod_a", addr=EXT_A[family], proto="tcp", port=OTHER_TCP, timeout=1.0
    )
    assert blocked.server_peer is None


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_reply_to_a_filtered_pod_on_another_node(topo: Topology, tmp_path: Path, family: int) -> None:
    """Pod B (n2) has a per-port Service of its own and sends UDP to A's external IP. Its
    packet reaches n1 already from B's external IP; A's reply goes to that address, so it
    meets B's port filter on n1, which only lets it through because n1 remembered the flow
    on its way in (n2 remembered it on its way out, n1 never rewrote it)."""
    configure(topo, tmp_path, b_per_port=True)
    try:
        r = exchange(topo, client="pod_b", server="pod_a", addr=EXT_A[family], proto="udp", port=UDP_PORT)
    finally:
        configure(topo, tmp_path)
    assert r.ok, r.error
    assert r.server_peer == EXT_B[family]
    assert r.client_reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_reply_to_a_filtered_pods_own_flow_arriving_at_another_node(
    topo: Topology, tmp_path: Path, family: int, proto: str
) -> None:
    """Pod B (n2, per-port Service) opens a flow to the outside; the router sends B's
    external IP to n1 (docs/datapath.md row 12: an L2 speaker on another node). TCP passes n1's filter (not
    a bare SYN); UDP is let through to n2, which remembered the flow and filters it there."""
    with arriving_at(topo, tmp_path, EXT_B[family], "n1", b_per_port=True):
        r = exchange(topo, client="pod_b", server="ext", addr=addr("ext", family), proto=proto, port=OTHER_UDP)  # type: ignore[arg-type]
    assert r.server_peer == EXT_B[family]
    assert r.ok, r.error


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_arriving_at_another_node_meets_the_filter_at_the_pods_node(
    topo: Topology, tmp_path: Path, family: int
) -> None:
    """The other side of the test above: n1 lets UDP for B's external IP through, so n2 must
    drop what B's Service does not forward (it lists one TCP port). TCP is still filtered
    on n1, and a listed port still passes."""
    with arriving_at(topo, tmp_path, EXT_B[family], "n1", b_per_port=True):
        udp = exchange(topo, client="ext", server="pod_b", addr=EXT_B[family], proto="udp", port=OTHER_UDP, timeout=1.0)
        tcp = exchange(topo, client="ext", server="pod_b", addr=EXT_B[family], proto="tcp", port=OTHER_TCP, timeout=1.0)
        listed = exchange(topo, client="ext", server="pod_b", addr=EXT_B[family], proto="tcp", port=TCP_PORT)
        # East-west to the pod IP itself is not filtered (docs/datapath.md row 9): only traffic from outside is.
        direct = exchange(topo, client="pod_a", server="pod_b", addr=addr("pod_b", family), proto="udp", port=OTHER_UDP)
    assert udp.server_peer is None, "the pod must not see UDP to a port its Service does not list"
    assert tcp.server_peer is None
    assert listed.ok, listed.error
    assert listed.client_reply_from == EXT_B[family]
    assert direct.ok, direct.error


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pod_behind_two_udp_filters_is_filtered_by_their_union_at_its_node(
    topo: Topology, tmp_path: Path, family: int
) -> None:
    """Pod B behind ``b`` (no UDP) and ``b2`` (one UDP port), no source ranges: n2 cannot
    tell which external IP a packet was sent to, and lets in what either lets in (the pod
    takes that port through ``b2`` anyway), nothing else; its own flows' replies pass."""
    with arriving_at(topo, tmp_path, EXT_B[family], "n1", b_per_port=True, b2=True):
        away = topo.nft("n1", "list", "set", "inet", "wholeip", f"away{family}")
        b2_port = exchange(topo, client="ext", server="pod_b", addr=EXT_B[family], proto="udp", port=UDP_PORT)
        other = exchange(
            topo, client="ext", server="pod_b", addr=EXT_B[family], proto="udp", port=OTHER_UDP, timeout=1.0
        )
        own = exchange(topo, client="pod_b", server="ext", addr=addr("ext", family), proto="udp", port=OTHER_UDP)
    assert EXT_B[family] in away
    assert b2_port.ok, b2_port.error
    assert other.server_peer is None
    assert own.ok, own.error
    assert own.server_peer == EXT_B[family]


# Source ranges the outside client (198.51.100.2, 2001:db8:1::2) is in, for b2.
CLIENT_RANGES = ("198.51.100.0/24", "2001:db8:1::/64")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pod_behind_two_udp_filters_with_other_ranges_is_filtered_where_udp_arrives(
    topo: Topology, tmp_path: Path, family: int
) -> None:
    """``b2`` with source ranges, ``b`` without: their union is not one set, so n1 filters
    UDP for ``b``'s address itself, by ``b``'s rules: a port only ``b2`` lists does not
    pass through ``b``'s address."""
    with arriving_at(topo, tmp_path, EXT_B[family], "n1", b_per_port=True, b2=True, b2_ranges=CLIENT_RANGES):
        away = topo.nft("n1", "list", "set", "inet", "wholeip", f"away{family}")
        arrive = topo.nft("n2", "list", "map", "inet", "wholeip", f"arrive{family}")
        b2_port = exchange(
            topo, client="ext", server="pod_b", addr=EXT_B[family], proto="udp", port=UDP_PORT, timeout=1.0
        )
        other = exchange(
            topo, client="ext", server="pod_b", addr=EXT_B[family], proto="udp", port=OTHER_UDP, timeout=1.0
        )
        listed = exchange(topo, client="ext", server="pod_b", addr=EXT_B[family], proto="tcp", port=TCP_PORT)
    assert EXT_B[family] not in away
    assert addr("pod_b", family) not in arrive
    assert b2_port.server_peer is None
    assert other.server_peer is None
    assert listed.ok, listed.error


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.xfail(
    strict=True,
    reason="known limitation (README): a pod behind Services that filter UDP with differing "
    "source ranges is filtered where the traffic arrives, without the flows its node remembers",
)
def test_reply_to_own_flow_of_a_pod_behind_two_udp_filters_arriving_at_another_node(
    topo: Topology, tmp_path: Path, family: int
) -> None:
    with arriving_at(topo, tmp_path, EXT_B[family], "n1", b_per_port=True, b2=True, b2_ranges=CLIENT_RANGES):
        r = exchange(topo, client="pod_b", server="ext", addr=addr("ext", family), proto="udp", port=OTHER_UDP)
    assert r.server_peer == EXT_B[family]
    assert r.ok, r.error


@pytest.mark.parametrize("family", FAMILIES)
def test_source_ranges_hold_for_udp_arriving_at_another_node(topo: Topology, tmp_path: Path, family: int) -> None:
    """Pod A (n1) behind source ranges, its external IP sent to n2: n2 lets UDP through to n1,
    which checks the ranges under the pod IP. A reply to the pod's own flow passes anyway."""
    elsewhere = ("192.0.2.128/25", "2001:db8:ffff::/48")
    with arriving_at(topo, tmp_path, EXT_A[family], "n2", ranges=elsewhere):
        refused = exchange(
            topo, client="ext", server="pod_a", addr=EXT_A[family], proto="udp", port=UDP_PORT, timeout=1.0
        )
        own = exchange(topo, client="pod_a", server="ext", addr=addr("ext", family), proto="udp", port=OTHER_UDP)
        configure(topo, tmp_path, ranges=(*elsewhere, "198.51.100.0/24", "2001:db8:1::/64"))
        allowed = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto="udp", port=UDP_PORT)
        unlisted = exchange(
            topo, client="ext", server="pod_a", addr=EXT_A[family], proto="udp", port=OTHER_UDP, timeout=1.0
        )
    assert refused.server_peer is None, "a source outside the ranges must not reach the pod"
    assert own.ok, own.error
    assert own.server_peer == EXT_A[family]
    assert allowed.ok, allowed.error
    assert allowed.client_reply_from == EXT_A[family]
    assert unlisted.server_peer is None


@pytest.mark.parametrize("family", FAMILIES)
def test_icmp_echo_needs_the_annotation(topo: Topology, tmp_path: Path, family: int) -> None:
    configure(topo, tmp_path, icmp=False)
    assert not ping(topo, "ext", EXT_A[family]).ok
    configure(topo, tmp_path, icmp=True)
    r = ping(topo, "ext", EXT_A[family])
    assert r.ok, r.output
    assert r.reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_port_mode", [True, False], ids=["per-port", "whole-ip"])
def test_source_ranges(topo: Topology, tmp_path: Path, family: int, per_port_mode: bool) -> None:
    elsewhere = ("192.0.2.128/25", "2001:db8:ffff::/48")
    configure(topo, tmp_path, per_port=per_port_mode, ranges=elsewhere)
    refused = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT, timeout=1.0)
    assert refused.server_peer is None
    # East-west is exempt (decided: pods reach the pod IP anyway; NetworkPolicy governs it).
    assert exchange(topo, client="pod_b", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT).ok
    # The pod's own egress to a source outside the ranges still gets its replies.
    assert exchange(topo, client="pod_a", server="ext", addr=addr("ext", family), proto="udp").ok
    configure(topo, tmp_path, per_port=per_port_mode, ranges=(*elsewhere, "198.51.100.0/24", "2001:db8:1::/64"))
    allowed = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT)
    assert allowed.ok, allowed.error


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("per_port_mode", [True, False], ids=["per-port", "whole-ip"])
def test_source_ranges_that_are_all_invalid_fail_closed(
    topo: Topology, tmp_path: Path, family: int, per_port_mode: bool
) -> None:
    """Issue 15 item 3: ranges none of which is a CIDR admitted every source (the listed
    port in per-port mode, everything in whole-IP mode). They admit no outside source now,
    UDP arriving at the pod's node included; east-west and the pod's own flows still work."""
    configure(topo, tmp_path, per_port=per_port_mode, ranges=("foo", "10.0.0.0/33"))
    for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
        refused = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto=proto, port=port, timeout=1.0)  # type: ignore[arg-type]
        assert refused.server_peer is None, proto
    assert exchange(topo, client="pod_b", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT).ok
    assert exchange(topo, client="pod_a", server="ext", addr=addr("ext", family), proto="udp").ok
    # One valid entry among them is kept, as before: the client's network gets through.
    configure(topo, tmp_path, per_port=per_port_mode, ranges=("foo", "198.51.100.0/24", "2001:db8:1::/64"))
    allowed = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto="tcp", port=TCP_PORT)
    assert allowed.ok, allowed.error


def test_mode_switch_takes_effect_in_one_apply(topo: Topology, tmp_path: Path) -> None:
    configure(topo, tmp_path, per_port=False)
    assert exchange(topo, client="ext", server="pod_a", addr=EXT_A[4], proto="udp", port=OTHER_UDP).ok
    configure(topo, tmp_path, per_port=True)
    assert (
        exchange(
            topo, client="ext", server="pod_a", addr=EXT_A[4], proto="udp", port=OTHER_UDP, timeout=1.0
        ).server_peer
        is None
    )
    configure(topo, tmp_path, per_port=False)
    assert exchange(topo, client="ext", server="pod_a", addr=EXT_A[4], proto="udp", port=OTHER_UDP).ok


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("initiator", ["sender", "receiver"], ids=["pod-connects", "outside-connects"])
def test_path_mtu_in_per_port_mode(make_topo_module: Topology, tmp_path: Path, family: int, initiator: str) -> None:
    """A 1280-byte hop behind the node: ICMP errors pass the port filter and reach the pod."""
    configure(make_topo_module, tmp_path)
    target = addr("ext", family) if initiator == "sender" else EXT_A[family]
    r = bulk(
        make_topo_module,
        sender="pod_a",
        receiver="ext",
        initiator=initiator,
        addr=target,
        port=TCP_PORT,
        timeout=20.0,  # type: ignore[arg-type]
    )
    assert r.ok, (r.received, r.sender, r.receiver)
