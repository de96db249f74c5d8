"""Delegated Services (docs/datapath.md rows 16 and 17) with real traffic, IPv4 and IPv6.

Services labelled ``service.kubernetes.io/service-proxy-name: wholeip`` are ignored by
kube-proxy; here nobody but wholeip serves their ClusterIPs and NodePorts. ``wholeip
apply`` programs both nodes of the two-node topology from a cluster file, then real
sockets check. The topology has its third pod, ``pod_c`` on n1, which is no endpoint of
any Service here: a client that only ever calls.

* ``web``: ClusterIPs (dual stack), TCP port 80 -> the named targetPort ``http`` (8080
  in the slices), UDP 53 -> 5353 by number; NodePorts 30080/30053 with
  externalTrafficPolicy Cluster; endpoints pod_a (n1) and pod_b (n2);
* ``loc``: NodePort 30081, externalTrafficPolicy Local, its one endpoint pod_b on n2;
* ``none``: no endpoint at all;
* ``half``: pod_a ready, pod_b not ready.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wholeip.core.ruleset import SKELETON
from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import start_server

pytestmark = pytest.mark.kernel

FAMILIES = (4, 6)
LABEL = {"service.kubernetes.io/service-proxy-name": "wholeip"}
CLUSTER_IP = {
    "web": {4: "10.96.0.60", 6: "fd00:10:96::60"},
    "loc": {4: "10.96.0.61", 6: "fd00:10:96::61"},
    "none": {4: "10.96.0.62", 6: "fd00:10:96::62"},
    "half": {4: "10.96.0.63", 6: "fd00:10:96::63"},
    "self": {4: "10.96.0.64", 6: "fd00:10:96::64"},
    "itp": {4: "10.96.0.65", 6: "fd00:10:96::65"},
    "aff": {4: "10.96.0.66", 6: "fd00:10:96::66"},
    "a": {4: "10.96.0.67", 6: "fd00:10:96::67"},
}
EXT_A = {4: "203.0.113.10", 6: "2001:db8:100::10"}
POD_IP = {
    "pod_a": {4: "10.244.1.10", 6: "fd00:10:244:1::10"},
    "pod_b": {4: "10.244.2.20", 6: "fd00:10:244:2::20"},
}
POD_NODE = {"pod_a": "n1", "pod_b": "n2"}
#: The third pod (on n1): a client, never an endpoint.
POD_C = {4: "10.244.1.30", 6: "fd00:10:244:1::30"}
NODE_IP = {"n1": {4: "192.0.2.11", 6: "2001:db8:2::11"}, "n2": {4: "192.0.2.12", 6: "2001:db8:2::12"}}


def service(
    name: str, *, node_ports: bool = False, local: bool = False, affinity: bool = False, **spec: Any
) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
        {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
    ]
    if node_ports:
        ports[0]["nodePort"] = 30082 if affinity else 30081 if local else 30080
        ports[1]["nodePort"] = 30055 if affinity else 30054 if local else 30053
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": LABEL,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "type": "NodePort" if node_ports else "ClusterIP",
            "clusterIP": CLUSTER_IP[name][4],
            "clusterIPs": [CLUSTER_IP[name][4], CLUSTER_IP[name][6]],
            "externalTrafficPolicy": "Local" if local else "Cluster",
            "ports": ports,
            **spec,
        },
    }


def slices(name: str, pods: dict[str, bool]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-{v}", "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": f"IPv{v}",
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"},
            ],
            "endpoints": [
                {"addresses": [POD_IP[pod][v]], "nodeName": POD_NODE[pod], "conditions": {"ready": ready}}
                for pod, ready in pods.items()
            ],
        }
        for v in FAMILIES
    ]


def cluster(*, half_ready: bool = False) -> dict[str, Any]:
    items = [
        *Sandbox.nodes_manifest(),
        service("web", node_ports=True),
        *slices("web", {"pod_a": True, "pod_b": True}),
        service("loc", node_ports=True, local=True, healthCheckNodePort=32000),
        *slices("loc", {"pod_b": True}),
        service("none"),
        service("half"),
        *slices("half", {"pod_a": True, "pod_b": not half_ready}),
        service("self"),
        *slices("self", {"pod_a": True}),
        service("itp", internalTrafficPolicy="Local"),
        *slices("itp", {"pod_a": True, "pod_b": True}),
        service("aff", node_ports=True, affinity=True, sessionAffinity="ClientIP"),
        *slices("aff", {"pod_a": True, "pod_b": True}),
    ]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def apply(topo: Topology, doc: dict[str, Any], tmp: Path) -> None:
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    for node in ("n1", "n2"):
        argv = [sys.executable, "-m", "wholeip", "apply", "-f", str(path), "--node-name", node]
        result = topo.exec(node, [*argv, "--service-cidr", "10.96.0.0/12,fd00:10:96::/112"])
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def topo(kernel_ok: None) -> Iterator[Topology]:
    """The two-node topology plus ``pod_c`` (this module's own, overriding conftest's)."""
    with Topology.create(pod_c=True) as t:
        yield t


@pytest.fixture(scope="module")
def programmed(topo: Topology, tmp_path_factory: pytest.TempPathFactory) -> Topology:
    apply(topo, cluster(), tmp_path_factory.mktemp("delegated"))
    return topo


def _client(
    topo: Topology, role: str, addr: str, port: int, proto: str = "tcp", timeout: float = 2.0
) -> dict[str, Any]:
    argv = topo.python(
        role,
        "wholeip_testkit.probe",
        ["client", f"--proto={proto}", f"--addr={addr}", f"--port={port}", f"--timeout={timeout}"],
    )  # type: ignore[arg-type]
    proc = topo.exec(role, argv, timeout=timeout + 10)  # type: ignore[arg-type]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result: dict[str, Any] = json.loads(lines[-1]) if lines else {"ok": False, "error": proc.stderr}
    return result


def spread(
    topo: Topology, client: str, addr: str, port: int, *, n: int, proto: str = "tcp", target: int = 8080
) -> tuple[Counter[str], list[str], int]:
    """``n`` connections from ``client`` to ``addr:port``; which pod served each (by the
    servers' peer events), the peers they saw, and how many echoes came back."""
    family = 6 if ":" in addr else 4
    servers = {
        pod: start_server(topo, pod, proto=proto, family=family, port=target, timeout=60.0, count=n)  # type: ignore[arg-type]
        for pod in POD_IP
    }
    ok = 0
    try:
        for _ in range(n):
            if _client(topo, client, addr, port, proto).get("ok"):
                ok += 1
    finally:
        served: Counter[str] = Counter()
        peers: list[str] = []
        for pod, proc in servers.items():
            proc.kill()
            out, _ = proc.communicate()
            for line in out.splitlines():
                event = json.loads(line) if line.strip() else {}
                if event.get("event") == "peer":
                    served[pod] += 1
                    peers.append(str(event.get("peer")))
    return served, peers, ok


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("client", ["pod_a", "pod_b", "pod_c", "n1"])
def test_row_16_cluster_ip_spreads_over_both_endpoints(programmed: Topology, family: int, client: str) -> None:
    """pod_a and pod_b are endpoints themselves; pod_c is not (its neighbour pod_a on n1
    and pod_b across the nodes both serve it); n1 is a node's host network."""
    served, peers, ok = spread(programmed, client, CLUSTER_IP["web"][family], 80, n=50)
    assert ok == 50, served
    assert sum(served.values()) == 50
    assert served["pod_a"] >= 5, served
    assert served["pod_b"] >= 5, served
    if client == "pod_c":
        # A pod of the cluster network calling another pod: not masqueraded, on either node.
        assert set(peers) == {POD_C[family]}, peers


@pytest.mark.parametrize("family", FAMILIES)
def test_row_16_udp_target_port_by_number(programmed: Topology, family: int) -> None:
    served, _, ok = spread(programmed, "pod_a", CLUSTER_IP["web"][family], 53, n=20, proto="udp", target=5353)
    assert ok == 20, served
    assert set(served) == {"pod_a", "pod_b"}, served


@pytest.mark.parametrize("family", FAMILIES)
def test_row_16_no_endpoints_is_refused_at_once(programmed: Topology, family: int) -> None:
    started = time.monotonic()
    result = _client(programmed, "pod_b", CLUSTER_IP["none"][family], 80, timeout=5.0)
    assert not result.get("ok")
    assert "Refused" in str(result.get("error")), result
    assert time.monotonic() - started < 4.0


@pytest.mark.parametrize("family", FAMILIES)
def test_row_16_unready_endpoint_gets_no_new_connections(programmed: Topology, family: int, tmp_path: Path) -> None:
    apply(programmed, cluster(half_ready=True), tmp_path)
    try:
        served, _, ok = spread(programmed, "n2", CLUSTER_IP["half"][family], 80, n=20)
        assert ok == 20
        assert served == Counter({"pod_a": 20})
    finally:
        apply(programmed, cluster(), tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("node", ["n1", "n2"])
def test_row_17_node_port_cluster_policy_from_outside_is_masqueraded(
    programmed: Topology, family: int, node: str
) -> None:
    served, peers, ok = spread(programmed, "ext", NODE_IP[node][family], 30080, n=20)
    assert ok == 20, served
    assert set(served) == {"pod_a", "pod_b"}, served
    assert set(peers) <= {NODE_IP["n1"][family], NODE_IP["n2"][family]}, peers


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("node", ["n1", "n2"])
def test_row_17_node_port_cluster_policy_from_a_pod_that_is_no_endpoint(
    programmed: Topology, family: int, node: str
) -> None:
    """pod_c (on n1) to the NodePort of its own node and of the other one: both endpoints
    used, every reply back, masqueraded to a node address as from outside."""
    served, peers, ok = spread(programmed, "pod_c", NODE_IP[node][family], 30080, n=20)
    assert ok == 20, served
    assert set(served) == {"pod_a", "pod_b"}, served
    assert set(peers) <= {NODE_IP["n1"][family], NODE_IP["n2"][family]}, peers


@pytest.mark.parametrize("family", FAMILIES)
def test_row_17_node_port_local_policy_keeps_the_client(programmed: Topology, family: int) -> None:
    served, peers, ok = spread(programmed, "ext", NODE_IP["n2"][family], 30081, n=5)
    assert ok == 5
    assert served == Counter({"pod_b": 5})
    assert set(peers) == {Topology.addr("ext", family)}  # type: ignore[arg-type]
    # n1 has no endpoint of ``loc``: dropped there, not refused, not forwarded.
    result = _client(programmed, "ext", NODE_IP["n1"][family], 30081, timeout=1.0)
    assert not result.get("ok")
    assert "Refused" not in str(result.get("error")), result


def test_the_skeleton_does_not_grow_with_delegated_services(programmed: Topology) -> None:
    rules = [
        line for line in programmed.nft("n1", "list", "table", "inet", "wholeip").splitlines() if 'comment "wh:' in line
    ]
    assert len(rules) == len(SKELETON.rules)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("client", ["n1", "n2"])
def test_row_16_from_the_host_network_of_either_node(programmed: Topology, family: int, client: str) -> None:
    served, _, ok = spread(programmed, client, CLUSTER_IP["web"][family], 80, n=20)
    assert ok == 20, served
    assert set(served) == {"pod_a", "pod_b"}, served


@pytest.mark.parametrize("family", FAMILIES)
def test_row_16_a_pod_reaching_itself_through_its_service_is_masqueraded(programmed: Topology, family: int) -> None:
    served, peers, ok = spread(programmed, "pod_a", CLUSTER_IP["self"][family], 80, n=3)
    assert ok == 3
    assert served == Counter({"pod_a": 3})
    assert POD_IP["pod_a"][family] not in peers, peers  # its own address could not answer itself


@pytest.mark.parametrize("family", FAMILIES)
def test_row_16_internal_traffic_policy_local_stays_on_the_node(programmed: Topology, family: int) -> None:
    for client in ("pod_a", "pod_b"):
        served, _, ok = spread(programmed, client, CLUSTER_IP["itp"][family], 80, n=10)
        assert ok == 10
        assert served == Counter({client: 10}), (client, served)


def test_rows_16_17_affinity_pins_a_client(programmed: Topology) -> None:
    """ClusterIPs and NodePorts of both families: every connection of one client reaches the
    same endpoint (an IPv6 ClusterIP through ``svcuport6``: its endpoints share port 8080)."""
    for client, addr, port in (
        ("pod_b", CLUSTER_IP["aff"][4], 80),
        ("pod_c", CLUSTER_IP["aff"][4], 80),
        ("n1", CLUSTER_IP["aff"][4], 80),
        ("pod_b", CLUSTER_IP["aff"][6], 80),
        ("pod_c", CLUSTER_IP["aff"][6], 80),
        ("n2", CLUSTER_IP["aff"][6], 80),
        ("ext", NODE_IP["n1"][4], 30082),
        ("ext", NODE_IP["n2"][6], 30082),
    ):
        served, _, ok = spread(programmed, client, addr, port, n=10)
        assert ok == 10
        assert len(served) == 1, (client, addr, served)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_16_17_a_labelled_whole_ip_services_cluster_ip_works_with_its_whole_ip(
    programmed: Topology, family: int, tmp_path: Path
) -> None:
    whole = service("a")
    whole["metadata"]["annotations"] = {"networking.cozystack.io/wholeIP": "true"}
    whole["spec"]["type"] = "LoadBalancer"
    whole["status"] = {"loadBalancer": {"ingress": [{"ip": EXT_A[4]}, {"ip": EXT_A[6]}]}}
    whole["spec"]["externalTrafficPolicy"] = "Local"
    whole["spec"]["ports"][0]["nodePort"] = 30083
    doc = cluster()
    doc["items"] += [whole, *slices("a", {"pod_a": True})]
    apply(programmed, doc, tmp_path)
    try:
        served, peers, ok = spread(programmed, "pod_b", CLUSTER_IP["a"][family], 80, n=3)
        assert ok == 3
        assert served == Counter({"pod_a": 3})
        assert set(peers) == {POD_IP["pod_b"][family]}
        served, peers, ok = spread(programmed, "ext", EXT_A[family], 8080, n=3)  # the whole IP, 1:1
        assert ok == 3
        assert served == Counter({"pod_a": 3})
        assert set(peers) == {Topology.addr("ext", family)}  # type: ignore[arg-type]
        # Its NodePort, Local: masqueraded (a whole-IP pod's packets to the outside are
        # stateless, from its external IP: the reply must come back through the node).
        served, peers, ok = spread(programmed, "ext", NODE_IP["n1"][family], 30083, n=3)
        assert ok == 3
        assert served == Counter({"pod_a": 3})
        assert Topology.addr("ext", family) not in peers  # type: ignore[arg-type]
    finally:
        apply(programmed, cluster(), tmp_path)
