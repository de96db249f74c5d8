"""The nftables table as data (pure): value types, and what makes two tables equal.

This is the first of the nft layer's stations, and the only one the core sees:

* here, :mod:`wholeip.nft.doc`: the document, a :class:`TableDoc` of frozen values;
* :mod:`wholeip.nft.render`: those values as libnftables JSON, and the order in
  which a whole table is created; :mod:`wholeip.nft.listing` reads the kernel's
  JSON back into a document;
* :mod:`wholeip.nft.commands`: typed transaction commands (``Add``, ``Delete``,
  ``Flush`` of a table, set, chain, rule or elements), rendered by ``to_json``;
* :mod:`wholeip.nft.diff`: two documents -> a plan, a list of commands.

Data flows one way, down that list; no module imports one after it.

A :class:`TableDoc` is split in two parts that change at very different rates:

* the **skeleton**: set/map declarations, chains and their rules. It is fixed
  by the code, never by the cluster; it changes only on upgrade or drift.
* the **elements** of each set and map: all of the cluster's data.

Rules are identified by a comment holding a hash of their content
(``wh:<12 hex>``). The kernel prints rule expressions back in its own
canonical form, which differs from what was sent; the comment survives
verbatim, so comparing comments is exact and cheap. A rule someone inserted
(no or another comment) or a reordered chain is seen as drift.

Elements are plain hashable Python values, so that the kernel's listing and
the compiler's output compare directly, and 300,000 of them cost no object of
ours each:

* an address is its compressed text (``"203.0.113.10"``);
* an interval set's elements are compared as the set of addresses they cover
  (the kernel may print a prefix, a range, or a bare address);
* a concatenation is a tuple, a map element a ``(key, value)`` pair, a verdict
  its nft text (``"jump per_port"``, ``"accept"``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

JSONObj = dict[str, Any]
"""One libnftables JSON object (a command, or an object of a listing)."""
Key = str | int | tuple[str | int, ...]
Elem = Key | tuple[Key, str | int]


class ListingError(ValueError):
    """An element or a listing of the kernel has a shape this package does not understand."""


@dataclass(frozen=True, slots=True)
class SetDecl:
    """A set (``data is None``) or a map declaration."""

    name: str
    type: tuple[str, ...]
    data: str | None = None
    flags: tuple[str, ...] = ()
    comment: str = ""
    timeout: int | None = None
    """Element timeout in seconds: the packet path fills the set (``update``), so its
    elements are the kernel's business and are never compared or written by us."""
    size: int | None = None
    typeof: str | None = None
    """A ``typeof`` declaration (nft syntax) for keys on raw payload, which the JSON
    parser of nftables 1.0.6 cannot declare; ``type``/``data`` then hold what the
    kernel lists back (``integer`` for raw parts). Declared with one nft text
    command, see :func:`wholeip.nft.render.creation`."""

    @property
    def interval(self) -> bool:
        return "interval" in self.flags

    @property
    def dynamic(self) -> bool:
        return self.timeout is not None

    @property
    def cover_compared(self) -> bool:
        """A one-field interval set: compared by the addresses it covers."""
        return self.interval and self.data is None and len(self.type) == 1


@dataclass(frozen=True, slots=True)
class ChainDecl:
    """A chain; base chains have type, hook, priority and policy."""

    name: str
    type: str | None = None
    hook: str | None = None
    prio: int | None = None
    policy: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: its chain, its expression list (libnftables JSON) and its identity hash."""

    chain: str
    expr: tuple[JSONObj, ...]
    tag: str = field(default="")

    def __post_init__(self) -> None:
        if not self.tag:
            digest = hashlib.sha256(json.dumps([self.chain, self.expr], sort_keys=True).encode()).hexdigest()
            object.__setattr__(self, "tag", "wh:" + digest[:12])


@dataclass(frozen=True, slots=True)
class Skeleton:
    """Everything but the elements."""

    sets: tuple[SetDecl, ...]
    chains: tuple[ChainDecl, ...]
    rules: tuple[Rule, ...]

    def rule_tags(self) -> dict[str, tuple[str, ...]]:
        """Chain name -> the ordered tags of its rules."""
        out: dict[str, list[str]] = {c.name: [] for c in self.chains}
        for rule in self.rules:
            out.setdefault(rule.chain, []).append(rule.tag)
        return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True, slots=True)
class TableDoc:
    """One whole table: the skeleton plus every set's elements."""

    family: str
    name: str
    skeleton: Skeleton
    elements: Mapping[str, AbstractSet[Elem]]


# --------------------------------------------------------------------------- comparing


def interval_cover(elems: Iterable[Elem]) -> tuple[tuple[int, int, int], ...]:
    """The addresses an interval set covers, as merged (version, first, last) runs."""
    runs: list[tuple[int, int, int]] = []
    for elem in elems:
        if not isinstance(elem, str):
            raise ListingError(f"bad interval element {elem!r}")
        if "-" in elem:
            first_s, last_s = elem.split("-")
            first, last = ipaddress.ip_address(first_s), ipaddress.ip_address(last_s)
            runs.append((first.version, int(first), int(last)))
        else:
            net = ipaddress.ip_network(elem, strict=False)
            runs.append((net.version, int(net.network_address), int(net.broadcast_address)))
    runs.sort()
    merged: list[tuple[int, int, int]] = []
    for version, lo, hi in runs:
        if merged and merged[-1][0] == version and lo <= merged[-1][2] + 1:
            prev = merged[-1]
            merged[-1] = (version, prev[1], max(prev[2], hi))
        else:
            merged.append((version, lo, hi))
    return tuple(merged)


def rule_uses(rule: Rule, names: AbstractSet[str]) -> bool:
    """Whether ``rule`` names one of the sets ``names`` (``@name`` in its expression)."""
    text = json.dumps(rule.expr)
    return any(f'"@{n}"' in text for n in names)


def comparable_set(decl: SetDecl) -> SetDecl:
    """A declaration reduced to what the kernel reports back (comments are not listed)."""
    # "dynamic" is set by the kernel itself once a rule updates the set; nft 1.0.6 neither
    # takes it in JSON nor prints it there, later versions may print it.
    flags = tuple(sorted(f for f in decl.flags if f != "dynamic"))
    return SetDecl(decl.name, decl.type, decl.data, flags, timeout=decl.timeout, size=decl.size)


def comparable_chain(decl: ChainDecl) -> ChainDecl:
    if decl.hook is None:
        return ChainDecl(decl.name)
    return ChainDecl(decl.name, decl.type, decl.hook, decl.prio, decl.policy or "accept")


def elements_equal(decl: SetDecl, a: AbstractSet[Elem], b: AbstractSet[Elem]) -> bool:
    if decl.dynamic:
        return True
    if decl.cover_compared:
        return interval_cover(a) == interval_cover(b)
    return a == b
