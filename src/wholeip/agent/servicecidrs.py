"""The agent's source of the Service networks: discovery first, then the ServiceCIDR informer.

At start the agent does not know whether the server serves ServiceCIDR objects
(:mod:`wholeip.kube.servicecidr`). :class:`ServiceCIDRSource` is one task of the
agent that asks (discovery, retried with the watches' backoff while the server
cannot be reached, so an agent started during a control-plane outage waits
instead of exiting), then runs the informer when the API exists, and answers
:meth:`objects`: the cached ServiceCIDRs, or None where the API does not exist and
the ``--service-cidr`` fallback applies. It keeps asking (``rediscover_interval``)
while the API is absent, so an API that appears later (a control-plane upgrade,
MetalLB installed after wholeip) is watched without a restart, and while the
informer fails, so an API that was removed is let go (back to the fallback)
instead of failing the probes. With ``--service-cidr`` given explicitly it asks
nothing at all: the flag wins.

It looks like an informer to the readiness probe (``resource``, ``synced``,
``failing_for``): the agent is not ready before the Service networks are known,
since a table built on the fallback would be rebuilt a moment later.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from wholeip.backoff import backoff_delay
from wholeip.kube.api import Obj, serves_resource
from wholeip.kube.informer import Informer, WatchOptions
from wholeip.kube.k8s import client
from wholeip.kube.servicecidr import GROUP_VERSION, RESOURCE, service_cidr_informer

log = structlog.get_logger(__name__)


class InformerFactory(Protocol):
    """How a discovered source makes its informer."""

    def __call__(
        self,
        api: client.ApiClient,
        *,
        on_change: Callable[[], None],
        on_key: Callable[[str, str | None], None] | None = None,
        options: WatchOptions | None = None,
    ) -> Informer: ...


class _Both:
    """Set when discovery is done and, if there is an informer, it has synced."""

    def __init__(self, source: DiscoveredSource) -> None:
        self._source = source

    def is_set(self) -> bool:
        s = self._source
        return s.decided.is_set() and (s.informer is None or s.informer.synced.is_set())


class DiscoveredSource:
    """Discovery, then an informer where the API exists (see the module docstring); the
    subclasses say which API."""

    resource: str
    group_version: str
    disabled_message = "not read"
    absent_message = "the server has no such API"
    present_message = "watching"
    make_informer: InformerFactory
    """The informer of the resource (a module function of :mod:`wholeip.kube`)."""

    def __init__(
        self,
        api: client.ApiClient,
        *,
        enabled: bool,
        on_change: Callable[[], None],
        on_key: Callable[[str, str | None], None] | None = None,
        on_informer: Callable[[Informer], None] | None = None,
        on_informer_gone: Callable[[Informer], None] | None = None,
        options: WatchOptions | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self.enabled = enabled
        """False: ``--service-cidr`` was given, nothing is asked."""
        self._on_change = on_change
        self._on_key = on_key
        self._on_informer = on_informer
        self._on_informer_gone = on_informer_gone
        self._options = options or WatchOptions()
        self._sleep = sleep
        self.decided = asyncio.Event()
        """Set once it is known whether the API exists (at once when not enabled)."""
        self.informer: Informer | None = None
        self._failing_since: float | None = None
        if not enabled:
            self.decided.set()

    @property
    def synced(self) -> _Both:
        return _Both(self)

    def failing_for(self) -> float:
        if self.informer is not None:
            return self.informer.failing_for()
        return 0.0 if self._failing_since is None else time.monotonic() - self._failing_since

    def objects(self) -> Sequence[Obj] | None:
        """The ServiceCIDR objects now; None where the API does not exist (or is not asked)."""
        return None if self.informer is None else self.informer.snapshot()

    async def wait_synced(self) -> None:
        await self.decided.wait()
        if self.informer is not None:
            await self.informer.synced.wait()

    async def run(self) -> None:
        """Discover, then watch where the API exists; returns only by cancellation (or at
        once when not enabled). Where the API is absent it asks again every
        ``rediscover_interval``, and while the informer fails it asks whether the API
        still exists: an API installed later is watched, one removed is let go."""
        if not self.enabled:
            log.info(self.disabled_message)
            return
        task: asyncio.Task[None] | None = None
        try:
            while True:
                present = await self._discover()
                if present and self.informer is None:
                    informer = self.informer = self.make_informer(
                        self._api, on_change=self._on_change, on_key=self._on_key, options=self._options
                    )
                    if self._on_informer is not None:
                        self._on_informer(informer)
                    task = asyncio.create_task(informer.run(), name=f"informer-{self.resource}")
                    log.info(self.present_message, group_version=self.group_version)
                    self.decided.set()
                elif not present and (self.informer is not None or not self.decided.is_set()):
                    if self.informer is not None:
                        log.warning("the API is gone; " + self.absent_message, group_version=self.group_version)
                        if task is not None:
                            task.cancel()
                            await asyncio.gather(task, return_exceptions=True)
                            task = None
                        if self._on_informer_gone is not None:
                            self._on_informer_gone(self.informer)
                        self.informer = None
                    else:
                        log.info(self.absent_message, group_version=self.group_version)
                    self.decided.set()
                    if self._on_key is not None:
                        self._on_key(self.resource, None)  # read whole at the next sync
                    self._on_change()
                # Until the next question: while absent, the interval; while watching, as
                # long as the informer works (a task that ended is asked about at once).
                while True:
                    await self._sleep(self._options.rediscover_interval)
                    if self.informer is None or task is None or task.done() or self.informer.failing_for() > 0:
                        break
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _discover(self) -> bool:
        """Whether the server serves the API: asked until it answers, with the watches' backoff."""
        failures = 0
        while True:
            try:
                present = await serves_resource(
                    self._api, self.group_version, self.resource, request_timeout=self._options.list_timeout
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                delay = backoff_delay(
                    failures, base=self._options.backoff_base, cap=self._options.backoff_max, random=random.random()
                )
                log.warning(
                    "API discovery failed; retrying",
                    group_version=self.group_version,
                    error=f"{type(exc).__name__}: {exc}",
                    delay=round(delay, 3),
                )
                await self._sleep(delay)
                continue
            self._failing_since = None
            return present


class ServiceCIDRSource(DiscoveredSource):
    """Discovery, then the ServiceCIDR informer where the API exists (see the module docstring)."""

    resource = RESOURCE
    group_version = GROUP_VERSION
    disabled_message = "service networks from --service-cidr (given explicitly); ServiceCIDR objects not read"
    absent_message = "the server has no ServiceCIDR API; service networks from --service-cidr's fallback"
    present_message = "service networks from ServiceCIDR objects"
    make_informer = staticmethod(service_cidr_informer)
