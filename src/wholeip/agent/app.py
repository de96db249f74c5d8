"""The agent: informers, the reconcile loop, Events and the probe server, wired together.

:class:`Agent` owns one API client, three informers (Services, EndpointSlices,
Nodes), one :class:`~wholeip.engine.Engine` and the web server. Its long-lived
tasks run in one :class:`asyncio.TaskGroup`: if any of them dies of a bug, the
group cancels the others and the failure surfaces from :meth:`Agent.wait`, so
the process exits non-zero and the kubelet restarts it, instead of limping on
with a dead watch.

The informers feed the loop two ways: ``notify`` (something changed: sync
soon) and the keys of what changed, into one
:class:`~wholeip.agent.reconcile.Changes`. The
:class:`~wholeip.agent.reconcile.Syncer` runs in its
:class:`~wholeip.agent.reconcile.Incremental` mode over those keys and the
informers' caches, so a change costs its own size, not the cluster's.

Shutdown leaves the table in the kernel exactly as last committed. During a
rolling update the old pod stops before the new one starts; deleting the table
on the way out would drop every external IP's traffic for that gap. The next
agent's first (full) sync compares with the kernel and changes only what
changed meanwhile. ``wholeip cleanup`` removes the table on purpose.

Tests build an Agent with a :class:`~wholeip.nft.fake.FakeBackend` and the API
server double's configuration::

    async with Agent(settings, backend=FakeBackend(), kube_config=cfg) as agent:
        await agent.wait_ready()
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
from prometheus_client import CollectorRegistry

from wholeip import __version__
from wholeip.agent import heap
from wholeip.agent import log as logsetup
from wholeip.agent.controlplane import with_control_plane
from wholeip.agent.earlyfill import EarlyFill
from wholeip.agent.health import Health
from wholeip.agent.healthcheck import HealthCheckServers
from wholeip.agent.hostaddr import read_host
from wholeip.agent.l2statuses import L2StatusSource
from wholeip.agent.metrics import Metrics
from wholeip.agent.prefill import RESOURCES as PREFILLED
from wholeip.agent.prefill import Prefill
from wholeip.agent.reconcile import Changes, Incremental, Reconciler, Snapshot, Syncer
from wholeip.agent.servicecidrs import ServiceCIDRSource
from wholeip.agent.web import WebServer
from wholeip.core.gcpause import freeze_kept
from wholeip.core.model import HealthCheck, Problem, ProblemSource
from wholeip.core.servicecidr import effective_model
from wholeip.engine import Engine
from wholeip.kube.api import Obj
from wholeip.kube.events import EventRecorder
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client, config
from wholeip.kube.pods import build_pod_informer
from wholeip.kube.resources import build_informers
from wholeip.names import L2_STATUS_RESOURCE
from wholeip.settings import Settings

if TYPE_CHECKING:
    from wholeip.nft.backend import Backend

log = structlog.get_logger(__name__)


async def load_kube_config(path: str | None = None) -> client.Configuration:
    """Client configuration from ``path``, else ``$KUBECONFIG``, else the in-cluster service account."""
    cfg = client.Configuration()
    path = path or os.environ.get("KUBECONFIG") or None
    if path:
        await config.load_kube_config(config_file=path, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return cfg


class Agent:
    """One node agent. ``start()``/``stop()``, or ``async with``."""

    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend | None = None,
        kube_config: client.Configuration | None = None,
        watch_options: WatchOptions | None = None,
        event_reemit_interval: float = 1800.0,
        event_retry_interval: float = 60.0,
        event_settle: float = 2.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        if backend is None:
            from wholeip.nft.libnft import LibnftBackend

            backend = LibnftBackend()
        self.backend = backend
        self.engine = Engine(backend=backend, table=settings.table)
        self.metrics = Metrics(registry)
        self._kube_config = kube_config
        self._watch_options = watch_options
        self._event_reemit_interval = event_reemit_interval
        self._event_retry_interval = event_retry_interval
        self._event_settle = event_settle
        self.api: client.ApiClient | None = None
        self.informers: tuple[Informer, Informer, Informer] | None = None
        self.service_cidrs: ServiceCIDRSource | None = None
        """Where the Service networks come from (discovery, then the ServiceCIDR informer)."""
        self.pod_informer: Informer | None = None
        """This node's Pods (the podnat annotation)."""
        self.l2_statuses: L2StatusSource | None = None
        """Who holds egress IPs (discovery, then MetalLB's ServiceL2Status informer)."""
        self.reconciler: Reconciler | None = None
        self.syncer: Syncer | None = None
        self.events: EventRecorder | None = None
        self.health: Health | None = None
        self.web: WebServer | None = None
        self.health_checks: HealthCheckServers | None = None
        """The healthCheckNodePorts of delegated Services with externalTrafficPolicy Local."""
        self._task: asyncio.Task[None] | None = None
        self._problems: set[Problem] = set()

    # --------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect, bind the probe server, and start every task; returns at once."""
        if self._task is not None:
            raise RuntimeError("agent already started")
        s = self.settings
        cfg = self._kube_config or await load_kube_config(s.kubeconfig)
        # The API server's own addresses are never external IPs (issue 15). The slot chains
        # of egress steering use the mark bits of the egress settings.
        model = await with_control_plane(
            dataclasses.replace(s.model, egress_mark_mask=s.egress.mark_mask), str(cfg.host)
        )
        # Three long-lived watches, list pages and Event writes share the pool.
        cfg.connection_pool_maxsize = max(int(cfg.connection_pool_maxsize or 0), 16)
        api = self.api = client.ApiClient(cfg)
        api.user_agent = f"wholeip/{__version__}"
        reconciler = self.reconciler = Reconciler(
            work=self._sync,
            min_interval=s.min_sync_interval,
            burst=s.sync_burst,
            max_interval=s.max_sync_interval,
            gate=self._wait_synced,
        )
        changes = Changes()
        informers = self.informers = build_informers(
            api, on_change=reconciler.notify, on_key=changes.record, options=self._watch_options
        )
        tracked = [*informers]  # the ServiceCIDR informer joins once discovery found the API
        cidrs = self.service_cidrs = ServiceCIDRSource(
            api,
            enabled=not s.model.service_cidrs_given,
            on_change=reconciler.notify,
            on_key=changes.record,
            on_informer=tracked.append,
            on_informer_gone=tracked.remove,
            options=self._watch_options,
        )
        l2 = self.l2_statuses = L2StatusSource(
            api,
            enabled=True,
            on_change=reconciler.notify,
            on_key=changes.record,
            on_informer=tracked.append,
            on_informer_gone=tracked.remove,
            options=self._watch_options,
        )
        pod_informer = self.pod_informer = build_pod_informer(
            api,
            node_name=s.node_name,
            annotation=s.model.podnat.annotation,
            on_change=reconciler.notify,
            on_key=changes.record,
            options=self._watch_options,
        )
        self.events = EventRecorder(
            core=client.CoreV1Api(api),
            node_name=s.node_name,
            reemit_interval=self._event_reemit_interval,
            retry_interval=self._event_retry_interval,
            settle=self._event_settle,
            on_result=self.metrics.count_event,
        )
        from wholeip.agent.conntrack import ConntrackCleaner
        from wholeip.agent.policyroute import PolicyRouter
        from wholeip.core.steering import SteeringConfig
        from wholeip.nft.libnft import LibnftBackend

        # Like conntrack, the policy routing lives next to the table: programmed only when
        # the table is this network namespace's own.
        real = isinstance(self.backend, LibnftBackend)

        # The start-up index follows the lists of Services and slices as their pages come.
        # On a node without our table, its elements go to the kernel as they are filled in.
        early = EarlyFill(self.engine)
        prefill = Prefill(
            node_name=s.node_name, table=s.table, stored=self._stored, lookup=self._lookup, on_filled=early.grew
        )
        for informer in informers:
            if informer.resource in PREFILLED:
                informer.on_page = functools.partial(prefill.page, informer.resource)
        self.syncer = Syncer(
            prefill=prefill,
            early=early,
            engine=self.engine,
            snapshot=self._snapshot,
            node_name=s.node_name,
            # pyroute2's synchronous socket must not run on the event loop: a thread of its own.
            model=await asyncio.to_thread(read_host, model, _warn_addresses),
            rehost=functools.partial(read_host, model, _warn_addresses) if real else None,
            table=s.table,
            metrics=self.metrics,
            on_state=self._on_state,
            mode=Incremental(
                changes=changes,
                lookup=self._lookup,
                nodes=lambda: informers[2].snapshot(),
                service_cidrs=lambda: cidrs.objects(),
            ),
            # Stale conntrack entries live next to the table: only when the table is this
            # process's own network namespace's (not with a fake or another namespace's backend).
            after_commit=ConntrackCleaner(on_deleted=self.metrics.conntrack_deleted.inc) if real else None,
            router=PolicyRouter(SteeringConfig.from_settings(s.egress)) if real else None,
            # The ports are this network namespace's: only with the real table, as above.
            on_health=self._on_health if real else None,
        )
        self.health_checks = HealthCheckServers() if real else None
        tracked.append(pod_informer)
        self.metrics.track_informers(tracked)
        self.health = Health(
            informers=(*informers, pod_informer, cidrs, l2),
            loop=reconciler,
            timeout=s.health_timeout,
            api_timeout=s.api_liveness_timeout,
            api_informers=informers,
        )
        self.web = WebServer(
            host=s.bind_address,
            port=s.port,
            ready=self.health.ready,
            healthy=self.health.healthy,
            registry=self.metrics.registry,
        )
        try:
            await self.web.start()
        except BaseException:
            await api.close()
            raise
        self._task = asyncio.create_task(self._run(), name="wholeip-agent")
        log.info(
            "agent started",
            node=s.node_name,
            table=s.table,
            probes=self.web.url,
            version=__version__,
        )

    async def _run(self) -> None:
        assert self.informers is not None
        assert self.reconciler is not None
        assert self.events is not None
        async with asyncio.TaskGroup() as group:
            for informer in self.informers:
                group.create_task(informer.run(), name=f"informer-{informer.resource}")
            if self.service_cidrs is not None:
                group.create_task(self.service_cidrs.run(), name="servicecidrs")
            if self.l2_statuses is not None:
                group.create_task(self.l2_statuses.run(), name="servicel2statuses")
            if self.pod_informer is not None:
                group.create_task(self.pod_informer.run(), name="informer-pods")
            group.create_task(self._begin_prefill(), name="prefill")
            group.create_task(self.reconciler.run(), name="reconcile")
            group.create_task(self.events.run(), name="events")

    async def stop(self) -> None:
        """Stop every task and close connections. The kernel's table is left as it is."""
        task, self._task = self._task, None
        if self.syncer is not None and self.syncer.prefill is not None:
            self.syncer.prefill.drop("the agent stopped")
        if self.syncer is not None and self.syncer.early is not None:
            self.syncer.early.cancel()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.web is not None:
            await self.web.stop()
        if self.health_checks is not None:
            await self.health_checks.stop()
        if self.api is not None:
            await self.api.close()
            self.api = None
        log.info("agent stopped; table left in place", table=self.settings.table)

    async def wait(self) -> None:
        """Until the agent's tasks end: only by :meth:`stop`, or by raising the error that killed them."""
        if self._task is None:
            raise RuntimeError("agent not started")
        await asyncio.shield(self._task)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def wait_ready(self, *, within: float = 30.0) -> None:
        """Until the readiness probe would pass (tests)."""
        assert self.reconciler is not None
        await asyncio.wait_for(self.reconciler.first_commit.wait(), within)

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --------------------------------------------------------------- glue

    async def _wait_synced(self) -> None:
        assert self.informers is not None
        await asyncio.gather(*(i.synced.wait() for i in self.informers))
        if self.pod_informer is not None:
            await self.pod_informer.synced.wait()
        if self.service_cidrs is not None:
            await self.service_cidrs.wait_synced()
        if self.l2_statuses is not None:
            await self.l2_statuses.wait_synced()
        # (The process's CPU so far: how much of the listing was the agent's own work.)
        log.info(
            "informers synced",
            objects={i.resource: len(i.cache) for i in self.informers},
            cpu_s=round(time.process_time(), 2),
        )

    async def _begin_prefill(self) -> None:
        """Start the start-up index once the Nodes and the Service networks are known."""
        assert self.informers is not None
        assert self.syncer is not None
        nodes = self.informers[2]
        await nodes.synced.wait()
        cidrs = None
        if self.service_cidrs is not None:
            await self.service_cidrs.wait_synced()
            cidrs = self.service_cidrs.objects()
        syncer = self.syncer
        if syncer.prefill is not None:  # (not taken yet by the first sync)
            syncer.prefill.begin(nodes=nodes.snapshot(), settings=effective_model(syncer.model, cidrs))

    def _stored(self, resource: str) -> Mapping[str, object]:
        assert self.informers is not None
        services, slices, _ = self.informers
        return (services if resource == "services" else slices).stored()

    def _snapshot(self) -> Snapshot:
        assert self.informers is not None
        services, slices, nodes = self.informers
        return Snapshot(
            services=services.iterate(),
            endpoint_slices=slices.iterate(),
            nodes=nodes.snapshot(),
            pods=self.pod_informer.iterate() if self.pod_informer is not None else (),
            service_cidrs=self.service_cidrs.objects() if self.service_cidrs is not None else None,
            l2_statuses=(self.l2_statuses.objects() or ()) if self.l2_statuses is not None else (),
        )

    def _lookup(self, resource: str, key: str) -> Obj | None:
        assert self.informers is not None
        services, slices, _ = self.informers
        if resource == "pods":
            return self.pod_informer.cache.get(key) if self.pod_informer is not None else None
        if resource == L2_STATUS_RESOURCE:
            informer = self.l2_statuses.informer if self.l2_statuses is not None else None
            return informer.cache.get(key) if informer is not None else None
        return (services if resource == "services" else slices).cache.get(key)

    async def _sync(self, full: bool) -> None:
        assert self.syncer is not None
        await self.syncer(full)

    def _on_health(self, checks: Sequence[HealthCheck]) -> None:
        if self.health_checks is not None:
            self.health_checks.update(checks)

    def _on_state(self, state: ProblemSource, nodes: Sequence[Obj]) -> None:
        # Every node logs what appeared and what went away (only one node writes
        # the Event), and only the transitions: a persisting problem is not
        # repeated on every sync.
        current = set(state.problems)
        for problem in sorted(current - self._problems, key=lambda p: (p.ref, p.reason, p.message)):
            (log.warning if problem.warning else log.info)(
                "problem found",
                object=str(problem.ref),
                reason=problem.reason,
                message=problem.message,
            )
        for problem in sorted(self._problems - current, key=lambda p: (p.ref, p.reason, p.message)):
            log.info("problem resolved", object=str(problem.ref), reason=problem.reason)
        self._problems = current
        if self.events is not None:
            self.events.observe(state, nodes)


