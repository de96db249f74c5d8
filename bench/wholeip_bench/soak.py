"""``make soak``: N Services churned through the API server double against one real agent.

Everything runs in one private network namespace (the command re-executes
itself under ``unshare --net``), so the agent's nf_tables table is its own and
the host's is never touched:

* the API server double (``python -m wholeip_testkit.apiserver``), its own
  process on a free loopback port, with Nodes ``n1`` and ``n2``;
* one agent, ``wholeip run --node-name n1``, a real process with the real
  libnftables backend and the production sync timings;
* a load driver (this process, plain HTTP) that keeps a steady rate of writes:

  - **ramp**: every Service is created the way a controller and MetalLB
    create one: its EndpointSlice(s), the Service (unannotated), its
    ``status.loadBalancer`` IP, then the whole-IP annotation; one in
    ``--dual-every`` is dual stack;
  - **churn** for ``--minutes``: re-point (the slice's pod moves to a new
    address, half the time to the other node), de-annotate and re-annotate,
    delete and recreate (Service first, then its slices); plus a few bad
    Services, spread over the churn, that must each produce one Event: an
    invalid annotation value, and an external IP already claimed by an older
    Service;
  - a canary: every sample the driver re-points one reserved Service and
    times until the kernel's ``ingress4`` map holds the new pod (the
    end-to-end lag of a change under load).

Every ``--sample-interval`` seconds it samples the agent's RSS and CPU
(``/proc``), its ``/metrics`` (syncs, the sync duration histogram, Events,
informer objects) and the double's audit log (Event writes by the agent,
its lists). At the end it waits until the agent is idle, lists the double's
objects, compiles them afresh and compares with the kernel's table.

The driver orders its writes so that the cluster never shows a problem it did
not mean to (slices before the Service, IP before annotation, Service deleted
before its slices): the distinct problems are exactly the bad Services, and
an Event write beyond one per problem is a storm. Prints a table and writes
JSON; exits 1 when the final table differs or Events exceed the bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wholeip.agent import heap
from wholeip_bench import write_results
from wholeip_testkit.stats import percentile

NODE = "n1"
NODES = ("n1", "n2")
SERVICE_CIDRS = "10.96.0.0/12,fd00:10:96::/112"
NS = "default"
SVC_PATH = f"/api/v1/namespaces/{NS}/services"
SLICE_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
MERGE = "application/merge-patch+json"
DRIVER_AGENT = "wholeip-soak/1"
EVENT_BOUND = 2
"""Event writes allowed per distinct problem (1 expected; re-emits are 30 minutes apart)."""


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Config:
    services: int = 10_000
    minutes: float = 5.0
    """Length of the churn phase (the ramp before it takes services * ~4 / ramp_rate)."""
    rate: float = 100.0
    """Writes per second during the churn."""
    ramp_rate: float = 100.0
    """Writes per second while the Services are created."""
    sample_interval: float = 5.0
    warmup: float = 30.0
    """Seconds after the ramp before RSS counts as steady."""
    dual_every: int = 10
    bad: int = 10
    """Bad Services (half invalid annotation, half conflicting IP)."""
    workers: int = 8
    settle_timeout: float = 180.0
    history: int = 20_000
    """Watch history of the double (a real API server keeps minutes of it)."""
    seed: int = 1
    agent_args: tuple[str, ...] = ()
    agent_env: tuple[str, ...] = ()
    """``KEY=VALUE`` for the agent's environment (``MALLOC_ARENA_MAX=2`` ...)."""
    agent_memstats: bool = False
    """Run the agent under :func:`as_agent`: its heap figures every sample interval."""

    @staticmethod
    def quick() -> Config:
        return Config(
            services=200,
            minutes=0.2,
            rate=100.0,
            ramp_rate=150.0,
            sample_interval=1.0,
            warmup=2.0,
            bad=4,
            settle_timeout=60.0,
        )


# --------------------------------------------------------------------------- the driver's cluster


EXT4 = ipaddress.IPv4Network("100.64.0.0/10")
EXT6 = ipaddress.IPv6Network("2001:db8:100::/64")
BAD4 = ipaddress.IPv4Network("100.127.0.0/16")
WHOLE_IP = "networking.cozystack.io/wholeIP"


def pod_addr(node: int, slot: int, family: int) -> str:
    """Pod ``slot`` on node index ``node`` (0 or 1), in the Node's pod CIDRs of :func:`synth.node`."""
    if family == 4:
        return str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.128.0.0")) + (node << 16) + slot))
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("fd00:10:244::")) + (node << 64) + slot))


class Slots:
    """Pod addresses per node, never two Services on one pod (that would be a real problem)."""

    def __init__(self) -> None:
        self._next = [10, 10]
        self._used: list[set[int]] = [set(), set()]

    def take(self, node: int) -> int:
        while True:
            slot = self._next[node]
            self._next[node] = 10 + (slot - 9) % 65000
            if slot not in self._used[node]:
                self._used[node].add(slot)
                return slot

    def free(self, node: int, slot: int) -> None:
        self._used[node].discard(slot)


