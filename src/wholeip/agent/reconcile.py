"""The reconcile loop: when to sync (:class:`Reconciler`) and what one sync does (:class:`Syncer`).

Level-triggered. Informers only call :meth:`Reconciler.notify`, which sets a
one-slot flag: a thousand changes between two syncs cost one sync, and the
loop never learns *which* object changed. Each sync reads the informers'
caches as they are now, builds the whole desired table and lets the engine
commit the difference. A lost, repeated or reordered notification therefore
cannot leave a wrong table behind; at worst it delays the next sync.

When a sync runs (the same rules as kube-proxy's bounded frequency runner):

* nothing before every informer has synced (the *gate*): a table built from a
  half-filled cache would delete the mappings of Services not listed yet, and
  the kernel keeps the previous agent's table meanwhile;
* then one full sync at once (it compares with the kernel: a restarted agent
  takes over the table its predecessor left without disturbing traffic);
* after a change, as soon as the rate limit allows: a token bucket of
  ``burst`` syncs refilled at one per ``min_interval``, so a short burst of
  changes is applied at once and a storm costs one sync per ``min_interval``;
* every ``max_interval`` without a full sync, a full sync even without a
  change: it lists the kernel and repairs drift (someone else edited our table);
* after a failure, a retry after a jittered exponential backoff; the retry is
  a full sync, since the engine's memory of the kernel is void after a failure.

Time comes from injectable ``clock``/``sleep`` functions so that tests drive
the loop in virtual time, without real sleeps.

Health bookkeeping lives here because only the loop knows whether a change is
still waiting: :meth:`Reconciler.pending_age` is how long the oldest change not
yet committed has waited. It starts counting when the gate opens (a slow first
list is for the readiness probe, not a reason for the liveness probe to kill
the agent), and a failed sync counts as a waiting change even when a timer
started it, because the kernel may then differ from the desired table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import structlog

from wholeip.agent import heap
from wholeip.agent.quarantine import Quarantine
from wholeip.backoff import backoff_delay
from wholeip.core.elements import count_mappings
from wholeip.core.gcpause import freeze_kept
from wholeip.core.index import ClusterIndex, ServiceKey, Touched, load_unique
from wholeip.core.model import HealthCheck, ObjectRef, Problem, ProblemSource
from wholeip.core.objects import split_key
from wholeip.core.servicecidr import effective_model
from wholeip.core.steering import Holder
from wholeip.engine import Engine, Rejection, SyncResult
from wholeip.names import L2_STATUS_RESOURCE
from wholeip.nft.diff import Plan
from wholeip.nft.doc import TableDoc
from wholeip.settings import ModelSettings

if TYPE_CHECKING:
    from wholeip.agent.earlyfill import EarlyFill
    from wholeip.agent.metrics import Metrics
    from wholeip.agent.prefill import Prefill, Taken

log = structlog.get_logger(__name__)

Work = Callable[[bool], Awaitable[Any]]
"""One sync: called with ``full``; raising means the sync failed."""


class Reconciler:
    """Decides when to call ``work`` (see the module docstring)."""

    def __init__(
        self,
        *,
        work: Work,
        min_interval: float,
        burst: int,
        max_interval: float,
        retry_base: float = 1.0,
        retry_max: float = 30.0,
        gate: Callable[[], Awaitable[object]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._work = work
        self.min_interval = min_interval
        self.burst = max(1, burst)
        self.max_interval = max_interval
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._gate = gate
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._wake = asyncio.Event()
        self._dirty = False
        self._pending_since: float | None = None
        self._open = False
        self.first_commit = asyncio.Event()
        """Set after the first successful sync (readiness)."""
        self.syncs = 0
        """Syncs attempted."""
        self.failures = 0
        """Consecutive failed syncs (0 after a success)."""
        self.last_full: float | None = None
        """Clock time of the last successful full sync."""

    # --------------------------------------------------------------- inputs

    def notify(self) -> None:
        """Something changed: sync soon. Cheap, idempotent, safe to call any number of times."""
        self._dirty = True
        if self._open and self._pending_since is None:
            self._pending_since = self._clock()
        self._wake.set()

    @property
    def gate_open(self) -> bool:
        return self._open

    def pending_age(self) -> float:
        """Seconds the oldest uncommitted change has waited (0 when none is waiting)."""
        if self._pending_since is None:
            return 0.0
        return max(0.0, self._clock() - self._pending_since)

    # --------------------------------------------------------------- loop

    async def run(self) -> None:
        """Sync forever; returns only by cancellation."""
        if self._gate is not None:
            await self._gate()
        self._open = True
        now = self._clock()
        self._pending_since = now  # the first sync is owed from now on
        tokens = float(self.burst)
        refilled = now
        full_due = now  # a full sync right away
        retry_at: float | None = None
        while True:
            now = self._clock()
            if self.min_interval > 0:
                tokens = min(float(self.burst), tokens + (now - refilled) / self.min_interval)
            else:
                tokens = float(self.burst)
            refilled = now
            if retry_at is not None:
                due = retry_at
            else:
                due = full_due
                if self._dirty:
                    due = min(due, now if tokens >= 1 else now + (1 - tokens) * self.min_interval)
            if due > now:
                # Only an idle loop needs waking by a change; a loop that waits for a
                # token or a retry already knows there is work and when it may do it.
                await self._wait(due - now, wakeable=retry_at is None and not self._dirty)
                continue
            full = retry_at is not None or now >= full_due
            tokens = max(0.0, tokens - 1)
            retry_at = None
            if await self._run_once(full=full):
                if full:
                    full_due = self._clock() + self.max_interval
            else:
                delay = self._backoff(self.failures)
                retry_at = self._clock() + delay
                log.info("sync will be retried", delay=round(delay, 3), failures=self.failures)

    async def _run_once(self, *, full: bool) -> bool:
        waiting_since = self._pending_since
        self._dirty = False
        self._pending_since = None
        self._wake.clear()
        self.syncs += 1
        started = self._clock()
        with structlog.contextvars.bound_contextvars(sync_id=uuid.uuid4().hex[:12]):
            try:
                await self._work(full)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                # Whatever waited still waits; a failure also means the kernel may not
                # hold the desired table, which is itself a change waiting to be applied.
                self._dirty = True
                candidates = [t for t in (waiting_since, self._pending_since, started) if t is not None]
                self._pending_since = min(candidates)
                log.error("sync failed", full=full, failures=self.failures, error=f"{type(exc).__name__}: {exc}")
                return False
        self.failures = 0
        if full:
            self.last_full = self._clock()
        self.first_commit.set()
        return True

    def _backoff(self, failures: int) -> float:
        return backoff_delay(failures, base=self.retry_base, cap=self.retry_max, random=self._rng())

    async def _wait(self, seconds: float, *, wakeable: bool) -> None:
        if math.isinf(seconds):
            seconds = 3600.0
        if not wakeable:
            await self._sleep(seconds)
            return
        waker = asyncio.ensure_future(self._wake.wait())
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({waker, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waker, sleeper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(waker, sleeper, return_exceptions=True)


# --------------------------------------------------------------------------- one sync


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The informers' caches at one instant (shared objects: read only)."""

    services: Iterable[dict[str, Any]]
    endpoint_slices: Iterable[dict[str, Any]]
    nodes: Sequence[dict[str, Any]]
    pods: Iterable[dict[str, Any]] = ()
    """This node's Pods (the podnat annotation)."""
    service_cidrs: Sequence[dict[str, Any]] | None = None
    """The ServiceCIDR objects; None where the server has no such API (or the flag wins)."""
    l2_statuses: Iterable[dict[str, Any]] = ()
    """MetalLB's ServiceL2Status objects (none where the server has no such API)."""

    def by_resource(self) -> dict[str, Iterable[dict[str, Any]]]:
        """The objects the index takes one by one, under their informers' resource names
        (the names :class:`~wholeip.agent.quarantine.Quarantine` holds them by)."""
        return {
            "services": self.services,
            "endpointslices": self.endpoint_slices,
            "pods": self.pods,
            L2_STATUS_RESOURCE: self.l2_statuses,
        }


