"""Transaction commands as typed objects (pure): what a plan is made of.

The third station of the nft layer (see :mod:`wholeip.nft.doc`). Like the
transactions of knftables (``tx.Add(&Chain{...})``), a plan is a list of
:class:`Add`, :class:`Delete` and :class:`Flush` of a table, a set, a chain, a
rule or some elements (the objects of :mod:`wholeip.nft.render`); nobody
builds or unpacks a libnftables dict by its shape. A command becomes JSON only
in :meth:`to_json`, when the engine sends it: a backend takes libnftables JSON,
the very form ``nft -j`` reads, so the fake and the kernel are held to one
contract on the same input (``tests/nft/test_contract.py``).

One command per object, never one per element: an element change of 100,000
elements is one :class:`Add` holding the document's set, and renders in one
pass. Only a refused transaction is split element by element
(:func:`one_by_one`), to find what the kernel refuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from wholeip.nft import render
from wholeip.nft.doc import ChainDecl, JSONObj, SetDecl
from wholeip.nft.render import Elements, NftObject, Table

Verb = Literal["add", "create", "delete", "flush"]


@dataclass(frozen=True, slots=True)
class Add:
    """Add an object to ``table`` (``obj`` None: the table itself). Adding what exists,
    equal, is no error in nf_tables; an element whose key exists with another value is."""

    table: Table
    obj: NftObject | None = None
    verb: ClassVar[Verb] = "add"

    def to_json(self) -> JSONObj:
        return {"add": render.body(self.table, self.table if self.obj is None else self.obj)}

    @property
    def elements(self) -> Elements | None:
        return self.obj if isinstance(self.obj, Elements) else None


@dataclass(frozen=True, slots=True)
class Create:
    """Create the table itself, failing (``Exists``) when it exists: the transaction that
    begins with it makes a table nobody else holds, or nothing at all."""

    table: Table
    verb: ClassVar[Verb] = "create"

    def to_json(self) -> JSONObj:
        return {"create": render.body(self.table, self.table)}

    @property
    def elements(self) -> Elements | None:
        return None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete some elements (matched by key), or the table itself (``obj`` None)."""

    table: Table
    obj: Elements | None = None
    verb: ClassVar[Verb] = "delete"

    def to_json(self) -> JSONObj:
        return {"delete": render.reference(self.table, self.table if self.obj is None else self.obj)}

    @property
    def elements(self) -> Elements | None:
        return self.obj


@dataclass(frozen=True, slots=True)
class Flush:
    """Empty a set (its elements) or a chain (its rules), keeping its declaration."""

    table: Table
    obj: SetDecl | ChainDecl
    verb: ClassVar[Verb] = "flush"

    def to_json(self) -> JSONObj:
        return {"flush": render.reference(self.table, self.obj)}

    @property
    def elements(self) -> Elements | None:
        return None


Command = Add | Create | Delete | Flush


def as_json(commands: Iterable[Command]) -> list[JSONObj]:
    """One transaction's commands as libnftables JSON, what a backend takes."""
    return [cmd.to_json() for cmd in commands]


def as_text(commands: Iterable[Command]) -> str:
    """One transaction as libnftables JSON text: ``json.dumps({"nftables": as_json(commands)})``
    in meaning (equal once parsed), the elements written straight as text (see
    :func:`~wholeip.nft.render.elements_text`)."""
    parts = [
        json.dumps(cmd.to_json()) if (els := cmd.elements) is None else render.elements_text(cmd.verb, cmd.table, els)
        for cmd in commands
    ]
    return '{"nftables": [' + ", ".join(parts) + "]}"


def element_count(commands: Iterable[Command]) -> int:
    """How many elements the element commands among ``commands`` carry."""
    return sum(len(els.elems) for cmd in commands if (els := cmd.elements) is not None)


def in_transactions(commands: Iterable[Command], most: int) -> list[tuple[Command, ...]]:
    """``commands`` in order, as transactions of at most ``most`` elements each: an element
    command with more is split where a transaction is full, and every element command comes
    out unsorted. For element changes nothing uses yet (a new table's fill, the early fill's
    steps), which need no sorting: libnftables parses a whole transaction before it sends
    it, so its memory follows the transaction's size."""
    out: list[tuple[Command, ...]] = []
    current: list[Command] = []
    room = most
    for cmd in commands:
        els = cmd.elements
        if els is None or isinstance(cmd, Flush | Create):
            current.append(cmd)
            continue
        elems = tuple(els.elems)
        start = 0
        while start < len(elems):
            piece = elems[start : start + room]
            current.append(type(cmd)(cmd.table, render.Elements(els.decl, piece, ordered=False)))
            start += len(piece)
            room -= len(piece)
            if not room:
                out.append(tuple(current))
                current, room = [], most
    if current:
        out.append(tuple(current))
    return out


def one_by_one(commands: Sequence[Command]) -> list[Add | Delete] | None:
    """Element changes split into one command per element, in order (a deletion keeps its
    place before the additions that follow it); None when a command is no element change."""
    out: list[Add | Delete] = []
    for cmd in commands:
        if isinstance(cmd, Flush | Create) or cmd.elements is None:
            return None
        out += [type(cmd)(cmd.table, part) for part in cmd.elements.each()]
    return out
