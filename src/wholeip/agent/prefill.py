"""The start-up index, built while the informers list.

The agent syncs nothing before every informer has listed (the gate, see
:mod:`wholeip.agent.reconcile`). At 100,000 Services the listing is most of the
start and the agent's CPU is idle for two thirds of it, waiting for the API
server's pages; building the index from the caches after it took another 4-5 s.
:class:`Prefill` follows the first lists of Services and EndpointSlices page by
page (the informers' ``on_page``) into a :class:`~wholeip.core.index.Filler`, in
a thread of its own, from the moment the Nodes and the Service networks are known.
When the gate opens, the first sync takes this index and brings it up to the
caches as they are then: what changed, came or went since its page was listed
(each page's objects are remembered by what the cache held for them, so the
comparison is by identity, or by equal packed bytes), every Node when they
changed, this node's Pods and MetalLB's statuses. That is an ordinary
:meth:`~wholeip.core.index.ClusterIndex.update`, and the index equals one built
from the caches at that moment (the property tests hold ``Filler`` and
``update`` to it).

A hint only: anything unexpected drops it and the first sync builds the index
from the caches as it would without it. A key listed twice (a list that failed
or expired halfway and started again), settings other than those it began with
(the Service networks or this node's addresses changed meanwhile), an error in
the thread.

The garbage collector is paused while the thread works on a page (as
:func:`~wholeip.core.index.load_unique` pauses it for a rebuild, for the same
reason), not while it waits for the next: what a page added is frozen with the
agent's long-lived objects. The agent gives the prefill up when it stops
(:meth:`Prefill.drop`), which ends the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from wholeip.core.gcpause import gc_paused
from wholeip.core.index import ClusterIndex, Filler, ServiceKey, finish_load
from wholeip.core.objects import namespaced_name, split_key
from wholeip.settings import ModelSettings

log = structlog.get_logger(__name__)

Obj = dict[str, Any]

RESOURCES = ("services", "endpointslices")
"""The informers a prefill follows (the rest are few, or read when the gate opens)."""


@dataclass(frozen=True)
class _Catch:
    """What the first sync brings the index up to (see :meth:`Prefill.take`)."""

    services: Mapping[ServiceKey, Sequence[Obj]]
    slices: Mapping[str, Obj | None]
    nodes: Sequence[Obj] | None
    pods: Iterable[Obj]
    l2_statuses: Iterable[Obj]
    done: concurrent.futures.Future[tuple[ClusterIndex, float]] = field(default_factory=concurrent.futures.Future)


_Item = tuple[str, list[tuple[str, Obj]]] | _Catch | None


@dataclass(frozen=True)
class Taken:
    """The index a prefill built, and what it cost."""

    index: ClusterIndex
    listed: int
    """Objects followed while the informers listed."""
    caught_up: int
    """Services and slices that had changed, come or gone since they were listed."""
    cpu_s: float
    """The thread's CPU time while the informers listed."""
    catch_up_cpu_s: float
    """The thread's CPU time to bring the index up to the caches (part of the first sync)."""


