"""A new table's elements sent while the informers still list.

On a node without our table (a node that has just joined: an autoscaled cluster
makes them all day), the first sync used to create the whole table after the last
page was listed: at 100,000 Services, 350,000 elements in 1.6-4.8 s of the agent's
start to ready, after a listing during which its CPU waited for the API server a
third of the time. :class:`EarlyFill` follows the start-up index
(:mod:`wholeip.agent.prefill`) instead, and sends what it holds so far in steps:

* the first step creates the table with ``create``, its sets and chains and no rule
  (:meth:`~wholeip.engine.Engine.stage`); when the table exists already (the agent
  restarted: it holds traffic), the step fails and nothing is staged, the first sync
  compares with the kernel as always;
* then, each time the index holds ``every`` elements more than the kernel, at most
  twice ``every`` of those it holds and the kernel does not, and whatever the kernel holds
  and it does not (a claim lost to an older Service listed later), computed on the
  event loop, where the index changes, and sent from a thread while the next pages
  are filled;
* at the gate, :meth:`settle` waits for the step in flight, and the first sync
  sends what is left and every rule in one transaction, comparing the index with
  the engine's memory of what the steps sent instead of reading the table back
  (``Engine.unsent``: a hash lookup per element of both, against seconds to list
  the table at 100,000 Services).

A table without rules touches no packet, so a half-filled one is what a new table
always was between its creation and its rules (:func:`wholeip.nft.diff.create`),
only for longer; the agent is not ready until the first sync. Any error ends the
steps, and the first sync is then a full one (it reads what the kernel holds).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import structlog

from wholeip.agent import heap
from wholeip.core.index import ClusterIndex
from wholeip.engine import Engine, Stage
from wholeip.nft.backend import Exists

log = structlog.get_logger(__name__)

Submit = Callable[[Callable[[], tuple[float, float]]], "Future[tuple[float, float]]"]
"""Runs a step's sending somewhere else than the event loop, returning its future."""

EVERY = 20_000
"""Elements more than were sent that make the next step (at 100,000 whole-IP Services, 17
steps of about a quarter of a second each, in their thread)."""


def _count(index: ClusterIndex) -> int:
    return sum(len(elems) for elems in index.elements.values())


class EarlyFill:
    """See the module docstring. Every method runs on the event loop; a step is made there and
    sent from a thread of its own.

    The informers decode a list on the event loop, in one go (a server answers a first list
    whole), so the loop runs nothing else meanwhile: each page the prefill takes calls
    :meth:`grew`, which collects the step in flight if it is done and makes the next when it
    is due, and the sending thread completes a plain :class:`~concurrent.futures.Future`,
    not one the loop would have to be free to complete."""

    def __init__(self, engine: Engine, *, every: int = EVERY, submit: Submit | None = None) -> None:
        self.engine = engine
        self.every = every
        self._submit = submit
        self._executor: ThreadPoolExecutor | None = None
        self._sending: tuple[Stage, Future[tuple[float, float]]] | None = None
        self._held = 0
        """How many elements the kernel's table holds (after the steps sent)."""
        self._closed = False
        self.steps = 0
        """Steps sent (the table's creation included)."""
        self.sent = 0
        """Elements the steps added."""
        self.seconds = 0.0
        """Time the steps spent sending (in their thread)."""
        self.sending_cpu = 0.0
        """CPU time of their thread (rendering, libnftables, the kernel's work)."""
        self.planning_cpu = 0.0
        """CPU time making the steps, on the event loop."""
        self.ended: str | None = None
        """Why the steps ended before the gate (None: they did not)."""

    def grew(self, index: ClusterIndex) -> None:
        """The start-up index has taken another page (the prefill's ``on_filled``)."""
        if self._closed or not self._collect(wait=False):
            return
        if self.engine.staged and _count(index) - self._held < self.every:
            return
        started = time.thread_time()
        try:
            stage = self.engine.stage(index.doc(), most=2 * self.every)
        except Exception as exc:  # the first sync is a full one, as without these steps
            self._end(f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.planning_cpu += time.thread_time() - started
        if stage.plan.empty:  # (what the count saw is not for the kernel: wait for more)
            self._held = _count(index)
            return
        send = functools.partial(_timed, self.engine.send, stage)
        if self._submit is not None:
            future = self._submit(send)
        else:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wholeip-early-fill")
            future = self._executor.submit(send)
        self._sending = (stage, future)

    def _collect(self, *, wait: bool) -> bool:
        """Take the step in flight if it is done; False while it is not (unless ``wait``,
        which the caller has done) or once the steps have ended."""
        if self._sending is None:
            return not self._closed
        stage, future = self._sending
        if not wait and not future.done():
            return False
        self._sending = None
        try:
            wall, cpu = future.result()
        except Exists:
            self._end("our table exists already: the first sync compares with it", info=True)
        except Exception as exc:  # the first sync is a full one, as without these steps
            self._end(f"{type(exc).__name__}: {exc}")
        else:
            self.seconds += wall
            self.sending_cpu += cpu
            self.steps += 1
            self.sent += stage.plan.added
            self._held = self.engine.held()
            log.debug("early fill: step sent", added=stage.plan.added, held=self._held)
        return not self._closed

    async def settle(self) -> None:
        """No further step; wait for the one in flight: then the engine may sync."""
        self._closed = True
        if self._sending is not None:
            with contextlib.suppress(Exception):  # (collected below)
                await asyncio.wrap_future(self._sending[1])
            self._collect(wait=True)
        self._shut()

    def cancel(self) -> None:
        """The agent stops: no further step (one in its thread completes on its own)."""
        self._closed = True
        self._shut()

    def _shut(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _end(self, reason: str, *, info: bool = False) -> None:
        self._closed = True
        self.ended = reason
        (log.info if info else log.warning)("early fill: no further step", reason=reason, steps=self.steps)


def _timed(send: Callable[[Stage], None], stage: Stage) -> tuple[float, float]:
    """Send, and how long it took: wall and the thread's CPU time."""
    started, cpu = time.perf_counter(), time.thread_time()
    send(stage)
    heap.trim()  # (what libnftables freed, back to the system while the lists are decoded)
    return time.perf_counter() - started, time.thread_time() - cpu
