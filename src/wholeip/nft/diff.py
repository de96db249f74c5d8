"""The diff (pure): desired table vs current table -> the commands of one transaction.

What is compared, and what each difference costs:

* no table: create everything, filling the sets in transactions of at most
  ``CREATE_CHUNK`` elements before any rule exists (see :func:`create`);
* a set, map or chain declaration differs, or something unknown lives in our
  table: delete the table and create it again, in the same transaction (the
  kernel switches generations atomically, so no packet sees an empty table);
* a chain's rule tags differ (a rule added, removed, reordered or edited by
  someone else): flush that chain and add its rules again;
* elements: for maps and plain sets, delete what should not be there (or has
  other data) and add what is missing; an interval set whose covered addresses
  differ is flushed and filled again, because the kernel may print the same
  intervals in another shape.

The commands follow libnftables JSON: ``{"add": {...}}``, ``{"delete": ...}``,
``{"flush": ...}``. An empty plan means the kernel already matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from wholeip.nft.doc import (
    Elem,
    JSONObj,
    SetDecl,
    TableDoc,
    comparable_chain,
    comparable_set,
    creation_phases,
    elements_equal,
    render_elements,
    render_rule,
    skeleton_bodies,
    typeof_declarations,
)

CREATE_CHUNK = 5_000
"""Most elements per transaction while a new table is filled."""


@dataclass(frozen=True, slots=True)
class Fill:
    """One transaction of a new table's elements, rendered only when it is sent: rendering
    the 300,000 elements of 100,000 Services at once costs hundreds of MiB, in Python and
    again inside libnftables."""

    family: str
    table: str
    parts: tuple[tuple[SetDecl, tuple[Elem, ...]], ...]

    def commands(self) -> list[JSONObj]:
        out: list[JSONObj] = []
        for decl, elems in self.parts:
            body = render_elements(self.family, self.table, decl, elems, ordered=False)
            if body is not None:
                out.append({"add": body})
        return out

    @property
    def size(self) -> int:
        return sum(len(elems) for _, elems in self.parts)


@dataclass(frozen=True, slots=True)
class Plan:
    """One transaction's commands and what they amount to."""

    commands: tuple[JSONObj, ...]
    declarations: tuple[str, ...] = ()
    """nft text declarations to run after ``commands`` (``typeof`` sets JSON cannot declare)."""
    after: tuple[JSONObj, ...] = ()
    """JSON commands that need the declared sets; the last transaction."""
    created: bool = False
    rebuilt: bool = False
    chains_rebuilt: tuple[str, ...] = ()
    added: int = 0
    deleted: int = 0
    removed: Mapping[str, AbstractSet[Elem]] = field(default_factory=dict)
    """Per set or map (interval sets excepted): the elements the kernel held before this plan
    and no longer holds after it, a changed map entry with its old value. What stale state
    outside the table (conntrack entries) is keyed by."""
    inserted: Mapping[str, AbstractSet[Elem]] = field(default_factory=dict)
    """Per set or map, the elements this plan adds one by one (not filled for a created or
    rebuilt table, nor for a flushed and refilled interval set)."""
    fill: tuple[Fill, ...] = ()
    """Transactions between ``declarations`` and ``after``: a new table's elements."""
    was_empty: bool | None = None
    """Set by :meth:`light` (its commands are gone)."""

    @property
    def empty(self) -> bool:
        if self.was_empty is not None:
            return self.was_empty
        return not (self.commands or self.declarations or self.after or self.fill)

    def light(self) -> Plan:
        """The plan without its commands and element sets: what is worth keeping once it is
        committed (the first plan at 100,000 Services renders to tens of MiB of JSON)."""
        return dataclasses.replace(
            self, commands=(), declarations=(), after=(), fill=(), removed={}, inserted={}, was_empty=self.empty
        )

    def summary(self) -> str:
        if self.empty:
            return "no changes"
        what = "created table" if self.created else "rebuilt table" if self.rebuilt else ""
        parts = [p for p in (what,) if p]
        if self.chains_rebuilt:
            parts.append("rebuilt chains " + ",".join(self.chains_rebuilt))
        parts.append(f"{self.added} elements added, {self.deleted} deleted")
        return "; ".join(parts)


