"""The table document as libnftables JSON (pure): one object's body, and a whole table.

The second station of the nft layer (see :mod:`wholeip.nft.doc`). It knows two
things and nothing else:

* **the JSON shape** of each object wholeip sends: the table, a set or map
  declaration, a chain, a rule, some elements of one set (:func:`body`, and
  :func:`reference` for what ``delete``/``flush`` name), and the nft text of a
  ``typeof`` declaration, which the JSON parser of nftables 1.0.6 cannot take;
* **the creation order** of a whole table (:func:`creation`): the kernel
  refuses a verdict-map element whose chain does not exist yet and a rule
  whose set does not, and a ``typeof`` set exists only once its text
  declaration ran, between two JSON transactions.

The objects are the document's own values (:class:`~wholeip.nft.doc.SetDecl`,
:class:`~wholeip.nft.doc.ChainDecl`, :class:`~wholeip.nft.doc.Rule`) plus two
small ones defined here: :class:`Table`, the table a command addresses, and
:class:`Elements`, some elements of one set. Elements stay the document's
tuples and strings until :func:`body` renders them: a plan holds 300,000
elements as a few references, and its commands render when they are sent.

:mod:`wholeip.nft.listing` reads the kernel's JSON back into a document.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from wholeip.nft.doc import ChainDecl, Elem, JSONObj, Key, Rule, SetDecl, TableDoc, rule_uses


@dataclass(frozen=True, slots=True)
class Table:
    """The table an object lives in (and, for ``add``/``delete table``, the object itself)."""

    family: str
    name: str

    @classmethod
    def of(cls, doc: TableDoc) -> Table:
        return cls(doc.family, doc.name)


@dataclass(frozen=True, slots=True)
class Elements:
    """Some elements of one set or map: what an ``add``/``delete element`` command carries.

    ``elems`` is held as given (never copied): send the command before the set it came
    from changes. ``ordered``: rendered sorted, so the same elements give byte-identical
    JSON (``wholeip render``, the plans of small changes); a new table's fill does not
    care, and sorting 100,000 elements costs a third of a second."""

    decl: SetDecl
    elems: Collection[Elem]
    ordered: bool = True

    def each(self) -> list[Elements]:
        """One :class:`Elements` per element, in the order they render (a refused
        transaction is searched element by element)."""
        return [Elements(self.decl, (elem,), self.ordered) for elem in self.in_order()]

    def in_order(self) -> Iterable[Elem]:
        """The elements in the order they render."""
        return sorted_elems(self.elems) if self.ordered else self.elems


NftObject = Table | SetDecl | ChainDecl | Rule | Elements
"""What a command adds, deletes or flushes."""


# --------------------------------------------------------------------------- one object


def _where(table: Table) -> JSONObj:
    return {"family": table.family, "table": table.name}


def body(table: Table, obj: NftObject) -> JSONObj:
    """The whole object, as ``add`` sends it: ``{"set": {...}}``, ``{"element": {...}}`` ..."""
    if isinstance(obj, Table):
        return {"table": {"family": obj.family, "name": obj.name}}
    if isinstance(obj, Elements):
        return _elements(table, obj)
    if isinstance(obj, SetDecl):
        return _set(table, obj)
    if isinstance(obj, ChainDecl):
        return _chain(table, obj)
    return _rule(table, obj)


def reference(table: Table, obj: NftObject) -> JSONObj:
    """What ``delete`` and ``flush`` name: a table, set or chain by its name alone;
    elements with their keys (and values: the kernel matches the key only)."""
    if isinstance(obj, SetDecl):
        return {"map" if obj.data is not None else "set": {**_where(table), "name": obj.name}}
    if isinstance(obj, ChainDecl):
        return {"chain": {**_where(table), "name": obj.name}}
    if isinstance(obj, Rule):
        raise TypeError("a rule is named by its handle, which wholeip never uses: flush its chain")
    return body(table, obj)


def _set(table: Table, decl: SetDecl) -> JSONObj:
    out: JSONObj = {**_where(table), "name": decl.name}
    out["type"] = decl.type[0] if len(decl.type) == 1 else list(decl.type)
    if decl.data is not None:
        out["map"] = decl.data
    if decl.flags:
        out["flags"] = list(decl.flags)
    if decl.timeout is not None:
        out["timeout"] = decl.timeout
    if decl.size is not None:
        out["size"] = decl.size
    if decl.comment:
        out["comment"] = decl.comment
    return {"map" if decl.data is not None else "set": out}


def _chain(table: Table, decl: ChainDecl) -> JSONObj:
    out: JSONObj = {**_where(table), "name": decl.name}
    if decl.hook is not None:
        out.update(type=decl.type, hook=decl.hook, prio=decl.prio, policy=decl.policy or "accept")
    return {"chain": out}


def _rule(table: Table, rule: Rule) -> JSONObj:
    return {"rule": {**_where(table), "chain": rule.chain, "expr": list(rule.expr), "comment": rule.tag}}


def _elements(table: Table, elements: Elements) -> JSONObj:
    return {
        "element": {
            **_where(table),
            "name": elements.decl.name,
            "elem": _elem_list(elements.decl, elements.in_order()),
        }
    }


def element(decl: SetDecl, elem: Elem) -> Any:
    """One element of ``decl`` as libnftables JSON (a key, or a ``[key, value]`` pair)."""
    (out,) = _elem_list(decl, (elem,))
    return out


def _elem_list(decl: SetDecl, elems: Iterable[Elem]) -> list[Any]:
    # The hot loop of a cold commit (300,000 elements at 100,000 Services): what depends
    # on the set alone is decided once, outside it.
    interval = decl.interval
    if decl.data is None:
        return [_key(elem, interval) for elem in elems]  # type: ignore[arg-type]
    verdict = decl.data == "verdict"
    out: list[Any] = []
    for key, value in _pairs(decl, elems):
        out.append([_key(key, interval), _verdict(str(value)) if verdict else _part(value, False)])
    return out


def _pairs(decl: SetDecl, elems: Iterable[Elem]) -> Iterator[tuple[Any, Any]]:
    """A map's elements as (key, value); anything else is refused."""
    for elem in elems:
        if not isinstance(elem, tuple) or len(elem) != 2:
            raise ValueError(f"map {decl.name}: element {elem!r} is not a (key, value) pair")
        yield elem