Offload = Callable[..., Awaitable[Any]]


class RouteReportLike(Protocol):
    @property
    def not_on_link(self) -> AbstractSet[str]: ...

    @property
    def steered(self) -> AbstractSet[tuple[str, int]]: ...

    @property
    def errors(self) -> Sequence[str]: ...

    @property
    def conflicts(self) -> AbstractSet[int]: ...


class Router(Protocol):
    """What the sync needs of :class:`wholeip.agent.policyroute.PolicyRouter`."""

    def apply(self, routes: Mapping[int, Holder]) -> RouteReportLike: ...


Lookup = Callable[[str, str], "dict[str, Any] | None"]
"""(resource, key) -> the cached object now, or None when it is gone."""


_T = TypeVar("_T")


def _with_cpu(work: Callable[[], _T]) -> tuple[_T, float]:
    """``work()`` and the CPU seconds its thread spent on it (the index's wall time also
    counts whatever else the process and the machine ran meanwhile)."""
    started = time.thread_time()
    result = work()
    return result, time.thread_time() - started


def _keep_long() -> None:
    """After a new index: what exists now (caches, index) lives long, so it is kept out of
    every future collection (a sync's garbage then costs a sync's size to collect), and
    the heap the build freed goes back to the system (a rebuild decodes every cached
    object once: without it the process would keep that high-water mark as RSS)."""
    freeze_kept()
    heap.trim()


