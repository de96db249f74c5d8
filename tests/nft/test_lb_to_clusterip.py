"""``--lb-to-clusterip`` (docs/datapath.md row 20) with real traffic, IPv4 and IPv6.

The hole it fills, rebuilt in the topology: kube-proxy in IPVS mode binds every
LoadBalancer IP to a dummy interface (kube-ipvs0) on every node, so a pod or a node
process that addresses one lands in its own node's stack; with
``externalTrafficPolicy: Local`` nothing answers there on a node without a local endpoint
(kubernetes issue 75262). Here each node carries the LoadBalancer IPs as local addresses
(on its loopback) and nothing listens on them: without the redirect, every exchange
below is refused.

The stand-in for the proxy's ClusterIP (this test's own, no proxy runs here): each
Service's ClusterIP is an address of its endpoint pod (on its loopback), and the nodes
route it there, as a proxy's DNAT of the ClusterIP would bring it. That is the remote
case (an endpoint on another node than the client's) or the local one, as each test
says. Two Services nobody manages 1:1: ``web-a`` served by pod A (on n1), ``web-b`` by
pod B (on n2); Service ``a`` maps pod A 1:1 as in the other datapath tests.

Each assertion fails without the rule it is about: without the prerouting DNAT a pod is
refused by its own node; without the masquerade a node's process leaves with the
LoadBalancer IP as its source (the address the kernel picks for a local destination)
and the endpoint's reply lands on the endpoint's node, which holds that address too;
with the guard on sources removed, the outside client would reach pod A instead of the
node that answers for the address.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.nft.test_datapath import FAMILIES, addr, cluster

from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

PORT = 8080
LB = {
    "web-a": {4: "203.0.113.30", 6: "2001:db8:100::30"},
    "web-b": {4: "203.0.113.40", 6: "2001:db8:100::40"},
}
CLUSTER_IP = {
    "web-a": {4: "10.96.0.30", 6: "fd00:10:96::30"},
    "web-b": {4: "10.96.0.40", 6: "fd00:10:96::40"},
}
ENDPOINT = {"web-a": "pod_a", "web-b": "pod_b"}
POD_NODE = {"pod_a": "n1", "pod_b": "n2"}
POD_IFACE = {"pod_a": "vpa", "pod_b": "vpb"}


def lb_service(name: str, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    """A LoadBalancer Service wholeip does not manage (no annotation, no label)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
        "spec": {
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Local",
            "clusterIP": CLUSTER_IP[name][4],
            "clusterIPs": [CLUSTER_IP[name][4], CLUSTER_IP[name][6]],
            "ports": [
                {"name": "tcp", "port": PORT, "protocol": "TCP"},
                {"name": "udp", "port": PORT, "protocol": "UDP"},
            ],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": LB[name][4]}, {"ip": LB[name][6]}]}},
    }


def apply(topo: Topology, tmp: Path, *, services: tuple[str, ...] = ("web-a", "web-b"), flag: bool = True) -> None:
    doc = cluster()
    doc["items"] += [lb_service(name) for name in services]
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    for node in ("n1", "n2"):
        argv = [sys.executable, "-m", "wholeip", "apply", "-f", str(path), "--node-name", node]
        argv += ["--service-cidr", "10.96.0.0/12,fd00:10:96::/112"]
        result = topo.exec(node, [*argv, "--lb-to-clusterip", "true" if flag else "false"])
        assert result.returncode == 0, result.stderr


def _ip(topo: Topology, role: str, *args: str) -> None:
    result = topo.exec(role, ["ip", *args])  # type: ignore[arg-type]
    assert result.returncode == 0, (role, args, result.stderr)


@pytest.fixture(scope="module")
def stand_in(topo: Topology) -> Topology:
    """The LoadBalancer IPs local on each node (as on kube-ipvs0), each ClusterIP on its
    endpoint pod and routed there from both nodes."""
    for node in ("n1", "n2"):
        for name in LB:  # on lo: this kernel has no dummy interfaces; local either way
            _ip(topo, node, "addr", "add", f"{LB[name][4]}/32", "dev", "lo")
            _ip(topo, node, "addr", "add", f"{LB[name][6]}/128", "dev", "lo", "nodad")
    for name, pod in ENDPOINT.items():
        home, other = POD_NODE[pod], "n2" if POD_NODE[pod] == "n1" else "n1"
        _ip(topo, pod, "addr", "add", f"{CLUSTER_IP[name][4]}/32", "dev", "lo")
        _ip(topo, pod, "addr", "add", f"{CLUSTER_IP[name][6]}/128", "dev", "lo", "nodad")
        for v in FAMILIES:
            # Via the pod's own address: IPv6 neighbour discovery answers for addresses of
            # the receiving interface only, not for the pod's loopback.
            _ip(topo, home, f"-{v}", "route", "add", CLUSTER_IP[name][v], "via", addr(pod, v), "dev", POD_IFACE[pod])
            _ip(topo, other, f"-{v}", "route", "add", CLUSTER_IP[name][v], "via", addr(home, v))
    # Outside traffic to the LoadBalancer IPs arrives at n1, which answers for them itself.
    for name in LB:
        for v in FAMILIES:
            topo.route_external(LB[name][v], "n1")
    return topo


@pytest.fixture
def on(stand_in: Topology, tmp_path: Path) -> Topology:
    apply(stand_in, tmp_path)
    return stand_in