def _part(part: str | int, interval: bool) -> Any:
    if isinstance(part, int) and part >= 1 << 53:
        return hex(part)  # JSON numbers stop at 64 bits; nft reads hex strings for wide integers
    if interval and isinstance(part, str) and "/" in part:
        addr, length = part.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return part


def _key(key: Key, interval: bool) -> Any:
    if isinstance(key, tuple):
        return {"concat": [_part(p, interval) for p in key]}
    return _part(key, interval)


def elements_text(verb: str, table: Table, elements: Elements) -> str:
    """``{verb: body}`` of some elements as JSON text: what ``json.dumps`` gives of
    ``{verb: body(table, elements)}``, equal once parsed, written without building the
    objects first. A new table's fill is 350,000 elements at 100,000 Services, and
    building then encoding them took a third of the cold commit's time."""
    decl = elements.decl
    head = json.dumps({verb: {"element": {**_where(table), "name": decl.name, "elem": []}}})
    assert head.endswith("[]}}}")
    return head[:-5] + "[" + ", ".join(_elem_texts(decl, elements.in_order())) + "]}}}"


_PLAIN = re.compile(r"[0-9A-Za-z.:/_ -]*")
"""Text that JSON writes between quotes as it is."""


def _elem_texts(decl: SetDecl, elems: Iterable[Elem]) -> Iterator[str]:
    interval = decl.interval
    if decl.data is None:
        for elem in elems:
            yield _key_text(elem, interval)  # type: ignore[arg-type]
        return
    verdict = decl.data == "verdict"
    verdicts: dict[str, str] = {}
    for key, value in _pairs(decl, elems):
        if verdict:
            word = str(value)
            text = verdicts.get(word)
            if text is None:
                text = verdicts[word] = json.dumps(_verdict(word))
        else:
            text = _part_text(value, False)
        yield f"[{_key_text(key, interval)}, {text}]"


