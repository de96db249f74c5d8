"""sessionAffinity ClientIP across endpoint changes, with its timeout (docs/datapath.md row
17, the README's "Delegated Services"): real traffic through the kernel.

Each node runs what the agent runs: one index that follows the changes (so it knows the
front-end's generations) and an engine that commits to the node's namespace. The clients are
many source addresses, each a client of its own: on the outside host, to the Service's
NodePort on n1, and on n1's host network, to its ClusterIP (both families; n2 routes the
latter back to n1); the endpoints answer with their own name.

* Every client keeps its endpoint when a third endpoint joins, while each of them used it
  within the timeout (the new slot table alone would move about a third of them);
* once the timeout has passed without a connection, the clients take the new slot table
  (some move to the newcomer);
* an endpoint that goes is not kept for anybody: its clients move, the others stay.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from tests.nft.test_delegated import CLUSTER_IP, NODE_IP, POD_C, POD_IP, service, slices

from wholeip.agent.reconcile import Changes, Incremental, Snapshot, Syncer
from wholeip.engine import Engine
from wholeip.settings import ModelSettings
from wholeip_testkit.netns import NetnsBackend, NetnsThread
from wholeip_testkit.sandbox import Sandbox
from wholeip_testkit.topology import Topology

pytestmark = pytest.mark.kernel

SETTINGS = ModelSettings()
TIMEOUT = 10
"""The Service's timeoutSeconds: one of the fixed classes (no rounding)."""
CLIENTS = 24
PORT = 30082  # the "aff" Service's NodePort for port 80 (tests/nft/test_delegated.py)
PODS = ("pod_a", "pod_b", "pod_c")
POD_IPS = {**POD_IP, "pod_c": POD_C}
POD_NODES = {"pod_a": "n1", "pod_b": "n2", "pod_c": "n1"}

SERVER = """
import socket, sys, threading
name = sys.argv[1]
def serve(family):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 8080))
    s.listen(128)
    while True:
        c, _ = s.accept()
        c.sendall(name.encode())
        c.close()
threading.Thread(target=serve, args=(socket.AF_INET6,), daemon=True).start()
print("ready", flush=True)
serve(socket.AF_INET)
"""

CLIENT = """
import json, socket, sys
addr, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
family = socket.AF_INET6 if ":" in addr else socket.AF_INET
out = {}
for src in sources:
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(2.0)
    s.bind((src, 0))
    try:
        s.connect((addr, port))
        out[src] = s.recv(64).decode()
    except OSError as e:
        out[src] = "error: " + str(e)
    finally:
        s.close()
print(json.dumps(out))
"""


def sources(family: int, kind: str = "nodeport") -> list[str]:
    """The clients: on ext for the NodePort, on n1's loopback for the ClusterIP."""
    if kind == "nodeport":
        return [f"198.51.100.{100 + i}" if family == 4 else f"2001:db8:1::{0x100 + i:x}" for i in range(CLIENTS)]
    return [f"192.0.2.{100 + i}" if family == 4 else f"2001:db8:2::{0x100 + i:x}" for i in range(CLIENTS)]


class Node(NetnsThread):
    """One node: the agent's sync (its index follows the changes, as the agent's does) with
    an engine in the node's namespace."""

    def __init__(self, topo: Topology, name: str) -> None:
        super().__init__(topo.netns_path(name))  # type: ignore[arg-type]
        self.name = name
        self.objects: dict[str, dict[str, dict[str, Any]]] = {"services": {}, "endpointslices": {}}
        self.start()

    def start(self) -> None:
        """A (new) agent: a fresh index and engine, its first sync."""
        self.changes = Changes()
        self.syncer = Syncer(
            engine=Engine(backend=NetnsBackend(self)),
            snapshot=lambda: Snapshot(
                services=list(self.objects["services"].values()),
                endpoint_slices=list(self.objects["endpointslices"].values()),
                nodes=Sandbox.nodes_manifest(),
            ),
            node_name=self.name,
            model=SETTINGS,
            table="wholeip",
            mode=Incremental(
                changes=self.changes,
                lookup=lambda resource, key: self.objects[resource].get(key),
                nodes=Sandbox.nodes_manifest,
            ),
            offload=_inline,
        )
        asyncio.run(self.syncer(True))

    def update(self, *, services: Sequence[dict[str, Any]] = (), slices: Mapping[str, Any] = {}) -> None:
        for svc in services:
            key = f"{svc['metadata']['namespace']}/{svc['metadata']['name']}"
            self.objects["services"][key] = svc
            self.changes.record("services", key)
        for key, obj in slices.items():
            self.objects["endpointslices"][key] = obj
            self.changes.record("endpointslices", key)
        asyncio.run(self.syncer(False))


async def _inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def affinity_service() -> dict[str, Any]:
    return service(
        "aff",
        node_ports=True,
        affinity=True,
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": TIMEOUT}},
    )


def endpoint_slices(pods: tuple[str, ...]) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for sl in slices("aff", {pod: True for pod in pods if pod in POD_IP}):
        if "pod_c" in pods:
            family = int(sl["addressType"][-1])
            sl["endpoints"].append(
                {"addresses": [POD_IPS["pod_c"][family]], "nodeName": "n1", "conditions": {"ready": True}}
            )
        out[f"default/{sl['metadata']['name']}"] = sl
    return out


