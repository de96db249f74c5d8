"""Stale conntrack entries on a real kernel, with real traffic, IPv4 and IPv6.

The nodes of the two-node topology are programmed from this process (an Engine per
node, over libnftables in the node's namespace), so each test holds the Plan of
every commit and hands it to a :class:`ConntrackCleaner` running in that node's
namespace, exactly as the agent's ``after_commit`` hook does.

Each test first shows the stale entry at work (the same 5-tuple still goes where
the old mapping sent it: the check that fails without the cleaner), then cleans,
then sends the same 5-tuple again and sees it follow the new mapping at once, and
checks that unrelated entries are still there. The last test runs the agent
itself (``wholeip run`` in the sandbox) to check that the hook is wired.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from wholeip.agent.conntrack import ConntrackCleaner, Entry, Pyroute2Netlink, Query
from wholeip.core.elements import compile_table
from wholeip.core.index import build_state_from_objects
from wholeip.engine import Engine
from wholeip.nft.diff import Plan
from wholeip.settings import ModelSettings
from wholeip_testkit.netns import NetnsBackend, NetnsThread
from wholeip_testkit.sandbox import POD_IP, Sandbox, wait_for
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

T = TypeVar("T")
EXT_A = {4: "203.0.113.10", 6: "2001:db8:100::10"}
EXT_B = {4: "203.0.113.20", 6: "2001:db8:100::20"}
FAMILIES = (4, 6)
SETTINGS = ModelSettings(service_cidrs=tuple(map(ipaddress.ip_network, ("10.96.0.0/12", "fd00:10:96::/112"))))


def addr(role: str, family: int) -> str:
    return Topology.addr(role, family)  # type: ignore[arg-type]


def service(name: str, ips: dict[int, str], created: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "creationTimestamp": created,
            "annotations": {"networking.cozystack.io/wholeIP": "true"},
        },
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 1}]},
        "status": {"loadBalancer": {"ingress": [{"ip": ips[4]}, {"ip": ips[6]}]}},
    }


def cluster(a_pod: str | None = "pod_a") -> list[dict[str, Any]]:
    """Service ``b`` on pod B (never changes), Service ``a`` on ``a_pod`` (None: no ready pod)."""
    return [
        *Sandbox.nodes_manifest(),
        service("b", EXT_B, "2025-01-01T00:00:00Z"),
        *Sandbox.slices_manifest("b", "pod_b"),
        service("a", EXT_A, "2026-01-01T00:00:00Z"),
        *Sandbox.slices_manifest("a", a_pod or "pod_a", ready=a_pod is not None),
    ]


@dataclass(frozen=True)
class Flow:
    """What one conntrack entry says about a flow (orig and reply tuples)."""

    proto: int
    orig_src: str
    orig_dst: str
    sport: int
    dport: int
    reply_src: str
    reply_dst: str


class Recording(Pyroute2Netlink):
    """The real ctnetlink client, keeping the dumps it was asked for in ``dumps``; ``entries``:
    the size of the table it reports (None: the kernel's own)."""

    def __init__(self, dumps: list[tuple[int, Query | None]] | None = None, entries: int | None = None) -> None:
        super().__init__()
        self.dumps = [] if dumps is None else dumps
        self.entries = entries

    def count(self) -> int | None:
        return super().count() if self.entries is None else self.entries

    async def dump(self, version: int, query: Query | None) -> AsyncIterator[Entry]:
        self.dumps.append((version, query))
        async for entry in super().dump(version, query):
            yield entry


def filtering() -> Recording:
    """A client that reports a table too big to dump whole, so that the kernel-filtered
    dumps (CTA_FILTER) are what these tests drive."""
    return Recording(entries=10**9)


class Node(NetnsThread):
    """One node of the topology driven from here: a thread inside its namespace, an engine."""

    def __init__(self, topo: Topology, name: str) -> None:
        super().__init__(topo.netns_path(name))  # type: ignore[arg-type]
        self.name = name
        self.engine = Engine(backend=NetnsBackend(self))
        self.cleaner = ConntrackCleaner(background=False, netlink=filtering)

    def sync(self, objects: list[dict[str, Any]]) -> Plan:
        state = build_state_from_objects(objects, node_name=self.name, settings=SETTINGS)
        return self.engine.sync(compile_table(state, node_name=self.name)).plan

    def clean(self, plan: Plan) -> int:
        """The agent's hook, in this node's namespace; how many entries it deleted."""
        before = self.cleaner.deleted_total
        self.call(self.cleaner, plan)
        assert self.cleaner.failures == 0
        return self.cleaner.deleted_total - before

    def flows(self, family: int) -> list[Flow]:
        return self.call(_flows, family)

    def flush(self) -> None:
        self.call(_flush)


def _flows(family: int) -> list[Flow]:
    from pyroute2 import Conntrack

    with Conntrack(nfgen_family=socket.AF_INET6 if family == 6 else socket.AF_INET) as ct:
        return [
            Flow(
                e.tuple_orig.proto,
                e.tuple_orig.saddr,
                e.tuple_orig.daddr,
                e.tuple_orig.sport,
                e.tuple_orig.dport,
                e.tuple_reply.saddr,
                e.tuple_reply.daddr,
            )
            for e in ct.dump_entries()
        ]


def _flush() -> None:
    from pyroute2 import Conntrack

    with Conntrack() as ct:
        ct.flush()


class Cluster:
    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.nodes = {name: Node(topo, name) for name in ("n1", "n2")}

    def sync(self, objects: list[dict[str, Any]]) -> dict[str, Plan]:
        return {name: node.sync(objects) for name, node in self.nodes.items()}

    def clean(self, plans: dict[str, Plan]) -> dict[str, int]:
        return {name: self.nodes[name].clean(plan) for name, plan in plans.items()}


@pytest.fixture(scope="module")
def nodes(topo: Topology) -> Iterator[Cluster]:
    c = Cluster(topo)
    try:
        c.sync(cluster())
        yield c
    finally:
        for node in c.nodes.values():
            node.close()


@pytest.fixture
def kube(nodes: Cluster) -> Iterator[Cluster]:
    """The initial mappings, an empty conntrack table on both nodes; put back afterwards."""
    for node in nodes.nodes.values():
        node.flush()
    yield nodes
    nodes.clean(nodes.sync(cluster()))
    for family in FAMILIES:
        nodes.topo.route_external(EXT_A[family], "n1")


def ports() -> tuple[int, int]:
    return random.randint(20000, 40000), random.randint(40001, 60000)


def one(flows: list[Flow], sport: int, dport: int) -> Flow:
    matching = [f for f in flows if f.sport == sport and f.dport == dport and f.proto == socket.IPPROTO_UDP]
    assert len(matching) == 1, flows
    return matching[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_hairpin_udp_flow_follows_a_moved_mapping_at_once(kube: Cluster, family: int) -> None:
    topo, n2 = kube.topo, kube.nodes["n2"]
    ext, pod_a, pod_b, node = EXT_A[family], addr("pod_a", family), addr("pod_b", family), addr("n2", family)
    sport, port = ports()
    first = exchange(topo, client="n2", server="pod_a", addr=ext, proto="udp", port=port, sport=sport)
    assert first.ok, first.error
    assert first.server_local == pod_a
    # Two flows the cleanup must leave alone: the same node to another external IP (on
    # pod B), and to pod A's own address (reply source pod A, but never through the IP).
    o_sport, o_port = ports()
    other = exchange(topo, client="n2", server="pod_b", addr=EXT_B[family], proto="udp", port=o_port, sport=o_sport)
    d_sport, d_port = ports()
    direct = exchange(topo, client="n2", server="pod_a", addr=pod_a, proto="udp", port=d_port, sport=d_sport)
    assert other.ok, other.error
    assert direct.ok, direct.error
    assert one(n2.flows(family), sport, port) == Flow(17, node, ext, sport, port, pod_a, node)

    plans = kube.sync(cluster(a_pod="pod_b"))
    # Without the cleanup, conntrack keeps replaying the old DNAT: the flow still goes to pod A.
    stuck = exchange(topo, client="n2", server="pod_b", addr=ext, proto="udp", port=port, sport=sport, timeout=1.0)
    assert not stuck.ok
    assert stuck.server_peer is None

    assert kube.clean(plans) == {"n1": 0, "n2": 1}
    moved = exchange(topo, client="n2", server="pod_b", addr=ext, proto="udp", port=port, sport=sport)
    assert moved.ok, moved.error
    assert moved.server_local == pod_b
    assert moved.client_reply_from == ext
    flows = n2.flows(family)
    assert one(flows, sport, port).reply_src == pod_b
    assert one(flows, o_sport, o_port) == Flow(17, node, EXT_B[family], o_sport, o_port, pod_b, node)
    assert one(flows, d_sport, d_port) == Flow(17, node, pod_a, d_sport, d_port, pod_a, node)


DELEGATED_IP = {4: "10.96.0.70", 6: "fd00:10:96::70"}


def delegated(pod: str, *, tcp_port: int, udp_port: int) -> list[dict[str, Any]]:
    """Delegated Service ``d`` (labelled for us): its ClusterIP's UDP and TCP ports on ``pod``."""
    ports = [
        {"name": "u", "port": udp_port, "protocol": "UDP"},
        {"name": "t", "port": tcp_port, "protocol": "TCP"},
    ]
    svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "d",
            "namespace": "default",
            "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
        },
        "spec": {"type": "ClusterIP", "clusterIPs": [DELEGATED_IP[4], DELEGATED_IP[6]], "ports": ports},
    }
    slices = Sandbox.slices_manifest("d", pod)
    for sl in slices:
        sl["ports"] = ports
    return [svc, *slices]


