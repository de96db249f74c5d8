"""The diff (pure): desired table vs current table -> the commands of one transaction.

What is compared, and what each difference costs:

* no table: create everything;
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

from collections.abc import Mapping
from dataclasses import dataclass, field

from wholeip.nft.doc import (
    Elem,
    JSONObj,
    TableDoc,
    comparable_chain,
    comparable_set,
    creation_phases,
    elements_equal,
    render_elements,
    render_rule,
)


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
    removed: Mapping[str, frozenset[Elem]] = field(default_factory=dict)
    """Per set or map (interval sets excepted): the elements the kernel held before this plan
    and no longer holds after it, a changed map entry with its old value. What stale state
    outside the table (conntrack entries) is keyed by."""

    @property
    def empty(self) -> bool:
        return not (self.commands or self.declarations or self.after)

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


def create(desired: TableDoc, *, rebuilt: bool = False, current: TableDoc | None = None) -> Plan:
    first, declarations, last = creation_phases(desired)
    removed: dict[str, frozenset[Elem]] = {}
    if current is not None:
        intervals = {d.name for d in current.skeleton.sets if d.interval}
        for name, have in current.elements.items():
            gone = have - desired.elements.get(name, frozenset())
            if gone and name not in intervals:
                removed[name] = gone
    cmds: list[JSONObj] = []
    if rebuilt:
        cmds.append({"delete": {"table": {"family": desired.family, "name": desired.name}}})
    cmds += [{"add": c} for c in first]
    return Plan(
        commands=tuple(cmds),
        declarations=tuple(declarations),
        after=tuple({"add": c} for c in last),
        created=not rebuilt,
        rebuilt=rebuilt,
        added=_element_count(first) + _element_count(last),
        removed=removed,
    )


def rebuild(desired: TableDoc, current: TableDoc | None = None) -> Plan:
    return create(desired, rebuilt=True, current=current)


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
    fam, tab = desired.family, desired.name
    cmds: list[JSONObj] = []
    added = deleted = 0
    removed: dict[str, frozenset[Elem]] = {}
    for decl in desired.skeleton.sets:
        want = desired.elements.get(decl.name, frozenset())
        have = current.elements.get(decl.name, frozenset())
        if elements_equal(decl, want, have):
            continue
        if decl.cover_compared:
            cmds.append({"flush": {"set": {"family": fam, "table": tab, "name": decl.name}}})
            to_delete: frozenset[Elem] = frozenset()
            to_add = want
            deleted += len(have)
        elif decl.data is None:
            to_delete, to_add = have - want, want - have
        else:
            want_map = dict(want)  # type: ignore[arg-type]
            have_map = dict(have)  # type: ignore[arg-type]
            to_delete = frozenset((k, v) for k, v in have_map.items() if want_map.get(k) != v)
            to_add = frozenset((k, v) for k, v in want_map.items() if have_map.get(k) != v)
        body = render_elements(fam, tab, decl, to_delete)
        if body is not None:
            cmds.append({"delete": body})
            deleted += len(to_delete)
            removed[decl.name] = to_delete
        body = render_elements(fam, tab, decl, to_add)
        if body is not None:
            cmds.append({"add": body})
            added += len(to_add)
    want_tags = desired.skeleton.rule_tags()
    have_tags = current.skeleton.rule_tags()
    rebuilt: list[str] = []
    for chain in desired.skeleton.chains:
        if want_tags.get(chain.name, ()) == have_tags.get(chain.name, ()):
            continue
        rebuilt.append(chain.name)
        cmds.append({"flush": {"chain": {"family": fam, "table": tab, "name": chain.name}}})
        cmds += [{"add": render_rule(fam, tab, r)} for r in desired.skeleton.rules if r.chain == chain.name]
    return Plan(commands=tuple(cmds), chains_rebuilt=tuple(rebuilt), added=added, deleted=deleted, removed=removed)