def _element_count(cmds: list[JSONObj]) -> int:
    return sum(len(c["element"]["elem"]) for c in cmds if "element" in c)


def create(desired: TableDoc) -> Plan:
    """A new table, so that traffic sees it whole or not at all.

    1. the table, its sets and its chains, without a rule (an empty base chain
       lets every packet through unchanged);
    2. the ``typeof`` declarations (nft text);
    3. the elements, in transactions of at most :data:`CREATE_CHUNK` elements:
       nothing uses them yet;
    4. every rule, in one transaction: the datapath switches on at once.

    Small transactions keep libnftables' memory (it parses a whole transaction
    before sending it) and the kernel's per-transaction work bounded. If a step
    fails, the half-built table has no rules and so no effect; the next sync
    finds the skeleton in place and adds what is missing.
    """
    fam, tab = desired.family, desired.name
    fills: list[Fill] = []
    parts: list[tuple[SetDecl, tuple[Elem, ...]]] = []
    room = CREATE_CHUNK
    for decl in desired.skeleton.sets:
        elems = tuple(desired.elements.get(decl.name, ()))
        start = 0
        while start < len(elems):
            piece = elems[start : start + room]
            parts.append((decl, piece))
            start += len(piece)
            room -= len(piece)
            if not room:
                fills.append(Fill(fam, tab, tuple(parts)))
                parts, room = [], CREATE_CHUNK
    if parts:
        fills.append(Fill(fam, tab, tuple(parts)))
    return Plan(
        commands=tuple({"add": body} for body in skeleton_bodies(desired)),
        declarations=tuple(typeof_declarations(desired)),
        fill=tuple(fills),
        after=tuple({"add": render_rule(fam, tab, r)} for r in desired.skeleton.rules),
        created=True,
        added=sum(f.size for f in fills),
    )


def rebuild(desired: TableDoc, current: TableDoc | None = None) -> Plan:
    """Delete the table and create it again, in one transaction (the typeof sets and what
    uses them in a second): traffic keeps the old table until the new one is whole."""
    first, declarations, last = creation_phases(desired, ordered=False)
    removed: dict[str, AbstractSet[Elem]] = {}
    if current is not None:
        intervals = {d.name for d in current.skeleton.sets if d.interval}
        for name, have in current.elements.items():
            gone = have - desired.elements.get(name, frozenset())
            if gone and name not in intervals:
                removed[name] = gone
    cmds: list[JSONObj] = [{"delete": {"table": {"family": desired.family, "name": desired.name}}}]
    cmds += [{"add": c} for c in first]
    return Plan(
        commands=tuple(cmds),
        declarations=tuple(declarations),
        after=tuple({"add": c} for c in last),
        rebuilt=True,
        added=_element_count(first) + _element_count(last),
        removed=removed,
    )


def skeleton_matches(desired: TableDoc, current: TableDoc) -> bool:
    """True when every set, map and chain declaration is the same and nothing else exists."""
    want_sets = {comparable_set(s) for s in desired.skeleton.sets}
    have_sets = {comparable_set(s) for s in current.skeleton.sets}
    want_chains = {comparable_chain(c) for c in desired.skeleton.chains}
    have_chains = {comparable_chain(c) for c in current.skeleton.chains}
    return want_sets == have_sets and want_chains == have_chains


