"""The agent's source of the Service networks: discovery first, then the ServiceCIDR informer.

At start the agent does not know whether the server serves ServiceCIDR objects
(:mod:`wholeip.kube.servicecidr`). :class:`ServiceCIDRSource` is one task of the
agent that asks (discovery, retried with the watches' backoff while the server
cannot be reached, so an agent started during a control-plane outage waits
instead of exiting), then runs the informer when the API exists, and for ever
after answers :meth:`objects`: the cached ServiceCIDRs, or None where the API does
not exist and the ``--service-cidr`` fallback applies. With ``--service-cidr``
given explicitly it asks nothing at all: the flag wins.

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
        options: WatchOptions | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._api = api
        self.enabled = enabled
        """False: ``--service-cidr`` was given, nothing is asked."""
        self._on_change = on_change
        self._on_key = on_key
        self._on_informer = on_informer
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
        """Discover, then watch (if there is anything to watch); returns only by cancellation
        or when there is nothing to watch."""
        if not self.enabled:
            log.info(self.disabled_message)
            return
        failures = 0
        while True:
            try:
                present = await serves_resource(
                    self._api, self.group_version, self.resource, request_timeout=self._options.list_timeout
                )
                break
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
        self._failing_since = None
        if not present:
            log.info(self.absent_message, group_version=self.group_version)
            self.decided.set()
            self._on_change()
            return
        informer = self.informer = self.make_informer(
            self._api, on_change=self._on_change, on_key=self._on_key, options=self._options
        )
        if self._on_informer is not None:
            self._on_informer(informer)
        self.decided.set()
        log.info(self.present_message, group_version=self.group_version)
        await informer.run()


class ServiceCIDRSource(DiscoveredSource):
    """Discovery, then the ServiceCIDR informer where the API exists (see the module docstring)."""

    resource = RESOURCE
    group_version = GROUP_VERSION
    disabled_message = "service networks from --service-cidr (given explicitly); ServiceCIDR objects not read"
    absent_message = "the server has no ServiceCIDR API; service networks from --service-cidr's fallback"
    present_message = "service networks from ServiceCIDR objects"
    make_informer = staticmethod(service_cidr_informer)
