"""The datapath contract, end to end through the product: ``wholeip apply`` programs
each node of the two-node topology from a cluster file, then real sockets check
both ends of every row of docs/datapath.md, IPv4 and IPv6.

Each row is its own test so a failure names the row and the family. The
topology is shared by the module (building it takes about a second); tests
that re-point things (rows 12, 14) put them back.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import bulk, exchange, ping

pytestmark = pytest.mark.kernel

EXT_A = {4: "203.0.113.10", 6: "2001:db8:100::10"}
FAMILIES = (4, 6)


def cluster(*, a_pod: str = "pod_a") -> dict[str, Any]:
    """The topology as Kubernetes objects: two Nodes, whole-IP Service ``a`` on ``a_pod``."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "a",
            "namespace": "default",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"networking.cozystack.io/wholeIP": "true"},
        },
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 1}]},
        "status": {"loadBalancer": {"ingress": [{"ip": EXT_A[4]}, {"ip": EXT_A[6]}]}},
    }
    items = [*Sandbox.nodes_manifest(), service, *Sandbox.slices_manifest("a", a_pod)]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def apply(topo: Topology, doc: dict[str, Any], tmp: Path) -> None:
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    for node in ("n1", "n2"):
        result = topo.exec(
            node,
            [
                sys.executable,
                "-m",
                "wholeip",
                "apply",
                "-f",
                str(path),
                "--node-name",
                node,
                "--service-cidr",
                "10.96.0.0/12,fd00:10:96::/112",
            ],
        )
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def programmed(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Topology:
    apply(topo, cluster(), tmp_path_factory.mktemp("cluster"))
    return topo


def addr(role: str, family: int) -> str:
    return Topology.addr(role, family)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_rows_1_to_3_outside_client_reaches_pod_keeps_its_ip(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="ext", server="pod_a", addr=EXT_A[family], proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)
    assert r.server_local == addr("pod_a", family)
    assert r.client_reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_row_4_ping_is_answered_by_the_pod(programmed: Topology, family: int) -> None:
    r = ping(programmed, "ext", EXT_A[family])
    assert r.ok, r.output
    assert r.reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_5_egress_leaves_with_the_external_ip(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="pod_a", server="ext", addr=addr("ext", family), proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == EXT_A[family]
    assert r.client_local == addr("pod_a", family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_6_hairpin_from_a_pod_on_another_node(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="pod_b", server="pod_a", addr=EXT_A[family], proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == addr("pod_b", family)
    assert r.client_reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("node", ["n1", "n2"])
def test_row_7_node_host_to_external_ip(programmed: Topology, family: int, node: str) -> None:
    r = exchange(programmed, client=node, server="pod_a", addr=EXT_A[family], proto="udp")  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.client_reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_row_8_kubelet_probe_to_pod_ip_is_untouched(programmed: Topology, family: int) -> None:
    r = exchange(programmed, client="n1", server="pod_a", addr=addr("pod_a", family), proto="tcp")
    assert r.ok, r.error
    assert r.server_peer not in (EXT_A[4], EXT_A[6])
    assert r.client_reply_from == addr("pod_a", family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_9_other_pod_to_managed_pod_ip(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="pod_b", server="pod_a", addr=addr("pod_a", family), proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == addr("pod_b", family)
    assert r.client_reply_from == addr("pod_a", family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_10_managed_pod_to_other_pod_keeps_pod_ip(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="pod_a", server="pod_b", addr=addr("pod_b", family), proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == addr("pod_a", family)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_11_managed_pod_to_its_own_external_ip(programmed: Topology, family: int, proto: str) -> None:
    r = exchange(programmed, client="pod_a", server="pod_a", addr=EXT_A[family], proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.client_reply_from == EXT_A[family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_12_arriving_at_the_other_node(programmed: Topology, family: int, proto: str) -> None:
    programmed.route_external(EXT_A[family], "n2")
    try:
        r = exchange(programmed, client="ext", server="pod_a", addr=EXT_A[family], proto=proto)  # type: ignore[arg-type]
    finally:
        programmed.route_external(EXT_A[family], "n1")
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)
    assert r.client_reply_from == EXT_A[family]


def test_row_14_mapping_moves_within_one_apply(programmed: Topology, tmp_path: Path) -> None:
    """The Service's pod moves to pod B on n2: the external IP follows, pod A loses it."""
    apply(programmed, cluster(a_pod="pod_b"), tmp_path)
    try:
        for family in FAMILIES:
            programmed.route_external(EXT_A[family], "n2")
            moved = exchange(programmed, client="ext", server="pod_b", addr=EXT_A[family], proto="udp")
            assert moved.ok, moved.error
            assert moved.server_local == addr("pod_b", family)
            egress_b = exchange(programmed, client="pod_b", server="ext", addr=addr("ext", family), proto="udp")
            assert egress_b.server_peer == EXT_A[family]
            # Pod A no longer owns the IP: its egress leaves with its pod address, which
            # the outside cannot route back to, so no reply reaches it.
            egress_a = exchange(
                programmed, client="pod_a", server="ext", addr=addr("ext", family), proto="udp", timeout=1.0
            )
            assert egress_a.server_peer == addr("pod_a", family)
            assert not egress_a.ok
    finally:
        apply(programmed, cluster(), tmp_path)
        for family in FAMILIES:
            programmed.route_external(EXT_A[family], "n1")
    back = exchange(programmed, client="ext", server="pod_a", addr=EXT_A[4], proto="tcp")
    assert back.ok, back.error


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("arrive_at", ["n1", "n2"])
def test_north_south_traffic_leaves_no_conntrack_entries(programmed: Topology, family: int, arrive_at: str) -> None:
    for node in ("n1", "n2"):
        programmed.exec(node, ["conntrack", "-F"], check=True)
    programmed.route_external(EXT_A[family], arrive_at)  # type: ignore[arg-type]
    try:
        for proto in ("tcp", "udp"):
            r = exchange(programmed, client="ext", server="pod_a", addr=EXT_A[family], proto=proto)  # type: ignore[arg-type]
            assert r.ok, r.error
            e = exchange(programmed, client="pod_a", server="ext", addr=addr("ext", family), proto=proto)  # type: ignore[arg-type]
            assert e.ok, e.error
    finally:
        programmed.route_external(EXT_A[family], "n1")
    for node in ("n1", "n2"):
        entries = programmed.exec(node, ["conntrack", "-L", "-f", "ipv6" if family == 6 else "ipv4"])
        assert addr("ext", family) not in entries.stdout, (node, entries.stdout)


def test_bulk_transfer_without_mtu_bottleneck(programmed: Topology) -> None:
    r = bulk(programmed, sender="pod_a", receiver="ext", initiator="sender", addr=addr("ext", 4))
    assert r.ok, r.sender


@pytest.fixture(scope="module")
def narrow(make_topo_module: Topology, tmp_path_factory: pytest.TempPathFactory) -> Topology:
    apply(make_topo_module, cluster(), tmp_path_factory.mktemp("narrow"))
    return make_topo_module


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("initiator", ["sender", "receiver"], ids=["pod-connects", "outside-connects"])
def test_row_13_path_mtu_smaller_than_the_pods(narrow: Topology, family: int, initiator: str) -> None:
    """A 1280-byte hop between the router and the outside: the pod sends 2 MB over TCP."""
    target = addr("ext", family) if initiator == "sender" else EXT_A[family]
    r = bulk(narrow, sender="pod_a", receiver="ext", initiator=initiator, addr=target, timeout=20.0)  # type: ignore[arg-type]
    assert r.ok, (r.received, r.sender, r.receiver)
    assert r.received == 2_000_000


CLUSTER_IP = {4: "10.96.0.10", 6: "fd00:10:96::10"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_managed_pod_to_a_cluster_ip_that_leads_back_to_itself(programmed: Topology, family: int, proto: str) -> None:
    """kube-proxy's hairpin: a pod calls its own Service's ClusterIP, kube-proxy DNATs the
    packet back to the pod and masquerades it. Our self-hairpin SNAT must stay out of it:
    it is for a pod calling its own *external* IP (row 11), and a reply to an external IP
    is handled statelessly, so conntrack would never turn it back into the ClusterIP."""
    proto_ip = "ip" if family == 4 else "ip6"
    pod, node = addr("pod_a", family), addr("n1", family)
    table = f"kubeproxy{family}"
    dnat = f"{proto_ip} daddr {CLUSTER_IP[family]} dnat {proto_ip} to {pod}"
    masquerade = f"{proto_ip} saddr {pod} {proto_ip} daddr {pod} snat {proto_ip} to {node}"
    programmed.nft(
        "n1",
        "-f",
        "-",
        input=f"""
table inet {table} {{
  chain pre {{ type nat hook prerouting priority dstnat; {dnat}; }}
  chain post {{ type nat hook postrouting priority srcnat; {masquerade}; }}
}}
""",
    )
    try:
        r = exchange(programmed, client="pod_a", server="pod_a", addr=CLUSTER_IP[family], proto=proto)  # type: ignore[arg-type]
        assert r.ok, r.error
        assert r.client_reply_from == CLUSTER_IP[family]
        assert r.server_peer == node  # kube-proxy's masquerade, not our external IP
    finally:
        programmed.nft("n1", "delete", "table", "inet", table)


# A router's unicast neighbour solicitation (an NUD probe) for an address, answered with
# the advertisement that matches it: run in the router's namespace, prints JSON.
NUD_PROBE = """
import json, socket, struct, sys, time
target = sys.argv[1]
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.settimeout(0.2)
packed = socket.inet_pton(socket.AF_INET6, target)
deadline, sent, answered = time.monotonic() + 3.0, 0, False
while time.monotonic() < deadline and not answered:
    s.sendto(struct.pack("!BBHI", 135, 0, 0, 0) + packed, (target, 0))  # the kernel sums it
    sent += 1
    until = time.monotonic() + 0.5
    while time.monotonic() < until and not answered:
        try:
            data = s.recv(1500)
        except TimeoutError:
            continue
        answered = len(data) >= 24 and data[0] == 136 and data[8:24] == packed
print(json.dumps({"sent": sent, "answered": answered}))
"""


@pytest.mark.parametrize("prober", ["rtr", "n2"])
def test_neighbour_discovery_to_an_external_ip_is_not_rewritten(programmed: Topology, prober: str) -> None:
    """MetalLB in L2 mode (and proxy NDP) answers neighbour solicitations for an external
    IPv6 on the node's link; the upstream router re-checks the entry with *unicast*
    solicitations addressed to the external IP itself. Those must reach the node that
    answers, not be rewritten to the pod (which would let the router's entry fail every
    reachable time). Proxy NDP on n1 stands in for the speaker. ``n2``: another node on
    the same link, for which the address is on-link too (east-west: tracked, no NAT)."""
    ext = EXT_A[6]
    programmed.exec("n1", ["sysctl", "-qw", "net.ipv6.conf.all.proxy_ndp=1"], check=True)
    programmed.exec("n1", ["ip", "-6", "neigh", "add", "proxy", ext, "dev", "eth0"], check=True)
    if prober == "n2":
        programmed.exec("n2", ["ip", "-6", "route", "add", f"{ext}/128", "dev", "eth0"], check=True)
    try:
        out = programmed.exec(prober, [sys.executable, "-c", NUD_PROBE, ext], check=True).stdout  # type: ignore[arg-type]
        result = json.loads(out.strip().splitlines()[-1])
        assert result["answered"], result
        # And the ordinary traffic to the same address still reaches the pod.
        r = exchange(programmed, client="ext", server="pod_a", addr=ext, proto="udp")
        assert r.ok, r.error
    finally:
        if prober == "n2":
            programmed.exec("n2", ["ip", "-6", "route", "del", f"{ext}/128", "dev", "eth0"])
        programmed.exec("n1", ["ip", "-6", "neigh", "del", "proxy", ext, "dev", "eth0"])
        programmed.exec("n1", ["sysctl", "-qw", "net.ipv6.conf.all.proxy_ndp=0"])