def _key_text(key: Key, interval: bool) -> str:
    if isinstance(key, tuple):
        return '{"concat": [' + ", ".join([_part_text(p, interval) for p in key]) + "]}"
    return _part_text(key, interval)


def _part_text(part: str | int, interval: bool) -> str:
    if isinstance(part, str):
        if not (interval and "/" in part) and _PLAIN.fullmatch(part):
            return f'"{part}"'
    elif type(part) is int and -(1 << 53) < part < 1 << 53:  # (not a bool: JSON spells those otherwise)
        return str(part)
    return json.dumps(_part(part, interval))


def _verdict(value: str) -> Any:
    word, _, target = value.partition(" ")
    return {word: {"target": target}} if target else {word: None}


def sorted_elems(elems: Iterable[Elem]) -> list[Elem]:
    """Elements in a deterministic order. One set's elements share one shape, so they
    compare natively (fast); a mixed bag falls back to comparing their JSON."""
    try:
        return sorted(elems)
    except TypeError:
        return sorted(elems, key=_sort_key)


def _sort_key(elem: Elem) -> str:
    return json.dumps(elem, default=str)


def declare_text(table: Table, decl: SetDecl) -> str:
    """The nft text command that declares a ``typeof`` set or map."""
    kind = "map" if decl.data is not None else "set"
    extra = "".join(
        (
            f" flags {','.join(decl.flags)};" if decl.flags else "",
            f" timeout {decl.timeout}s;" if decl.timeout is not None else "",
            f" size {decl.size};" if decl.size is not None else "",
        )
    )
    return f"add {kind} {table.family} {table.name} {decl.name} {{ typeof {decl.typeof};{extra} }}"


# --------------------------------------------------------------------------- a whole table


@dataclass(frozen=True, slots=True)
class Creation:
    """A whole table in the order the kernel takes it: ``first`` (objects to add), then
    ``declarations`` (nft text: the ``typeof`` sets), then ``last`` (objects that use them)."""

    first: tuple[NftObject, ...]
    declarations: tuple[str, ...]
    last: tuple[NftObject, ...]


def skeleton(doc: TableDoc) -> tuple[NftObject, ...]:
    """The table, the sets JSON can declare and the chains: no element, no rule."""
    table = Table.of(doc)
    return (table, *(s for s in doc.skeleton.sets if not s.typeof), *doc.skeleton.chains)


def declarations(doc: TableDoc) -> tuple[str, ...]:
    """The nft text declarations of the ``typeof`` sets (JSON cannot declare them)."""
    table = Table.of(doc)
    return tuple(declare_text(table, s) for s in doc.skeleton.sets if s.typeof)


def creation(doc: TableDoc, *, ordered: bool = True) -> Creation:
    """How to create ``doc`` in one go: the skeleton, the elements (verdict-map elements
    jump to chains, which exist by then) and the rules (they name sets and chains), each
    after the ``typeof`` declarations when it needs one of those sets."""
    typed = {s.name for s in doc.skeleton.sets if s.typeof}
    first: list[NftObject] = list(skeleton(doc))
    last: list[NftObject] = []
    for decl in doc.skeleton.sets:
        elems = doc.elements.get(decl.name, frozenset())
        if elems:
            (last if decl.typeof else first).append(Elements(decl, elems, ordered))
    # A chain with a rule that needs a typeof set gets all its rules afterwards, in order.
    late = {rule.chain for rule in doc.skeleton.rules if rule_uses(rule, typed)}
    for rule in doc.skeleton.rules:
        (last if rule.chain in late else first).append(rule)
    return Creation(tuple(first), declarations(doc), tuple(last))


def render_table(doc: TableDoc) -> JSONObj:
    """The whole table as a libnftables JSON document (the ``wholeip render`` output).

    ``nftables`` holds the creation commands JSON can express; the ``typeof``
    declarations nft 1.0.6 cannot take in JSON are listed, in nft syntax, under
    ``declare`` and go between the two groups of commands (``before_command`` says where).
    """
    made = creation(doc)
    table = Table.of(doc)
    return {
        "nftables": [{"add": body(table, obj)} for obj in (*made.first, *made.last)],
        "declare": {"text": list(made.declarations), "before_command": len(made.first)},
    }