class Prefill:
    """See the module docstring. ``page`` and ``begin`` are called on the event loop,
    ``take`` by the first sync (on the loop too), once."""

    def __init__(
        self,
        *,
        node_name: str,
        table: str,
        stored: Callable[[str], Mapping[str, object]],
        lookup: Callable[[str, str], Obj | None],
        batch: int = 2000,
    ) -> None:
        self.node_name = node_name
        self.table = table
        self._stored = stored
        """resource -> its informer's key -> what its cache holds for it now."""
        self._lookup = lookup
        self._batch = batch
        self._seen: dict[str, dict[str, object]] = {r: {} for r in RESOURCES}
        """resource -> key -> what the cache held for it when the page was listed."""
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._basis: tuple[tuple[Obj, ...], ModelSettings] | None = None
        self.dropped: str | None = None
        """Why the prefill was given up (None: it was not)."""
        self._closed = False
        self._cpu = 0.0

    # ------------------------------------------------------------------ on the loop

    def page(self, resource: str, listed: Sequence[tuple[str, Obj, object]]) -> None:
        """One page of a list of ``resource`` (an informer's ``on_page``)."""
        if self._closed:
            return
        seen = self._seen[resource]
        for key, _, stored in listed:
            if key in seen:
                self.drop(f"{resource}: a list started again")
                return
            seen[key] = stored
        self._queue.put((resource, [(key, obj) for key, obj, _ in listed]))

    def begin(self, *, nodes: Sequence[Obj], settings: ModelSettings) -> None:
        """Start the thread, with the Nodes and the settings the index starts from."""
        if self._closed or self._thread is not None:
            return
        self._basis = (tuple(nodes), settings)
        self._thread = threading.Thread(target=self._work, name="wholeip-prefill", daemon=True)
        self._thread.start()

    def drop(self, reason: str) -> None:
        """Give the prefill up (the first sync builds the index from the caches)."""
        if self._closed:
            return
        self._closed = True
        self.dropped = reason
        self._seen = {}
        self._queue.put(None)
        log.info("start-up index: not followed any further", reason=reason)

    async def take(
        self,
        *,
        nodes: Sequence[Obj],
        settings: ModelSettings,
        pods: Iterable[Obj],
        l2_statuses: Iterable[Obj],
    ) -> Taken | None:
        """The index, brought up to the caches now; None when given up (or it failed)."""
        if self._closed:
            return None
        if self._thread is None:
            self.begin(nodes=nodes, settings=settings)
        assert self._basis is not None
        if settings != self._basis[1]:
            self.drop("the settings changed while the informers listed")
            return None
        seen, self._seen = self._seen, {}
        self._closed = True
        services: dict[ServiceKey, Sequence[Obj]] = {}
        slices: dict[str, Obj | None] = {}
        for resource in RESOURCES:
            now = self._stored(resource)
            then = seen[resource]
            changed = [k for k, held in now.items() if (was := then.get(k)) is not held and was != held]
            changed += then.keys() - now.keys()  # (gone)
            for key in changed:
                obj = self._lookup(resource, key)
                if resource == "services":
                    services[split_key(key)] = [obj] if obj is not None else []
                else:
                    slices[key] = obj
        catch = _Catch(
            services=services,
            slices=slices,
            nodes=None if tuple(nodes) == self._basis[0] else nodes,
            pods=pods,
            l2_statuses=l2_statuses,
        )
        self._queue.put(catch)
        try:
            index, cpu = await asyncio.wrap_future(catch.done)
        except Exception as exc:  # the first sync builds the index without it
            log.warning("start-up index: failed; building it from the caches", error=f"{type(exc).__name__}: {exc}")
            return None
        listed = sum(len(v) for v in seen.values())
        return Taken(index, listed, len(services) + len(slices), self._cpu, cpu)

    # ------------------------------------------------------------------ the thread

    def _work(self) -> None:
        assert self._basis is not None
        nodes, settings = self._basis
        started = time.thread_time()
        catch: _Catch | None = None
        try:
            index = ClusterIndex(settings=settings, node_name=self.node_name, nodes=nodes, table=self.table)
            filler = Filler(index, batch=self._batch)
            while (item := self._queue.get()) is not None and self.dropped is None:
                # (The collector paused for each page, as a load pauses it: what the page
                # added lives on, see gc_paused. Not across the waits for the next page.)
                with gc_paused(long_lived=True):
                    if isinstance(item, _Catch):
                        catch = item
                        self._cpu = time.thread_time() - started
                        started = time.thread_time()
                        filler.finish()
                        index.update(services=catch.services, slices=catch.slices, nodes=catch.nodes)
                        finish_load(index, pods=catch.pods, l2_statuses=catch.l2_statuses)
                        break
                    resource, chunk = item
                    if resource == "services":
                        filler.services((namespaced_name(obj), (obj,)) for _, obj in chunk)
                    else:
                        filler.slices(chunk)
        except BaseException as exc:
            while catch is None and (item := self._queue.get()) is not None:
                catch = item if isinstance(item, _Catch) else None
            if catch is not None:
                catch.done.set_exception(exc)
            return
        if catch is not None:
            catch.done.set_result((index, time.thread_time() - started))
