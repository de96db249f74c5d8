"""The nftables table as data (pure): what we want, what the kernel has, one shape for both.

A :class:`TableDoc` is split in two parts that change at very different rates:

* the **skeleton**: set/map declarations, chains and their rules. It is fixed
  by the code, never by the cluster; it changes only on upgrade or drift.
* the **elements** of each set and map: all of the cluster's data.

Rules are identified by a comment holding a hash of their content
(``wh:<12 hex>``). The kernel prints rule expressions back in its own
canonical form, which differs from what was sent; the comment survives
verbatim, so comparing comments is exact and cheap. A rule someone inserted
(no or another comment) or a reordered chain is seen as drift.

Elements are normalised to hashable Python values so that the kernel's
listing and the compiler's output compare directly:

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
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

JSONObj = dict[str, Any]
Key = str | int | tuple[str | int, ...]
Elem = Key | tuple[Key, str | int]


class ListingError(ValueError):
    """The kernel's listing has a shape this module does not understand."""


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
    command, see :func:`creation_phases`."""

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


# --------------------------------------------------------------------------- rendering


def _table_ref(family: str, table: str) -> JSONObj:
    return {"family": family, "table": table}


def render_set(family: str, table: str, decl: SetDecl) -> JSONObj:
    """The ``add set``/``add map`` command body for one declaration."""
    body: JSONObj = {**_table_ref(family, table), "name": decl.name}
    body["type"] = decl.type[0] if len(decl.type) == 1 else list(decl.type)
    if decl.data is not None:
        body["map"] = decl.data
    if decl.flags:
        body["flags"] = list(decl.flags)
    if decl.timeout is not None:
        body["timeout"] = decl.timeout
    if decl.size is not None:
        body["size"] = decl.size
    if decl.comment:
        body["comment"] = decl.comment
    return {"map" if decl.data is not None else "set": body}


def render_chain(family: str, table: str, decl: ChainDecl) -> JSONObj:
    body: JSONObj = {**_table_ref(family, table), "name": decl.name}
    if decl.hook is not None:
        body.update(type=decl.type, hook=decl.hook, prio=decl.prio, policy=decl.policy or "accept")
    return {"chain": body}


def render_rule(family: str, table: str, rule: Rule) -> JSONObj:
    return {
        "rule": {
            **_table_ref(family, table),
            "chain": rule.chain,
            "expr": list(rule.expr),
            "comment": rule.tag,
        }
    }


def _render_part(part: str | int, interval: bool) -> Any:
    if isinstance(part, int) and part >= 1 << 53:
        return hex(part)  # JSON numbers stop at 64 bits; nft reads hex strings for wide integers
    if interval and isinstance(part, str) and "/" in part:
        addr, length = part.split("/")
        return {"prefix": {"addr": addr, "len": int(length)}}
    return part


def _render_key(key: Key, decl: SetDecl) -> Any:
    if isinstance(key, tuple):
        return {"concat": [_render_part(p, decl.interval) for p in key]}
    return _render_part(key, decl.interval)


def _render_verdict(value: str) -> Any:
    word, _, target = value.partition(" ")
    return {word: {"target": target}} if target else {word: None}


def render_elements(
    family: str, table: str, decl: SetDecl, elems: Iterable[Elem], *, ordered: bool = True
) -> JSONObj | None:
    """The body of an ``add/delete element`` command, or None when there is nothing to send.

    ``ordered``: elements sorted, so the same set renders byte-identical JSON (``wholeip
    render``); a transaction does not care, and sorting 100,000 elements costs a third
    of a second."""
    out: list[Any] = []
    for elem in _sorted(elems) if ordered else elems:
        if decl.data is None:
            out.append(_render_key(elem, decl))  # type: ignore[arg-type]
        else:
            if not isinstance(elem, tuple) or len(elem) != 2:
                raise ValueError(f"map {decl.name}: element {elem!r} is not a (key, value) pair")
            key, value = elem
            data = _render_verdict(str(value)) if decl.data == "verdict" else _render_part(value, False)
            out.append([_render_key(key, decl), data])
    if not out:
        return None
    return {"element": {**_table_ref(family, table), "name": decl.name, "elem": out}}


def _sorted(elems: Iterable[Elem]) -> list[Elem]:
    """Elements in a deterministic order. One set's elements share one shape, so they
    compare natively (fast); a mixed bag falls back to comparing their JSON."""
    try:
        return sorted(elems)
    except TypeError:
        return sorted(elems, key=_sort_key)


def _sort_key(elem: Elem) -> str:
    return json.dumps(elem, default=str)


def render_table(doc: TableDoc) -> JSONObj:
    """The whole table as a libnftables JSON document (the ``wholeip render`` output).

    ``nftables`` holds the creation commands JSON can express; the ``typeof``
    declarations nft 1.0.6 cannot take in JSON are listed, in nft syntax, under
    ``declare`` and go between the two groups of commands (``phase`` says which).
    """
    first, declarations, last = creation_phases(doc)
    return {
        "nftables": [{"add": cmd} for cmd in [*first, *last]],
        "declare": {"text": declarations, "before_command": len(first)},
    }


def declare_text(family: str, table: str, decl: SetDecl) -> str:
    """The nft text command that declares a ``typeof`` set or map."""
    kind = "map" if decl.data is not None else "set"
    return f"add {kind} {family} {table} {decl.name} {{ typeof {decl.typeof}; }}"


def rule_uses(rule: Rule, names: set[str]) -> bool:
    text = json.dumps(rule.expr)
    return any(f'"@{n}"' in text for n in names)


def creation_phases(doc: TableDoc, *, ordered: bool = True) -> tuple[list[JSONObj], list[str], list[JSONObj]]:
    """How to create the table: JSON command bodies for ``add``, then nft text
    declarations of the ``typeof`` sets, then JSON bodies that use those sets.

    Order matters inside the first phase too: verdict-map elements jump to
    chains, rules name sets and chains.
    """
    fam, tab = doc.family, doc.name
    typed = {s.name for s in doc.skeleton.sets if s.typeof}
    first = skeleton_bodies(doc)
    last: list[JSONObj] = []
    for decl in doc.skeleton.sets:
        body = render_elements(fam, tab, decl, doc.elements.get(decl.name, frozenset()), ordered=ordered)
        if body is not None:
            (last if decl.typeof else first).append(body)
    for rule in doc.skeleton.rules:
        (last if rule_uses(rule, typed) else first).append(render_rule(fam, tab, rule))
    return first, typeof_declarations(doc), last


def skeleton_bodies(doc: TableDoc) -> list[JSONObj]:
    """``add`` command bodies for the table, its sets JSON can declare, and its chains
    (no element, no rule)."""
    fam, tab = doc.family, doc.name
    out: list[JSONObj] = [{"table": {"family": fam, "name": tab}}]
    out += [render_set(fam, tab, s) for s in doc.skeleton.sets if not s.typeof]
    out += [render_chain(fam, tab, c) for c in doc.skeleton.chains]
    return out


def typeof_declarations(doc: TableDoc) -> list[str]:
    """The nft text declarations of the ``typeof`` sets (JSON cannot declare them)."""
    return [declare_text(doc.family, doc.name, s) for s in doc.skeleton.sets if s.typeof]


# --------------------------------------------------------------------------- normalising


def normalize_addr(value: str) -> str:
    return str(ipaddress.ip_address(value))


def normalize_key(value: Any, decl: SetDecl) -> Key:
    """One key as the kernel lists it (or as we render it) -> its canonical form."""
    if isinstance(value, dict) and "concat" in value:
        parts = value["concat"]
        if not isinstance(parts, list):
            raise ListingError(f"bad concat {value!r}")
        out: list[str | int] = []
        for part, typ in zip(parts, decl.type, strict=False):
            key = normalize_key(part, SetDecl(decl.name, (typ,)))
            if isinstance(key, tuple):
                raise ListingError(f"nested concat {value!r}")
            out.append(key)
        return tuple(out)
    if isinstance(value, dict) and "prefix" in value:
        p = value["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        if len(decl.type) == 1 and not decl.interval and net.prefixlen == net.max_prefixlen:
            return str(net.network_address)  # a full-length prefix inside a concatenation
        return str(net)
    if isinstance(value, dict) and "range" in value:
        lo, hi = value["range"]
        return f"{normalize_addr(lo)}-{normalize_addr(hi)}"
    if isinstance(value, dict) and "elem" in value:
        return normalize_key(value["elem"]["val"], decl)
    if isinstance(value, bool):
        raise ListingError(f"bad element {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and decl.type and decl.type[0] == "integer" and value.startswith("0x"):
        return int(value, 16)
    if isinstance(value, str):
        if decl.type and decl.type[0] in ("ipv4_addr", "ipv6_addr"):
            if decl.interval and "/" not in value and "-" not in value:
                return str(ipaddress.ip_network(value))
            return normalize_addr(value) if "/" not in value else str(ipaddress.ip_network(value, strict=False))
        return value
    raise ListingError(f"bad element {value!r}")


def normalize_verdict(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((word, arg),) = value.items()
        if isinstance(arg, dict) and "target" in arg:
            return f"{word} {arg['target']}"
        if arg is None:
            return str(word)
    raise ListingError(f"bad verdict {value!r}")


def normalize_elem(raw: Any, decl: SetDecl) -> Elem:
    if decl.data is None:
        return normalize_key(raw, decl)
    if isinstance(raw, list) and len(raw) == 2:
        key, value = raw
        data = normalize_verdict(value) if decl.data == "verdict" else normalize_key(value, SetDecl("", (decl.data,)))
        return (normalize_key(key, decl), data)  # type: ignore[return-value]
    raise ListingError(f"bad map element {raw!r} in {decl.name}")


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


# --------------------------------------------------------------------------- parsing a listing


def _flags(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(sorted(str(v) for v in value))
    return ()


def parse_listing(objects: Sequence[JSONObj], *, family: str, name: str) -> TableDoc:
    """The kernel's ``list table`` objects -> a TableDoc comparable with the compiler's.

    Rules keep their comment as the tag (an empty tag for a rule without one) and
    the kernel's own expression form; only the tags are ever compared.
    """
    sets: list[SetDecl] = []
    elements: dict[str, frozenset[Elem]] = {}
    chains: list[ChainDecl] = []
    rules: list[Rule] = []
    for obj in objects:
        if not isinstance(obj, dict) or len(obj) != 1:
            raise ListingError(f"unexpected object {obj!r}")
        ((kind, body),) = obj.items()
        if kind in ("metainfo", "table"):
            continue
        if not isinstance(body, dict) or body.get("table") != name or body.get("family") != family:
            continue
        if kind in ("set", "map"):
            typ = body.get("type")
            timeout = body.get("timeout")
            size = body.get("size")
            decl = SetDecl(
                name=str(body["name"]),
                type=tuple(typ) if isinstance(typ, list) else (str(typ),),
                data=str(body["map"]) if kind == "map" else None,
                flags=_flags(body.get("flags")),
                comment=str(body.get("comment", "")),
                timeout=timeout if isinstance(timeout, int) else None,
                size=size if isinstance(size, int) else None,
            )
            sets.append(decl)
            if decl.dynamic:
                elements[decl.name] = frozenset()  # the packet path's, not ours
            else:
                elements[decl.name] = frozenset(normalize_elem(e, decl) for e in body.get("elem", []))
        elif kind == "chain":
            chains.append(
                ChainDecl(
                    name=str(body["name"]),
                    type=body.get("type"),
                    hook=body.get("hook"),
                    prio=body.get("prio"),
                    policy=body.get("policy"),
                )
            )
        elif kind == "rule":
            expr = body.get("expr", [])
            comment = body.get("comment")
            tag = comment if isinstance(comment, str) and comment else "untagged:" + str(body.get("handle"))
            rules.append(Rule(chain=str(body["chain"]), expr=tuple(expr), tag=tag))
    return TableDoc(
        family=family,
        name=name,
        skeleton=Skeleton(sets=tuple(sets), chains=tuple(chains), rules=tuple(rules)),
        elements=elements,
    )


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
