"""Sets that remember what they held at the last commit: the engine's memory without a copy.

The agent's index keeps its element sets live and changes them in place, a few elements
per change; to send only the change, the engine must know what the kernel holds, the sets
as they were at its last commit. It kept a copy of every set for that: at 100,000 Services
16 MiB of set tables over the very element tuples the index's sets hold.

A :class:`JournaledSet` is a set that its one owner (the engine, at a commit: :meth:`arm`)
can ask to remember, for every element changed from then on, whether it held that element
when armed. Every way of changing a set goes through the journal (the methods below), so
nothing the index does can bypass it. :class:`Committed` is the set as it was when armed:
the set now with the journalled changes undone, answered element by element for the cost
of the change (a sync's touched elements), or made whole (:meth:`Committed.materialize`)
for a full sync, which compares every element anyway. Unarmed, a journaled set is a set.

Pure: no I/O.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any, cast

from wholeip.nft.doc import Elem


class JournaledSet(set[Elem]):
    """A set of elements that, once armed, journals each element's membership before its
    first change."""

    __slots__ = ("_owner", "journal")

    def __init__(self, iterable: Iterable[Elem] = ()) -> None:
        super().__init__(iterable)
        self.journal: dict[Elem, bool] | None = None
        """Element -> held it when armed, for each element changed since; None: unarmed."""
        self._owner: weakref.ref[Any] | None = None

    # ---------------------------------------------------------------- owner

    def owned_by(self, owner: object) -> bool:
        """Whether ``owner`` may arm this set: it is the owner, or nobody (alive) is."""
        current = self._owner() if self._owner is not None else None
        return current is None or current is owner

    def arm(self, owner: object) -> None:
        """Start a new journal: the set as it is now is what :class:`Committed` answers."""
        self._owner = weakref.ref(owner)
        self.journal = {}

    def disarm(self, owner: object) -> None:
        """Stop journalling (``owner``'s, if it still owns the set)."""
        if self._owner is not None and self._owner() is owner:
            self._owner = None
            self.journal = None

    # ---------------------------------------------------------------- changes

    def add(self, element: Elem, /) -> None:
        journal = self.journal
        if journal is not None and element not in journal:
            journal[element] = element in self
        set.add(self, element)

    def discard(self, element: object, /) -> None:
        journal = self.journal
        if journal is not None and element not in journal:
            journal[cast(Elem, element)] = element in self
        set.discard(self, element)

    def remove(self, element: object, /) -> None:
        if element not in self:
            raise KeyError(element)
        self.discard(element)

    def pop(self) -> Elem:
        element = set.pop(self)
        if self.journal is not None:
            self.journal.setdefault(element, True)
        return element

    def clear(self) -> None:
        if self.journal is not None:
            for element in self:
                self.journal.setdefault(element, True)
        set.clear(self)

    def update(self, *others: Iterable[Elem]) -> None:
        if self.journal is None:
            set.update(self, *others)
            return
        for other in others:
            for element in other:
                self.add(element)

    def difference_update(self, *others: Iterable[Any]) -> None:
        if self.journal is None:
            set.difference_update(self, *others)
            return
        for other in others:
            for element in list(other):
                self.discard(element)

    def intersection_update(self, *others: Iterable[Any]) -> None:
        if self.journal is None:
            set.intersection_update(self, *others)
            return
        keep = set(self).intersection(*others)
        for element in [e for e in self if e not in keep]:
            self.discard(element)

    def symmetric_difference_update(self, other: Iterable[Elem], /) -> None:
        if self.journal is None:
            set.symmetric_difference_update(self, other)
            return
        for element in set(other):
            if element in self:
                self.discard(element)
            else:
                self.add(element)

    def __ior__(self, other: AbstractSet[Elem]) -> JournaledSet:  # type: ignore[override,misc]
        self.update(other)
        return self

    def __isub__(self, other: AbstractSet[Any]) -> JournaledSet:  # type: ignore[misc]
        self.difference_update(other)
        return self

    def __iand__(self, other: AbstractSet[Any]) -> JournaledSet:  # type: ignore[misc]
        self.intersection_update(other)
        return self

    def __ixor__(self, other: AbstractSet[Elem]) -> JournaledSet:  # type: ignore[override,misc]
        self.symmetric_difference_update(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (JournaledSet, (list(self),))


class Committed(AbstractSet[Elem]):
    """An armed :class:`JournaledSet` as it was when armed (read it before the set is armed
    again: the engine replaces its views at every commit)."""

    __slots__ = ("journal", "live")

    def __init__(self, live: JournaledSet) -> None:
        if live.journal is None:
            raise ValueError("Committed: the set is not armed")
        self.live = live
        self.journal: dict[Elem, bool] = live.journal

    @classmethod
    def _from_iterable(cls, it: Iterable[Elem]) -> frozenset[Elem]:  # type: ignore[override]
        return frozenset(it)

    def __contains__(self, element: object) -> bool:
        journal = self.journal
        if element in journal:
            return journal[cast(Elem, element)]
        return element in self.live

    def __iter__(self) -> Iterator[Elem]:
        journal = self.journal
        if not journal:
            yield from self.live
            return
        for element in self.live:
            if journal.get(element, True):
                yield element
        for element, held in journal.items():
            if held and element not in self.live:
                yield element

    def __len__(self) -> int:
        size = len(self.live)
        for element, held in self.journal.items():
            now = element in self.live
            size += (held and not now) - (now and not held)
        return size

    def changed(self) -> set[Elem]:
        """The elements whose membership differs from when armed."""
        live = self.live
        return {element for element, held in self.journal.items() if (element in live) != held}

    def materialize(self) -> AbstractSet[Elem]:
        """The elements as a set: the live set itself while nothing changed, else a copy with
        the changes undone."""
        changed = self.changed() if self.journal else ()
        if not changed:
            return self.live
        out = set(self.live)
        out.symmetric_difference_update(changed)
        return out
