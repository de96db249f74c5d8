"""Pod ports on the node's address (docs/datapath.md row 19), real traffic, IPv4 and IPv6.

``wholeip apply`` programs both nodes from a cluster file holding Nodes, a whole-IP
Service on pod A (n1) and Pods with the podnat annotation; pod B (n2) publishes ports
on n2's address, found as podnat's ``ifaceAuto`` finds it (n2's default route source,
read in n2's namespace by ``apply``). Real sockets check both ends: the pod sees the
client's address, the client hears the node's address.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.nft.test_datapath import EXT_A
from tests.nft.test_datapath import cluster as whole_ip_cluster

from wholeip.agent.conntrack import ConntrackCleaner
from wholeip.core.elements import compile_table
from wholeip.core.index import build_state_from_objects
from wholeip.engine import Engine
from wholeip.names import PODNAT_ANNOTATION
from wholeip.nft.diff import Plan
from wholeip.settings import ModelSettings, PodNatSettings
from wholeip_testkit.netns import NetnsBackend, NetnsThread
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

T = TypeVar("T")
FAMILIES = (4, 6)
# (proto, srcPort on the node's address, dstPort on the pod)
TCP = ("tcp", 18080, 8080)
UDP = ("udp", 15000, 5001)
ENTRIES = [
    {"srcPort": TCP[1], "dstPort": TCP[2]},
    {"srcPort": UDP[1], "dstPort": UDP[2], "proto": "udp"},
    {"srcPort": 22, "dstPort": 2222},  # restricted: refused
]


def addr(role: str, family: int) -> str:
    return Topology.addr(role, family)  # type: ignore[arg-type]


def pod(name: str, role: str, node: str, entries: Any, *, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    ips = [addr(role, 4), addr(role, 6)] if role in ("pod_a", "pod_b") else [role]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": {PODNAT_ANNOTATION: entries if isinstance(entries, str) else json.dumps(entries)},
        },
        "spec": {"nodeName": node},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": ip} for ip in ips]},
    }


def cluster(*pods: dict[str, Any]) -> dict[str, Any]:
    """The datapath tests' cluster (whole-IP Service ``a`` on pod_a) and these Pods."""
    doc = whole_ip_cluster()
    doc["items"] += pods
    return doc


def apply(topo: Topology, doc: dict[str, Any], tmp: Path) -> dict[str, str]:
    """``wholeip apply`` on both nodes; their stderr (problems are printed there)."""
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    out = {}
    for node in ("n1", "n2"):
        argv = [sys.executable, "-m", "wholeip", "apply", "-f", str(path), "--node-name", node]
        result = topo.exec(node, [*argv, "--service-cidr", "10.96.0.0/12,fd00:10:96::/112"])
        assert result.returncode == 0, result.stderr
        out[node] = result.stderr
    return out


@pytest.fixture(scope="module")
def programmed(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("podnat")
    stderr = apply(topo, cluster(pod("b", "pod_b", "n2", {"entries": ENTRIES})), tmp)
    yield topo, stderr
    apply(topo, cluster(), tmp)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("port", [TCP, UDP], ids=["tcp", "udp"])
def test_row_19_published_port_reaches_the_pod_client_kept_reply_from_the_node(
    programmed: tuple[Topology, dict[str, str]], family: int, port: tuple[str, int, int]
) -> None:
    topo, _ = programmed
    proto, src, dst = port
    r = exchange(topo, client="ext", server="pod_b", addr=addr("n2", family), proto=proto, port=src, server_port=dst)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)
    assert r.server_local == addr("pod_b", family)
    assert r.client_reply_from == addr("n2", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_19_a_port_not_published_reaches_the_host(programmed: tuple[Topology, dict[str, str]], family: int) -> None:
    topo, _ = programmed
    r = exchange(topo, client="ext", server="n2", addr=addr("n2", family), proto="tcp", port=TCP[1] + 1)
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)
    # The published port's other protocol is not published either.
    r = exchange(topo, client="ext", server="n2", addr=addr("n2", family), proto="udp", port=TCP[1])
    assert r.ok, r.error