def diff(desired: TableDoc, current: TableDoc | None) -> Plan:
    """The smallest transaction that turns ``current`` into ``desired``."""
    if current is None:
        return create(desired)
    if not skeleton_matches(desired, current):
        return rebuild(desired, current)
    changes = _Changes(desired.family, desired.name)
    for decl in desired.skeleton.sets:
        want = desired.elements.get(decl.name, frozenset())
        have = current.elements.get(decl.name, frozenset())
        if elements_equal(decl, want, have):
            continue
        if decl.cover_compared:
            changes.flush(decl, have)
            changes.elements(decl, frozenset(), want, listed=False)
        elif decl.data is None:
            changes.elements(decl, have - want, want - have)
        else:
            want_map = dict(want)  # type: ignore[arg-type]
            have_map = dict(have)  # type: ignore[arg-type]
            to_delete = frozenset((k, v) for k, v in have_map.items() if want_map.get(k) != v)
            to_add = frozenset((k, v) for k, v in want_map.items() if have_map.get(k) != v)
            changes.elements(decl, to_delete, to_add)
    fam, tab = desired.family, desired.name
    cmds = changes.cmds
    want_tags = desired.skeleton.rule_tags()
    have_tags = current.skeleton.rule_tags()
    rebuilt: list[str] = []
    for chain in desired.skeleton.chains:
        if want_tags.get(chain.name, ()) == have_tags.get(chain.name, ()):
            continue
        rebuilt.append(chain.name)
        cmds.append({"flush": {"chain": {"family": fam, "table": tab, "name": chain.name}}})
        cmds += [{"add": render_rule(fam, tab, r)} for r in desired.skeleton.rules if r.chain == chain.name]
    return changes.plan(chains_rebuilt=tuple(rebuilt))


def diff_touched(desired: TableDoc, current: TableDoc, touched: Mapping[str, AbstractSet[Elem]]) -> Plan | None:
    """Like :func:`diff`, looking only at the ``touched`` elements of each set.

    For a caller that knows which elements can have changed since ``current`` (the
    agent's index reports them): the cost is the size of the change, not of the table.
    None when the skeletons differ or a touched set must be compared as a whole
    (one-field interval sets, dynamic sets): use :func:`diff`.
    """
    if desired.skeleton is not current.skeleton and desired.skeleton != current.skeleton:
        return None
    changes = _Changes(desired.family, desired.name)
    for decl in desired.skeleton.sets:
        elems = touched.get(decl.name)
        if not elems:
            continue
        if decl.cover_compared or decl.dynamic:
            return None
        want = desired.elements.get(decl.name, frozenset())
        have = current.elements.get(decl.name, frozenset())
        changes.elements(
            decl,
            frozenset(e for e in elems if e in have and e not in want),
            frozenset(e for e in elems if e in want and e not in have),
        )
    return changes.plan()


class _Changes:
    """Element commands of one transaction, and their bookkeeping."""

    def __init__(self, family: str, table: str) -> None:
        self.family = family
        self.table = table
        self.cmds: list[JSONObj] = []
        self.added = self.deleted = 0
        self.removed: dict[str, AbstractSet[Elem]] = {}
        self.inserted: dict[str, AbstractSet[Elem]] = {}

    def flush(self, decl: SetDecl, have: AbstractSet[Elem]) -> None:
        self.cmds.append({"flush": {"set": {"family": self.family, "table": self.table, "name": decl.name}}})
        self.deleted += len(have)

    def elements(
        self, decl: SetDecl, to_delete: AbstractSet[Elem], to_add: AbstractSet[Elem], *, listed: bool = True
    ) -> None:
        body = render_elements(self.family, self.table, decl, to_delete)
        if body is not None:
            self.cmds.append({"delete": body})
            self.deleted += len(to_delete)
            self.removed[decl.name] = to_delete
        body = render_elements(self.family, self.table, decl, to_add)
        if body is not None:
            self.cmds.append({"add": body})
            self.added += len(to_add)
            if listed:
                self.inserted[decl.name] = to_add

    def plan(self, *, chains_rebuilt: tuple[str, ...] = ()) -> Plan:
        return Plan(
            commands=tuple(self.cmds),
            chains_rebuilt=chains_rebuilt,
            added=self.added,
            deleted=self.deleted,
            removed=self.removed,
            inserted=self.inserted,
        )
