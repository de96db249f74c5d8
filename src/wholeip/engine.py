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
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from wholeip.nft.backend import Backend, NotFound
from wholeip.nft.diff import Plan, diff, diff_touched
from wholeip.nft.doc import Elem, TableDoc, parse_listing


@dataclass(frozen=True, slots=True)
class SyncResult:
    """What one sync did."""

    plan: Plan
    full: bool
    drift: bool
    observe_seconds: float
    commit_seconds: float


def apply_plan(backend: Backend, plan: Plan) -> None:
    """Send a plan: its transaction, then (only when the table is created) the typeof
    declarations and the transaction that uses them."""
    backend.transact(plan.commands)
    if plan.declarations:
        backend.declare("; ".join(plan.declarations))
    if plan.after:
        backend.transact(plan.after)


class Engine:
    """Diff-and-commit for one table, with the memory of the last commit."""

    def __init__(self, *, backend: Backend, family: str = "inet", table: str = "wholeip") -> None:
        self.backend = backend
        self.family = family
        self.table = table
        self.last: TableDoc | None = None
        """The table as last committed; None until the first commit or after a failure."""
        self._memory: dict[str, set[Elem]] = {}

    def observe(self) -> TableDoc | None:
        """The table as the kernel holds it now (None when it does not exist)."""
        listing = self.backend.list_table(self.family, self.table)
        if listing is None:
            return None
        return parse_listing(listing, family=self.family, name=self.table)

    def sync(
        self, desired: TableDoc, *, full: bool = False, touched: Mapping[str, AbstractSet[Elem]] | None = None
    ) -> SyncResult:
        """Make the kernel hold ``desired``, in one transaction.

        ``touched`` (optional) names every element that may differ from the last
        commit; the diff then costs the size of the change instead of the table's.
        Raises the backend's errors; after an error the next sync is full.
        """
        full = full or self.last is None
        started = time.perf_counter()
        drift = False
        plan: Plan | None = None
        if full:
            current = self.observe()
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
        try:
            apply_plan(self.backend, plan)
        except BaseException:
            self.last = None
            raise
        if partial and self.last is not None:
            for name, gone in plan.removed.items():
                self._memory[name] -= gone
            for name, came in plan.inserted.items():
                self._memory[name] |= came
        else:
            # Our own copy: the caller may keep changing its sets (the agent's index does).
            self._memory = {name: set(elems) for name, elems in desired.elements.items()}
            self.last = TableDoc(desired.family, desired.name, desired.skeleton, self._memory)
        return SyncResult(
            plan=plan,
            full=full,
            drift=drift,
            observe_seconds=observed - started,
            commit_seconds=time.perf_counter() - observed,
        )

    def cleanup(self) -> bool:
        """Delete our table (and nothing else). True when there was one."""
        self.last = None
        try:
            self.backend.transact([{"delete": {"table": {"family": self.family, "name": self.table}}}])
        except NotFound:
            return False
        return True
