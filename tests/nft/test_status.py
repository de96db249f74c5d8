"""``wholeip status`` on a real kernel table, with and without the API server.

The operator's way: the API server double runs inside the node's network namespace
(``--preload`` holds the cluster), ``kubectl get -o json`` there makes the cluster
file, ``wholeip apply`` writes the table, and ``wholeip status`` reads it back,
decodes it and compares it with what the API server says. Drift is made by hand
with ``nft``, as someone else editing our table would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wholeip.names import ALLOW_ICMP_ANNOTATION, PROXY_NAME_LABEL, SERVICE_NAME_LABEL, WHOLE_IP_ANNOTATION
from wholeip_testkit.netns import Netns

pytestmark = pytest.mark.kernel

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = str(ROOT / ".venv" / "bin" / "kubectl")
WHOLEIP = [sys.executable, "-m", "wholeip"]


def _node(name: str, address: str, pod_cidr: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }


def _service(name: str, lb: str, *, per_port: bool = False, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", "creationTimestamp": "2026-01-01T00:00:00Z"}
    if per_port:
        meta["labels"] = {PROXY_NAME_LABEL: "wholeip"}
        meta["annotations"] = {ALLOW_ICMP_ANNOTATION: "true"}
    else:
        meta["annotations"] = {WHOLE_IP_ANNOTATION: "true"}
    family = "IPv6" if ":" in lb else "IPv4"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "LoadBalancer",
            "ipFamilies": [family],
            "ports": spec.pop("ports", [{"name": "http", "port": 80, "protocol": "TCP"}]),
            **spec,
        },
        "status": {"loadBalancer": {"ingress": [{"ip": lb}]}},
    }


def _slice(service: str, pod: str, node: str, ports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-x", "namespace": "default", "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv6" if ":" in pod else "IPv4",
        "endpoints": [{"addresses": [pod], "nodeName": node, "conditions": {"ready": True}}],
        "ports": ports,
    }


DNS_PORTS = [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
OBJECTS = [
    _node("n1", "192.0.2.11", "10.244.1.0/24"),
    _node("n2", "192.0.2.12", "10.244.2.0/24"),
    _service("web", "198.51.100.10"),
    _slice("web", "10.244.1.10", "n1", [{"name": "http", "port": 80, "protocol": "TCP"}]),
    _service("dns", "198.51.100.11", per_port=True, ports=DNS_PORTS, loadBalancerSourceRanges=["203.0.113.0/24"]),
    _slice("dns", "10.244.2.11", "n2", DNS_PORTS),
    _service("six", "2001:db8::10"),
    _slice("six", "fd00:244:1::10", "n1", [{"name": "http", "port": 80, "protocol": "TCP"}]),
]


def wholeip(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOLEIP_") and k != "KUBECONFIG"}
    return ns.run([*WHOLEIP, *args], env=env, timeout=120)


@pytest.fixture
def node(netns: Netns, tmp_path: Path) -> Iterator[tuple[Netns, Path]]:
    """The namespace with the API double in it (the cluster above) and a kubeconfig for it."""
    assert netns.run(["ip", "link", "set", "lo", "up"]).returncode == 0
    preload = tmp_path / "preload.json"
    preload.write_text(json.dumps({"items": OBJECTS}))
    kubeconfig = tmp_path / "kubeconfig"
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns.name,
            sys.executable,
            "-m",
            "wholeip_testkit.apiserver",
            "--kubeconfig",
            str(kubeconfig),
            "--preload",
            str(preload),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not kubeconfig.exists():
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            assert time.monotonic() < deadline, "the API double did not start"
            time.sleep(0.05)
        yield netns, kubeconfig
    finally:
        server.terminate()
        server.wait(timeout=10)


def apply_from_cluster(ns: Netns, kubeconfig: Path, tmp_path: Path) -> None:
    """The cluster file as an operator makes it (ServiceCIDRs included), applied for n1."""
    got = ns.run(
        [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "get",
            "services,endpointslices,nodes,servicecidrs",
            "-A",
            "-o",
            "json",
        ],
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    path = tmp_path / "cluster.json"
    path.write_text(got.stdout)
    applied = wholeip(ns, "apply", "-f", str(path), "--node-name", "n1")
    assert applied.returncode == 0, applied.stderr


def status(ns: Netns, *args: str) -> tuple[int, dict[str, Any]]:
    result = wholeip(ns, "status", "--node-name", "n1", "-o", "json", *args)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_status_lists_each_mapping_from_the_kernel_and_is_in_sync_with_the_cluster(
    node: tuple[Netns, Path], tmp_path: Path
) -> None:
    ns, kubeconfig = node
    apply_from_cluster(ns, kubeconfig, tmp_path)
    code, out = status(ns, "--kubeconfig", str(kubeconfig))
    assert code == 0, out
    by_ip = {m["externalIP"]: m for m in out["kernel"]["mappings"]}
    assert list(by_ip) == ["198.51.100.10", "198.51.100.11", "2001:db8::10"]
    web, dns, six = by_ip.values()
    assert (web["podIP"], web["mode"], web["ports"], web["sourceRanges"]) == ("10.244.1.10", "whole-ip", None, None)
    assert (web["podHere"], web["egress"], web["icmp"]) == (True, True, True)
    assert (dns["podIP"], dns["mode"], dns["ports"]) == ("10.244.2.11", "per-port", ["tcp/53", "udp/53"])
    assert (dns["sourceRanges"], dns["icmp"], dns["podHere"], dns["filteredAtPodNode"]) == (
        ["203.0.113.0/24"],
        True,
        False,
        True,
    )
    assert (six["podIP"], six["podHere"]) == ("fd00:244:1::10", True)
    assert out["kernel"]["elements"]["ingress4"] == 2
    assert out["kernel"]["elements"]["egress4"] == 1
    assert out["kernel"]["stray"] == {}
    # The service networks came from the cluster's ServiceCIDR, and the kernel agrees with it.
    assert out["cluster"]["serviceNetworksFrom"] == "ServiceCIDR"
    assert out["cluster"]["serviceNetworks"] == ["10.96.0.0/12", "fd00:10:96::/112"]
    assert "10.96.0.0/12" in out["kernel"]["clusterNetworks"]
    assert out["drift"]["inSync"] is True
    assert out["exitCode"] == 0
    # The text form: one line per external IP, as ipvsadm -Ln would.
    text = wholeip(ns, "status", "--node-name", "n1", "--kubeconfig", str(kubeconfig))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(line.split()[:5] == ["198.51.100.10", "->", "10.244.1.10", "whole-ip", "all"] for line in lines)
    dns_line = next(line for line in lines if line.startswith("198.51.100.11"))
    assert dns_line.split() == [
        "198.51.100.11",
        "->",
        "10.244.2.11",
        "per-port",
        "tcp/53,udp/53",
        "203.0.113.0/24",
        "yes",
        "elsewhere",
    ]
    assert "drift: none" in text.stdout


def test_without_the_api_the_kernel_part_stands(node: tuple[Netns, Path], tmp_path: Path) -> None:
    ns, kubeconfig = node
    apply_from_cluster(ns, kubeconfig, tmp_path)
    # Not asked: exit 0, and no cluster part.
    code, out = status(ns, "--no-api")
    assert code == 0
    assert out["cluster"] is None
    assert out["drift"] is None
    assert len(out["kernel"]["mappings"]) == 3
    # Asked, but nobody answers (a kubeconfig pointing at a closed port): exit 3, kernel shown.
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(kubeconfig.read_text().replace(_server_port(kubeconfig), "1"))
    code, out = status(ns, "--kubeconfig", str(dead), "--api-timeout", "5")
    assert code == 3, out
    assert out["cluster"]["reachable"] is False
    assert out["cluster"]["error"]
    assert out["drift"] is None
    assert len(out["kernel"]["mappings"]) == 3


def _server_port(kubeconfig: Path) -> str:
    import yaml

    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    return str(server.rsplit(":", 1)[1])


def test_an_element_deleted_by_hand_is_drift(node: tuple[Netns, Path], tmp_path: Path) -> None:
    ns, kubeconfig = node
    apply_from_cluster(ns, kubeconfig, tmp_path)
    deleted = ns.run(["nft", "delete", "element", "inet", "wholeip", "ingress4", "{ 198.51.100.10 }"])
    assert deleted.returncode == 0, deleted.stderr
    added = ns.run(["nft", "add", "element", "inet", "wholeip", "ingress4", "{ 198.51.100.99 : 10.244.1.99 }"])
    assert added.returncode == 0, added.stderr
    code, out = status(ns, "--kubeconfig", str(kubeconfig))
    assert code == 1, out
    drift = out["drift"]
    assert drift["inSync"] is False
    assert drift["missing"] == {"ingress4": [["198.51.100.10", "10.244.1.10"]]}
    assert drift["extra"] == {"ingress4": [["198.51.100.99", "10.244.1.99"]]}
    assert [m["externalIP"] for m in drift["mappings"]["missing"]] == ["198.51.100.10"]
    assert [m["externalIP"] for m in drift["mappings"]["extra"]] == ["198.51.100.99"]
    # The kernel alone already shows the orphan: web's egress element has no ingress left.
    assert out["kernel"]["stray"]["egress4"] == [["10.244.1.10", "198.51.100.10"]]
    text = wholeip(ns, "status", "--node-name", "n1", "--kubeconfig", str(kubeconfig))
    assert text.returncode == 1
    assert "missing ingress4 198.51.100.10 . 10.244.1.10" in text.stdout
    assert "extra   ingress4 198.51.100.99 . 10.244.1.99" in text.stdout
    # apply repairs it, and status says so.
    apply_from_cluster(ns, kubeconfig, tmp_path)
    code, out = status(ns, "--kubeconfig", str(kubeconfig))
    assert (code, out["drift"]["inSync"]) == (0, True)


def test_no_table_is_drift_when_the_cluster_has_mappings(node: tuple[Netns, Path]) -> None:
    ns, kubeconfig = node
    code, out = status(ns, "--no-api")
    assert (code, out["kernel"]) == (0, {"table": False})
    code, out = status(ns, "--kubeconfig", str(kubeconfig))
    assert code == 1
    assert out["drift"]["tableMissing"] is True
    assert len(out["drift"]["mappings"]["missing"]) == 3


def test_status_without_a_kernel_table_reads_nothing_else(netns: Netns) -> None:
    # Another table in the namespace is not ours: status neither shows nor touches it.
    assert netns.run(["nft", "add", "table", "inet", "other"]).returncode == 0
    code, out = status(netns, "--no-api")
    assert (code, out["kernel"]) == (0, {"table": False})
    assert netns.run(["nft", "list", "table", "inet", "other"]).returncode == 0


def test_status_compares_with_a_cluster_file(node: tuple[Netns, Path], tmp_path: Path) -> None:
    """``-f``: the cluster file instead of the API server (as ``diff`` reads it); the same
    drift, found without a kubeconfig."""
    ns, kubeconfig = node
    apply_from_cluster(ns, kubeconfig, tmp_path)
    path = tmp_path / "cluster.json"
    code, out = status(ns, "-f", str(path))
    assert (code, out["drift"]["inSync"]) == (0, True), out
    deleted = ns.run(["nft", "delete", "element", "inet", "wholeip", "ingress4", "{ 198.51.100.10 }"])
    assert deleted.returncode == 0, deleted.stderr
    code, out = status(ns, "-f", str(path))
    assert code == 1, out
    assert out["drift"]["missing"] == {"ingress4": [["198.51.100.10", "10.244.1.10"]]}
    both = wholeip(ns, "status", "--node-name", "n1", "-f", str(path), "--no-api")
    assert both.returncode == 2
    assert "give one" in both.stderr
