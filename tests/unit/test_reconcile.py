"""The reconcile loop's timing, in virtual time: gate, coalescing, burst, resync, retry, health.

The loop takes its clock and its sleep as parameters; :class:`VirtualTime`
provides both, and a test moves time forward explicitly. No test sleeps for
real, so the timing assertions are exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import ipaddress
import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from wholeip.agent.metrics import Metrics
from wholeip.agent.reconcile import Changes, Incremental, Rebuild, Reconciler, Snapshot, Syncer
from wholeip.engine import Engine
from wholeip.names import EGRESS_IP_ANNOTATION, WHOLE_IP_ANNOTATION
from wholeip.nft.backend import Rejected
from wholeip.nft.fake import FakeBackend
from wholeip.settings import ModelSettings


class VirtualTime:
    """A clock and a sleep() that only move when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._seq), future))
        await future

    @staticmethod
    async def settle() -> None:
        """Let every runnable task run until all of them wait on something."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order."""
        target = self.now + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            if future.done():  # cancelled (the loop was woken by a change instead)
                continue
            self.now = max(self.now, deadline)
            future.set_result(None)
            await self.settle()
        self.now = target
        await self.settle()


class Recorder:
    """A ``work`` function that records (time, full) and fails on demand."""

    def __init__(self, vt: VirtualTime) -> None:
        self.vt = vt
        self.calls: list[tuple[float, bool]] = []
        self.fail = 0
        self.sync_ids: list[str] = []

    async def __call__(self, full: bool) -> None:
        self.calls.append((self.vt.now, full))
        self.sync_ids.append(structlog.contextvars.get_contextvars().get("sync_id", ""))
        if self.fail:
            self.fail -= 1
            raise RuntimeError("kernel said no")

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.calls]


@pytest.fixture
def vt() -> VirtualTime:
    return VirtualTime()


@pytest.fixture
def work(vt: VirtualTime) -> Recorder:
    return Recorder(vt)


def make(
    vt: VirtualTime,
    work: Callable[[bool], Any],
    *,
    gate: asyncio.Event | None = None,
    min_interval: float = 1.0,
    burst: int = 2,
    max_interval: float = 60.0,
) -> Reconciler:
    return Reconciler(
        work=work,
        min_interval=min_interval,
        burst=burst,
        max_interval=max_interval,
        retry_base=1.0,
        retry_max=8.0,
        gate=gate.wait if gate is not None else None,
        clock=vt.clock,
        sleep=vt.sleep,
        rng=lambda: 1.0,  # jitter at its ceiling: delays are exactly base * 2**n
    )


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Reconciler], None]]:
    tasks: list[asyncio.Task[None]] = []

    def start(r: Reconciler) -> None:
        tasks.append(asyncio.create_task(r.run()))

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------- gate


async def test_nothing_is_written_before_the_informers_synced(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    gate = asyncio.Event()
    r = make(vt, work, gate=gate)
    running(r)
    for _ in range(5):
        r.notify()
        await vt.advance(100)
    assert work.calls == []
    assert not r.first_commit.is_set()
    assert r.pending_age() == 0  # a slow first list is the readiness probe's business

    gate.set()
    await vt.advance(0)
    assert work.calls == [(500.0, True)]  # one full sync, at once, however many changes came
    assert r.first_commit.is_set()


# --------------------------------------------------------------------------- coalescing and rate


async def test_changes_between_two_syncs_coalesce_into_one(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, burst=1, min_interval=1.0, max_interval=1000.0)
    running(r)
    await vt.advance(10)  # initial full sync at 0, bucket full again
    for _ in range(1000):
        r.notify()
    await vt.advance(0)
    assert work.times == [0.0, 10.0]
    for _ in range(1000):
        r.notify()  # while the token is being refilled
    await vt.advance(5)
    assert work.times == [0.0, 10.0, 11.0]


async def test_burst_then_min_interval(vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]) -> None:
    r = make(vt, work, burst=3, min_interval=2.0, max_interval=1000.0)
    running(r)
    await vt.advance(100)  # bucket full (3 tokens)
    assert work.times == [0.0]
    times: list[float] = []
    for _ in range(6):
        r.notify()
        await vt.advance(0)
        # each change arrives right after the previous sync: a storm
        while len(work.calls) == len(times) + 1:
            await vt.advance(0.5)
        times.append(work.times[-1])
    # three back to back (the burst), then one per min_interval
    assert times == [100.0, 100.0, 100.0, 102.0, 104.0, 106.0]
    assert all(not full for _, full in work.calls[1:])