@pytest.fixture(scope="module")
def topo(kernel_ok: None) -> Iterator[Topology]:
    with Topology.create(pod_c=True) as t:
        for family in (4, 6):
            plen = 24 if family == 4 else 64
            extra = ["nodad"] if family == 6 else []
            for src in sources(family):
                t.exec("ext", ["ip", f"-{family}", "addr", "add", f"{src}/{plen}", "dev", "eth0", *extra])
            for src in sources(family, "clusterip"):
                t.exec("n1", ["ip", f"-{family}", "addr", "add", f"{src}/{32 if family == 4 else 128}", "dev", "lo"])
            # n2 (and pod_b behind it) reach n1's extra addresses through n1.
            block = "192.0.2.96/27" if family == 4 else "2001:db8:2::100/120"
            t.exec("n2", ["ip", f"-{family}", "route", "add", block, "via", NODE_IP["n1"][family]])
        servers = []
        for pod in PODS:
            proc = t.popen(pod, ["python3", "-c", SERVER, pod])  # type: ignore[arg-type]
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            servers.append(proc)
        try:
            yield t
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()


@pytest.fixture
def nodes(topo: Topology) -> Iterator[dict[str, Node]]:
    out = {name: Node(topo, name) for name in ("n1", "n2")}
    try:
        for node in out.values():
            node.update(services=[affinity_service()], slices=endpoint_slices(("pod_a", "pod_b")))
        yield out
    finally:
        for node in out.values():
            node.syncer.engine.backend.transact([{"delete": {"table": {"family": "inet", "name": "wholeip"}}}])
            node.close()


def connect_all(topo: Topology, family: int, kind: str) -> dict[str, str]:
    if kind == "nodeport":
        role, addr, port = "ext", NODE_IP["n1"][family], PORT
    else:
        role, addr, port = "n1", CLUSTER_IP["aff"][family], 80
    argv = ["python3", "-c", CLIENT, addr, str(port), ",".join(sources(family, kind))]
    proc = topo.exec(role, argv, timeout=120)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    served: dict[str, str] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(v in PODS for v in served.values()), served
    return served


def change(nodes: dict[str, Node], pods: tuple[str, ...]) -> None:
    for node in nodes.values():
        node.update(slices=endpoint_slices(pods))


KINDS = [(4, "nodeport"), (6, "nodeport"), (4, "clusterip"), (6, "clusterip")]


@pytest.mark.parametrize(("family", "kind"), KINDS)
def test_clients_keep_their_endpoint_when_one_joins(
    topo: Topology, nodes: dict[str, Node], family: int, kind: str
) -> None:
    before = connect_all(topo, family, kind)
    assert set(before.values()) == {"pod_a", "pod_b"}, before  # 24 clients over both endpoints
    assert connect_all(topo, family, kind) == before  # affinity without a change
    change(nodes, ("pod_a", "pod_b", "pod_c"))
    kept = connect_all(topo, family, kind)
    assert kept == before, "a client that used its endpoint within the timeout was moved"


@pytest.mark.parametrize(("family", "kind"), [(4, "nodeport"), (6, "clusterip")])
def test_a_restarted_agent_keeps_them(topo: Topology, nodes: dict[str, Node], family: int, kind: str) -> None:
    """The agents restart after the change: they take the generations over from the kernel's
    table (``Syncer`` at its first sync), so the recorded clients stay where they were."""
    before = connect_all(topo, family, kind)
    change(nodes, ("pod_a", "pod_b", "pod_c"))
    for node in nodes.values():
        node.start()
    assert connect_all(topo, family, kind) == before


@pytest.mark.parametrize(("family", "kind"), [(4, "nodeport"), (6, "clusterip")])
def test_after_the_timeout_the_new_slots_apply(topo: Topology, nodes: dict[str, Node], family: int, kind: str) -> None:
    before = connect_all(topo, family, kind)
    change(nodes, ("pod_a", "pod_b", "pod_c"))
    started = time.monotonic()
    kept = connect_all(topo, family, kind)
    assert time.monotonic() - started < TIMEOUT
    assert kept == before, "a client that used its endpoint within the timeout was moved"

    # Idle for longer than the timeout: their records expire and the new slot table
    # applies; about a third of the clients go to the newcomer (none would be 0.67^24).
    deadline = time.monotonic() + TIMEOUT + 15
    while True:
        time.sleep(1.0)
        if time.monotonic() - started < TIMEOUT + 1:
            continue
        after = connect_all(topo, family, kind)
        if "pod_c" in after.values() or time.monotonic() > deadline:
            break
    assert "pod_c" in after.values(), after


@pytest.mark.parametrize(("family", "kind"), [(4, "nodeport"), (4, "clusterip")])
def test_an_endpoint_that_goes_is_kept_for_nobody(
    topo: Topology, nodes: dict[str, Node], family: int, kind: str
) -> None:
    change(nodes, ("pod_a", "pod_b", "pod_c"))
    before = connect_all(topo, family, kind)
    assert set(before.values()) == set(PODS), before
    change(nodes, ("pod_a", "pod_b"))
    after = connect_all(topo, family, kind)
    assert "pod_c" not in after.values()
    stayed = [src for src in before if before[src] != "pod_c"]
    assert all(after[src] == before[src] for src in stayed), (before, after)


def test_servers_answer_directly(topo: Topology) -> None:
    """The helper servers themselves (a failure here is the test's, not the datapath's)."""
    for pod in PODS:
        node = POD_NODES[pod]
        proc = topo.exec(
            node,  # type: ignore[arg-type]
            ["python3", "-c", CLIENT, POD_IPS[pod][4], "8080", Topology.addr(node, 4)],  # type: ignore[arg-type]
        )
        assert json.loads(proc.stdout.strip().splitlines()[-1]) == {Topology.addr(node, 4): pod}  # type: ignore[arg-type]