def _warn_addresses(error: str) -> None:
    log.warning("could not read this node's addresses; podnat's ifaceAuto uses ExternalIPs only", error=error)


# --------------------------------------------------------------------------- process entry


def run(settings: Settings) -> int:
    """``wholeip run``: the agent until SIGTERM/SIGINT. 0 after a clean stop, 1 when it failed."""
    logsetup.configure(format=settings.log_format, level=settings.log_level)
    heap.tune()  # before any thread (see wholeip.agent.heap)
    # What the process has loaded (the modules: aiohttp, kubernetes_asyncio...) lives as long
    # as it: out of every collection. A full collection of it alone took 40-48 ms, and the
    # listing of 100,000 Services ran 19 of them; later the index is frozen too (reconcile).
    freeze_kept()
    try:
        return asyncio.run(_main(settings))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 0


async def _main(settings: Settings, *, agent: Agent | None = None) -> int:
    """The process's life: start, wait for a signal (or a fatal error), stop. ``agent`` is a test seam."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stopping.set)
    try:
        return await _serve(agent or Agent(settings), stopping)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


async def _serve(agent: Agent, stopping: asyncio.Event) -> int:
    try:
        await agent.start()
    except Exception as exc:
        log.error("agent failed to start", error=f"{type(exc).__name__}: {exc}")
        await agent.stop()
        return 1
    assert agent.task is not None
    stop_waiter = asyncio.ensure_future(stopping.wait())
    done, _ = await asyncio.wait({agent.task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED)
    error = agent.task.exception() if agent.task in done and not agent.task.cancelled() else None
    if error is not None:
        log.error("agent failed", error=f"{type(error).__name__}: {error}", exc_info=error)
    else:
        log.info("signal received, stopping")
    stop_waiter.cancel()
    await agent.stop()
    return 1 if error is not None else 0