async def test_a_change_during_a_sync_is_not_lost(vt: VirtualTime, running: Callable[[Reconciler], None]) -> None:
    release = asyncio.Event()
    calls: list[float] = []

    async def slow(full: bool) -> None:
        calls.append(vt.now)
        if len(calls) == 2:
            await release.wait()

    r = make(vt, slow, burst=5, min_interval=0.1)
    running(r)
    await vt.advance(1)
    r.notify()
    await vt.advance(0)
    assert calls == [0.0, 1.0]  # second sync in progress
    r.notify()  # arrives while the sync reads older caches
    release.set()
    await vt.advance(0)
    assert calls == [0.0, 1.0, 1.0]


# --------------------------------------------------------------------------- full resync


async def test_max_interval_forces_a_full_sync(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, max_interval=10.0)
    running(r)
    await vt.advance(5)
    r.notify()
    await vt.advance(30)
    assert work.calls == [(0.0, True), (5.0, False), (10.0, True), (20.0, True), (30.0, True)]
    assert r.last_full == 30.0


# --------------------------------------------------------------------------- failures


async def test_failure_retries_with_backoff_and_the_retry_is_full(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, max_interval=1000.0)
    running(r)
    await vt.advance(10)
    work.fail = 5
    r.notify()
    await vt.advance(100)
    # failures at 10, then retries after 1, 2, 4, 8, 8 (capped) seconds; the sixth attempt succeeds
    assert work.times == [0.0, 10.0, 11.0, 13.0, 17.0, 25.0, 33.0]
    assert [full for _, full in work.calls] == [True, False, True, True, True, True, True]
    assert r.failures == 0


async def test_changes_during_backoff_wait_for_the_retry(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, max_interval=1000.0)
    running(r)
    await vt.advance(10)
    work.fail = 1
    r.notify()
    await vt.advance(0.1)
    r.notify()
    r.notify()
    await vt.advance(5)
    assert work.times == [0.0, 10.0, 11.0]


async def test_each_sync_has_its_own_sync_id(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work)
    running(r)
    await vt.advance(3)
    r.notify()
    await vt.advance(3)
    assert len(work.sync_ids) == 2
    assert all(work.sync_ids)
    assert len(set(work.sync_ids)) == 2
    assert structlog.contextvars.get_contextvars().get("sync_id") is None  # unbound after the sync


# --------------------------------------------------------------------------- health bookkeeping


async def test_pending_age_tracks_the_oldest_uncommitted_change(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, burst=1, min_interval=30.0, max_interval=1000.0)
    running(r)
    await vt.advance(0)
    assert r.pending_age() == 0
    r.notify()  # no token until t=30
    await vt.advance(20)
    assert r.pending_age() == 20
    r.notify()  # a newer change does not reset the age
    await vt.advance(5)
    assert r.pending_age() == 25
    await vt.advance(5)
    assert work.times == [0.0, 30.0]
    assert r.pending_age() == 0


async def test_a_failing_sync_counts_as_a_waiting_change(
    vt: VirtualTime, work: Recorder, running: Callable[[Reconciler], None]
) -> None:
    r = make(vt, work, max_interval=10.0)
    running(r)
    await vt.advance(5)
    work.fail = 100  # the timer's full sync at 10 fails, and keeps failing
    await vt.advance(65)
    assert r.pending_age() == 60  # since the failed attempt at 10: /healthz turns red
    work.fail = 0
    await vt.advance(10)
    assert r.pending_age() == 0


# --------------------------------------------------------------------------- with the engine and a fake kernel


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "uid": f"uid-{name}", **extra}


def _service(name: str, ip: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": _meta(name, annotations={WHOLE_IP_ANNOTATION: "true"}),
        "spec": {"type": "LoadBalancer"},
        "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
    }


def _slice(name: str, pod: str) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": f"{name}-x", "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pod], "nodeName": "n1", "conditions": {"ready": True}}],
    }