@dataclass(frozen=True, slots=True)
class Pending:
    """The changes one sync takes: everything, or the keys of what changed."""

    everything: bool
    """Rebuild the index from a snapshot (a list of Services or slices, or no incremental mode)."""
    services: set[str]
    slices: set[str]
    since: float | None
    """When the oldest of these changes arrived (None: nothing was reported)."""
    pods: AbstractSet[str] = frozenset()
    """Keys (namespace/name) of this node's Pods that changed."""
    l2_statuses: AbstractSet[str] = frozenset()
    """Keys (namespace/name) of ServiceL2Status objects that changed."""
    networks: bool = False
    """A Node or a ServiceCIDR changed (or was listed): the index re-reads them all."""


EVERYTHING = Pending(everything=True, services=set(), slices=set(), since=None)

NETWORK_RESOURCES = ("nodes", "servicecidrs")
"""What decides the cluster networks: a change is an update of the index, not a rebuild."""


class Changes:
    """Which objects changed since the last sync, as the informers report them.

    Only keys: the objects are read from the caches when the sync runs, so this
    stays level-triggered (a key reported ten times is read once, as it is then).
    A list of Services, slices or Pods (after 410 or at start-up) marks *everything*:
    the next sync rebuilds the index from a snapshot. Nodes and ServiceCIDRs are few
    and always read whole: any change or list of them marks *networks*.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.services: set[str] = set()
        self.slices: set[str] = set()
        self.pods: set[str] = set()
        self.l2_statuses: set[str] = set()
        self.everything = True
        self.networks = False
        self.since: float | None = None
        """When the oldest change not taken yet arrived."""
        self.clock = clock

    def record(self, resource: str, key: str | None) -> None:
        if self.since is None:
            self.since = self.clock()
        if resource in NETWORK_RESOURCES:
            self.networks = True
        elif key is None or resource not in ("services", "endpointslices", "pods", L2_STATUS_RESOURCE):
            self.everything = True
        elif resource == "pods":
            self.pods.add(key)
        elif resource == L2_STATUS_RESOURCE:
            self.l2_statuses.add(key)
        elif resource == "services":
            self.services.add(key)
        else:
            self.slices.add(key)

    def take(self) -> Pending:
        out = Pending(
            everything=self.everything,
            services=self.services,
            slices=self.slices,
            since=self.since,
            pods=self.pods,
            l2_statuses=self.l2_statuses,
            networks=self.networks,
        )
        self.everything, self.services, self.slices, self.since = False, set(), set(), None
        self.pods, self.networks = set(), False
        self.l2_statuses = set()
        return out


@dataclass(frozen=True, slots=True)
class Rebuild:
    """Mode: every sync builds the index from a snapshot of the caches, O(cluster).

    For tools and tests that have no informers to report keys."""

    def take(self) -> Pending:
        return EVERYTHING


@dataclass(frozen=True, slots=True)
class Incremental:
    """Mode: a sync re-reads only the keys the informers reported (the agent).

    Everything it needs beyond a snapshot, together: the keys (``changes``, fed by
    the informers), the caches as they are now (``lookup``), the Nodes (read whole
    after a Node change, and for the Events of every sync) and the ServiceCIDR
    objects (None: no such API)."""

    changes: Changes
    lookup: Lookup
    nodes: Callable[[], Sequence[dict[str, Any]]]
    service_cidrs: Callable[[], Sequence[dict[str, Any]] | None] = lambda: None

    def take(self) -> Pending:
        return self.changes.take()


Mode = Rebuild | Incremental


@dataclass(frozen=True, slots=True)
class _Reported:
    """The index's problems plus this sync's own (rejected element changes)."""

    base: ProblemSource
    extra: list[Problem]

    @property
    def problems(self) -> list[Problem]:
        return [*self.base.problems, *self.extra]

    def backend_nodes(self, namespace: str, name: str) -> Sequence[str | None]:
        return self.base.backend_nodes(namespace, name)


def _first_address(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for v in value.values():
            found = _first_address(v)
            if found is not None:
                return found
    if isinstance(value, list):
        for v in value:
            found = _first_address(v)
            if found is not None:
                return found
    return None


def _leaves(value: Any) -> list[Any]:
    """The scalars of an element as sent, in order (a concatenation's parts, a map's key)."""
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _rejection_problem(r: Rejection, index: ClusterIndex, node_name: str) -> Problem:
    address = _first_address(r.element)
    owner = index.delegated.owner(r.set_name, _leaves(r.element))
    if owner is None and address is not None:
        owner = index.owner(address)
    return Problem(
        owner or ObjectRef("Node", "", node_name),
        "RuleRejected",
        f"node {node_name}: the kernel refused to {r.op} {r.set_name} element {address}: {r.error};"
        " every other change is committed, this one is retried at the next full sync",
    )


class Syncer:
    """One sync: the cluster index -> TableDoc -> engine, with metrics and logs.

    Two ways to a desired table:

    * **rebuild** (start-up, after a list of Services or slices, after an update of the
      index failed, and every sync in the :class:`Rebuild` mode): a new
      :class:`~wholeip.core.index.ClusterIndex` from a snapshot of every cache,
      O(cluster); at start-up, the index the ``prefill`` filled while the informers
      listed, brought up to that snapshot (:mod:`wholeip.agent.prefill`), when it has one;
    * **update** (every other change, in the :class:`Incremental` mode): the index
      re-reads only the keys the informers reported (and every Node and ServiceCIDR
      after a change of one) and tells the engine which elements it touched, so the
      model, the diff and the transaction all cost the size of the change.

    The mode is one argument, ``mode``; the incremental mode's inputs come together
    in :class:`Incremental`, so no combination of missing arguments selects a path.

    A full sync (start-up, resync timer, retry after a failed commit) compares the
    index's table with the kernel instead of the engine's memory; it does not
    rebuild the index, which a failed commit leaves intact. That the index equals
    a fresh build after any sequence of changes is a property test's job.
    Model, compiler and commit run in a worker thread (``offload``): for a large
    cluster a rebuild takes long enough to starve the watches and the probes if
    run on the event loop. Snapshots and cache reads happen on the loop, where
    the caches are consistent.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        snapshot: Callable[[], Snapshot],
        node_name: str,
        model: ModelSettings,
        table: str,
        mode: Mode = Rebuild(),
        metrics: Metrics | None = None,
        on_state: Callable[[ProblemSource, Sequence[dict[str, Any]]], None] | None = None,
        after_commit: Callable[[Plan], None] | None = None,
        offload: Offload = asyncio.to_thread,
        wall_clock: Callable[[], float] = time.time,
        router: Router | None = None,
        on_health: Callable[[Sequence[HealthCheck]], None] | None = None,
        rehost: Callable[[], ModelSettings] | None = None,
        prefill: Prefill | None = None,
        early: EarlyFill | None = None,
    ) -> None:
        self.engine = engine
        self.prefill = prefill
        """The start-up index, followed while the informers list (see
        :mod:`wholeip.agent.prefill`): taken by the first rebuild, if any."""
        self.early = early
        """The steps that send the start-up index's elements while the informers list (see
        :mod:`wholeip.agent.earlyfill`): settled by the first rebuild, before it takes the
        index."""
        self.on_health = on_health
        """Called on the event loop after every sync with the healthCheckNodePorts of the
        delegated Services (the health-check servers)."""
        self.router = router
        """The egress steering's policy routing (None: not programmed, e.g. a fake backend);
        applied before every commit, so a deleted rule or route is back within one sync."""
        self._route_conflicts: frozenset[int] = frozenset()
        self._steered: tuple[weakref.ref[ClusterIndex], Mapping[int, Any]] | None = None
        """The index (weakly: a rebuild must not keep the old one alive) and the routes the
        policy routing was last applied for, cleanly."""
        self.rehost = rehost
        """Reads this node's addresses and default-route sources again (podnat's
        ``ifaceAuto``); called at every full sync but the first (``model`` was read just
        before the Syncer was made), a change rebuilds the index."""
        self._host_read = rehost is not None
        """``model`` holds the host as read a moment ago: the first full sync takes it."""
        self._snapshot = snapshot
        self.node_name = node_name
        self.model = model
        self.table = table
        self.metrics = metrics
        self.on_state = on_state
        """Called with the index after every sync (the Event emitter) and the Nodes; its
        errors are logged."""
        self.after_commit = after_commit
        """Called (in the worker thread) with every committed, non-empty plan (stale conntrack
        entries); its errors are logged, never fail the sync."""
        self.mode = mode
        self._offload = offload
        self._wall_clock = wall_clock
        self.index: ClusterIndex | None = None
        self.quarantine = Quarantine()
        """Objects the index failed on, left out until they change (see
        :mod:`wholeip.agent.quarantine`)."""
        self.last_result: SyncResult | None = None
        self.rebuilds = 0
        """Syncs that built the index from a snapshot."""
        self._trimmer = heap.Trimmer()
        self.prefilled: int | None = None
        """Objects the start-up index followed as they were listed, when the first sync took
        it (None: the index was built from the caches)."""

    async def _take_prefill(self, snap: Snapshot) -> Taken | None:
        """The index the prefill built while the informers listed, brought up to ``snap``'s
        caches; None without one (given up, failed, or taken before)."""
        prefill, self.prefill = self.prefill, None
        if prefill is None:
            return None
        taken = await prefill.take(
            nodes=snap.nodes,
            settings=effective_model(self.model, snap.service_cidrs),
            pods=snap.pods,
            l2_statuses=snap.l2_statuses,
        )
        if taken is not None:
            self.prefilled = taken.listed
            log.info(
                "start-up index followed the lists",
                listed=taken.listed,
                caught_up=taken.caught_up,
                cpu_s=round(taken.cpu_s, 2),
                catch_up_cpu_ms=round(taken.catch_up_cpu_s * 1000, 2),
            )
        return taken

    async def _settle_early(self, early: EarlyFill) -> None:
        started = time.perf_counter()
        await early.settle()
        if early.steps:
            log.info(
                "early fill: elements sent while the informers listed",
                steps=early.steps,
                elements=early.sent,
                sending_s=round(early.seconds, 2),
                sending_cpu_s=round(early.sending_cpu, 2),
                planning_cpu_s=round(early.planning_cpu, 2),
                waited_ms=round((time.perf_counter() - started) * 1000, 2),
                staged=self.engine.staged,
            )

    def _rebuild(self, snap: Snapshot) -> ClusterIndex:
        held = {resource: self.quarantine.without(resource, objs) for resource, objs in snap.by_resource().items()}
        index = load_unique(
            services=held["services"],
            endpoint_slices=held["endpointslices"],
            nodes=self.quarantine.without("nodes", snap.nodes),
            node_name=self.node_name,
            settings=effective_model(self.model, snap.service_cidrs),
            table=self.table,
            pods=held["pods"],
            l2_statuses=held[L2_STATUS_RESOURCE],
        )
        _keep_long()
        return index

    def _lookup(self, resource: str, key: str) -> dict[str, Any] | None:
        """The cached object under ``key`` as the index is to see it (the mode's lookup, but
        None for one held out)."""
        mode = self.mode
        assert isinstance(mode, Incremental)
        return self.quarantine.lookup(resource, key, mode.lookup(resource, key))

    async def _build(self, snap: Snapshot) -> tuple[ClusterIndex, float]:
        """The index of ``snap`` (a rebuild), and its CPU seconds. If building it raises, the
        objects it fails on are found and left out, and it is built again without them
        (:mod:`wholeip.agent.quarantine`); if none is found, the error stands."""
        try:
            built: tuple[ClusterIndex, float] = await self._offload(_with_cpu, lambda: self._rebuild(snap))
            return built
        except Exception as exc:
            log.error(
                "building the index failed; looking for the objects it fails on", error=f"{type(exc).__name__}: {exc}"
            )
            failure = exc
            # Its frames hold the half-built index: let it go before the scan builds another
            # (two indexes of 100,000 Services at once would not fit the agent's memory limit).
            failure.__traceback__ = None
        again = self._snapshot()
        settings = effective_model(self.model, again.service_cidrs)

        def fresh(nodes: Sequence[dict[str, Any]]) -> ClusterIndex:
            return ClusterIndex(settings=settings, node_name=self.node_name, nodes=nodes, table=self.table)

        found, scan_cpu = await self._offload(
            _with_cpu, lambda: self.quarantine.scan(again.by_resource(), again.nodes, fresh)
        )
        if not found:
            raise failure
        latest = self._snapshot()
        index, cpu = await self._offload(_with_cpu, lambda: self._rebuild(latest))
        return index, scan_cpu + cpu

    async def _steer(self, index: ClusterIndex, touched: Touched | None, *, full: bool = True) -> None:
        """The policy routing for the holders this node steers to, before the marks that use
        it are committed; holders not on-link keep this node's pods out of the steering.

        An incremental sync (``full`` false) of the index the routing was last applied to,
        with the same routes, and that apply clean, leaves it: the routes are what the
        sync's changes could have changed, and opening netlink to read every rule and route
        again cost each Service change 3-4 ms (py-spy at 100,000 Services). Full syncs, the
        resync timer's included, apply it always (and so see a rule deleted by hand, a
        holder no longer on-link)."""
        if self.router is None:
            return
        routes = index.egress.routes()
        if not full and self._steered is not None and self._steered[0]() is index and self._steered[1] == routes:
            return
        self._steered = None
        try:
            report = await asyncio.to_thread(self.router.apply, routes)
        except Exception as exc:  # the table goes on; the next sync tries again
            log.warning("egress policy routing failed", error=f"{type(exc).__name__}: {exc}")
            return
        if not report.errors:
            self._steered = (weakref.ref(index), routes)
        for line in report.errors:
            log.warning("egress policy routing", error=line)
        if report.conflicts != self._route_conflicts:
            if report.conflicts:
                log.warning(
                    "egress policy routing: routing tables of wholeip's range hold a default route"
                    " that is not wholeip's; those slots are not steered (see --egress-table-base)",
                    tables=sorted(report.conflicts),
                )
            else:
                log.info("egress policy routing: no foreign routes in wholeip's tables any more")
            self._route_conflicts = frozenset(report.conflicts)
        index.egress.set_routing(report.not_on_link, touched if touched is not None else {}, steered=report.steered)

    async def _adopt(self, index: ClusterIndex) -> TableDoc | None:
        """At start: the affinity generations a previous run left in the kernel (a restart
        keeps the recorded clients of delegated Services on their endpoints). Returns the
        table read, for the commit to compare with (not read twice)."""
        try:
            # (Not with the index's sets as the ones it probably holds: the kernel's would come
            # back as those very objects, and taking the generations over changes them.)
            current: TableDoc | None = await self._offload(self.engine.observe)
        except Exception as exc:  # the commit reads the kernel again and says what is wrong
            log.warning("reading the table for the affinity generations failed", error=f"{type(exc).__name__}: {exc}")
            return None
        if current is None:
            return None
        adopted = index.delegated.adopt(current.elements, {})
        if adopted:
            log.info("affinity generations taken over from the table in the kernel", front_ends=adopted)
        return current

    def _commit(
        self, doc: TableDoc, full: bool, touched: Touched | None = None, observed: TableDoc | None = None
    ) -> SyncResult:
        staged = self.engine.staged and observed is None
        if staged:
            # The early fill's table: the kernel holds what the engine remembers sending a
            # moment ago; the rest and the rules go without reading it back.
            full, touched = False, self.engine.unsent(doc)
        result = self.engine.sync(doc, full=full, touched=touched, already_read=observed)
        if full or staged:
            # A full sync parsed the kernel's listing of the whole table; the early fill's
            # steps left libnftables' buffers in the worker threads' arena.
            self._trimmer.now()
        else:
            self._trimmer.maybe()  # what the syncs since freed (see wholeip.agent.heap)
        if self.after_commit is not None and not result.plan.empty:
            try:
                self.after_commit(result.plan)
            except Exception as exc:  # the table is committed; what follows it is best effort
                log.warning("after-commit hook failed", error=f"{type(exc).__name__}: {exc}")
        return result

    async def __call__(self, full: bool) -> SyncResult:
        started = time.perf_counter()
        try:
            result = await self._sync(full)
        except Exception:
            if self.metrics is not None:
                self.metrics.syncs.labels("error").inc()
            raise
        finally:
            if self.metrics is not None:
                self.metrics.sync_duration.labels("full" if full else "partial").observe(time.perf_counter() - started)
        return result

    async def _sync(self, full: bool) -> SyncResult:
        mode = self.mode
        pending = mode.take()
        index = self.index
        touched: Touched | None = None
        observed: TableDoc | None = None
        """Our table, when this sync has read it already (the affinity generations' take-over)."""
        nodes: Sequence[dict[str, Any]]
        rebuild = False
        if full and self._host_read:
            self._host_read = False
        elif full and self.rehost is not None:
            # The node's addresses and default route change rarely (a DHCP lease, a new
            # uplink): looked at once per full sync; a change is a new model, so a rebuild.
            try:
                model = await asyncio.to_thread(self.rehost)
            except Exception as exc:
                log.warning("reading this node's addresses failed", error=f"{type(exc).__name__}: {exc}")
                model = self.model
            if model != self.model:
                log.info(
                    "this node's addresses or default-route sources changed; rebuilding the index",
                    default_sources=[str(a) for a in model.podnat.default_sources],
                )
                self.model = model
                rebuild = True
        if isinstance(mode, Incremental) and not pending.everything and index is not None and not rebuild:
            # The caches are read here, on the loop, where they are consistent.
            lookup = self._lookup
            services: dict[ServiceKey, list[dict[str, Any]]] = {}
            for key in pending.services:
                obj = lookup("services", key)
                services[split_key(key)] = [obj] if obj is not None else []
            slices = {key: lookup("endpointslices", key) for key in pending.slices}
            pods = {split_key(key): lookup("pods", key) for key in pending.pods}
            l2 = {key: lookup(L2_STATUS_RESOURCE, key) for key in pending.l2_statuses}
            nodes = mode.nodes()
            # A Node or ServiceCIDR change re-reads them all (they are few) and updates what
            # they decide in place: at 100,000 Services a Node joining is a few elements.
            networks = None
            if pending.networks:
                # (without a Node held out, see agent/quarantine.py)
                networks = (
                    list(self.quarantine.without("nodes", nodes)),
                    effective_model(self.model, mode.service_cidrs()),
                )
            self.index = None  # until the update is known to have completed
            indexing = time.perf_counter()
            try:
                touched, index_cpu = await self._offload(
                    _with_cpu,
                    lambda: index.update(
                        services=services,
                        slices=slices,
                        pod_objects=pods,
                        l2_statuses=l2,
                        nodes=networks[0] if networks else None,
                        settings=networks[1] if networks else None,
                    ),
                )
            except Exception as exc:
                # A defect met on some object: the index is in doubt, so it is built again
                # now (and the objects it fails on are left out, see _build).
                log.error("the index update failed; rebuilding it", error=f"{type(exc).__name__}: {exc}")
                rebuild = True
            else:
                index_seconds = time.perf_counter() - indexing
                await self._steer(index, touched, full=full)
                if full:
                    touched = None  # compare the whole table with the kernel
        if not isinstance(mode, Incremental) or pending.everything or index is None or rebuild:
            self.index = index = None  # (the old index goes before the new one is built)
            snap = self._snapshot()
            indexing = time.perf_counter()
            taken = None
            if self.early is not None:
                await self._settle_early(self.early)
                self.early = None
            if self.prefill is not None:
                taken = await self._take_prefill(snap)
                if taken is None:
                    snap = self._snapshot()  # (the prefill may have read some of the iterators)
            if taken is not None:
                index, index_cpu = taken.index, taken.catch_up_cpu_s
                await self._offload(_keep_long)
            else:
                index, index_cpu = await self._build(snap)
            index_seconds = time.perf_counter() - indexing
            if self.engine.last is None and index.delegated.has_affinity():
                observed = await self._adopt(index)
            await self._steer(index, {})
            nodes = snap.nodes
            self.rebuilds += 1
        self.index = index
        doc = index.doc()
        result: SyncResult = await self._offload(self._commit, doc, full, touched, observed)
        # Kept for tests and tools: without the rendered commands, which would otherwise
        # live until the next sync.
        self.last_result = dataclasses.replace(result, plan=result.plan.light())
        reported = _Reported(
            index,
            [*self.quarantine.problems(), *(_rejection_problem(r, index, self.node_name) for r in result.rejected)],
        )
        problems = reported.problems
        if result.rejected:
            log.error(
                "the kernel refused some element changes; every other change is committed",
                rejected=len(result.rejected),
                first=f"{result.rejected[0].op} {result.rejected[0].set_name} {result.rejected[0].element}",
                error=result.rejected[0].error,
            )
        if self.metrics is not None:
            self.metrics.set_problems(p.reason for p in problems)
        if self.on_health is not None:
            try:
                self.on_health(index.delegated.health_checks())
            except Exception as exc:  # the health checks never cost a sync
                log.warning("health check update failed", error=f"{type(exc).__name__}: {exc}")
        if self.on_state is not None:
            try:
                self.on_state(reported, nodes)
            except Exception as exc:  # Events are a courtesy; they never cost a sync
                log.warning("problem reporting failed", error=f"{type(exc).__name__}: {exc}")
        change_ms = None
        if isinstance(mode, Incremental) and pending.since is not None:
            waited = mode.changes.clock() - pending.since
            change_ms = round(waited * 1000, 2)
            if self.metrics is not None and not result.plan.empty:
                self.metrics.change_to_commit.observe(waited)
        counts = count_mappings(doc)
        if self.metrics is not None:
            self.metrics.set_egress(index.egress.served(), *index.egress.counts())
            self.metrics.syncs.labels("noop" if result.plan.empty else "success").inc()
            self.metrics.set_mappings(counts)
            self.metrics.last_success.set(self._wall_clock())
            if result.drift:
                self.metrics.drift_repairs.inc()
        fields = {
            "full": result.full,
            "incremental": touched is not None,
            "changes": result.plan.summary(),
            "mappings": sum(counts.values()),
            "problems": len(problems),
            "index_ms": round(index_seconds * 1000, 2),
            "index_cpu_ms": round(index_cpu * 1000, 2),
            "observe_ms": round(result.observe_seconds * 1000, 2),
            "commit_ms": round(result.commit_seconds * 1000, 2),
            "change_ms": change_ms,
        }
        if result.drift:
            log.warning("drift repaired: our table was changed outside the agent", **fields)
        elif not result.plan.empty:
            log.info("synced", **fields)
        else:
            log.debug("synced", **fields)
        return result
