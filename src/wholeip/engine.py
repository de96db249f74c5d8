"""The engine: keeps one table in the kernel equal to a desired TableDoc.

It remembers what it last committed. A normal sync diffs the desired table
against that memory and sends only the difference, never listing the kernel
(listing a table of 100,000 elements costs far more than the change itself).
A full sync lists the kernel and diffs against what is really there: at
start-up, on the resync timer, and after any failed commit, since after a
failure the memory can no longer be trusted. A full sync that finds the kernel
different from the memory has found drift (someone else changed our table),
and says so.

The engine is synchronous and holds no event loop; the agent runs it in a
worker thread, the CLI calls it directly.

It is where the nft layer's stations meet I/O: :func:`~wholeip.nft.diff.diff`
turns two documents into a plan of typed commands
(:mod:`wholeip.nft.commands`), and :func:`apply_plan` renders each transaction
(``to_json``) just before the backend takes it, so a plan never exists as
JSON all at once. The engine reads commands only through their types (which
are element changes, :func:`~wholeip.nft.commands.one_by_one`), never by the
shape of their JSON.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from wholeip.core.gcpause import gc_paused
from wholeip.nft import render
from wholeip.nft.backend import Backend, NftError, NotFound, Rejected, Unavailable
from wholeip.nft.commands import Command, Delete, as_json, as_text, one_by_one
from wholeip.nft.diff import Plan, diff, diff_touched
from wholeip.nft.doc import Elem, JSONObj, TableDoc
from wholeip.nft.render import Table


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did."""

    plan: Plan
    full: bool
    drift: bool
    observe_seconds: float
    commit_seconds: float
    rejected: tuple[Rejection, ...] = ()
    """Element changes the kernel refused even alone (the rest of the plan is committed)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """One element change the kernel refused on its own."""

    op: str
    """``add`` or ``delete``."""
    set_name: str
    element: JSONObj | Any
    """The element as it was sent (libnftables JSON: a key, or a ``[key, value]`` pair)."""
    error: str


def isolate(backend: Backend, commands: Sequence[Command]) -> list[Rejection]:
    """Find the element changes of ``commands`` the kernel refuses even alone; commit the rest.

    For a transaction of element changes only that the kernel refused as a whole:
    split it into single-element commands (deletions keep their place before
    additions) and bisect with dry runs (``nft --check``), so k bad elements among
    n cost O(k log n) checks; then every good change is committed in **one**
    transaction, so traffic sees them land at once. Returns the refused changes
    (none: the refusal did not reproduce, nothing was committed).
    """
    units = one_by_one(commands)
    if units is None:
        raise ValueError("isolate takes element changes only")
    sent = as_json(units)  # rendered once: the bisection sends slices of it again and again
    bad: list[int] = []
    errors: dict[int, str] = {}

    def search(lo: int, hi: int) -> None:
        try:
            backend.check(sent[lo:hi])
        except Unavailable:
            raise
        except NftError as exc:
            if hi - lo == 1:
                bad.append(lo)
                errors[lo] = str(exc)
                return
            mid = (lo + hi) // 2
            search(lo, mid)
            search(mid, hi)

    search(0, len(sent))
    if not bad:
        return []
    skip = set(bad)
    backend.transact([u for k, u in enumerate(sent) if k not in skip])
    out = []
    for k in bad:
        unit = units[k]
        elements = unit.elements
        assert elements is not None  # one_by_one makes element changes only
        (elem,) = elements.elems
        out.append(Rejection(unit.verb, elements.decl.name, render.element(elements.decl, elem), errors[k]))
    return out


def apply_plan(backend: Backend, plan: Plan) -> None:
    """Send a plan: its transaction, then (only when the table is created or rebuilt) the
    typeof declarations, the element transactions of a new table (see :func:`send_fill`)
    and the transaction of what uses them. Each transaction is rendered just before it is
    sent."""
    backend.transact(as_json(plan.commands))
    if plan.declarations:
        backend.declare("; ".join(plan.declarations))
    send_fill(backend, plan.fill)
    if plan.after:
        backend.transact(as_json(plan.after))


FILL_SWITCH_INTERVAL = 0.0005
"""The interpreter's switch interval while a fill is sent (Python's own is 5 ms): a sender
back from libnftables waits for the GIL until the renderer is made to give it up, up to
this long, at each of its calls into the library."""

_filling = threading.Lock()
"""One fill at a time sets and restores the switch interval."""


def send_fill(backend: Backend, fill: Sequence[Sequence[Command]]) -> None:
    """Send a new table's element transactions in order, each rendered while the one
    before it is in libnftables and the kernel: one thread renders (Python), another
    sends (C, without the GIL), so at 100,000 Services the 0.6 s of rendering hides under
    the 1.3 s of sending instead of adding to it. A transaction is sent only once the one
    before it is committed; the first failure is raised and nothing after it is sent."""
    if len(fill) < 2:
        for transaction in fill:
            backend.transact_text(as_text(transaction))
        return
    with _filling:
        _send_overlapped(backend, fill)


def _send_overlapped(backend: Backend, fill: Sequence[Sequence[Command]]) -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(FILL_SWITCH_INTERVAL)
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wholeip-fill") as sender:
            sending: Future[None] | None = None
            for transaction in fill:
                text = as_text(transaction)
                if sending is not None:
                    sending.result()
                sending = sender.submit(backend.transact_text, text)
            if sending is not None:
                sending.result()
    finally:
        sys.setswitchinterval(interval)


class Engine:
    """Diff-and-commit for one table, with the memory of the last commit."""

    def __init__(self, *, backend: Backend, family: str = "inet", table: str = "wholeip") -> None:
        self.backend = backend
        self.family = family
        self.table = table
        self.last: TableDoc | None = None
        """The table as last committed; None until the first commit or after a failure."""
        self._memory: dict[str, set[Elem]] = {}

    def observe(self, known: Mapping[str, AbstractSet[Elem]] | None = None) -> TableDoc | None:
        """The table as the kernel holds it now (None when it does not exist). ``known``:
        sets it probably holds, see :meth:`Backend.read_table`."""
        return self.backend.read_table(self.family, self.table, known=known)

    def sync(
        self,
        desired: TableDoc,
        *,
        full: bool = False,
        touched: Mapping[str, AbstractSet[Elem]] | None = None,
        already_read: TableDoc | None = None,
    ) -> SyncResult:
        """Make the kernel hold ``desired``, in one transaction.

        ``touched`` (optional) names every element that may differ from the last
        commit; the diff then costs the size of the change instead of the table's.
        ``already_read``: our table as the caller has just read it (:meth:`observe`); the
        sync is then full and compares with it instead of reading the kernel again.
        Raises the backend's errors; after an error the next sync is full.
        """
        full = full or self.last is None or already_read is not None
        started = time.perf_counter()
        drift = False
        plan: Plan | None = None
        if full:
            # Sets the kernel holds unchanged come back as these objects: no second copy.
            current = (
                already_read
                if already_read is not None
                else self.observe(self._memory if self.last is not None else desired.elements)
            )
            if self.last is not None:
                drift = current is None or not diff(self.last, current).empty
        else:
            current = self.last
            if touched is not None and current is not None:
                plan = diff_touched(desired, current, touched)
        partial = plan is not None
        observed = time.perf_counter()
        if plan is None:
            plan = diff(desired, current)
        rejected: list[Rejection] = []
        isolated = False
        try:
            # Rendering a big plan makes hundreds of thousands of short-lived containers;
            # a collection triggered meanwhile would scan the whole heap (40 % of a cold
            # commit at 100,000 Services, py-spy).
            with gc_paused():
                apply_plan(self.backend, plan)
        except Rejected:
            self.last = None
            if one_by_one(plan.commands) is None or plan.declarations or plan.after or plan.fill:
                raise
            # Validate-and-isolate: one bad element must not hold every other change back.
            rejected = isolate(self.backend, plan.commands)
            if not rejected:
                raise  # the refusal did not reproduce in dry runs: nothing committed, retry as usual
            isolated = True
        except BaseException:
            self.last = None
            raise
        # Isolated: the kernel holds the plan minus ``rejected``; the memory stays void and
        # the next sync is full (it tries the rejected changes again, alone).
        if partial and not isolated:
            for name, gone in plan.removed.items():
                self._memory[name] -= gone
            for name, came in plan.inserted.items():
                self._memory[name] |= came
            for name in plan.refilled:
                self._memory[name] = set(desired.elements.get(name, ()))
        elif not isolated:
            # Our own copy: the caller may keep changing its sets (the agent's index does).
            self._memory = {name: set(elems) for name, elems in desired.elements.items()}
            self.last = TableDoc(desired.family, desired.name, desired.skeleton, self._memory)
        return SyncResult(
            plan=plan,
            full=full,
            drift=drift,
            observe_seconds=observed - started,
            commit_seconds=time.perf_counter() - observed,
            rejected=tuple(rejected),
        )

    def cleanup(self) -> bool:
        """Delete our table (and nothing else). True when there was one."""
        self.last = None
        try:
            self.backend.transact([Delete(Table(self.family, self.table)).to_json()])
        except NotFound:
            return False
        return True