async def _inline(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


async def test_retry_after_a_kernel_failure_repairs_the_table_with_a_full_sync(
    vt: VirtualTime, running: Callable[[Reconciler], None]
) -> None:
    backend = FakeBackend()
    engine = Engine(backend=backend, table="wholeip")
    services = [_service("a", "198.51.100.1")]
    slices = [_slice("a", "10.244.1.10")]
    metrics = Metrics()
    syncer = Syncer(
        engine=engine,
        snapshot=lambda: Snapshot(services=list(services), endpoint_slices=list(slices), nodes=[]),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Rebuild(),
        metrics=metrics,
        offload=_inline,
    )
    r = make(vt, syncer, max_interval=1000.0)
    running(r)
    await vt.advance(1)

    def ingress() -> set[tuple[str, str]]:
        doc = engine.observe()
        assert doc is not None
        return set(doc.elements["ingress4"])  # type: ignore[arg-type]

    assert ingress() == {("198.51.100.1", "10.244.1.10")}

    services.append(_service("b", "198.51.100.2"))
    slices.append(_slice("b", "10.244.1.11"))
    backend.fail_next = Rejected("injected")
    transactions = len(backend.transactions)
    r.notify()
    await vt.advance(0)
    assert r.failures == 1
    assert len(backend.transactions) == transactions  # nothing applied
    assert engine.last is None  # the engine no longer trusts its memory

    await vt.advance(1)  # the retry (after 1 s) is full and succeeds
    assert r.failures == 0
    assert syncer.last_result is not None
    assert syncer.last_result.full
    assert ingress() == {("198.51.100.1", "10.244.1.10"), ("198.51.100.2", "10.244.1.11")}
    assert metrics.syncs.labels("error")._value.get() == 1

    # Drift: someone deletes an element behind our back; the next full resync repairs it.
    backend.transact(
        [
            {
                "delete": {
                    "element": {
                        "family": "inet",
                        "table": "wholeip",
                        "name": "ingress4",
                        "elem": [["198.51.100.1", "10.244.1.10"]],
                    }
                }
            }
        ]
    )
    assert ("198.51.100.1", "10.244.1.10") not in ingress()
    await vt.advance(1000)
    assert ("198.51.100.1", "10.244.1.10") in ingress()
    assert syncer.last_result.drift
    assert metrics.drift_repairs._value.get() == 1


def _delegated(name: str, cluster_ip: str, **spec: Any) -> dict[str, Any]:
    """A Service labelled for wholeip (its ClusterIP served here), port 80/TCP."""
    return {
        "kind": "Service",
        "metadata": _meta(name, labels={"service.kubernetes.io/service-proxy-name": "wholeip"}),
        "spec": {"type": "ClusterIP", "clusterIPs": [cluster_ip], "ports": [{"port": 80, "protocol": "TCP"}], **spec},
    }


def _reporting(engine: Engine, snapshot: Callable[[], Snapshot], seen: list[list[str]]) -> Syncer:
    """A rebuilding Syncer that appends each sync's problems (``name:reason``) to ``seen``."""
    return Syncer(
        engine=engine,
        snapshot=snapshot,
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Rebuild(),
        metrics=Metrics(),
        on_state=lambda state, nodes: seen.append([f"{p.ref.name}:{p.reason}" for p in state.problems]),
        offload=_inline,
    )


def _poisoned(needle: str) -> FakeBackend:
    """A backend whose kernel refuses every added element that mentions ``needle``."""

    class Poisoned(FakeBackend):
        def _refuse(self, commands: Sequence[dict[str, Any]]) -> None:
            if any(needle in json.dumps(c) for c in commands if "add" in c):
                raise Rejected("Error: Could not process rule: Invalid argument")

        def transact(self, commands: Sequence[dict[str, Any]]) -> None:
            self._refuse(commands)
            super().transact(commands)

        def check(self, commands: Sequence[dict[str, Any]]) -> None:
            self._refuse(commands)
            super().check(commands)

    return Poisoned()


async def test_a_refused_element_of_a_delegated_service_is_its_problem() -> None:
    """Elements keyed by a ClusterIP (no external IP to tell the owner by): the front-end's
    Service gets the RuleRejected, not the node."""
    engine = Engine(backend=_poisoned("10.96.0.77"), table="wholeip")
    service = _delegated("d", "10.96.0.77")
    ok = {**service, "metadata": {**service["metadata"], "name": "ok", "uid": "uid-ok"}}
    ok["spec"] = {**service["spec"], "clusterIPs": ["10.96.0.78"]}
    seen: list[list[str]] = []
    services: list[dict[str, Any]] = [ok]
    syncer = _reporting(
        engine,
        lambda: Snapshot(services=list(services), endpoint_slices=[_slice("d", "10.244.1.10")], nodes=[]),
        seen,
    )
    await syncer(True)
    services.append(service)
    result = await syncer(False)
    assert {r.set_name for r in result.rejected} == {"svc4", "svcaddr4", "svcport4"}
    assert seen[-1].count("d:RuleRejected") == len(result.rejected), seen[-1]
    doc = engine.observe()
    assert doc is not None
    assert (("10.96.0.78", "tcp", 80), "goto refuse") in doc.elements["svcrefuse4"]


async def test_a_rejected_element_becomes_a_problem_of_its_service_and_others_land() -> None:
    backend = _poisoned("198.51.100.2")
    engine = Engine(backend=backend, table="wholeip")
    services = [_service("a", "198.51.100.1")]
    slices = [_slice("a", "10.244.1.10")]
    seen: list[list[str]] = []
    syncer = _reporting(engine, lambda: Snapshot(services=list(services), endpoint_slices=list(slices), nodes=[]), seen)
    await syncer(True)
    services += [_service("b", "198.51.100.2"), _service("c", "198.51.100.3")]
    slices += [_slice("b", "10.244.1.11"), _slice("c", "10.244.1.12")]
    result = await syncer(False)
    assert result.rejected
    assert seen[-1].count("b:RuleRejected") == len(result.rejected)
    doc = engine.observe()
    assert doc is not None
    assert {str(e[0]) for e in doc.elements["ingress4"] if isinstance(e, tuple)} == {"198.51.100.1", "198.51.100.3"}


def test_node_and_service_cidr_changes_are_updates_and_a_list_of_services_a_rebuild() -> None:
    changes = Changes(clock=lambda: 0.0)
    changes.take()  # the first sync rebuilds
    changes.record("nodes", "n3")
    changes.record("servicecidrs", None)
    pending = changes.take()
    assert (pending.everything, pending.networks) == (False, True)
    assert not changes.take().networks
    changes.record("services", None)
    assert changes.take().everything


class _Router:
    """Stands in for the policy routing: records what each sync asks for, answers with
    ``not_on_link``; the table must not be committed before it was asked."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.not_on_link: frozenset[str] = frozenset()
        self.conflicts: frozenset[int] = frozenset()
        self.calls: list[tuple[dict[int, str], bool]] = []

    def apply(self, routes: Any) -> Any:
        committed = self.engine.observe() is not None
        self.calls.append(({slot: h.node for slot, h in routes.items()}, committed))
        steered = frozenset((h.node, v) for h in routes.values() for v in (4, 6))
        return _Report(self.not_on_link, steered, self.conflicts)


class _Report:
    def __init__(
        self, not_on_link: frozenset[str], steered: frozenset[tuple[str, int]], conflicts: frozenset[int]
    ) -> None:
        self.not_on_link = not_on_link
        self.steered = steered
        self.errors: tuple[str, ...] = ()
        self.conflicts = conflicts


async def test_every_sync_applies_the_egress_routing_before_its_marks_are_committed() -> None:
    nodes = [
        {"kind": "Node", "metadata": {"name": n}, "spec": {"podCIDRs": [c]},
         "status": {"addresses": [{"type": "InternalIP", "address": a}]}}
        for n, c, a in (("n1", "10.244.1.0/24", "192.0.2.11"), ("n2", "10.244.2.0/24", "192.0.2.12"))
    ]  # fmt: skip
    egress = {
        "kind": "Service",
        "metadata": {
            "namespace": "default",
            "name": "mail",
            "annotations": {EGRESS_IP_ANNOTATION: "true"},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.50"}]}},
    }
    l2 = {"kind": "ServiceL2Status", "metadata": {"namespace": "m", "name": "l2"},
          "status": {"node": "n2", "serviceName": "mail", "serviceNamespace": "default"}}  # fmt: skip
    engine = Engine(backend=FakeBackend())
    router = _Router(engine)
    metrics = Metrics()
    syncer = Syncer(
        engine=engine,
        snapshot=lambda: Snapshot(
            services=[egress], endpoint_slices=[_slice("mail", "10.244.1.10")], nodes=nodes, l2_statuses=[l2]
        ),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Rebuild(),
        metrics=metrics,
        offload=_inline,
        router=router,
    )
    await syncer(True)
    assert router.calls == [({1: "n2"}, False)]
    doc = engine.observe()
    assert doc is not None
    assert doc.elements["egresssteer4"] == {("10.244.1.10", "goto steer_slot_1")}
    assert metrics.egress_pods.labels("steered")._value.get() == 1
    # The routing finds n2 not on-link: the pod is left alone, and the sync says why.
    router.not_on_link = frozenset({"n2"})
    await syncer(True)
    doc = engine.observe()
    assert doc is not None
    assert not doc.elements["egresssteer4"]
    assert syncer.index is not None
    assert [p.reason for p in syncer.index.problems if p.reason.startswith("Egress")] == ["EgressNodeNotOnLink"]
    # Someone else's default route in one of our tables: said once, and once when it is gone.
    router.conflicts = frozenset({300001})
    with capture_logs() as logs:
        await syncer(True)
        await syncer(True)
        router.conflicts = frozenset()
        await syncer(True)
        await syncer(True)
    said = [e for e in logs if "routing tables of wholeip's range" in e["event"] or "foreign routes" in e["event"]]
    assert [(e["log_level"], e.get("tables")) for e in said] == [("warning", [300001]), ("info", None)]


async def test_a_full_sync_reads_the_hosts_addresses_again_and_a_change_rebuilds() -> None:
    """podnat's ifaceAuto follows the node's default-route source without a restart."""
    hosts = iter(["192.0.2.11", "192.0.2.99"])
    read: list[str] = []

    def host(text: str) -> ModelSettings:
        source = ipaddress.ip_address(text)
        podnat = dataclasses.replace(
            ModelSettings().podnat, default_sources=(source,), host_addresses=frozenset({source})
        )
        return dataclasses.replace(ModelSettings(), podnat=podnat)

    def rehost() -> ModelSettings:
        read.append(next(hosts))
        return host(read[-1])

    changes = Changes(clock=lambda: 0.0)
    services = [_service("a", "198.51.100.1")]
    slices = [_slice("a", "10.244.1.10")]
    syncer = Syncer(
        engine=Engine(backend=FakeBackend(), table="wholeip"),
        snapshot=lambda: Snapshot(services=list(services), endpoint_slices=list(slices), nodes=[]),
        node_name="n1",
        model=host("192.0.2.11"),
        table="wholeip",
        mode=Incremental(changes=changes, lookup=lambda resource, key: None, nodes=lambda: []),
        offload=_inline,
        rehost=rehost,
    )
    await syncer(True)  # the first: a rebuild anyway, with the host the Syncer was given
    assert syncer.rebuilds == 1
    assert read == []  # (read a moment ago by whoever made the Syncer: not again)
    await syncer(True)  # nothing changed: the index is kept
    assert (read, syncer.rebuilds) == (["192.0.2.11"], 1)
    assert [str(a) for a in syncer.model.podnat.default_sources] == ["192.0.2.11"]
    await syncer(True)  # the default route's source changed
    assert syncer.rebuilds == 2
    assert [str(a) for a in syncer.model.podnat.default_sources] == ["192.0.2.99"]
    await syncer(False)  # a partial sync does not ask
    assert (len(read), syncer.rebuilds) == (2, 2)


async def test_a_restarted_agent_keeps_the_affinity_generations_of_the_kernels_table() -> None:
    """The second agent (a new Syncer and Engine on the same kernel) takes the generation of
    a delegated front-end with affinity over instead of starting it afresh."""
    service = _delegated("d", "10.96.0.77", sessionAffinity="ClientIP")
    slices = {"default/d-x": _slice("d", "10.244.1.10")}
    slices["default/d-x"]["endpoints"].append({"addresses": ["10.244.1.11"], "nodeName": "n1"})
    backend = FakeBackend()

    def agent() -> tuple[Syncer, Changes]:
        changes = Changes(clock=lambda: 0.0)
        syncer = Syncer(
            engine=Engine(backend=backend, table="wholeip"),
            snapshot=lambda: Snapshot(services=[service], endpoint_slices=list(slices.values()), nodes=[]),
            node_name="n1",
            model=ModelSettings(),
            table="wholeip",
            mode=Incremental(changes=changes, lookup=lambda r, k: slices.get(k), nodes=lambda: []),
            offload=_inline,
        )
        return syncer, changes

    first, changes = agent()
    await first(True)
    slices["default/d-x"] = {**slices["default/d-x"]}
    slices["default/d-x"]["endpoints"] = [*slices["default/d-x"]["endpoints"], {"addresses": ["10.244.1.12"]}]
    changes.record("endpointslices", "default/d-x")
    await first(False)
    doc = backend.read_table("inet", "wholeip")
    assert doc is not None
    assert doc.elements["svcgenb4"], "no second generation to keep"
    second, _ = agent()
    reads: list[str] = []
    read_table = backend.read_table

    def counted(family: str, name: str, **kwargs: Any) -> Any:
        reads.append(name)
        return read_table(family, name, **kwargs)

    backend.read_table = counted  # type: ignore[method-assign]
    await second(True)
    backend.read_table = read_table  # type: ignore[method-assign]
    assert reads == ["wholeip"]  # read once, for the take-over and the commit's comparison
    after = backend.read_table("inet", "wholeip")
    assert after is not None
    assert after.elements == doc.elements


async def test_an_incremental_sync_leaves_the_egress_routing_when_its_routes_are_the_same() -> None:
    """Opening netlink to read every rule and route cost each Service change 3-4 ms at
    100,000 Services: an incremental sync asks the router only when the routes changed,
    the last apply failed or said something went wrong; a full sync asks always."""
    nodes = [
        {"kind": "Node", "metadata": {"name": n}, "spec": {"podCIDRs": [c]},
         "status": {"addresses": [{"type": "InternalIP", "address": a}]}}
        for n, c, a in (("n1", "10.244.1.0/24", "192.0.2.11"), ("n2", "10.244.2.0/24", "192.0.2.12"),
                        ("n3", "10.244.3.0/24", "192.0.2.13"))
    ]  # fmt: skip
    egress = {
        "kind": "Service",
        "metadata": {"namespace": "default", "name": "mail", "annotations": {EGRESS_IP_ANNOTATION: "true"}},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.50"}]}},
    }
    cache: dict[tuple[str, str], dict[str, Any]] = {
        ("services", "default/mail"): egress,
        ("services", "default/a"): _service("a", "198.51.100.1"),
        ("endpointslices", "default/mail-x"): _slice("mail", "10.244.1.10"),
        ("endpointslices", "default/a-x"): _slice("a", "10.244.1.20"),
        ("servicel2statuses", "m/l2"): {
            "kind": "ServiceL2Status",
            "metadata": {"namespace": "m", "name": "l2"},
            "status": {"node": "n2", "serviceName": "mail", "serviceNamespace": "default"},
        },
    }

    def of(resource: str) -> list[dict[str, Any]]:
        return [obj for (r, _), obj in cache.items() if r == resource]

    engine = Engine(backend=FakeBackend())
    router = _Router(engine)
    changes = Changes(clock=lambda: 0.0)
    syncer = Syncer(
        engine=engine,
        snapshot=lambda: Snapshot(
            services=of("services"),
            endpoint_slices=of("endpointslices"),
            nodes=nodes,
            l2_statuses=of("servicel2statuses"),
        ),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Incremental(changes=changes, lookup=lambda r, k: cache.get((r, k)), nodes=lambda: nodes),
        offload=_inline,
        router=router,
    )
    await syncer(True)
    assert [c for c, _ in router.calls] == [{1: "n2"}]
    # Another Service's pod moves: the same routes, the router is not asked.
    cache[("endpointslices", "default/a-x")] = _slice("a", "10.244.1.21")
    changes.record("endpointslices", "default/a-x")
    await syncer(False)
    assert len(router.calls) == 1
    doc = engine.observe()
    assert doc is not None
    assert ("198.51.100.1", "10.244.1.21") in doc.elements["ingress4"]
    # The egress IP moves to n3: new routes, asked.
    cache[("servicel2statuses", "m/l2")]["status"] = {
        "node": "n3",
        "serviceName": "mail",
        "serviceNamespace": "default",
    }
    changes.record("servicel2statuses", "m/l2")
    await syncer(False)
    assert [c for c, _ in router.calls][-1] == {1: "n3"}
    assert len(router.calls) == 2
    # A full sync asks whatever changed; and after an apply that failed, the next sync asks.
    await syncer(True)
    assert len(router.calls) == 3
    failing = router.apply

    def broken(routes: Any) -> Any:
        failing(routes)
        raise OSError("netlink went away")

    router.apply = broken  # type: ignore[method-assign]
    await syncer(True)
    router.apply = failing  # type: ignore[method-assign]
    changes.record("endpointslices", "default/a-x")
    await syncer(False)
    assert len(router.calls) == 5


# --------------------------------------------------------------------------- quarantine


def _raising_on(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """A defect of the index, injected: reading the Service named ``name`` raises, on the
    bulk path and the object-by-object one (both read Services with ``read_service``),
    unless it is labelled ``fixed``. Returns the names it raised on."""
    from wholeip.core import index as index_module

    real = index_module.read_service
    raised: list[str] = []

    def read_service(obj: Any, settings: Any) -> Any:
        meta = obj.get("metadata", {})
        if meta.get("name") == name and "fixed" not in meta.get("labels", {}):
            raised.append(name)
            raise ZeroDivisionError("injected")
        return real(obj, settings)

    monkeypatch.setattr(index_module, "read_service", read_service)
    return raised


def _incremental(
    engine: Engine, cache: dict[tuple[str, str], dict[str, Any]], seen: list[list[str]]
) -> tuple[Syncer, Changes]:
    """An incremental Syncer over ``cache`` ((resource, key) -> object: Services and slices),
    appending each sync's problems (``name:reason``) to ``seen``; and its change feed."""

    def of(resource: str) -> list[dict[str, Any]]:
        return [obj for (r, _), obj in cache.items() if r == resource]

    changes = Changes(clock=lambda: 0.0)
    syncer = Syncer(
        engine=engine,
        snapshot=lambda: Snapshot(services=of("services"), endpoint_slices=of("endpointslices"), nodes=[]),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        mode=Incremental(changes=changes, lookup=lambda r, k: cache.get((r, k)), nodes=lambda: []),
        offload=_inline,
        on_state=lambda state, nodes: seen.append([f"{p.ref.name}:{p.reason}" for p in state.problems]),
    )
    return syncer, changes


async def test_an_object_the_index_fails_on_is_left_out_and_every_other_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One object that makes the index raise (a defect of ours) used to stop every sync of
    the node. A rebuild now finds it, leaves it out with an InternalError problem and
    serves the rest; a new version of it is read again."""
    raised = _raising_on(monkeypatch, "bad")
    cache: dict[tuple[str, str], dict[str, Any]] = {}
    for name, n in (("a", 1), ("bad", 2), ("c", 3)):
        svc = _service(name, f"198.51.100.{n}")
        svc["metadata"]["resourceVersion"] = "1"
        cache[("services", f"default/{name}")] = svc
        cache[("endpointslices", f"default/{name}-x")] = _slice(name, f"10.244.1.{10 + n}")

    engine = Engine(backend=FakeBackend(), table="wholeip")
    seen: list[list[str]] = []
    syncer, changes = _incremental(engine, cache, seen)

    def served() -> set[str]:
        doc = engine.observe()
        assert doc is not None
        return {str(e[0]) for e in doc.elements["ingress4"] if isinstance(e, tuple)}

    with capture_logs() as logs:
        await syncer(True)
    assert raised, "the injected defect was not met"
    assert served() == {"198.51.100.1", "198.51.100.3"}
    assert seen[-1] == ["bad:InternalError"]
    (problem,) = syncer.quarantine.problems()
    assert "ZeroDivisionError: injected" in problem.message
    assert problem.ref.kind == "Service"
    assert any(e["event"].startswith("the index failed on an object") for e in logs)

    # Another Service changes: an incremental sync, the held one stays out (not read again).
    raised.clear()
    cache[("endpointslices", "default/c-x")] = _slice("c", "10.244.1.99")
    changes.record("endpointslices", "default/c-x")
    changes.record("services", "default/bad")  # (reported again with the same version)
    await syncer(False)
    assert not raised
    assert syncer.rebuilds == 1
    assert ("198.51.100.3", "10.244.1.99") in engine.observe().elements["ingress4"]  # type: ignore[union-attr]
    assert seen[-1] == ["bad:InternalError"]

    # A write that changes its resourceVersion alone: still the object it failed on.
    cache[("services", "default/bad")] = same = _service("bad", "198.51.100.2")
    same["metadata"]["resourceVersion"] = "2"
    changes.record("services", "default/bad")
    await syncer(False)
    assert not raised
    assert seen[-1] == ["bad:InternalError"]
    # Changed: read again, and served.
    fixed = _service("bad", "198.51.100.2")
    fixed["metadata"].update(resourceVersion="3", labels={"fixed": "yes"})
    cache[("services", "default/bad")] = fixed
    changes.record("services", "default/bad")
    await syncer(False)
    assert served() == {"198.51.100.1", "198.51.100.2", "198.51.100.3"}
    assert seen[-1] == []
    assert len(syncer.quarantine) == 0


async def test_an_incremental_update_that_raises_rebuilds_in_the_same_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The index meets the defect on a change: the same sync rebuilds without the object,
    so the other changes it carried land at once (no failed sync, no back-off)."""
    services = [_service("a", "198.51.100.1")]
    slices = [_slice("a", "10.244.1.11"), _slice("bad", "10.244.1.12"), _slice("b", "10.244.1.13")]
    cache = {("services", "default/a"): services[0]}
    cache.update({("endpointslices", f"default/{s['metadata']['labels']['kubernetes.io/service-name']}-x"): s
                  for s in slices})  # fmt: skip
    engine = Engine(backend=FakeBackend(), table="wholeip")
    syncer, changes = _incremental(engine, cache, [])
    await syncer(True)
    _raising_on(monkeypatch, "bad")
    for name, n in (("bad", 2), ("b", 3)):
        svc = _service(name, f"198.51.100.{n}")
        svc["metadata"]["resourceVersion"] = "1"
        cache[("services", f"default/{name}")] = svc
        changes.record("services", f"default/{name}")
    await syncer(False)
    doc = engine.observe()
    assert doc is not None
    assert {str(e[0]) for e in doc.elements["ingress4"] if isinstance(e, tuple)} == {"198.51.100.1", "198.51.100.3"}
    assert syncer.rebuilds == 2
    assert [p.ref.name for p in syncer.quarantine.problems()] == ["bad"]
    # Deleted: released (nothing is held for an object that is gone).
    del cache[("services", "default/bad")]
    changes.record("services", "default/bad")
    await syncer(False)
    assert len(syncer.quarantine) == 0


async def test_a_defect_every_object_meets_still_fails_the_sync(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not one odd object: the index fails on everything (past the limit), so the sync
    fails, as before, rather than leaving the cluster out."""
    from wholeip.core import index as index_module

    def broken(obj: Any, settings: Any) -> Any:
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(index_module, "read_service", broken)
    services = [_service(f"s{i}", f"198.51.100.{i}") for i in range(1, 6)]
    syncer = Syncer(
        engine=Engine(backend=FakeBackend(), table="wholeip"),
        snapshot=lambda: Snapshot(services=list(services), endpoint_slices=[], nodes=[]),
        node_name="n1",
        model=ModelSettings(),
        table="wholeip",
        offload=_inline,
    )
    syncer.quarantine.limit = 3
    with pytest.raises(RuntimeError, match="more than 3 objects"):
        await syncer(True)


async def test_a_slice_the_index_fails_on_is_told_to_its_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from wholeip.core import index as index_module

    real = index_module.read_slice

    def read_slice(obj: Any) -> Any:
        if obj["metadata"]["name"] == "bad-x":
            raise RecursionError("injected")
        return real(obj)

    monkeypatch.setattr(index_module, "read_slice", read_slice)
    seen: list[list[str]] = []
    engine = Engine(backend=FakeBackend(), table="wholeip")
    services = [_service("a", "198.51.100.1"), _service("bad", "198.51.100.2")]
    slices = [_slice("a", "10.244.1.11"), _slice("bad", "10.244.1.12")]
    syncer = _reporting(engine, lambda: Snapshot(services=list(services), endpoint_slices=list(slices), nodes=[]), seen)
    await syncer(True)
    doc = engine.observe()
    assert doc is not None
    assert set(doc.elements["ingress4"]) == {("198.51.100.1", "10.244.1.11")}
    (problem,) = syncer.quarantine.problems()
    assert (problem.ref.kind, problem.ref.name, problem.reason) == ("Service", "bad", "InternalError")
    assert "EndpointSlice default/bad-x (RecursionError: injected)" in problem.message
    assert "bad:InternalError" in seen[-1]


async def test_a_node_the_index_fails_on_is_left_out_and_the_rest_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nodes are not fed one by one (the networks are all of them together): the one that
    raises alone is held out; a Node has no Event, its problem is logged and counted."""
    from wholeip.core import index as index_module

    real = index_module.node_networks

    def node_networks(nodes: Any, problems: Any) -> Any:
        nodes = list(nodes)
        if any(n["metadata"]["name"] == "bad" and "fixed" not in n["metadata"].get("labels", {}) for n in nodes):
            raise KeyError("injected")
        return real(nodes, problems)

    monkeypatch.setattr(index_module, "node_networks", node_networks)
    good = {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]}}
    bad = {"kind": "Node", "metadata": {"name": "bad"}, "spec": {"podCIDRs": ["10.244.2.0/24"]}}
    nodes = [good, bad]
    cache = {("services", "default/a"): _service("a", "198.51.100.1"),
             ("endpointslices", "default/a-x"): _slice("a", "10.244.1.11")}  # fmt: skip
    engine = Engine(backend=FakeBackend(), table="wholeip")
    seen: list[list[str]] = []
    syncer, changes = _incremental(engine, cache, seen)
    syncer._snapshot = lambda: Snapshot(  # (the helper's Syncer, with Nodes)
        services=[cache[("services", "default/a")]], endpoint_slices=[cache[("endpointslices", "default/a-x")]],
        nodes=nodes,
    )  # fmt: skip
    syncer.mode = dataclasses.replace(syncer.mode, nodes=lambda: nodes)  # type: ignore[arg-type]
    await syncer(True)
    doc = engine.observe()
    assert doc is not None
    assert set(doc.elements["ingress4"]) == {("198.51.100.1", "10.244.1.11")}
    networks = {str(e) for e in doc.elements["cluster4"]}
    assert "10.244.1.0/24" in networks
    assert not any("10.244.2" in n for n in networks)  # (bad's pod network left out)
    (problem,) = syncer.quarantine.problems()
    assert (problem.ref.kind, problem.ref.name, problem.reason) == ("Node", "bad", "InternalError")
    # Fixed: a Node change, an update; the Node is read again and its network comes.
    nodes[1] = {**bad, "metadata": {"name": "bad", "labels": {"fixed": "1"}}}
    changes.record("nodes", "bad")
    await syncer(False)
    doc = engine.observe()
    assert doc is not None
    assert not syncer.quarantine.problems()
    assert any("10.244.2" in str(e) for e in doc.elements["cluster4"]), doc.elements["cluster4"]