@dataclass(slots=True)
class Svc:
    index: int
    name: str
    dual: bool
    exists: bool = False
    annotated: bool = False
    node: int = 0
    slot: int = 0
    protected: bool = False
    """Never deleted nor de-annotated: a bad Service claims its IP, or it is the canary."""

    @property
    def families(self) -> tuple[int, ...]:
        return (4, 6) if self.dual else (4,)

    def ips(self) -> list[str]:
        ips = [str(EXT4.network_address + 1 + self.index)]
        if self.dual:
            ips.append(str(EXT6.network_address + 1 + self.index))
        return ips

    def slice_name(self, family: int) -> str:
        return f"{self.name}-ipv{family}"

    def endpoints(self, family: int) -> list[dict[str, Any]]:
        return [
            {
                "addresses": [pod_addr(self.node, self.slot, family)],
                "nodeName": NODES[self.node],
                "conditions": {"ready": True},
            }
        ]

    def slice(self, family: int) -> dict[str, Any]:
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": self.slice_name(family),
                "namespace": NS,
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": f"IPv{family}",
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
            "endpoints": self.endpoints(family),
        }


def service_body(name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": False,
            "selector": {"app": name},
            "ports": [{"name": "p80", "port": 80, "protocol": "TCP"}],
        },
    }