@pytest.mark.parametrize("family", FAMILIES)
def test_delegated_udp_flow_leaves_a_gone_endpoint_tcp_stays(kube: Cluster, family: int) -> None:
    """Row 16: when a delegated Service's endpoint goes, its UDP entries to the ClusterIP
    are deleted (the next datagram picks a live endpoint); TCP entries are left to finish,
    as kube-proxy does."""
    topo, n2 = kube.topo, kube.nodes["n2"]
    cip = DELEGATED_IP[family]
    sport, port = ports()
    t_sport, t_port = ports()
    kube.sync([*cluster(), *delegated("pod_a", tcp_port=t_port, udp_port=port)])
    first = exchange(topo, client="pod_b", server="pod_a", addr=cip, proto="udp", port=port, sport=sport)
    assert first.ok, first.error
    tcp = exchange(topo, client="pod_b", server="pod_a", addr=cip, proto="tcp", port=t_port, sport=t_sport)
    assert tcp.ok, tcp.error
    assert one(n2.flows(family), sport, port).reply_src == addr("pod_a", family)

    plans = kube.sync([*cluster(), *delegated("pod_b", tcp_port=t_port, udp_port=port)])
    stuck = exchange(topo, client="pod_b", server="pod_b", addr=cip, proto="udp", port=port, sport=sport, timeout=1.0)
    assert not stuck.ok  # conntrack still replays the old DNAT to pod A

    assert kube.clean(plans) == {"n1": 0, "n2": 1}
    moved = exchange(topo, client="pod_b", server="pod_b", addr=cip, proto="udp", port=port, sport=sport)
    assert moved.ok, moved.error
    assert moved.client_reply_from == cip
    flows = n2.flows(family)
    assert one(flows, sport, port).reply_src == addr("pod_b", family)
    assert [f for f in flows if f.sport == t_sport and f.proto == socket.IPPROTO_TCP]  # TCP left alone


