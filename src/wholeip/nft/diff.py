"""The plan (pure): desired table vs current table -> the commands of one transaction.

The last station of the nft layer (see :mod:`wholeip.nft.doc`): it reads two
documents and writes typed commands (:mod:`wholeip.nft.commands`); it never
sees JSON, which the commands render when the engine sends them.

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

An empty plan means the kernel already matches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from wholeip.nft import render
from wholeip.nft.commands import Add, Command, Create, Delete, Flush, element_count, in_transactions
from wholeip.nft.doc import Elem, SetDecl, TableDoc, comparable_chain, comparable_set, elements_equal
from wholeip.nft.render import Elements, Table

CREATE_CHUNK = 5_000
"""Most elements per transaction while a new table is filled."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One transaction's commands and what they amount to."""

    commands: tuple[Command, ...]
    declarations: tuple[str, ...] = ()
    """nft text declarations to run after ``commands`` (``typeof`` sets JSON cannot declare)."""
    after: tuple[Command, ...] = ()
    """Commands that need the declared sets (their elements, the rules naming them); the last
    transaction."""
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
    fill: tuple[tuple[Command, ...], ...] = ()
    """Transactions between ``declarations`` and ``after``: a new table's elements, rendered
    only when each is sent (rendering the 300,000 elements of 100,000 Services at once costs
    hundreds of MiB, in Python and again inside libnftables)."""
    was_empty: bool | None = None
    """Set by :meth:`light` (its commands are gone)."""
    desired: Mapping[str, AbstractSet[Elem]] = field(default_factory=dict)
    """The desired table's elements (a reference, not a copy): what the table holds once the
    plan is committed, for what follows a commit (the conntrack cleaner)."""

    @property
    def refilled(self) -> tuple[str, ...]:
        """The sets this plan flushes and fills again (one-field interval sets)."""
        return tuple(c.obj.name for c in self.commands if isinstance(c, Flush) and isinstance(c.obj, SetDecl))

    @property
    def empty(self) -> bool:
        if self.was_empty is not None:
            return self.was_empty
        return not (self.commands or self.declarations or self.after or self.fill)

    def light(self) -> Plan:
        """The plan without its commands and element sets: what is worth keeping once it is
        committed (the commands hold the document's sets; the first plan at 100,000 Services
        renders to tens of MiB of JSON)."""
        return dataclasses.replace(
            self,
            commands=(),
            declarations=(),
            after=(),
            fill=(),
            removed={},
            inserted={},
            desired={},
            was_empty=self.empty,
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


def create(desired: TableDoc, *, exclusive: bool = False) -> Plan:
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

    ``exclusive``: the first transaction creates the table with ``create`` (it fails with
    ``Exists`` when the table is there already, and then nothing of the plan is made).
    """
    table = Table.of(desired)
    fills = in_transactions(
        (
            Add(table, Elements(decl, tuple(elems), ordered=False))
            for decl in desired.skeleton.sets
            if (elems := desired.elements.get(decl.name))
        ),
        CREATE_CHUNK,
    )
    commands: list[Command] = [Add(table, obj) for obj in render.skeleton(desired)]
    if exclusive:
        commands[0] = Create(table)  # (the skeleton begins with the table)
    return Plan(
        commands=tuple(commands),
        declarations=render.declarations(desired),
        fill=tuple(fills),
        after=tuple(Add(table, rule) for rule in desired.skeleton.rules),
        created=True,
        added=sum(element_count(f) for f in fills),
        desired=desired.elements,
    )


def rebuild(desired: TableDoc, current: TableDoc | None = None) -> Plan:
    """Delete the table and create it again, in one transaction (the typeof sets and what
    uses them in a second): traffic keeps the old table until the new one is whole."""
    made = render.creation(desired, ordered=False)
    table = Table.of(desired)
    removed: dict[str, AbstractSet[Elem]] = {}
    if current is not None:
        intervals = {d.name for d in current.skeleton.sets if d.interval}
        for name, have in current.elements.items():
            gone = have - desired.elements.get(name, frozenset())
            if gone and name not in intervals:
                removed[name] = gone
    cmds: list[Command] = [Delete(table), *(Add(table, obj) for obj in made.first)]
    after = tuple(Add(table, obj) for obj in made.last)
    return Plan(
        commands=tuple(cmds),
        declarations=made.declarations,
        after=after,
        rebuilt=True,
        added=element_count(cmds) + element_count(after),
        removed=removed,
        desired=desired.elements,
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
    changes = _Changes(Table.of(desired))
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
    return changes.plan(desired, chains_rebuilt=changes.rules(desired, current))


def diff_touched(desired: TableDoc, current: TableDoc, touched: Mapping[str, AbstractSet[Elem]]) -> Plan | None:
    """Like :func:`diff`, looking only at the ``touched`` elements of each set.

    For a caller that knows which elements can have changed since ``current`` (the
    agent's index reports them): the cost is the size of the change, not of the table.
    A touched one-field interval set (the cluster networks: a few elements) is compared
    and refilled as a whole, as :func:`diff` does; chains whose rules differ are flushed
    and given their rules again, as :func:`diff` does (a table filled before its rules,
    see :meth:`wholeip.engine.Engine.stage`). None when a set or chain declaration
    differs or a dynamic set is touched: use :func:`diff`.
    """
    same = desired.skeleton is current.skeleton or desired.skeleton == current.skeleton
    if not same and not skeleton_matches(desired, current):
        return None
    changes = _Changes(Table.of(desired))
    for decl in desired.skeleton.sets:
        elems = touched.get(decl.name)
        if not elems:
            continue
        if decl.dynamic:
            return None
        want = desired.elements.get(decl.name, frozenset())
        have = current.elements.get(decl.name, frozenset())
        if decl.cover_compared:
            if not elements_equal(decl, want, have):
                changes.flush(decl, have)
                changes.elements(decl, frozenset(), want, listed=False)
            continue
        changes.elements(decl, frozenset((elems & have) - want), frozenset((elems & want) - have))
    return changes.plan(desired, chains_rebuilt=() if same else changes.rules(desired, current))


class _Changes:
    """Element commands of one transaction, and their bookkeeping."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.cmds: list[Command] = []
        self.added = self.deleted = 0
        self.removed: dict[str, AbstractSet[Elem]] = {}
        self.inserted: dict[str, AbstractSet[Elem]] = {}

    def flush(self, decl: SetDecl, have: AbstractSet[Elem]) -> None:
        self.cmds.append(Flush(self.table, decl))
        self.deleted += len(have)

    def elements(
        self, decl: SetDecl, to_delete: AbstractSet[Elem], to_add: AbstractSet[Elem], *, listed: bool = True
    ) -> None:
        if to_delete:
            self.cmds.append(Delete(self.table, Elements(decl, to_delete)))
            self.deleted += len(to_delete)
            self.removed[decl.name] = to_delete
        if to_add:
            self.cmds.append(Add(self.table, Elements(decl, to_add)))
            self.added += len(to_add)
            if listed:
                self.inserted[decl.name] = to_add

    def rules(self, desired: TableDoc, current: TableDoc) -> tuple[str, ...]:
        """Flush every chain whose rules differ and add its rules again, after the element
        changes; the names of those chains."""
        want_tags = desired.skeleton.rule_tags()
        have_tags = current.skeleton.rule_tags()
        rebuilt: list[str] = []
        for chain in desired.skeleton.chains:
            if want_tags.get(chain.name, ()) == have_tags.get(chain.name, ()):
                continue
            rebuilt.append(chain.name)
            self.cmds.append(Flush(self.table, chain))
            self.cmds += [Add(self.table, r) for r in desired.skeleton.rules if r.chain == chain.name]
        return tuple(rebuilt)

    def plan(self, desired: TableDoc, *, chains_rebuilt: tuple[str, ...] = ()) -> Plan:
        return Plan(
            commands=tuple(self.cmds),
            chains_rebuilt=chains_rebuilt,
            added=self.added,
            deleted=self.deleted,
            removed=self.removed,
            inserted=self.inserted,
            desired=desired.elements,
        )
