"""The start-up index, built while the informers list.

The agent syncs nothing before every informer has listed (the gate, see
:mod:`wholeip.agent.reconcile`). At 100,000 Services the listing is most of the
start and the agent's CPU is idle for two thirds of it, waiting for the API
server's pages; building the index from the caches after it took another 4-5 s.
:class:`Prefill` follows the first lists of Services and EndpointSlices page by
page (the informers' ``on_page``) into a :class:`~wholeip.core.index.Filler`, from
the moment the Nodes and the Service networks are known. When the gate opens,
the first sync takes this index and brings it up to the caches as they are then:
what changed, came or went since its page was listed (each page's objects are
remembered by what the cache held for them, so the comparison is by identity,
or by equal packed bytes), every Node when they changed, this node's Pods and
MetalLB's statuses. That is an ordinary
:meth:`~wholeip.core.index.ClusterIndex.update`, and the index equals one built
from the caches at that moment (the property tests hold ``Filler`` and
``update`` to it).

The pages are filled on the event loop, as each arrives (a page of 500 is about
20 ms), not in a thread: a CPU-bound thread holds the GIL for its whole switch
interval whenever the loop wakes up for the next bytes of a list, and with one
the listing of 100,000 Services took 43 s instead of 29 s.

A hint only: anything unexpected drops it and the first sync builds the index
from the caches as it would without it. A key listed twice (a list that failed
or expired halfway and started again), settings other than those it began with
(the Service networks or this node's addresses changed meanwhile), an error.

The garbage collector is paused while a page is filled (as
:func:`~wholeip.core.index.load_unique` pauses it for a rebuild, for the same
reason): what the page added is frozen with the agent's long-lived objects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
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
class Taken:
    """The index a prefill built, and what it cost."""

    index: ClusterIndex
    listed: int
    """Objects followed while the informers listed."""
    caught_up: int
    """Services and slices that had changed, come or gone since they were listed."""
    cpu_s: float
    """CPU time spent filling it while the informers listed."""
    catch_up_cpu_s: float
    """CPU time to bring it up to the caches (part of the first sync)."""


class Prefill:
    """See the module docstring. Every method runs on the event loop (``take`` sends the
    catching up to a thread)."""

    def __init__(
        self,
        *,
        node_name: str,
        table: str,
        stored: Callable[[str], Mapping[str, object]],
        lookup: Callable[[str, str], Obj | None],
        batch: int = 2000,
        on_filled: Callable[[ClusterIndex], None] | None = None,
    ) -> None:
        self.node_name = node_name
        self.on_filled = on_filled
        """Called with the index after each page it took (``EarlyFill.grew``); its errors give
        the prefill up."""
        self.table = table
        self._stored = stored
        """resource -> its informer's key -> what its cache holds for it now."""
        self._lookup = lookup
        self._batch = batch
        self._seen: dict[str, dict[str, object]] = {r: {} for r in RESOURCES}
        """resource -> key -> what the cache held for it when the page was listed."""
        self._waiting: list[tuple[str, list[tuple[str, Obj]]]] | None = []
        """Pages listed before :meth:`begin` (None once begun)."""
        self._filler: Filler | None = None
        self._basis: tuple[tuple[Obj, ...], ModelSettings] | None = None
        self.dropped: str | None = None
        """Why the prefill was given up (None: it was not)."""
        self._closed = False
        self._cpu = 0.0

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
        chunk = [(key, obj) for key, obj, _ in listed]
        if self._waiting is not None:
            self._waiting.append((resource, chunk))
        else:
            self._fill(resource, chunk)

    def begin(self, *, nodes: Sequence[Obj], settings: ModelSettings) -> None:
        """Start the index, with the Nodes and the settings it starts from, and fill it with
        the pages listed so far."""
        if self._closed or self._waiting is None:
            return
        self._basis = (tuple(nodes), settings)
        waiting, self._waiting = self._waiting, None
        started = time.thread_time()
        try:
            index = ClusterIndex(settings=settings, node_name=self.node_name, nodes=nodes, table=self.table)
            self._filler = Filler(index, batch=self._batch)
        except Exception as exc:
            self.drop(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self._cpu += time.thread_time() - started
        for resource, chunk in waiting:
            self._fill(resource, chunk, tell=False)
        self._filled()

    def _fill(self, resource: str, chunk: list[tuple[str, Obj]], *, tell: bool = True) -> None:
        filler = self._filler
        if filler is None or self._closed:
            return
        started = time.thread_time()
        try:
            with gc_paused(long_lived=True):
                if resource == "services":
                    filler.services((namespaced_name(obj), (obj,)) for _, obj in chunk)
                else:
                    filler.slices(chunk)
        except Exception as exc:  # a hint: the first sync builds the index without it
            self.drop(f"{type(exc).__name__}: {exc}")
        finally:
            self._cpu += time.thread_time() - started
        if tell:
            self._filled()

    def _filled(self) -> None:
        filler = self._filler
        if filler is None or self._closed or self.on_filled is None:
            return
        try:
            self.on_filled(filler.index)
        except Exception as exc:
            self.drop(f"{type(exc).__name__}: {exc}")

    def drop(self, reason: str) -> None:
        """Give the prefill up (the first sync builds the index from the caches)."""
        if self._closed:
            return
        self._closed = True
        self.dropped = reason
        self._seen, self._waiting, self._filler = {}, None, None
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
        if self._waiting is not None:
            self.begin(nodes=nodes, settings=settings)
        filler, basis = self._filler, self._basis
        if filler is None or basis is None:
            return None  # (dropped while beginning)
        if settings != basis[1]:
            self.drop("the settings changed while the informers listed")
            return None
        seen, self._seen = self._seen, {}
        self._closed = True
        self._filler = None
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
        changed_nodes = None if tuple(nodes) == basis[0] else nodes

        def catch_up() -> tuple[ClusterIndex, float]:
            started = time.thread_time()
            with gc_paused(long_lived=True):
                filler.finish()
                index = filler.index
                index.update(services=services, slices=slices, nodes=changed_nodes)
                finish_load(index, pods=pods, l2_statuses=l2_statuses)
            return index, time.thread_time() - started

        try:
            index, cpu = await asyncio.to_thread(catch_up)
        except Exception as exc:  # the first sync builds the index without it
            log.warning("start-up index: failed; building it from the caches", error=f"{type(exc).__name__}: {exc}")
            return None
        listed = sum(len(v) for v in seen.values())
        return Taken(index, listed, len(services) + len(slices), self._cpu, cpu)