@pytest.mark.parametrize("family", FAMILIES)
def test_delegated_node_port_udp_flow_leaves_a_gone_endpoint(kube: Cluster, family: int) -> None:
    """Row 17: the same for a NodePort (the flow's destination is the node's address)."""
    topo, n1 = kube.topo, kube.nodes["n1"]
    node_port = random.randint(30000, 32767)
    sport, port = ports()

    def objects(pod: str) -> list[dict[str, Any]]:
        objs = delegated(pod, tcp_port=port + 1, udp_port=port)
        objs[0]["spec"]["type"] = "NodePort"
        objs[0]["spec"]["ports"][0]["nodePort"] = node_port
        return [*cluster(), *objs]

    kube.sync(objects("pod_a"))
    node = addr("n1", family)
    first = exchange(
        topo, client="ext", server="pod_a", addr=node, proto="udp", port=node_port, sport=sport, server_port=port
    )
    assert first.ok, first.error
    plans = kube.sync(objects("pod_b"))
    stuck = exchange(
        topo,
        client="ext",
        server="pod_b",
        addr=node,
        proto="udp",
        port=node_port,
        sport=sport,
        server_port=port,
        timeout=1.0,
    )
    assert not stuck.ok  # conntrack still replays the old DNAT to pod A
    assert kube.clean(plans) == {"n1": 1, "n2": 0}
    moved = exchange(
        topo, client="ext", server="pod_b", addr=node, proto="udp", port=node_port, sport=sport, server_port=port
    )
    assert moved.ok, moved.error
    assert one(n1.flows(family), sport, node_port).reply_src == addr("pod_b", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_background_cleaner_in_the_nodes_namespace(kube: Cluster, family: int) -> None:
    """The same move seen from n1's own processes (pod A is local there), cleaned by the
    cleaner's own thread, as in the agent: started from n1's thread, it works in n1's
    namespace."""
    topo, n1 = kube.topo, kube.nodes["n1"]
    ext, pod_a, pod_b, node = EXT_A[family], addr("pod_a", family), addr("pod_b", family), addr("n1", family)
    sport, port = ports()
    first = exchange(topo, client="n1", server="pod_a", addr=ext, proto="udp", port=port, sport=sport)
    assert first.ok, first.error
    assert one(n1.flows(family), sport, port) == Flow(17, node, ext, sport, port, pod_a, node)

    plans = kube.sync(cluster(a_pod="pod_b"))
    stuck = exchange(topo, client="n1", server="pod_b", addr=ext, proto="udp", port=port, sport=sport, timeout=1.0)
    assert not stuck.ok
    assert stuck.server_peer is None

    # The table's size as the cleaner reads it, in n1's namespace: these few flows.
    assert n1.call(Pyroute2Netlink().count) == len(n1.flows(4)) + len(n1.flows(6))
    dumps: list[tuple[int, Query | None]] = []
    cleaner = ConntrackCleaner(netlink=lambda: Recording(dumps))
    n1.call(cleaner, plans["n1"])  # returns at once
    assert cleaner.wait_idle(10)
    assert (cleaner.deleted_total, cleaner.failures) == (1, 0)
    # A few entries: one whole dump of each family is cheaper than the filtered ones.
    assert sorted(dumps) == [(4, None), (6, None)]
    moved = exchange(topo, client="n1", server="pod_b", addr=ext, proto="udp", port=port, sport=sport)
    assert moved.ok, moved.error
    assert moved.server_local == pod_b
    assert one(n1.flows(family), sport, port).reply_src == pod_b


@pytest.mark.parametrize("family", FAMILIES)
def test_untranslated_flow_from_the_gap_is_deleted_when_the_ip_is_mapped(kube: Cluster, family: int) -> None:
    """A client keeps sending while the IP is nobody's (old pod gone, new one not ready): its
    entries have no DNAT, and would keep bypassing the mapping once it comes back."""
    topo, n2 = kube.topo, kube.nodes["n2"]
    ext, pod_a, node = EXT_A[family], addr("pod_a", family), addr("n2", family)
    assert sum(kube.clean(kube.sync(cluster(a_pod=None))).values()) == 0
    sport, port = ports()
    gap = exchange(topo, client="n2", server="pod_a", addr=ext, proto="udp", port=port, sport=sport, timeout=1.0)
    assert not gap.ok
    assert one(n2.flows(family), sport, port) == Flow(17, node, ext, sport, port, ext, node)

    plans = kube.sync(cluster())
    stuck = exchange(topo, client="n2", server="pod_a", addr=ext, proto="udp", port=port, sport=sport, timeout=1.0)
    assert not stuck.ok

    deleted = kube.clean(plans)
    assert deleted["n2"] == 1
    back = exchange(topo, client="n2", server="pod_a", addr=ext, proto="udp", port=port, sport=sport)
    assert back.ok, back.error
    assert back.server_local == pod_a
    assert one(n2.flows(family), sport, port).reply_src == pod_a


# --------------------------------------------------------------------------- the agent


@pytest.fixture(scope="module")
def sb(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    with Sandbox(workdir=tmp_path_factory.mktemp("sandbox")) as sandbox:
        sandbox.wait_ready()
        yield sandbox


def test_agent_deletes_stale_entries_after_a_move(sb: Sandbox) -> None:
    ext = ("203.0.113.10", "2001:db8:100::10")
    sb.apply([sb.service_manifest("ct"), *sb.slices_manifest("ct", "pod_a")])
    sb.set_load_balancer_ips("ct", ext)
    sb.kubectl("annotate", "service", "ct", "networking.cozystack.io/wholeIP=true")
    sb.wait_mapping(ext[0], POD_IP["pod_a"][0])
    sport, port = ports()
    first = exchange(sb.t, client="n2", server="pod_a", addr=ext[0], proto="udp", port=port, sport=sport)
    assert first.ok, first.error

    sb.apply(sb.slices_manifest("ct", "pod_b"))
    sb.wait_mapping(ext[0], POD_IP["pod_b"][0])
    wait_for(
        lambda: sb.metrics("n2").get("wholeip_conntrack_deleted_total", 0.0) >= 1,
        within=15,
        what="n2's agent to delete the stale entry",
    )
    moved = exchange(sb.t, client="n2", server="pod_b", addr=ext[0], proto="udp", port=port, sport=sport)
    assert moved.ok, moved.error
    assert moved.server_local == POD_IP["pod_b"][0]
    assert "conntrack cleanup failed" not in sb.agent_log("n2")