def elements(topo: Topology, node: str, name: str) -> list[Any]:
    listing = json.loads(topo.nft(node, "-j", "list", "set" if "pods" in name else "map", "inet", "wholeip", name))  # type: ignore[arg-type]
    body = next(v for item in listing["nftables"] for k, v in item.items() if k in ("set", "map"))
    return list(body.get("elem", []))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_pod_reaches_the_cluster_ip_of_a_remote_endpoint(on: Topology, family: int, proto: str) -> None:
    """Pod B (n2) -> web-a's LB IP -> its ClusterIP, served on n1: the endpoint sees the pod's
    own address (pods are not masqueraded: the reply to the pod IP comes back through
    n2, where conntrack turns its source back into the LB IP)."""
    r = exchange(on, client="pod_b", server="pod_a", addr=LB["web-a"][family], proto=proto, port=PORT)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_local == CLUSTER_IP["web-a"][family]
    assert r.server_peer == addr("pod_b", family)
    assert r.client_reply_from == LB["web-a"][family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_managed_pod_reaches_the_cluster_ip_too(on: Topology, family: int, proto: str) -> None:
    """Pod A has a whole IP of its own (Service ``a``): its packets to the outside are
    untracked and leave with that IP. To a redirected LB IP port it stays tracked, takes
    the redirect and keeps its pod IP, as any pod does towards a ClusterIP."""
    r = exchange(on, client="pod_a", server="pod_b", addr=LB["web-b"][family], proto=proto, port=PORT)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_local == CLUSTER_IP["web-b"][family]
    assert r.server_peer == addr("pod_a", family)
    assert r.client_reply_from == LB["web-b"][family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_the_node_reaches_the_cluster_ip_of_a_remote_endpoint_masqueraded(
    on: Topology, family: int, proto: str
) -> None:
    """n2's own process -> web-a's LB IP: its source would be the LB IP (a local address
    of n2, as on kube-ipvs0), which n1 holds too; masqueraded to n2's address, the reply
    comes back."""
    r = exchange(on, client="n2", server="pod_a", addr=LB["web-a"][family], proto=proto, port=PORT)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_local == CLUSTER_IP["web-a"][family]
    assert r.server_peer == addr("n2", family)
    assert r.client_reply_from == LB["web-a"][family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("service", ["web-a", "web-b"])
def test_the_node_reaches_the_cluster_ip_of_a_local_or_remote_endpoint(on: Topology, family: int, service: str) -> None:
    r = exchange(on, client="n1", server=ENDPOINT[service], addr=LB[service][family], proto="udp", port=PORT)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_local == CLUSTER_IP[service][family]
    assert r.client_reply_from == LB[service][family]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_outside_clients_are_not_redirected(on: Topology, family: int, proto: str) -> None:
    """ext -> web-a's LB IP arrives at n1 and is answered by n1 itself, unrewritten; a
    redirect would have taken it to pod A, where nothing listens."""
    r = exchange(on, client="ext", server="n1", addr=LB["web-a"][family], proto=proto, port=PORT)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_local == LB["web-a"][family]
    assert r.server_peer == addr("ext", family)
    assert r.client_reply_from == LB["web-a"][family]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_port_the_service_does_not_list_is_not_redirected(on: Topology, family: int) -> None:
    r = exchange(on, client="pod_b", server="pod_a", addr=LB["web-a"][family], proto="tcp", port=PORT + 1, timeout=1.0)  # type: ignore[arg-type]
    assert not r.ok
    assert r.server_peer is None


def test_a_deleted_services_mapping_goes(stand_in: Topology, tmp_path: Path) -> None:
    apply(stand_in, tmp_path, services=("web-b",))
    try:
        for node in ("n1", "n2"):
            keys = {
                json.dumps(e["elem"]["key"] if "elem" in e else e[0]) for e in elements(stand_in, node, "lbclusterip4")
            }
            assert not any(LB["web-a"][4] in k for k in keys)
            assert any(LB["web-b"][4] in k for k in keys)
        for family in FAMILIES:
            gone = exchange(
                stand_in, client="pod_b", server="pod_a", addr=LB["web-a"][family], proto="tcp", port=PORT, timeout=1.0
            )
            assert not gone.ok
            assert gone.server_peer is None
            kept = exchange(stand_in, client="pod_a", server="pod_b", addr=LB["web-b"][family], proto="tcp", port=PORT)
            assert kept.ok, kept.error
    finally:
        apply(stand_in, tmp_path)


def test_the_flag_off_leaves_nothing_behind(stand_in: Topology, tmp_path: Path) -> None:
    apply(stand_in, tmp_path, flag=False)
    try:
        for node in ("n1", "n2"):
            for name in ("lbclusterip4", "lbclusterip6", "localpods4", "localpods6"):
                assert elements(stand_in, node, name) == [], (node, name)
        for family in FAMILIES:
            for client, service in (("pod_b", "web-a"), ("pod_a", "web-b"), ("n2", "web-a")):
                r = exchange(
                    stand_in,
                    client=client,  # type: ignore[arg-type]
                    server=ENDPOINT[service],  # type: ignore[arg-type]
                    addr=LB[service][family],
                    proto="tcp",
                    port=PORT,
                    timeout=1.0,
                )
                assert not r.ok, (client, service, family)
                assert r.server_peer is None
    finally:
        apply(stand_in, tmp_path)


def test_sandbox_nodes_carry_the_pod_cidrs_the_redirect_needs() -> None:
    """The prerouting redirect takes the sources in this Node's spec.podCIDRs."""
    n1 = next(n for n in Sandbox.nodes_manifest() if n["metadata"]["name"] == "n1")
    assert set(n1["spec"]["podCIDRs"]) == {"10.244.1.0/24", "fd00:10:244:1::/64"}
