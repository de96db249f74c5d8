"""Egress IP (docs/datapath.md row 18) with real traffic, IPv4 and IPv6.

``wholeip apply`` programs both nodes from a cluster file: the egress Service ``mail``
(LoadBalancer IPs ``EGRESS_IP``) whose endpoint pods are pod A (n1) and pod B (n2), and a
MetalLB ServiceL2Status saying which node announces the IP (the holder). The router
sends the egress IP to the holder, as the holder's ARP/NDP answers would. On the holder
the members' new flows to the outside are SNATed to the egress IP; on the other node
``apply`` also programs the policy routing (:mod:`wholeip.agent.policyroute`) that takes
the marked packets of its members to the holder. The outside host sees the egress IP as
the source of both pods' TCP and UDP flows, and its replies reach the right pod.

Each assertion fails without the part it is about: without the SNAT the outside host
sees the pod address and its reply has no way back (the router has no pod routes);
without the mark, rule or route pod B's packets leave n2 directly with its own address;
with a CNI's masquerade on n2 (this test installs one, as Calico's ``natOutgoing`` or
flannel would) pod B would reach the holder with n2's address, were its flow not bound
to its own address first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.nft.test_datapath import EXT_A

from wholeip.names import EGRESS_IP_ANNOTATION
from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange

pytestmark = pytest.mark.kernel

FAMILIES = (4, 6)
EGRESS_IP = {4: "203.0.113.50", 6: "2001:db8:100::50"}
CLUSTER_IP = {4: "10.96.0.50", 6: "fd00:10:96::50"}
"""A stand-in ClusterIP: an address of pod A, routed to it from both nodes."""
POD_NODE = {"pod_a": "n1", "pod_b": "n2"}
POD_IFACE = {"pod_a": "vpa", "pod_b": "vpb"}
MASQ_TABLE = "e17cni"


def addr(role: str, family: int) -> str:
    return Topology.addr(role, family)  # type: ignore[arg-type]


def egress_service(name: str = "mail", *, created: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "annotations": {EGRESS_IP_ANNOTATION: "true"},
        },
        "spec": {"type": "LoadBalancer", "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 25}]},
        "status": {"loadBalancer": {"ingress": [{"ip": EGRESS_IP[4]}, {"ip": EGRESS_IP[6]}]}},
    }


def slices(service: str, pods: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{service}-ipv{v}",
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": service},
            },
            "addressType": f"IPv{v}",
            "endpoints": [
                {"addresses": [addr(p, v)], "nodeName": POD_NODE[p], "conditions": {"ready": True}} for p in pods
            ],
        }
        for v in FAMILIES
    ]


def l2_status(service: str, node: str) -> dict[str, Any]:
    return {
        "apiVersion": "metallb.io/v1beta1",
        "kind": "ServiceL2Status",
        "metadata": {"name": f"l2-{service}", "namespace": "metallb-system"},
        "status": {
            "node": node,
            "serviceName": service,
            "serviceNamespace": "default",
            "interfaces": [{"name": "eth0"}],
        },
    }


def cluster(*, holder: str = "n1", members: tuple[str, ...] = ("pod_a", "pod_b"), whole_ip: bool = False) -> Any:
    items: list[dict[str, Any]] = [*Sandbox.nodes_manifest(), egress_service(), *slices("mail", members)]
    items.append(l2_status("mail", holder))
    if whole_ip:
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "a",
                    "namespace": "default",
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "annotations": {"networking.cozystack.io/wholeIP": "true"},
                },
                "spec": {"type": "LoadBalancer", "ports": [{"port": 1}]},
                "status": {"loadBalancer": {"ingress": [{"ip": EXT_A[4]}, {"ip": EXT_A[6]}]}},
            }
        )
        items += Sandbox.slices_manifest("a", "pod_a")
    return {"apiVersion": "v1", "kind": "List", "items": items}


def wholeip(topo: Topology, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return topo.exec(node, [sys.executable, "-m", "wholeip", *args])  # type: ignore[arg-type]


def apply(topo: Topology, doc: Any, tmp: Path, *, holder: str = "n1") -> dict[str, str]:
    """``wholeip apply`` on both nodes (their stderr), and the router sends the egress IP
    to the holder."""
    path = tmp / "cluster.json"
    path.write_text(json.dumps(doc))
    out = {}
    for node in ("n1", "n2"):
        r = wholeip(
            topo, node, "apply", "-f", str(path), "--node-name", node, "--service-cidr", "10.96.0.0/12,fd00:10:96::/112"
        )
        assert r.returncode == 0, r.stderr
        out[node] = r.stderr
    for v in FAMILIES:
        topo.route_external(EGRESS_IP[v], holder)  # type: ignore[arg-type]
    return out


def _ip(topo: Topology, role: str, *args: str) -> None:
    result = topo.exec(role, ["ip", *args])  # type: ignore[arg-type]
    assert result.returncode == 0, (role, args, result.stderr)


@pytest.fixture(scope="module")
def stand_in(topo: Topology) -> Iterator[Topology]:
    """A ClusterIP on pod A (routed there from both nodes, as a proxy's DNAT would bring
    it), and a CNI's masquerade of pod traffic leaving the pod networks on both nodes."""
    _ip(topo, "pod_a", "addr", "add", f"{CLUSTER_IP[4]}/32", "dev", "lo")
    _ip(topo, "pod_a", "addr", "add", f"{CLUSTER_IP[6]}/128", "dev", "lo", "nodad")
    for v in FAMILIES:
        _ip(topo, "n1", f"-{v}", "route", "add", CLUSTER_IP[v], "via", addr("pod_a", v), "dev", "vpa")
        _ip(topo, "n2", f"-{v}", "route", "add", CLUSTER_IP[v], "via", addr("n1", v))
    for node in ("n1", "n2"):
        topo.nft(
            node,  # type: ignore[arg-type]
            "-f",
            "-",
            input=f"""table inet {MASQ_TABLE} {{
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    ip saddr 10.244.0.0/16 ip daddr != 10.0.0.0/8 oifname "eth0" masquerade
    ip6 saddr fd00:10:244::/48 ip6 daddr != fd00::/8 oifname "eth0" masquerade
  }}
}}""",
        )
    yield topo
    for node in ("n1", "n2"):
        topo.nft(node, "delete", "table", "inet", MASQ_TABLE)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(stand_in: Topology, tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """Both pods members, n1 the holder."""
    apply(stand_in, cluster(), tmp_path_factory.mktemp("egress"))
    return stand_in


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
@pytest.mark.parametrize("pod", ["pod_a", "pod_b"], ids=["on-holder", "on-other-node"])
def test_row_18_members_leave_with_the_egress_ip_and_get_their_replies(
    served: Topology, pod: str, proto: str, family: int
) -> None:
    r = exchange(served, client=pod, server="ext", addr=addr("ext", family), proto=proto)  # type: ignore[arg-type]
    assert r.ok, r.error
    assert r.server_peer == EGRESS_IP[family]
    assert r.client_local == addr(pod, family)
    assert r.client_reply_from == addr("ext", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_18_the_source_port_is_kept_when_free(served: Topology, family: int) -> None:
    for pod in ("pod_a", "pod_b"):
        r = exchange(served, client=pod, server="ext", addr=addr("ext", family), proto="udp", sport=40017)  # type: ignore[arg-type]
        assert r.ok, r.error
        assert r.server.get("peer_port") == 40017, r.server


@pytest.mark.parametrize("family", FAMILIES)
def test_row_18_cluster_traffic_keeps_the_pod_address(served: Topology, family: int) -> None:
    r = exchange(served, client="pod_b", server="pod_a", addr=addr("pod_a", family))
    assert r.ok, r.error
    assert r.server_peer == addr("pod_b", family)
    r = exchange(served, client="pod_b", server="pod_a", addr=CLUSTER_IP[family])
    assert r.ok, r.error
    assert r.server_peer == addr("pod_b", family)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_18_a_pod_that_is_no_member_keeps_its_normal_egress(
    stand_in: Topology, tmp_path: Path, family: int
) -> None:
    apply(stand_in, cluster(members=("pod_a",)), tmp_path)
    try:
        r = exchange(stand_in, client="pod_b", server="ext", addr=addr("ext", family), proto="udp")
        # The stand-in CNI masquerades it to its node's address, as before.
        assert r.ok, r.error
        assert r.server_peer == addr("n2", family)
        r = exchange(stand_in, client="pod_a", server="ext", addr=addr("ext", family), proto="udp")
        assert r.ok, r.error
        assert r.server_peer == EGRESS_IP[family]
    finally:
        apply(stand_in, cluster(), tmp_path)


@pytest.mark.parametrize("family", FAMILIES)
def test_row_18_a_whole_ip_pod_keeps_its_whole_ip(stand_in: Topology, tmp_path: Path, family: int) -> None:
    stderr = apply(stand_in, cluster(whole_ip=True), tmp_path)
    try:
        assert "Service default/mail: EgressPodHasWholeIP" in stderr["n1"]
        r = exchange(stand_in, client="pod_a", server="ext", addr=addr("ext", family))
        assert r.ok, r.error
        assert r.server_peer == EXT_A[family]
        r = exchange(stand_in, client="pod_b", server="ext", addr=addr("ext", family))
        assert r.ok, r.error
        assert r.server_peer == EGRESS_IP[family]
    finally:
        apply(stand_in, cluster(), tmp_path)


def test_row_18_the_egress_follows_the_holder(stand_in: Topology, tmp_path: Path) -> None:
    apply(stand_in, cluster(holder="n2"), tmp_path, holder="n2")
    try:
        for family in FAMILIES:
            for pod in ("pod_a", "pod_b"):
                for proto in ("tcp", "udp"):
                    r = exchange(stand_in, client=pod, server="ext", addr=addr("ext", family), proto=proto)  # type: ignore[arg-type]
                    assert r.ok, (pod, proto, family, r.error)
                    assert r.server_peer == EGRESS_IP[family]
    finally:
        apply(stand_in, cluster(), tmp_path)
    r = exchange(stand_in, client="pod_a", server="ext", addr=addr("ext", 4))
    assert r.ok, r.error
    assert r.server_peer == EGRESS_IP[4]


def _ip_state(topo: Topology, node: str) -> dict[str, str]:
    out = {}
    for v in FAMILIES:
        out[f"rules{v}"] = topo.exec(node, ["ip", f"-{v}", "rule", "show"]).stdout  # type: ignore[arg-type]
        out[f"routes{v}"] = topo.exec(node, ["ip", f"-{v}", "route", "show", "table", "all"]).stdout  # type: ignore[arg-type]
    out["tables"] = topo.nft(node, "list", "tables")  # type: ignore[arg-type]
    return out


def test_row_18_cleanup_removes_table_rules_and_routes_and_nothing_else(stand_in: Topology, tmp_path: Path) -> None:
    apply(stand_in, cluster(), tmp_path)
    # Someone else's rule and route in a table beside ours, to be left alone.
    _ip(stand_in, "n2", "rule", "add", "fwmark", "0x1000/0xf000", "lookup", "300200", "priority", "2000")
    _ip(stand_in, "n2", "route", "add", "198.51.100.0/24", "via", addr("rtr", 4), "table", "300200")
    before = _ip_state(stand_in, "n2")
    assert "lookup 300001" in before["rules4"]
    assert "table 300001" in before["routes6"]
    try:
        r = wholeip(stand_in, "n2", "cleanup")
        assert r.returncode == 0, r.stderr
        after = _ip_state(stand_in, "n2")
        assert "300001" not in after["rules4"] + after["rules6"] + after["routes4"] + after["routes6"]
        assert "inet wholeip" not in after["tables"]
        assert f"inet {MASQ_TABLE}" in after["tables"]
        # Everything else is as it was: the other rules and routes, line for line.
        for key in ("rules4", "rules6", "routes4", "routes6"):
            assert [line for line in before[key].splitlines() if "300001" not in line] == after[key].splitlines()
        assert "lookup 300200" in after["rules4"]
        # The pod's egress is its own again (the stand-in CNI masquerades it).
        r2 = exchange(stand_in, client="pod_b", server="ext", addr=addr("ext", 4), proto="udp")
        assert r2.server_peer == addr("n2", 4)
    finally:
        _ip(stand_in, "n2", "rule", "del", "fwmark", "0x1000/0xf000", "lookup", "300200", "priority", "2000")
        _ip(stand_in, "n2", "route", "flush", "table", "300200")
        apply(stand_in, cluster(), tmp_path)


NODE_PORT = 31017
PROBE_TABLE = "e17probe"


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_row_18_replies_of_a_members_inbound_flows_are_not_steered(served: Topology, proto: str, family: int) -> None:
    """A member's replies to a flow that came in (a NodePort on its node, a published port:
    any DNAT to the pod) leave from its own node, as the flow came: only the member's own
    new flows go to the holder. Steered, they went out through the holder with the other
    node's address, a path a network that checks sources drops."""
    v = "ip" if family == 4 else "ip6"
    served.nft(
        "n2",
        "-f",
        "-",
        input=f"""table inet {PROBE_TABLE} {{
  chain probe_prerouting {{ type nat hook prerouting priority dstnat; policy accept;
    {v} daddr {addr("n2", family)} {proto} dport {NODE_PORT} dnat to {addr("pod_b", family)}
  }}
}}""",
    )
    served.nft(
        "n1",
        "-f",
        "-",
        input=f"""table inet {PROBE_TABLE} {{
  chain probe_forward {{ type filter hook forward priority 0; policy accept;
    {v} saddr {addr("n2", family)} {proto} sport {NODE_PORT} counter
  }}
}}""",
    )
    try:
        r = exchange(served, client="ext", server="pod_b", addr=addr("n2", family), proto=proto, port=NODE_PORT)  # type: ignore[arg-type]
        assert r.ok, r.error
        assert r.server_peer == addr("ext", family)
        assert r.client_reply_from == addr("n2", family)
        listing = json.loads(served.nft("n1", "-j", "list", "table", "inet", PROBE_TABLE))
        (counter,) = [e["counter"] for e in _exprs(listing) if "counter" in e]
        assert counter["packets"] == 0, "the reply went out through the holder n1"
    finally:
        for node in ("n1", "n2"):
            served.nft(node, "delete", "table", "inet", PROBE_TABLE)  # type: ignore[arg-type]


def _exprs(listing: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for item in listing["nftables"] if "rule" in item for e in item["rule"]["expr"]]
