"""Kubernetes Events for the problems the model finds in Services.

Every agent builds the same ClusterState, so every agent sees every problem.
If each reported them, a cluster of N nodes would write N Events per problem.
Exactly one node reports a Service's problems (:func:`reporting_node`):

1. the node that hosts the Service's backend pod, when a mapping names one and
   that Node exists (the smallest such name if the IPv4 and IPv6 backends live
   on different nodes): the Event then comes from where the traffic goes;
2. otherwise (no ready backend, no external IP yet ...) the lexicographically
   smallest name among the Ready Nodes, or among all Nodes when none is Ready.

A Pod's problems (the podnat annotation, :mod:`wholeip.core.podnat`) are reported
by the pod's own node, the only agent that watches that pod. So are a node's findings
about its own egress steering (:data:`wholeip.core.egressip.NODE_REASONS`, such as
``EgressNodeNotOnLink``): only that node knows them, and their messages name it.

All agents compute this from the same cache, so they agree without talking to
each other. (A node that runs no agent, e.g. a tainted control-plane node the
DaemonSet does not tolerate, can be chosen by rule 2; its problems then go
unreported as Events, but still appear in every agent's log and metrics.)

Deduplication: one Event per (Service uid, reason, message) while the problem
persists. A persisting problem is re-reported at most every
``reemit_interval`` by patching the same Event's ``count`` and
``lastTimestamp`` (as the kubelet's event correlator does), or by creating a
new one if the API server already expired it (Events live an hour by default).
A problem that goes away is forgotten, so its return is reported again.

Writing Events never blocks or fails a sync: :meth:`EventRecorder.observe` only
records what is owed, and a separate task writes it, paced, retrying a failed
write after ``retry_interval``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from wholeip.core.egressip import NODE_REASONS
from wholeip.core.model import ObjectRef, Problem, ProblemSource
from wholeip.kube.api import NotFound, Obj, read_json

log = structlog.get_logger(__name__)

COMPONENT = "wholeip"
MAX_MESSAGE = 1024

Key = tuple[str, str, str]
"""(Service uid, reason, message)."""


def _node_name(node: Obj) -> str:
    return str((node.get("metadata") or {}).get("name") or "")


def _is_ready(node: Obj) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if isinstance(cond, dict) and cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


class Ownership:
    """Which node reports which Service's problems (see the module docstring)."""

    def __init__(self, state: ProblemSource, nodes: Iterable[Obj]) -> None:
        node_list = list(nodes)
        self._state = state
        self._names = {_node_name(n) for n in node_list} - {""}
        ready = sorted(_node_name(n) for n in node_list if _node_name(n) in self._names and _is_ready(n))
        self.fallback: str | None = ready[0] if ready else min(self._names, default=None)

    def node_for(self, service: ObjectRef) -> str | None:
        backends = [n for n in self._state.backend_nodes(service.namespace, service.name) if n in self._names]
        return min(backends) if backends else self.fallback


def reporting_node(service: ObjectRef, *, state: ProblemSource, nodes: Iterable[Obj]) -> str | None:
    """The one node that reports ``service``'s problems as Events (None when no Node is known)."""
    return Ownership(state, nodes).node_for(service)