def node_body(name: str, index: int) -> dict[str, Any]:
    from wholeip_testkit import synth

    node = synth.node(name, index, dual_stack=True)
    node["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
    return node


# --------------------------------------------------------------------------- helpers


class Pacer:
    """A steady rate of writes shared by every worker; falling behind never bursts more than 1 s."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._next: float | None = None

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next is None or self._next < now - 1.0:
            self._next = now
        delay = self._next - now
        self._next += 1.0 / self.rate
        if delay > 0:
            await asyncio.sleep(delay)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_metrics(text: str) -> dict[str, Any]:
    """The figures the soak reads from the agent's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {
        "syncs": Counter(),
        "events": Counter(),
        "buckets": Counter(),
        "duration_count": 0.0,
        "duration_sum": 0.0,
        "informer_objects": {},
        "watch_restarts": 0.0,
        "mappings": 0.0,
        "problems": 0.0,
    }
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "wholeip_syncs_total":
                out["syncs"][s.labels["result"]] += s.value
            elif s.name == "wholeip_events_total":
                out["events"][s.labels["result"]] += s.value
            elif s.name == "wholeip_sync_duration_seconds_bucket":
                out["buckets"][float(s.labels["le"])] += s.value
            elif s.name == "wholeip_sync_duration_seconds_count":
                out["duration_count"] += s.value
            elif s.name == "wholeip_sync_duration_seconds_sum":
                out["duration_sum"] += s.value
            elif s.name == "wholeip_informer_objects":
                out["informer_objects"][s.labels["resource"]] = s.value
            elif s.name == "wholeip_watch_restarts_total":
                out["watch_restarts"] += s.value
            elif s.name == "wholeip_mappings":
                out["mappings"] += s.value
            elif s.name == "wholeip_problems":
                out["problems"] += s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile`` over cumulative ``{le: count}`` (linear within a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = le, count
    return lower


def slope_per_minute(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return None
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return None
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var


def pct(values: list[float], q: float) -> float | None:
    return percentile(values, q) if values else None


# --------------------------------------------------------------------------- the run


@dataclass
class Sample:
    t: float
    phase: str
    rss_mib: float | None
    cpu_s: float | None
    api_rss_mib: float | None
    ops: int
    event_writes: int
    agent_lists: int
    syncs_success: float
    syncs_noop: float
    syncs_error: float
    duration_count: float
    watch_restarts: float
    informer_services: float
    mappings: float
    problems: float
    buckets: dict[float, float] = field(default_factory=dict)


class Soak:
    def __init__(self, cfg: Config, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self.rng = random.Random(cfg.seed)
        self.api: subprocess.Popen[str] | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.metrics_url = ""
        self.session: Any = None
        self.pacer = Pacer(cfg.ramp_rate)
        self.slots = Slots()
        self.svcs = [
            Svc(i, f"svc-{i}", dual=cfg.dual_every > 0 and i % cfg.dual_every == 0) for i in range(cfg.services)
        ]
        self.busy: set[int] = set()
        self.deleted: set[int] = set()
        """Services the churn deleted (to recreate)."""
        self.plain: set[int] = set()
        """Services the churn de-annotated (to re-annotate)."""
        self.ops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.bad_made: list[dict[str, str]] = []
        self.samples: list[Sample] = []
        self.lags: list[float] = []
        self.lag_timeouts = 0
        self.audit_seen = 0
        self.event_writes = 0
        self.event_write_times: list[float] = []
        self.agent_lists = 0
        self.phase = "start"
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.marks: dict[str, float] = {}

    # ------------------------------------------------------------ processes

    def start_api(self) -> None:
        argv = [sys.executable, "-m", "wholeip_testkit.apiserver", "--host", "127.0.0.1", "--port", "0"]
        argv += ["--kubeconfig", str(self.workdir / "kubeconfig"), "--history", str(self.cfg.history)]
        argv += ["--bookmark-interval", "30"]
        with (self.workdir / "api.log").open("w") as err:
            self.api = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)
        assert self.api.stdout is not None
        self.url = self.api.stdout.readline().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the API server double did not start: {(self.workdir / 'api.log').read_text()}")

    def start_agent(self) -> None:
        port = free_port()
        self.metrics_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "wholeip"]
        if self.cfg.agent_memstats:
            argv = [sys.executable, "-m", "wholeip_bench.soak", "--as-agent", str(self.workdir / "memstats.jsonl")]
            argv += [str(self.cfg.sample_interval), "--"]
        argv += ["run", "--node-name", NODE]
        argv += ["--kubeconfig", str(self.workdir / "kubeconfig"), "--service-cidr", SERVICE_CIDRS]
        argv += ["--bind-address", "127.0.0.1", "--port", str(port), "--log-format", "json"]
        argv += list(self.cfg.agent_args)
        env = dict(os.environ)
        for item in self.cfg.agent_env:
            key, _, value = item.partition("=")
            env[key] = value
        with (self.workdir / "agent.log").open("wb") as log:
            self.agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> int | None:
        code = None
        for proc in (self.agent, self.api):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(timeout=10)
            if proc is self.agent:
                code = rc
        return code

    # ------------------------------------------------------------ HTTP

    async def request(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body)
        async with self.session.request(method, self.url + path, data=data, headers={"Content-Type": ctype}) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None)

    async def write(self, kind: str, method: str, path: str, body: Any = None, ctype: str = "application/json") -> bool:
        await self.pacer.wait()
        try:
            status, data = await self.request(method, path, body, ctype)
        except Exception as exc:  # a refused or cut connection is a finding, not a crash
            status, data = 0, {"message": f"{type(exc).__name__}: {exc}"}
        self.ops[kind] += 1
        if status >= 300 or status == 0:
            self.errors[f"{kind} {status}"] += 1
            if len(self.error_examples) < 20:
                self.error_examples.append(f"{kind} {method} {path}: {status} {(data or {}).get('message')}")
            return False
        return True

    async def wait_http(self, url: str, what: str, within: float) -> None:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(Exception):
                async with self.session.get(url) as r:
                    if r.status == 200:
                        return
            if self.agent is not None and self.agent.poll() is not None:
                raise RuntimeError(f"the agent exited ({self.agent.returncode}): {self.agent_log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            await asyncio.sleep(0.2)

    async def metrics(self) -> dict[str, Any] | None:
        try:
            async with self.session.get(self.metrics_url + "/metrics") as r:
                return parse_metrics(await r.text())
        except Exception:
            return None

    async def read_audit(self) -> None:
        status, records = await self.request("GET", f"/_double/audit?since={self.audit_seen}")
        if status != 200:
            return
        self.audit_seen += len(records)
        now = time.monotonic() - self.t0
        for r in records:
            if not r["userAgent"].startswith("wholeip/"):
                continue
            if r["resource"] == "events" and r["verb"] in ("create", "patch", "update"):
                self.event_writes += 1
                self.event_write_times.append(now)
            elif r["verb"] == "list":
                self.agent_lists += 1

    # ------------------------------------------------------------ Service life

    async def create(self, svc: Svc) -> None:
        svc.node = self.rng.randrange(2)
        svc.slot = self.slots.take(svc.node)
        for family in svc.families:
            await self.write("create-slice", "POST", SLICE_PATH, svc.slice(family))
        await self.write("create-service", "POST", SVC_PATH, service_body(svc.name))
        ingress = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in svc.ips()]}}}
        await self.write("set-ip", "PATCH", f"{SVC_PATH}/{svc.name}/status", ingress, MERGE)
        svc.exists = True
        self.deleted.discard(svc.index)
        await self.annotate(svc, True)

    async def annotate(self, svc: Svc, on: bool) -> None:
        body = {"metadata": {"annotations": {WHOLE_IP: "true" if on else None}}}
        await self.write("annotate" if on else "de-annotate", "PATCH", f"{SVC_PATH}/{svc.name}", body, MERGE)
        svc.annotated = on
        if on:
            self.plain.discard(svc.index)
        else:
            self.plain.add(svc.index)

    async def repoint(self, svc: Svc, *, kind: str = "re-point") -> None:
        old = (svc.node, svc.slot)
        if self.rng.random() < 0.5:
            svc.node = 1 - svc.node
        svc.slot = self.slots.take(svc.node)
        self.slots.free(*old)
        for family in svc.families:
            body = {"endpoints": svc.endpoints(family)}
            await self.write(kind, "PATCH", f"{SLICE_PATH}/{svc.slice_name(family)}", body, MERGE)

    async def delete(self, svc: Svc) -> None:
        await self.write("delete-service", "DELETE", f"{SVC_PATH}/{svc.name}")
        for family in svc.families:
            await self.write("delete-slice", "DELETE", f"{SLICE_PATH}/{svc.slice_name(family)}")
        self.slots.free(svc.node, svc.slot)
        svc.exists = svc.annotated = False
        self.plain.discard(svc.index)
        self.deleted.add(svc.index)

    async def make_bad(self, k: int) -> None:
        if k % 2 == 0:
            name = f"bad-annotation-{k}"
            await self.write("bad", "POST", SVC_PATH, service_body(name, {WHOLE_IP: "yes"}))
            self.bad_made.append({"name": name, "reason": "InvalidAnnotation"})
            return
        # The IP of an older Service that is never deleted nor de-annotated.
        target = self.svcs[1 + (k * 7919) % (len(self.svcs) - 1)]
        target.protected = True
        name = f"bad-conflict-{k}"
        await self.write("bad", "POST", SVC_PATH, service_body(name))
        ingress = {"status": {"loadBalancer": {"ingress": [{"ip": target.ips()[0]}]}}}
        await self.write("bad", "PATCH", f"{SVC_PATH}/{name}/status", ingress, MERGE)
        await self.write("bad", "PATCH", f"{SVC_PATH}/{name}", {"metadata": {"annotations": {WHOLE_IP: "true"}}}, MERGE)
        self.bad_made.append({"name": name, "reason": "ExternalIPConflict"})

    # ------------------------------------------------------------ phases

    async def ramp(self) -> None:
        self.phase = "ramp"
        self.pacer.rate = self.cfg.ramp_rate
        todo: Iterator[Svc] = iter(self.svcs)

        async def worker() -> None:
            for svc in todo:
                await self.create(svc)

        await asyncio.gather(*(worker() for _ in range(self.cfg.workers)))

    def pick(self, ok: Callable[[Svc], bool], among: set[int] | None = None) -> Svc | None:
        """A random Service that no worker is busy with and that satisfies ``ok``."""
        pool = tuple(among) if among is not None else None
        for _ in range(50):
            if pool is not None:
                if not pool:
                    return None
                svc = self.svcs[self.rng.choice(pool)]
            else:
                svc = self.svcs[self.rng.randrange(1, len(self.svcs))]
            if svc.index not in self.busy and ok(svc):
                return svc
        return None

    async def churn_action(self) -> None:
        """One random step of the churn (a tenth of the Services at most deleted, a tenth de-annotated)."""
        cap = max(1, len(self.svcs) // 10)
        roll = self.rng.random()
        svc: Svc | None
        if roll < 0.1 and len(self.deleted) < cap:
            svc = self.pick(lambda s: s.exists and not s.protected)
            action = "delete"
        elif roll < 0.2 and self.deleted:
            svc = self.pick(lambda s: not s.exists, self.deleted)
            action = "recreate"
        elif roll < 0.3 and len(self.plain) < cap:
            svc = self.pick(lambda s: s.exists and s.annotated and not s.protected)
            action = "de-annotate"
        elif roll < 0.4 and self.plain:
            svc = self.pick(lambda s: s.exists and not s.annotated, self.plain)
            action = "re-annotate"
        else:
            svc = self.pick(lambda s: s.exists)
            action = "re-point"
        if svc is None:
            svc, action = self.pick(lambda s: s.exists), "re-point"
        if svc is None:
            await asyncio.sleep(0.01)
            return
        self.busy.add(svc.index)
        try:
            if action == "delete":
                await self.delete(svc)
            elif action == "recreate":
                await self.create(svc)
            elif action == "de-annotate":
                await self.annotate(svc, False)
            elif action == "re-annotate":
                await self.annotate(svc, True)
            else:
                await self.repoint(svc)
        finally:
            self.busy.discard(svc.index)

    async def churn(self) -> None:
        self.phase = "churn"
        self.pacer.rate = self.cfg.rate
        started = time.monotonic()
        end = started + self.cfg.minutes * 60
        bad_due = [started + (k + 0.5) * (end - started) / self.cfg.bad for k in range(self.cfg.bad)]
        # Protect the conflict targets before the churn can delete them.
        for k in range(1, self.cfg.bad, 2):
            self.svcs[1 + (k * 7919) % (len(self.svcs) - 1)].protected = True

        async def worker() -> None:
            while time.monotonic() < end:
                if bad_due and time.monotonic() >= bad_due[0]:
                    bad_due.pop(0)
                    await self.make_bad(self.cfg.bad - len(bad_due) - 1)
                    continue
                await self.churn_action()

        await asyncio.gather(*(worker() for _ in range(self.cfg.workers)))
        while bad_due:  # a very short churn still makes every bad Service
            bad_due.pop(0)
            await self.make_bad(self.cfg.bad - len(bad_due) - 1)

    async def canary(self) -> None:
        """Every sample interval: re-point the canary Service, time until the kernel has it."""
        svc = self.svcs[0]
        svc.protected = True
        while True:
            await asyncio.sleep(self.cfg.sample_interval)
            if self.phase not in ("ramp", "churn"):
                return  # the settle must see no write after it lists the objects
            if not (svc.exists and svc.annotated):
                continue
            try:
                await self.repoint(svc, kind="canary")
                want = pod_addr(svc.node, svc.slot, 4)
                started = time.monotonic()
                while await asyncio.to_thread(ingress_of, svc.ips()[0]) != want:
                    if time.monotonic() - started > 60:
                        self.lag_timeouts += 1
                        break
                    await asyncio.sleep(0.05)
                else:
                    self.lags.append(time.monotonic() - started)
            except Exception as exc:
                self.errors["canary"] += 1
                self.error_examples.append(f"canary: {type(exc).__name__}: {exc}")

    async def sample_once(self) -> None:
        assert self.agent is not None
        assert self.api is not None
        await self.read_audit()
        m = await self.metrics() or parse_metrics("")
        self.samples.append(
            Sample(
                t=round(time.monotonic() - self.t0, 2),
                phase=self.phase,
                rss_mib=proc_rss_mib(self.agent.pid),
                cpu_s=proc_cpu_s(self.agent.pid),
                api_rss_mib=proc_rss_mib(self.api.pid),
                ops=sum(self.ops.values()),
                event_writes=self.event_writes,
                agent_lists=self.agent_lists,
                syncs_success=m["syncs"]["success"],
                syncs_noop=m["syncs"]["noop"],
                syncs_error=m["syncs"]["error"],
                duration_count=m["duration_count"],
                watch_restarts=m["watch_restarts"],
                informer_services=m["informer_objects"].get("services", 0.0),
                mappings=m["mappings"],
                problems=m["problems"],
                buckets=dict(m["buckets"]),
            )
        )

    async def sampler(self) -> None:
        while True:
            await self.sample_once()
            s = self.samples[-1]
            print(
                f"  t={s.t:7.1f}s {s.phase:6} ops={s.ops:6} rss={s.rss_mib or 0:6.1f} MiB"
                f" syncs={s.syncs_success:5.0f} mappings={s.mappings:6.0f} events={s.event_writes}",
                flush=True,
            )
            await asyncio.sleep(self.cfg.sample_interval)

    async def list_all(self, path: str, api_version: str, kind: str) -> list[dict[str, Any]]:
        status, body = await self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        items: list[dict[str, Any]] = body["items"]
        for item in items:
            item["apiVersion"], item["kind"] = api_version, kind
        return items

    async def settle(self) -> dict[str, Any]:
        """Until the agent is idle, then the kernel's table against a fresh compile of the double's objects."""
        self.phase = "settle"
        services = await self.list_all("/api/v1/services", "v1", "Service")
        slices = await self.list_all("/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "EndpointSlice")
        nodes = await self.list_all("/api/v1/nodes", "v1", "Node")
        started = time.monotonic()
        deadline = started + self.cfg.settle_timeout
        last_success: float | None = None
        quiet_since = started
        idle_at: float | None = None
        attempts = 0
        result: dict[str, Any] = {}
        while time.monotonic() < deadline:
            m = await self.metrics()
            now = time.monotonic()
            if m is not None:
                if m["syncs"]["success"] != last_success:
                    last_success, quiet_since = m["syncs"]["success"], now
                objects = m["informer_objects"]
                caught_up = objects.get("services") == len(services) and objects.get("endpointslices") == len(slices)
                if caught_up and now - quiet_since >= 3.0:
                    idle_at = idle_at or now
                    attempts += 1
                    result = await asyncio.to_thread(compare, services + slices + nodes)
                    if result["equal"]:
                        break
            await asyncio.sleep(0.5)
        result.update(
            idle=idle_at is not None,
            settle_s=round(time.monotonic() - started, 2),
            idle_after_s=None if idle_at is None else round(idle_at - started, 2),
            compare_attempts=attempts,
            services=len(services),
            endpoint_slices=len(slices),
        )
        result.setdefault("equal", False)
        return result

    async def run(self) -> dict[str, Any]:
        import aiohttp

        # The model and compiler as they are now, for both the agent and the final compare.
        import wholeip.core.elements
        import wholeip.core.model  # noqa: F401

        self.start_api()
        self.session = aiohttp.ClientSession(headers={"User-Agent": DRIVER_AGENT})
        tasks: list[asyncio.Task[None]] = []
        try:
            for i, name in enumerate(NODES):
                await self.write("create-node", "POST", "/api/v1/nodes", node_body(name, i))
            self.start_agent()
            await self.wait_http(self.metrics_url + "/readyz", "the agent to be ready", 60)
            self.marks["ready"] = time.monotonic() - self.t0
            tasks = [asyncio.create_task(self.sampler()), asyncio.create_task(self.canary())]
            await self.ramp()
            self.marks["ramp_end"] = time.monotonic() - self.t0
            await self.churn()
            self.phase = "settle"
            await tasks[1]  # the canary's last re-point lands before the settle lists
            self.marks["churn_end"] = time.monotonic() - self.t0
            final = await self.settle()
            self.marks["settled"] = time.monotonic() - self.t0
            await self.sample_once()
            events = await self.list_all(f"/api/v1/namespaces/{NS}/events", "v1", "Event")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.session.close()
            agent_exit = self.stop()
        return self.report(final, events, agent_exit)

    # ------------------------------------------------------------ report

    def agent_log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self.workdir / "agent.log").read_text(errors="replace").splitlines()[-lines:])
        return ""

    def log_summary(self) -> dict[str, Any]:
        levels: Counter[str] = Counter()
        messages: Counter[str] = Counter()
        lines = 0
        with contextlib.suppress(OSError), (self.workdir / "agent.log").open(errors="replace") as f:
            for line in f:
                lines += 1
                try:
                    entry = json.loads(line)
                except ValueError:
                    levels["unparsed"] += 1
                    continue
                levels[str(entry.get("level"))] += 1
                if entry.get("level") in ("warning", "error"):
                    messages[str(entry.get("event"))] += 1
        return {"lines": lines, "levels": dict(levels), "warnings_and_errors": dict(messages)}

    def report(self, final: dict[str, Any], events: list[dict[str, Any]], agent_exit: int | None) -> dict[str, Any]:
        cfg = self.cfg
        ramp_end = self.marks["ramp_end"]
        churn_end = self.marks["churn_end"]
        steady_from = ramp_end + cfg.warmup
        steady = [s for s in self.samples if steady_from <= s.t <= churn_end and s.rss_mib is not None]
        rss_steady = [s.rss_mib for s in steady if s.rss_mib is not None]
        all_rss = [(s.t, s.rss_mib) for s in self.samples if s.rss_mib is not None]
        rss = {
            "at_ready": next((r for t, r in all_rss if t >= self.marks["ready"]), None),
            "at_ramp_end": next((r for t, r in all_rss if t >= ramp_end), None),
            "first": rss_steady[0] if rss_steady else None,
            "median": statistics.median(rss_steady) if rss_steady else None,
            "max": max(rss_steady) if rss_steady else None,
            "last": rss_steady[-1] if rss_steady else None,
            "slope_mib_per_min": slope_per_minute([(s.t, s.rss_mib) for s in steady if s.rss_mib is not None]),
            "final": all_rss[-1][1] if all_rss else None,
            "max_overall": max((r for _, r in all_rss), default=None),
        }
        # Events: writes per minute of the run, by reason in the store, and against the problems made.
        minutes: Counter[int] = Counter(int(t // 60) for t in self.event_write_times)
        span = int(self.samples[-1].t // 60) + 1 if self.samples else 1
        per_minute = [minutes.get(i, 0) for i in range(span)]
        bad_names = {b["name"] for b in self.bad_made}
        by_reason = Counter(str(e.get("reason")) for e in events)
        unexpected = [
            f"{e['involvedObject'].get('name')}: {e.get('reason')}: {e.get('message')}"
            for e in events
            if e["involvedObject"].get("name") not in bad_names
        ]
        problems = len(self.bad_made)
        event_report: dict[str, Any] = {
            "writes_total": self.event_writes,
            "distinct_problems": problems,
            "writes_per_problem": self.event_writes / problems if problems else None,
            "bound": EVENT_BOUND * problems,
            "per_minute": per_minute,
            "max_per_minute": max(per_minute, default=0),
            "events_in_store": len(events),
            "by_reason": dict(by_reason),
            "count_sum": sum(int(e.get("count") or 1) for e in events),
            "problems_with_event": len(bad_names & {e["involvedObject"].get("name") for e in events}),
            "unexpected": unexpected[:20],
            "unexpected_total": len(unexpected),
        }
        # Syncs: the whole run, and the steady churn alone (histogram deltas).
        first, last = self.samples[0], self.samples[-1]
        before = next((s for s in self.samples if s.t >= steady_from), last)
        after = next((s for s in reversed(self.samples) if s.t <= churn_end), last)

        def quantiles(a: Sample, b: Sample) -> dict[str, Any]:
            delta = {le: b.buckets.get(le, 0.0) - a.buckets.get(le, 0.0) for le in b.buckets}
            p50, p99 = histogram_quantile(0.5, delta), histogram_quantile(0.99, delta)
            return {
                "syncs": int(b.duration_count - a.duration_count),
                "success": int(b.syncs_success - a.syncs_success),
                "noop": int(b.syncs_noop - a.syncs_noop),
                "error": int(b.syncs_error - a.syncs_error),
                "p50_s": None if p50 is None else round(p50, 4),
                "p99_s": None if p99 is None else round(p99, 4),
                "seconds": round(b.t - a.t, 1),
            }

        cpu = {
            "total_s": last.cpu_s,
            "churn_share": (
                (after.cpu_s - before.cpu_s) / (after.t - before.t)
                if after.cpu_s is not None and before.cpu_s is not None and after.t > before.t
                else None
            ),
        }
        ramp_ops = sum(v for k, v in self.ops.items() if k.startswith(("create", "set-ip")))
        storm = self.event_writes > EVENT_BOUND * max(1, problems)
        # Every bad Service has no backend, so by the ownership rule (kube/events.py) n1, the
        # smallest Ready Node, reports it: one missing is an Event lost (n2 runs no agent here).
        unreported = problems - event_report["problems_with_event"]
        ok = (
            bool(final.get("equal"))
            and not storm
            and unreported == 0
            and event_report["unexpected_total"] == 0
            and not self.errors
            and agent_exit == 0
        )
        return {
            "ok": ok,
            "config": asdict(cfg),
            "marks_s": {k: round(v, 1) for k, v in self.marks.items()},
            "ops": {
                "total": sum(self.ops.values()),
                "by_kind": dict(self.ops),
                "errors": dict(self.errors),
                "error_examples": self.error_examples,
                "ramp_rate_achieved": round(
                    (self.samples_ops_at(ramp_end) - self.samples_ops_at(self.marks["ready"]))
                    / max(1e-9, ramp_end - self.marks["ready"]),
                    1,
                ),
                "churn_rate_achieved": round(
                    (self.samples_ops_at(churn_end) - self.samples_ops_at(ramp_end)) / max(1e-9, churn_end - ramp_end),
                    1,
                ),
                "ramp_writes": ramp_ops,
            },
            "rss_mib": rss,
            "cpu": cpu,
            "events": event_report,
            "storm": storm,
            "unreported_problems": unreported,
            "syncs": {"whole_run": quantiles(first, last), "steady_churn": quantiles(before, after)},
            "canary_lag_s": {
                "n": len(self.lags),
                "p50": pct(self.lags, 0.5),
                "p99": pct(self.lags, 0.99),
                "max": max(self.lags, default=None),
                "timeouts": self.lag_timeouts,
            },
            "agent": {
                "exit_code": agent_exit,
                "lists": self.agent_lists,
                "watch_restarts": last.watch_restarts,
                "log": self.log_summary(),
            },
            "final": final,
            "agent_memstats": self.memstats(steady_from, churn_end),
            "code": code_version(),
            "samples": [{k: v for k, v in asdict(s).items() if k != "buckets"} for s in self.samples],
        }

    def memstats(self, start: float, end: float) -> dict[str, Any] | None:
        """First and last heap figures of the steady churn (from :func:`as_agent`), and their slopes."""
        path = self.workdir / "memstats.jsonl"
        if not path.exists():
            return None
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        # The agent's clock started a little after ours; its rows carry wall time.
        steady = [r for r in rows if start <= r["wall"] - self.wall0 <= end]
        if len(steady) < 2:
            return {"rows": len(rows)}
        out: dict[str, Any] = {"rows": len(rows)}
        for key in steady[0]:
            if key in ("wall", "t"):
                continue
            points = [(r["wall"] - self.wall0, float(r[key])) for r in steady if r.get(key) is not None]
            out[key] = {
                "first": steady[0][key],
                "last": steady[-1][key],
                "max": max(p[1] for p in points) if points else None,
                "slope_per_min": slope_per_minute(points),
            }
        return out

    def samples_ops_at(self, t: float) -> int:
        best = self.samples[0].ops if self.samples else 0
        for s in self.samples:
            if s.t > t:
                break
            best = s.ops
        return best


def heap_figures() -> dict[str, Any]:
    """This process's heap: Python's live blocks and objects, glibc's arenas (MiB)."""
    import gc
    import threading

    row: dict[str, Any] = {
        "wall": time.time(),
        "rss_mib": proc_rss_mib(os.getpid()),
        "py_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
        "threads": threading.active_count(),
    }
    row.update(heap.figures() or {})
    return row


def as_agent(stats_path: str, interval: float, argv: list[str]) -> int:
    """``wholeip`` with ``argv``, plus a thread that appends :func:`heap_figures` to ``stats_path``.

    Diagnostics only (``--agent-memstats``): it tells a leak (live Python
    blocks grow) from allocator retention (RSS grows, live blocks do not).
    """
    import threading

    from wholeip.cli import main as cli

    def write() -> None:
        with open(stats_path, "a") as out:
            while True:
                out.write(json.dumps(heap_figures()) + "\n")
                out.flush()
                time.sleep(interval)

    threading.Thread(target=write, name="memstats", daemon=True).start()
    return cli.main(argv)


def code_version() -> dict[str, Any]:
    """The commit the run used, and the files of the product, the test kit and the
    benchmarks that differed from it (empty outside a git checkout)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
        return out.stdout

    dirty = [
        line[3:] for line in git("status", "--porcelain", "--", "src", "testkit", "bench").splitlines() if line.strip()
    ]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(), "dirty": dirty}


def ingress_of(ip: str) -> str | None:
    """What the kernel's ingress4 map holds for ``ip`` (None when nothing).

    ``nft get element`` looks one element up without listing the map (``-j``
    is ignored by this command: it prints ``elements = { ip : pod }``).
    """
    out = subprocess.run(
        ["nft", "get", "element", "inet", "wholeip", "ingress4", "{", ip, "}"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"elements = \{ ([^\s:]+) : ([^\s},]+)", out.stdout) if out.returncode == 0 else None
    return found.group(2) if found and found.group(1) == ip else None


def compare(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The kernel's table against a fresh compile of ``objects``."""
    from wholeip.cli.flags import parse_cidrs
    from wholeip.core.elements import compile_table, count_mappings
    from wholeip.core.index import build_state_from_objects
    from wholeip.engine import Engine
    from wholeip.nft.diff import diff
    from wholeip.nft.libnft import LibnftBackend
    from wholeip.settings import ModelSettings

    state = build_state_from_objects(
        objects, node_name=NODE, settings=ModelSettings(service_cidrs=parse_cidrs(SERVICE_CIDRS))
    )
    desired = compile_table(state, node_name=NODE)
    observed = Engine(backend=LibnftBackend()).observe()
    plan = diff(desired, observed)
    return {
        "equal": plan.empty,
        "diff": plan.summary(),
        "diff_commands": [json.dumps(c.to_json())[:400] for c in plan.commands[:10]],
        "mappings": count_mappings(desired),
        "problems": Counter(p.reason for p in state.problems),
    }


# --------------------------------------------------------------------------- output


def _f(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def print_report(r: dict[str, Any]) -> None:
    cfg, rss, ev, sy, fin = r["config"], r["rss_mib"], r["events"], r["syncs"], r["final"]
    marks = r["marks_s"]
    print()
    print(
        f"churn soak: {cfg['services']} Services, ramp {marks['ramp_end'] - marks['ready']:.0f}s at"
        f" {r['ops']['ramp_rate_achieved']}/s, churn {marks['churn_end'] - marks['ramp_end']:.0f}s at"
        f" {r['ops']['churn_rate_achieved']}/s, {r['ops']['total']} writes, {sum(r['ops']['errors'].values())} errors"
    )
    print(
        f"  agent RSS MiB   ready {_f(rss['at_ready'])}  ramp end {_f(rss['at_ramp_end'])} | steady churn:"
        f" first {_f(rss['first'])}  median {_f(rss['median'])}  max {_f(rss['max'])}  last {_f(rss['last'])}"
        f"  slope {_f(rss['slope_mib_per_min'], '+.2f')} MiB/min"
    )
    print(
        f"  agent CPU       {_f(r['cpu']['total_s'])} s in all, {_f((r['cpu']['churn_share'] or 0) * 100, '.0f')}%"
        " of a core during the steady churn"
    )
    print(
        f"  Events          {ev['writes_total']} writes for {ev['distinct_problems']} problems"
        f" (bound {ev['bound']}), max {ev['max_per_minute']}/min, per minute {ev['per_minute']},"
        f" unexpected {ev['unexpected_total']}, without an Event {r['unreported_problems']}"
    )
    for label, s in (("whole run", sy["whole_run"]), ("steady churn", sy["steady_churn"])):
        print(
            f"  syncs {label:12} {s['syncs']} ({s['success']} committed, {s['noop']} no-op, {s['error']} failed)"
            f" in {s['seconds']}s, p50 {_f(s['p50_s'], '.3f')}s p99 {_f(s['p99_s'], '.3f')}s"
        )
    lag = r["canary_lag_s"]
    print(
        f"  change -> kernel  p50 {_f(lag['p50'], '.2f')}s p99 {_f(lag['p99'], '.2f')}s max {_f(lag['max'], '.2f')}s"
        f" over {lag['n']} canary re-points ({lag['timeouts']} timed out)"
    )
    print(
        f"  final table     {'EQUAL' if fin.get('equal') else 'DIFFERENT: ' + str(fin.get('diff'))}"
        f" ({fin.get('mappings')}), idle after {fin.get('idle_after_s')}s;"
        f" agent exit {r['agent']['exit_code']}, {r['agent']['lists']} lists, {r['agent']['watch_restarts']:.0f}"
        " watch restarts"
    )
    print(f"  verdict         {'OK' if r['ok'] else 'FAILED'}")


# --------------------------------------------------------------------------- entry


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m wholeip_bench.soak", description=__doc__.split("\n")[0])
    d = Config()
    parser.add_argument("--services", type=int, default=d.services)
    parser.add_argument("--minutes", type=float, default=d.minutes, help="length of the churn phase")
    parser.add_argument("--rate", type=float, default=d.rate, help="writes per second during the churn")
    parser.add_argument("--ramp-rate", type=float, default=d.ramp_rate, help="writes per second while creating")
    parser.add_argument("--sample-interval", type=float, default=d.sample_interval)
    parser.add_argument("--warmup", type=float, default=d.warmup, help="seconds after the ramp before RSS is steady")
    parser.add_argument("--bad", type=int, default=d.bad, help="bad Services that must each produce one Event")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (200 Services, ~30 s)")
    parser.add_argument("--agent-arg", action="append", default=[], help="extra flag for wholeip run (repeatable)")
    parser.add_argument("--agent-env", action="append", default=[], help="KEY=VALUE for the agent (repeatable)")
    parser.add_argument(
        "--agent-memstats", action="store_true", help="sample the agent's Python heap and malloc arenas (diagnostics)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after the run")
    parser.add_argument("--out", default="bench-results/soak.json", help="where the JSON report goes")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _config(args: argparse.Namespace) -> Config:
    if args.quick:
        base = Config.quick()
        return Config(
            **{
                **asdict(base),
                "seed": args.seed,
                "agent_args": tuple(args.agent_arg),
                "agent_env": tuple(args.agent_env),
                "agent_memstats": args.agent_memstats,
            }
        )
    return Config(
        services=args.services,
        minutes=args.minutes,
        rate=args.rate,
        ramp_rate=args.ramp_rate,
        sample_interval=args.sample_interval,
        warmup=args.warmup,
        bad=args.bad,
        seed=args.seed,
        agent_args=tuple(args.agent_arg),
        agent_env=tuple(args.agent_env),
        agent_memstats=args.agent_memstats,
    )


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--as-agent"]:  # python -m wholeip_bench.soak --as-agent STATS INTERVAL -- run ...
        return as_agent(raw[1], float(raw[2]), raw[4:])
    args = _parse(argv)
    if not args.inside:
        if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nft") is None:
            print("the soak needs root, unshare and nft (a private network namespace)", file=sys.stderr)
            return 2
        forwarded = list(sys.argv[1:] if argv is None else argv)
        return subprocess.run(
            ["unshare", "--net", "--", sys.executable, "-m", "wholeip_bench.soak", "--inside", *forwarded], check=False
        ).returncode
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    cfg = _config(args)
    workdir = Path(tempfile.mkdtemp(prefix="wholeip-soak-"))
    print(f"soak: {cfg.services} Services, churn {cfg.minutes} min at {cfg.rate}/s; logs in {workdir}", flush=True)
    report = asyncio.run(Soak(cfg, workdir).run())
    report["workdir"] = str(workdir)
    print_report(report)
    write_results(args.out, report)
    if report["ok"] and not args.keep:  # a failed run keeps its logs; the report names the directory
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