@pytest.mark.parametrize("family", FAMILIES)
def test_row_19_a_restricted_port_stays_the_hosts_and_is_reported(
    programmed: tuple[Topology, dict[str, str]], family: int
) -> None:
    topo, stderr = programmed
    assert "Pod default/b: PodNATPortRestricted" in stderr["n2"]
    r = exchange(topo, client="ext", server="n2", addr=addr("n2", family), proto="tcp", port=22)
    assert r.ok, r.error
    assert r.server_local == addr("n2", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_19_the_pod_reaches_its_own_published_port_through_the_node(
    programmed: tuple[Topology, dict[str, str]], family: int
) -> None:
    topo, _ = programmed
    r = exchange(topo, client="pod_b", server="pod_b", addr=addr("n2", family), port=TCP[1], server_port=TCP[2])
    assert r.ok, r.error
    assert r.client_reply_from == addr("n2", family)
    # From a pod on another node: its own address is kept.
    r = exchange(topo, client="pod_a", server="pod_b", addr=addr("n2", family), port=TCP[1], server_port=TCP[2])
    assert r.ok, r.error
    assert r.server_peer == EXT_A[family] or r.server_peer == addr("pod_a", family)
    assert r.client_reply_from == addr("n2", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_19_the_whole_ip_path_beside_it_is_untouched(
    programmed: tuple[Topology, dict[str, str]], family: int
) -> None:
    topo, _ = programmed
    r = exchange(topo, client="ext", server="pod_a", addr=EXT_A[family], proto="udp")
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)
    assert r.client_reply_from == EXT_A[family]


def test_row_19_a_conflict_goes_to_the_older_pod(topo: Topology, tmp_path: Path) -> None:
    one = {"entries": [{"srcPort": 19000, "dstPort": 9000}]}
    real = "pod_b"
    try:
        # The real pod is older: it wins, the other one is told.
        stderr = apply(
            topo,
            cluster(
                pod("real", real, "n2", one, created="2026-01-01T00:00:00Z"),
                pod("ghost", "10.244.2.99", "n2", one, created="2026-01-02T00:00:00Z"),
            ),
            tmp_path,
        )
        assert "Pod default/ghost: PodNATPortConflict" in stderr["n2"]
        r = exchange(topo, client="ext", server=real, addr=addr("n2", 4), port=19000, server_port=9000)  # type: ignore[arg-type]
        assert r.ok, r.error
        # Now the other one is older: the port goes to its (absent) address.
        stderr = apply(
            topo,
            cluster(
                pod("real", real, "n2", one, created="2026-01-03T00:00:00Z"),
                pod("ghost", "10.244.2.99", "n2", one, created="2026-01-02T00:00:00Z"),
            ),
            tmp_path,
        )
        assert "Pod default/real: PodNATPortConflict" in stderr["n2"]
        r = exchange(topo, client="ext", server=real, addr=addr("n2", 4), port=19000, server_port=9000, timeout=1.0)  # type: ignore[arg-type]
        assert not r.ok
    finally:
        apply(topo, cluster(), tmp_path)


def test_row_19_bad_json_publishes_nothing_of_that_pod_and_is_reported(topo: Topology, tmp_path: Path) -> None:
    try:
        stderr = apply(topo, cluster(pod("b", "pod_b", "n2", '{"entries": [')), tmp_path)
        assert "Pod default/b: InvalidPodNATAnnotation" in stderr["n2"]
        r = exchange(topo, client="ext", server="n2", addr=addr("n2", 4), port=TCP[1])
        assert r.ok, r.error  # the host's, not the pod's
    finally:
        apply(topo, cluster(), tmp_path)


def test_row_19_a_whole_ip_backend_does_not_publish(topo: Topology, tmp_path: Path) -> None:
    try:
        stderr = apply(topo, cluster(pod("a", "pod_a", "n1", {"entries": ENTRIES[:1]})), tmp_path)
        assert "Pod default/a: PodNATOnManagedPod" in stderr["n1"]
        r = exchange(topo, client="ext", server="n1", addr=addr("n1", 4), port=TCP[1])
        assert r.ok, r.error
    finally:
        apply(topo, cluster(), tmp_path)


# --------------------------------------------------------------------------- a deleted pod's conntrack entries

SETTINGS = ModelSettings(
    service_cidrs=tuple(map(ipaddress.ip_network, ("10.96.0.0/12", "fd00:10:96::/112"))),
    podnat=PodNatSettings(default_sources=(ipaddress.ip_address("192.0.2.12"), ipaddress.ip_address("2001:db8:2::12"))),
)


class Node(NetnsThread):
    """Node n2 driven from here (as tests/nft/test_conntrack.py does): a thread in its
    namespace, an engine, and the agent's conntrack cleaner."""

    def __init__(self, topo: Topology) -> None:
        super().__init__(topo.netns_path("n2"))
        self.engine = Engine(backend=NetnsBackend(self))
        self.cleaner = ConntrackCleaner(background=False)

    def sync(self, doc: dict[str, Any]) -> Plan:
        state = build_state_from_objects(doc["items"], node_name="n2", settings=SETTINGS)
        return self.engine.sync(compile_table(state, node_name="n2")).plan

    def entries(self, family: int, dport: int) -> list[str]:
        return self.call(_entries, family, dport)


def _entries(family: int, dport: int) -> list[str]:
    from pyroute2 import Conntrack

    with Conntrack(nfgen_family=socket.AF_INET6 if family == 6 else socket.AF_INET) as ct:
        return [
            f"{e.tuple_orig.saddr}:{e.tuple_orig.sport} -> {e.tuple_reply.saddr}:{e.tuple_reply.sport}"
            for e in ct.dump_entries()
            if e.tuple_orig.dport == dport
        ]


@pytest.mark.parametrize("family", FAMILIES)
def test_row_19_a_deleted_pods_mapping_and_conntrack_entries_go(
    make_topo: Callable[..., Topology], family: int
) -> None:
    topo = make_topo()
    node = Node(topo)
    node.sync(cluster(pod("b", "pod_b", "n2", {"entries": ENTRIES})))
    sport = 40000 + family
    r = exchange(topo, client="ext", server="pod_b", addr=addr("n2", family), proto="udp", port=UDP[1],
                 server_port=UDP[2], sport=sport)  # type: ignore[arg-type]  # fmt: skip
    assert r.ok, r.error
    assert any(addr("pod_b", family) in e for e in node.entries(family, UDP[1]))
    plan = node.sync(cluster())
    # The stale entry at work: without the cleaner the same 5-tuple still reaches the pod.
    r = exchange(topo, client="ext", server="pod_b", addr=addr("n2", family), proto="udp", port=UDP[1],
                 server_port=UDP[2], sport=sport)  # type: ignore[arg-type]  # fmt: skip
    assert r.ok, "the stale entry should still lead to the pod before cleaning"
    before = node.cleaner.deleted_total
    node.call(node.cleaner, plan)
    assert node.cleaner.failures == 0
    assert node.cleaner.deleted_total > before
    assert not any(addr("pod_b", family) in e for e in node.entries(family, UDP[1]))
    # The same 5-tuple now reaches the host: the port is no longer published.
    r = exchange(topo, client="ext", server="n2", addr=addr("n2", family), proto="udp", port=UDP[1], sport=sport)
    assert r.ok, r.error
    assert r.server_peer == addr("ext", family)


def test_the_addresses_a_srcip_may_name_leave_out_service_vip_links(topo: Topology) -> None:
    """kube-proxy's IPVS mode puts every ClusterIP, external and LoadBalancer IP on the dummy
    ``kube-ipvs0``: those are Services' addresses, not the node's. A secondary address of the
    node's own interface is the node's. (A veth stands in for the dummy: this kernel may lack
    the dummy module; the name is what counts.)"""
    script = (
        "ip link add kube-ipvs0 type veth peer name kipvs-peer && ip addr add 10.96.0.1/32 dev kube-ipvs0"
        " && ip addr add 198.51.100.77/32 dev kube-ipvs0 && ip addr add 192.0.2.211/32 dev eth0"
    )
    assert topo.exec("n2", ["sh", "-c", script]).returncode == 0
    try:
        code = "from wholeip.agent.hostaddr import _read; print(sorted(map(str, _read()[1])))"
        out = topo.exec("n2", [sys.executable, "-c", code])
        assert out.returncode == 0, out.stderr
        addresses = set(json.loads(out.stdout.replace("'", '"')))
        assert "192.0.2.211" in addresses
        assert topo.addr("n2", 4) in addresses
        assert not addresses & {"10.96.0.1", "198.51.100.77"}
    finally:
        topo.exec("n2", ["sh", "-c", "ip link del kube-ipvs0; ip addr del 192.0.2.211/32 dev eth0"])
