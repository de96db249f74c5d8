"""The sandbox: a whole cluster on one machine, for the demo and the end-to-end tests.

It puts together what the other test doubles provide:

* the two-node topology of :mod:`wholeip_testkit.topology` (namespaces, veths,
  an outside client, a router);
* the API server double, running **inside the router's namespace** on
  192.0.2.1, so the node namespaces reach it over the node bridge like kubelets
  reach a control plane; ``kubectl`` (the real binary) runs there too;
* one ``wholeip run`` process per node, inside the node's namespace, exactly as
  the DaemonSet runs it with ``hostNetwork``.

Everything is a real process; nothing is imported into the test process but
the topology. :meth:`Sandbox.close` kills every process and removes every
namespace, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wholeip_testkit.topology import NODES, Node, Topology

T = TypeVar("T")

API_HOST = "192.0.2.1"
API_PORT = 6443
PROBE_PORT = 9765
NODE_IP = {"n1": "192.0.2.11", "n2": "192.0.2.12"}
POD_IP = {"pod_a": ("10.244.1.10", "fd00:10:244:1::10"), "pod_b": ("10.244.2.20", "fd00:10:244:2::20")}
POD_NODE: dict[str, Node] = {"pod_a": "n1", "pod_b": "n2"}
SERVICE_CIDRS = "10.96.0.0/12,fd00:10:96::/112"


class SandboxError(RuntimeError):
    """Something in the sandbox did not come up or did not happen in time."""


def wait_for(check: Callable[[], T | None], *, within: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; raise after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SandboxError(f"timed out after {within:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class AgentProcess:
    node: Node
    proc: subprocess.Popen[str]
    log_path: Path


class Sandbox:
    """Topology + API server double + one agent per node."""

    def __init__(
        self, *, workdir: Path | None = None, agent_args: Sequence[str] = (), nodes: Sequence[Node] = NODES
    ) -> None:
        # ``nodes``: where start() runs an agent (none: a test runs its own, e.g. the image).
        # A workdir the sandbox made itself is removed on close unless ``keep_workdir``
        # (set it to keep the agents' logs of a failed run); one it was given is left alone.
        self.keep_workdir = workdir is not None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="wholeip-sandbox-"))
        self.kubeconfig = self.workdir / "kubeconfig"
        self.agent_args = list(agent_args)
        self.nodes = tuple(nodes)
        self.topo: Topology | None = None
        self.api: subprocess.Popen[str] | None = None
        self.agents: dict[Node, AgentProcess] = {}

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Sandbox:
        try:
            self.topo = Topology.create()
            self._start_api()
            self.apply(self.nodes_manifest())
            for node in self.nodes:
                self.start_agent(node)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for agent in self.agents.values():
            _stop(agent.proc)
        self.agents.clear()
        if self.api is not None:
            _stop(self.api)
            self.api = None
        if self.topo is not None:
            self.topo.close()
            self.topo = None
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def t(self) -> Topology:
        if self.topo is None:
            raise SandboxError("the sandbox is not running")
        return self.topo

    # ---------------------------------------------------------------- API server

    @property
    def api_url(self) -> str:
        return f"http://{API_HOST}:{API_PORT}"

    def _start_api(self) -> None:
        argv = self.t.python(
            "rtr",
            "wholeip_testkit.apiserver",
            [
                "--host",
                API_HOST,
                "--port",
                str(API_PORT),
                "--kubeconfig",
                str(self.kubeconfig),
                "--bookmark-interval",
                "5",
            ],
        )
        self.api = self.t.popen("rtr", argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        wait_for(
            lambda: self.kubeconfig.exists() and self.api_call("GET", "/version"), within=20, what="the API server"
        )

    def api_call(self, method: str, path: str) -> Any:
        """One HTTP request to the API server double (from the router's namespace)."""
        code = (
            "import sys,urllib.request\n"
            f"r=urllib.request.Request({self.api_url + path!r}, method={method!r})\n"
            "try:\n print(urllib.request.urlopen(r, timeout=3).read().decode())\n"
            "except Exception as e:\n print('ERR', e); sys.exit(1)\n"
        )
        result = self.t.exec("rtr", [sys.executable, "-c", code], timeout=10)
        if result.returncode != 0:
            return None
        try:
            return json.loads(result.stdout)
        except ValueError:
            return result.stdout or True

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Real kubectl, from the router's namespace, against the double."""
        kubectl = str(Path(sys.executable).parent / "kubectl")
        result = self.t.exec("rtr", [kubectl, "--kubeconfig", str(self.kubeconfig), *args], input=input, timeout=30)
        if check and result.returncode != 0:
            raise SandboxError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def apply(self, objects: list[dict[str, Any]]) -> str:
        # One YAML document per object, as people write manifests.
        return self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(objects)).stdout

    # ---------------------------------------------------------------- agents

    def start_agent(self, node: Node, *, extra_args: Sequence[str] = ()) -> AgentProcess:
        """Start ``wholeip run`` in the node (its log is appended to the node's log file)."""
        log_path = self.workdir / f"agent-{node}.log"
        argv = self.t.python(
            node,
            "wholeip",
            [
                "run",
                "--node-name",
                node,
                "--kubeconfig",
                str(self.kubeconfig),
                "--service-cidr",
                SERVICE_CIDRS,
                "--bind-address",
                NODE_IP[node],
                "--port",
                str(PROBE_PORT),
                "--min-sync-interval",
                "0.1",
                "--max-sync-interval",
                "10",
                "--log-format",
                "json",
                *self.agent_args,
                *extra_args,
            ],
        )
        with log_path.open("a") as log:
            proc = self.t.popen(node, argv, stdout=log, stderr=subprocess.STDOUT)
        agent = AgentProcess(node, proc, log_path)
        self.agents[node] = agent
        return agent

    def kill_agent(self, node: Node, sig: int = signal.SIGTERM) -> int:
        agent = self.agents.pop(node)
        agent.proc.send_signal(sig)
        return agent.proc.wait(timeout=30)

    def probe(self, node: Node, path: str) -> tuple[int, str]:
        """GET one of the agent's probe endpoints, from inside the node (status, body)."""
        code = (
            "import urllib.request,urllib.error\n"
            f"u='http://{NODE_IP[node]}:{PROBE_PORT}{path}'\n"
            "try:\n r=urllib.request.urlopen(u, timeout=5); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n print(e.code); print(e.read().decode())\n"
            "except Exception as e:\n print(0); print(e)\n"
        )
        out = self.t.exec(node, [sys.executable, "-c", code], timeout=10).stdout
        status, _, body = out.partition("\n")
        return int(status or 0), body

    def wait_ready(self, *, within: float = 30) -> float:
        """Until every running agent answers /readyz with 200; the seconds it took."""
        started = time.monotonic()
        for node in self.agents:

            def ready(node: Node = node) -> bool:
                return self.probe(node, "/readyz")[0] == 200

            wait_for(ready, within=within, what=f"{node} agent ready")
        return time.monotonic() - started

    def agent_log(self, node: Node) -> str:
        return (self.workdir / f"agent-{node}.log").read_text(errors="replace")

    def agent_events(self, node: Node, *, current: bool = True) -> list[dict[str, Any]]:
        """The node's JSON log lines, parsed; ``current``: only those of the running process
        (after its last ``agent started``; the log file spans restarts)."""
        events: list[dict[str, Any]] = []
        for line in self.agent_log(node).splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                if current and event.get("event") == "agent started":
                    events.clear()
                events.append(event)
        return events

    def metrics(self, node: Node, *, strict: bool = False) -> dict[str, float]:
        """The agent's ``/metrics`` as ``{'name{a="x",b="y"}': value}``, labels sorted by name
        (empty when it does not answer; ``strict``: raise instead, for a baseline that a
        later reading is compared with)."""
        status, body = self.probe(node, "/metrics")
        if status != 200:
            if strict:
                raise SandboxError(f"the {node} agent's /metrics did not answer: {status} {body.strip()}")
            return {}
        samples: dict[str, float] = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                name, brace, labels = key.partition("{")
                if brace:
                    key = name + "{" + ",".join(sorted(labels.rstrip("}").split(","))) + "}"
                samples[key] = float(value)
        return samples

    def api_up(self) -> bool:
        """The API server double answers (from the router's namespace)."""
        return bool(self.api_call("GET", "/version"))

    def resume_api(self) -> None:
        """End the double's outage (``POST /_double/stop``) now: SIGUSR1 to its process."""
        if self.api is None:
            raise SandboxError("the API server double is not running")
        self.api.send_signal(signal.SIGUSR1)

    # ---------------------------------------------------------------- kernel state

    def ingress(self, node: Node, family: int = 4) -> dict[str, str]:
        """The ingress map of a node: external IP -> pod IP."""
        out = self.t.exec(node, ["nft", "-j", "list", "map", "inet", "wholeip", f"ingress{family}"]).stdout
        if not out:
            return {}
        for obj in json.loads(out)["nftables"]:
            if "map" in obj:
                return dict(obj["map"].get("elem", []))
        return {}

    def wait_mapping(self, ext: str, pod: str | None, *, within: float = 15) -> float:
        """Until every node maps ``ext`` to ``pod`` (None: to nothing); the seconds it took."""
        family = 6 if ":" in ext else 4
        started = time.monotonic()
        for node in NODES:

            def mapped(node: Node = node) -> bool:
                return self.ingress(node, family).get(ext) == pod

            wait_for(mapped, within=within, what=f"{node}: {ext} -> {pod}")
        return time.monotonic() - started

    # ---------------------------------------------------------------- cluster objects

    @staticmethod
    def nodes_manifest() -> list[dict[str, Any]]:
        return [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": f"n{i}"},
                "spec": {"podCIDR": f"10.244.{i}.0/24", "podCIDRs": [f"10.244.{i}.0/24", f"fd00:10:244:{i}::/64"]},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": f"192.0.2.1{i}"},
                        {"type": "InternalIP", "address": f"2001:db8:2::1{i}"},
                    ]
                },
            }
            for i in (1, 2)
        ]

    @staticmethod
    def service_manifest(name: str, *, ports: Sequence[int] = (80,)) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "ipFamilyPolicy": "RequireDualStack",
                "ipFamilies": ["IPv4", "IPv6"],
                "selector": {"app": name},
                "ports": [{"name": f"p{p}", "port": p, "protocol": "TCP"} for p in ports],
            },
        }

    @staticmethod
    def slices_manifest(service: str, pod: str, *, ready: bool = True) -> list[dict[str, Any]]:
        v4, v6 = POD_IP[pod]
        return [
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{service}-{family.lower()}",
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": service},
                },
                "addressType": family,
                "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
                "endpoints": [
                    {
                        "addresses": [addr],
                        "nodeName": POD_NODE[pod],
                        "conditions": {"ready": ready},
                        "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.replace("_", "-")},
                    }
                ],
            }
            for family, addr in (("IPv4", v4), ("IPv6", v6))
        ]

    def set_load_balancer_ips(self, service: str, ips: Sequence[str]) -> None:
        """What MetalLB would do: write status.loadBalancer.ingress."""
        patch = json.dumps({"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}})
        self.kubectl("patch", "service", service, "--subresource=status", "--type=merge", "-p", patch)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
