"""The engine: keeps one table in the kernel equal to a desired TableDoc.

It remembers what it last committed (a view of the caller's journaled sets,
:mod:`wholeip.nft.journal`, or copies of its own). A normal sync diffs the desired table
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

import itertools
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

from wholeip.core.gcpause import gc_paused
from wholeip.nft import render
from wholeip.nft.backend import Backend, NftError, NotFound, Rejected, Unavailable
from wholeip.nft.commands import Command, Delete, as_json, as_text, in_transactions, one_by_one
from wholeip.nft.diff import CREATE_CHUNK, Plan, create, diff, diff_touched
from wholeip.nft.doc import Elem, JSONObj, Skeleton, TableDoc
from wholeip.nft.journal import Committed, JournaledSet
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
class Stage:
    """One step of a table filled before its rules (:meth:`Engine.stage`)."""

    plan: Plan
    table: TableDoc
    """What the plan is made from: the sets as they were when it was made (a new table's
    all, a later step's refilled interval sets), the rest the caller's live sets."""


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
        self._memory: dict[str, set[Elem] | Committed] = {}
        """Per set, its elements as last committed: a set of the engine's own, or, for a
        caller's :class:`~wholeip.nft.journal.JournaledSet` (the agent's index), a view of
        it that undoes what changed since (no copy: :mod:`wholeip.nft.journal`)."""
        self._staged = False
        """``last`` is a table :meth:`stage` is filling (no rules yet)."""

    @property
    def staged(self) -> bool:
        """The kernel holds a table this engine made and is filling before its rules
        (:meth:`stage`), and nothing has failed since: its memory is what the kernel holds."""
        return self._staged and self.last is not None

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
            committed = self._committed()
            if already_read is not None:
                current: TableDoc | None = already_read
            else:
                current = self.observe(committed.elements if committed is not None else desired.elements)
            if committed is not None:
                drift = current is None or not diff(committed, current).empty
        else:
            current = self.last
            if touched is not None and current is not None:
                plan = diff_touched(desired, current, touched)
        partial = plan is not None
        observed = time.perf_counter()
        if plan is None:
            if not full:  # (the whole memory compared: as sets, not views element by element)
                current = self._committed()
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
            self._forget()
            if one_by_one(plan.commands) is None or plan.declarations or plan.after or plan.fill:
                raise
            # Validate-and-isolate: one bad element must not hold every other change back.
            rejected = isolate(self.backend, plan.commands)
            if not rejected:
                raise  # the refusal did not reproduce in dry runs: nothing committed, retry as usual
            isolated = True
        except BaseException:
            self._forget()
            raise
        # Isolated: the kernel holds the plan minus ``rejected``; the memory stays void and
        # the next sync is full (it tries the rejected changes again, alone).
        if not isolated:
            self._settle(desired, plan if partial else None)
        self._staged = False
        return SyncResult(
            plan=plan,
            full=full,
            drift=drift,
            observe_seconds=observed - started,
            commit_seconds=time.perf_counter() - observed,
            rejected=tuple(rejected),
        )

    def _settle(self, desired: TableDoc, plan: Plan | None) -> None:
        """The memory once the kernel holds ``desired``. ``plan``: the element plan just
        committed over the memory (a partial sync), None after a whole comparison.

        A caller's journaled set is armed and remembered as a view; any other set is kept
        as a set of the engine's own (the caller may go on changing its sets), changed by
        the plan or copied whole."""
        old = self._memory
        shareable = _shareable(desired.skeleton)
        memory: dict[str, set[Elem] | Committed] = {}
        for name, elems in desired.elements.items():
            if name in shareable and isinstance(elems, JournaledSet) and elems.owned_by(self):
                elems.arm(self)
                memory[name] = Committed(elems)
                continue
            have = old.get(name)
            if plan is not None and type(have) is set and name not in plan.refilled:
                gone, came = plan.removed.get(name), plan.inserted.get(name)
                if gone:
                    have -= gone
                if came:
                    have |= came
                memory[name] = have
            else:
                memory[name] = set(elems)
        _release(self, old, keep=memory)
        self._memory = memory
        self.last = TableDoc(desired.family, desired.name, desired.skeleton, memory)

    def _forget(self) -> None:
        """The memory can no longer be trusted: the next sync reads the kernel."""
        _release(self, self._memory)
        self.last, self._memory = None, {}

    def _committed(self) -> TableDoc | None:
        """The last commit as sets (views made whole: a full sync compares every element)."""
        last = self.last
        if last is None:
            return None
        elements = {name: self._held_set(name) for name in self._memory}
        return TableDoc(last.family, last.name, last.skeleton, elements)

    def _held_set(self, name: str) -> AbstractSet[Elem]:
        have = self._memory.get(name)
        if have is None:
            return frozenset()
        return have.materialize() if isinstance(have, Committed) else have

    def _remember(self, plan: Plan, desired: TableDoc) -> None:
        """The memory of a table being filled (:meth:`send`: its own sets) after a committed
        element plan (not a created or rebuilt table)."""
        memory = self._memory
        for name, gone in plan.removed.items():
            cast(set[Elem], memory[name]).difference_update(gone)
        for name, came in plan.inserted.items():
            cast(set[Elem], memory.setdefault(name, set())).update(came)
        for name in plan.refilled:
            memory[name] = set(desired.elements.get(name, ()))

    def held(self) -> int:
        """How many elements the table holds as last committed."""
        return sum(len(elems) for elems in self._memory.values())

    def unsent(self, desired: TableDoc) -> dict[str, set[Elem]]:
        """Per set, the elements in which ``desired`` and the last commit differ (dynamic sets
        aside): the ``touched`` of a :meth:`sync` that compares the whole table with the
        memory instead of the kernel. Costs a hash lookup per element of ``desired``, and per
        element of the memory too for a set that lost some (the sizes tell)."""
        memory = self._memory
        out: dict[str, set[Elem]] = {}
        for decl in desired.skeleton.sets:
            if decl.dynamic:
                continue
            want = desired.elements.get(decl.name, frozenset())
            view = memory.get(decl.name)
            if isinstance(view, Committed) and view.live is want:
                if view.journal and (changed := view.changed()):
                    out[decl.name] = changed
                continue
            have = self._held_set(decl.name)
            differ = set(want - have)
            if len(want) - len(have) != len(differ):  # (not only additions)
                differ |= have - want
            if differ:
                out[decl.name] = differ
        return out

    def stage(self, desired: TableDoc, *, most: int) -> Stage:
        """The next step of filling a new table before its rules: some of what the kernel
        lacks of ``desired``'s sets, without any rule, so that no packet sees it yet.

        The first step creates the table, its sets and chains, empty, with ``create``: it
        fails (``Exists``) when the table is there already, and there is nothing to stage
        then. Each later step deletes every element the kernel holds and ``desired`` does
        not (a map entry whose value changed included) and adds at most ``most`` of those
        it lacks. :meth:`sync` sends the rest and the rules, in one transaction (with
        :meth:`unsent` as its ``touched``).

        Made where ``desired``'s sets change (the agent's event loop); holds copies of what
        :meth:`send` renders, so that they may go on changing while it sends."""
        bare = Skeleton(desired.skeleton.sets, desired.skeleton.chains, ())
        if self.last is None:
            doc = TableDoc(desired.family, desired.name, bare, {name: set() for name in desired.elements})
            return Stage(create(doc, exclusive=True), doc)
        if not self._staged:
            raise RuntimeError("stage: the table has had its rules already")
        touched: dict[str, set[Elem]] = {}
        room = most
        for name, differ in self.unsent(desired).items():
            have = self._held_set(name)
            step = differ & have  # (every deletion: an added map entry never meets its old value)
            if room > 0:
                added = differ - have
                step |= added if len(added) <= room else set(itertools.islice(added, room))
                room -= min(room, len(added))
            if step:
                touched[name] = step
        elements = dict(desired.elements)
        for decl in desired.skeleton.sets:
            if decl.cover_compared and decl.name in touched:
                elements[decl.name] = frozenset(elements.get(decl.name, ()))  # (refilled whole)
        doc = TableDoc(desired.family, desired.name, bare, elements)
        plan = diff_touched(doc, self.last, touched)
        if plan is None:  # (a declaration differs: not one table any more)
            raise RuntimeError("stage: the table's declarations changed")
        return Stage(plan, doc)

    def send(self, stage: Stage) -> None:
        """Commit a :meth:`stage` (in any thread, with no other call to this engine meanwhile);
        on an error the memory is void and the next sync is full."""
        plan = stage.plan
        try:
            with gc_paused():
                if plan.created:
                    apply_plan(self.backend, plan)
                else:  # (elements only: in transactions of a new table's fill, written as text)
                    for transaction in in_transactions(plan.commands, CREATE_CHUNK):
                        self.backend.transact_text(as_text(transaction))
        except BaseException:
            self._forget()
            self._staged = False
            raise
        if plan.created:
            _release(self, self._memory)
            self._memory = cast(dict[str, set[Elem] | Committed], stage.table.elements)
            self._staged = True
        else:
            self._remember(plan, stage.table)
        self.last = TableDoc(stage.table.family, stage.table.name, stage.table.skeleton, self._memory)

    def cleanup(self) -> bool:
        """Delete our table (and nothing else). True when there was one."""
        self._forget()
        try:
            self.backend.transact([Delete(Table(self.family, self.table)).to_json()])
        except NotFound:
            return False
        return True


def _shareable(skeleton: Skeleton) -> frozenset[str]:
    """The sets whose memory may be a view of the caller's set: every set compared element by
    element (not the dynamic ones, not the interval sets compared and refilled whole)."""
    return frozenset(d.name for d in skeleton.sets if not d.dynamic and not d.cover_compared)


def _release(owner: Engine, memory: Mapping[str, AbstractSet[Elem]], keep: Mapping[str, object] = {}) -> None:
    """Disarm the journaled sets ``memory`` viewed that ``keep`` no longer views."""
    for name, view in memory.items():
        if isinstance(view, Committed):
            kept = keep.get(name)
            if not (isinstance(kept, Committed) and kept.live is view.live):
                view.live.disarm(owner)