@dataclass(slots=True)
class _Record:
    problem: Problem
    first_seen: float = 0.0
    event_name: str | None = None
    count: int = 0
    emitted_at: float | None = None
    next_try: float = 0.0


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Turns a node's share of Service problems into deduplicated Kubernetes Events."""

    def __init__(
        self,
        *,
        core: Any,
        node_name: str,
        reemit_interval: float = 1800.0,
        retry_interval: float = 60.0,
        pace: float = 0.02,
        settle: float = 0.0,
        on_result: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._core = core
        """A ``kubernetes_asyncio.client.CoreV1Api`` (or anything with its two Event methods)."""
        self.node_name = node_name
        self.reemit_interval = reemit_interval
        self.retry_interval = retry_interval
        self.pace = pace
        self.settle = settle
        """Seconds a problem must last before its first Event (transients are not reported)."""
        self.on_result = on_result
        """Told the result of every write (``created``, ``updated``, ``error``...): the agent counts them."""
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._records: dict[Key, _Record] = {}
        self._queue: dict[Key, None] = {}  # insertion-ordered set of records to write
        self._wake = asyncio.Event()
        self.written = 0
        """Events created or updated so far."""

    @property
    def backlog(self) -> int:
        return len(self._queue)

    def observe(self, state: ProblemSource, nodes: Sequence[Obj]) -> None:
        """Record what this node owes for the given state. Synchronous and cheap."""
        ownership = Ownership(state, nodes)
        owned: dict[Key, Problem] = {}
        for problem in state.problems:
            ref = problem.ref
            # A Pod's problems (the podnat annotation) are its own node's: the only one that
            # reads it.
            if ref.kind == "Pod" or problem.reason in NODE_REASONS:
                pass
            elif ref.kind != "Service" or ownership.node_for(ref) != self.node_name:
                continue
            owned[(ref.uid or f"{ref.namespace}/{ref.name}", problem.reason, problem.message)] = problem
        for key in [k for k in self._records if k not in owned]:
            del self._records[key]
            self._queue.pop(key, None)
        now = self._clock()
        for key, problem in owned.items():
            record = self._records.get(key)
            if record is None:
                record = self._records[key] = _Record(problem, first_seen=now)
            if key in self._queue or now < record.next_try:
                continue
            if record.emitted_at is None or now - record.emitted_at >= self.reemit_interval:
                self._queue[key] = None
        if self._queue:
            self._wake.set()

    async def run(self) -> None:
        """Write owed Events forever; returns only by cancellation."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                key = next(iter(self._queue))
                del self._queue[key]
                record = self._records.get(key)
                if record is None:
                    continue
                if record.emitted_at is not None and self._clock() - record.emitted_at < self.reemit_interval:
                    continue  # queued again by a sync while this one was settling: already written
                wait = record.first_seen + self.settle - self._clock()
                if wait > 0:
                    # A problem seen by one sync only is often the two watches being out of
                    # step (a Service seen before its slice): write what is still there.
                    await self._sleep(wait)
                    if self._records.get(key) is not record:
                        continue
                try:
                    await self._write(record)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    record.next_try = self._clock() + self.retry_interval
                    self._count("error")
                    log.warning(
                        "writing an Event failed",
                        service=str(record.problem.ref),
                        reason=record.problem.reason,
                        error=f"{type(exc).__name__}: {exc}",
                    )
                await self._sleep(self.pace)

    async def _write(self, record: _Record) -> None:
        now = _timestamp(self._wall_clock())
        ref = record.problem.ref
        if record.event_name is not None:
            try:
                await read_json(
                    await self._core.patch_namespaced_event(
                        record.event_name,
                        ref.namespace,
                        {"count": record.count + 1, "lastTimestamp": now},
                        _content_type="application/merge-patch+json",
                        _preload_content=False,
                    )
                )
            except NotFound:
                record.event_name = None  # expired by the server's event TTL: start a new one
            else:
                record.count += 1
                record.emitted_at = self._clock()
                self._count("updated")
                return
        body = self._event(record.problem, now)
        created = await read_json(await self._core.create_namespaced_event(ref.namespace, body, _preload_content=False))
        record.event_name = str((created.get("metadata") or {}).get("name") or body["metadata"]["name"])
        record.count = 1
        record.emitted_at = self._clock()
        self._count("created")
        log.info(
            "event written",
            service=str(ref),
            reason=record.problem.reason,
            type=body["type"],
            event_name=record.event_name,
        )

    def _event(self, problem: Problem, now: str) -> Obj:
        ref = problem.ref
        involved: Obj = {"apiVersion": "v1", "kind": ref.kind, "namespace": ref.namespace, "name": ref.name}
        if ref.uid:
            involved["uid"] = ref.uid
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:16]}", "namespace": ref.namespace},
            "involvedObject": involved,
            "reason": problem.reason,
            "message": problem.message[:MAX_MESSAGE],
            "type": "Warning" if problem.warning else "Normal",
            "source": {"component": COMPONENT, "host": self.node_name},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_name,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }

    def _count(self, result: str) -> None:
        if result != "error":
            self.written += 1
        if self.on_result is not None:
            self.on_result(result)
