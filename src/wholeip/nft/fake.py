"""The in-memory backend: behaves like the kernel for the commands wholeip sends.

Used by fast unit tests and by the agent's tests that need no kernel. It is
held to the kernel's behaviour by ``tests/nft/test_contract.py``, which runs
the same cases against this class and against :class:`LibnftBackend` in a
fresh network namespace. What it copies from the kernel:

* transactions are atomic: the state is deep-copied, every command applied to
  the copy, and the copy swapped in only when all succeeded;
* ``add`` is idempotent for tables, sets, chains and equal elements; an element
  whose key exists with other data, or any ``create`` of something existing,
  raises :class:`Exists`;
* ``delete``/``flush`` of something missing raises :class:`NotFound`; deleting an
  element matches on the key only;
* every ``@set`` a rule names and every ``jump``/``goto`` target must exist
  (:class:`NotFound`); a set still referenced cannot be deleted
  (:class:`Rejected`); element values are type-checked (:class:`Rejected`);
  overlapping intervals are refused (:class:`Rejected`).

Listings have the kernel's shape (handles, ``elem`` lists, prefixes), with the
rule expressions stored as sent: the kernel canonicalises them, and wholeip
only compares rule comments, never expressions.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import pickle
import re
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from wholeip.nft.backend import Exists, NftError, NotFound, Rejected
from wholeip.nft.doc import Elem, JSONObj, TableDoc, interval_cover
from wholeip.nft.listing import parse_listing

_T = TypeVar("_T")

_INET_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58}


@dataclass
class _Set:
    decl: JSONObj
    is_map: bool
    elems: dict[Any, Any] = field(default_factory=dict)  # canonical key -> (raw key, raw data)
    handle: int = 0


@dataclass
class _Chain:
    decl: JSONObj
    rules: list[JSONObj] = field(default_factory=list)
    handle: int = 0


@dataclass
class _Table:
    family: str
    name: str
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, _Chain] = field(default_factory=dict)
    handle: int = 0


class FakeBackend:
    """:class:`~wholeip.nft.backend.Backend` held in memory."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], _Table] = {}
        self._handles = itertools.count(1)
        self.transactions: list[list[JSONObj]] = []
        """Every transaction that was applied (for tests that count what was sent)."""
        self.fail_next: NftError | None = None
        """Test seam: the next transaction raises this error and applies nothing."""

    # ----------------------------------------------------------------- Backend

    def list_table(self, family: str, name: str) -> list[JSONObj] | None:
        table = self.tables.get((family, name))
        if table is None:
            return None
        out: list[JSONObj] = [{"table": {"family": family, "name": name, "handle": table.handle}}]
        for s in table.sets.values():
            body = {k: v for k, v in s.decl.items() if k != "elem"}
            body.update(family=family, table=name, handle=s.handle)
            elems = [self._list_elem(s, raw) for raw in s.elems.values()]
            if elems:
                body["elem"] = elems
            out.append({"map" if s.is_map else "set": body})
        for c in table.chains.values():
            out.append({"chain": {**c.decl, "family": family, "table": name, "handle": c.handle}})
        for c in table.chains.values():
            out += [{"rule": {**r, "family": family, "table": name}} for r in c.rules]
        return _copied(out)

    def read_table(
        self, family: str, name: str, *, known: Mapping[str, AbstractSet[Elem]] | None = None
    ) -> TableDoc | None:
        listing = self.list_table(family, name)
        return None if listing is None else parse_listing(listing, family=family, name=name)

    def transact(self, commands: Sequence[JSONObj]) -> None:
        if not commands:
            return
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        work = _copied(self.tables)
        for cmd in commands:
            self._apply(work, cmd)
        self.tables = work
        self.transactions.append(_copied(list(commands)))

    def transact_text(self, text: str) -> None:
        """As libnftables reads it: JSON text, then :meth:`transact` of its commands."""
        try:
            commands = json.loads(text)["nftables"]
        except (ValueError, KeyError, TypeError) as exc:
            raise Rejected(f"Error: invalid JSON input: {exc}") from exc
        self.transact(commands)

    def check(self, commands: Sequence[JSONObj]) -> None:
        """Apply to a copy and throw it away (``fail_next`` is for transactions only)."""
        work = _copied(self.tables)
        for cmd in commands:
            self._apply(work, cmd)

    def declare(self, script: str) -> None:
        """The nft text declarations wholeip sends: ``add set|map FAMILY TABLE NAME { typeof ...; }``,
        with ``flags``, ``timeout`` and ``size`` when the declaration has them.

        Anything else is refused; the declared set lists as the kernel lists a
        ``typeof`` set (``integer`` for raw payload parts).
        """
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err
        work = _copied(self.tables)
        rest = _DECLARE.sub("", script).replace(";", "").strip()
        if rest:
            raise Rejected("syntax error", detail=rest)
        for m in _DECLARE.finditer(script):
            kind, family, table, name, typeof, flags, timeout, size = m.groups()
            key, _, data = typeof.partition(" : ")
            types = [_typeof_type(part) for part in key.split(" . ")]
            body: JSONObj = {"family": family, "table": table, "name": name}
            body["type"] = types[0] if len(types) == 1 else types
            if kind == "map":
                body["map"] = _typeof_type(data)
            # As the kernel lists them (see render.declare_text).
            if size is not None:
                body["size"] = int(size)
            if flags is not None:
                body["flags"] = flags.split(",")
            if timeout is not None:
                body["timeout"] = int(timeout)
            self._add_set(work, body, is_map=kind == "map")
        self.tables = work

    # ----------------------------------------------------------------- commands

    def _apply(self, tables: dict[tuple[str, str], _Table], cmd: JSONObj) -> None:
        if len(cmd) != 1:
            raise Rejected("malformed command", detail=repr(cmd))
        ((verb, obj),) = cmd.items()
        if not isinstance(obj, dict) or len(obj) != 1:
            raise Rejected("malformed command", detail=repr(cmd))
        ((kind, body),) = obj.items()
        handler = getattr(self, f"_{verb}_{kind}", None)
        if handler is None:
            raise Rejected(f"unsupported command {verb} {kind}")
        handler(tables, body)

    def _table(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> _Table:
        key = (body.get("family", "ip"), body.get("table", body.get("name")))
        table = tables.get(key)  # type: ignore[arg-type]
        if table is None:
            raise NotFound("No such file or directory", detail=f"table {key[0]} {key[1]}")
        return table

    def _add_table(self, tables: dict[tuple[str, str], _Table], body: JSONObj, *, create: bool = False) -> None:
        key = (body["family"], body["name"])
        if key in tables:
            if create:
                raise Exists("File exists", detail=f"table {key[0]} {key[1]}")
            return
        tables[key] = _Table(key[0], key[1], handle=next(self._handles))

    def _create_table(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._add_table(tables, body, create=True)

    def _delete_table(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        key = (body["family"], body["name"])
        if key not in tables:
            raise NotFound("No such file or directory", detail=f"table {key[0]} {key[1]}")
        del tables[key]

    def _add_set(self, tables: dict[tuple[str, str], _Table], body: JSONObj, *, is_map: bool = False) -> None:
        table = self._table(tables, body)
        decl = {k: v for k, v in body.items() if k not in ("family", "table", "elem", "handle")}
        existing = table.sets.get(body["name"])
        if existing is not None:
            if existing.decl != decl or existing.is_map != is_map:
                raise Exists("File exists", detail=f"set {body['name']} with another declaration")
        else:
            table.sets[body["name"]] = _Set(decl, is_map, handle=next(self._handles))
        if body.get("elem"):
            self._add_element(tables, {**body, "name": body["name"]})

    def _add_map(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._add_set(tables, body, is_map=True)

    def _set(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> _Set:
        s = self._table(tables, body).sets.get(body["name"])
        if s is None:
            raise NotFound("No such file or directory", detail=f"set {body['name']}")
        return s

    def _delete_set(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        table = self._table(tables, body)
        self._set(tables, body)
        if any(body["name"] in _set_refs(r) for c in table.chains.values() for r in c.rules):
            raise Rejected("Device or resource busy", detail=f"set {body['name']} is in use")
        del table.sets[body["name"]]

    _delete_map = _delete_set

    def _flush_set(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._set(tables, body).elems.clear()

    _flush_map = _flush_set

    def _add_element(self, tables: dict[tuple[str, str], _Table], body: JSONObj, *, create: bool = False) -> None:
        s = self._set(tables, body)
        for raw in body.get("elem", []):
            key_raw, data = (raw[0], raw[1]) if s.is_map else (raw, None)
            key = _canon_key(key_raw, s.decl)
            if s.is_map:
                _check_value(data, s.decl["map"])
                table = self._table(tables, body)
                for target in _jump_targets(data):
                    if target not in table.chains:
                        raise NotFound("No such file or directory", detail=f"chain {target}")
            if key in s.elems:
                if create or s.elems[key][1] != data:
                    raise Exists("File exists", detail=f"element {key_raw!r} in {body['name']}")
                continue
            if _is_interval(s.decl) and isinstance(key, tuple):
                # The kernel answers EEXIST for an overlap inside a concatenation.
                if any(_concat_overlap(key, other) for other in s.elems):
                    raise Exists("File exists", detail=f"element {key_raw!r} overlaps in {body['name']}")
            elif _is_interval(s.decl):
                cover = interval_cover(list(s.elems))  # existing runs
                new = interval_cover([key])
                if _overlaps(cover, new):
                    raise Rejected("conflicting intervals specified", detail=repr(key_raw))
            s.elems[key] = (key_raw, data)

    def _create_element(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._add_element(tables, body, create=True)

    def _delete_element(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        s = self._set(tables, body)
        for raw in body.get("elem", []):
            key_raw = raw[0] if s.is_map and isinstance(raw, list) else raw
            key = _canon_key(key_raw, s.decl)
            if key not in s.elems:
                raise NotFound("No such file or directory", detail=f"element {key_raw!r} in {body['name']}")
            del s.elems[key]

    def _add_chain(self, tables: dict[tuple[str, str], _Table], body: JSONObj, *, create: bool = False) -> None:
        table = self._table(tables, body)
        decl = {k: v for k, v in body.items() if k not in ("family", "table", "handle")}
        existing = table.chains.get(body["name"])
        if existing is not None:
            if create or existing.decl != decl:
                raise Exists("File exists", detail=f"chain {body['name']}")
            return
        table.chains[body["name"]] = _Chain(decl, handle=next(self._handles))

    def _create_chain(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._add_chain(tables, body, create=True)

    def _chain(self, tables: dict[tuple[str, str], _Table], body: JSONObj, key: str = "name") -> _Chain:
        chain = self._table(tables, body).chains.get(body[key])
        if chain is None:
            raise NotFound("No such file or directory", detail=f"chain {body[key]}")
        return chain

    def _flush_chain(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        self._chain(tables, body).rules.clear()

    def _delete_chain(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        table = self._table(tables, body)
        chain = self._chain(tables, body)
        if chain.rules:
            raise Rejected("Device or resource busy", detail=f"chain {body['name']} is not empty")
        del table.chains[body["name"]]

    def _add_rule(self, tables: dict[tuple[str, str], _Table], body: JSONObj) -> None:
        table = self._table(tables, body)
        chain = self._chain(tables, body, key="chain")
        for ref in _set_refs(body):
            if ref not in table.sets:
                raise NotFound("No such file or directory", detail=f"set @{ref}")
        for target in _jump_targets(body.get("expr", [])):
            if target not in table.chains:
                raise NotFound("No such file or directory", detail=f"chain {target}")
        rule = {k: v for k, v in body.items() if k not in ("family", "table")}
        rule["handle"] = next(self._handles)
        chain.rules.append(rule)

    # ----------------------------------------------------------------- listing

    def _list_elem(self, s: _Set, raw: tuple[Any, Any]) -> Any:
        key_raw, data = raw
        key = _list_key(key_raw, s.decl)
        return [key, data] if s.is_map else key


# --------------------------------------------------------------------------- helpers


def _copied(value: _T) -> _T:
    """A deep copy (of plain data and this module's dataclasses): what ``copy.deepcopy``
    gives, through pickle, which copies a table of 10,000 elements several times faster
    (the property tests list and transact thousands of times)."""
    return cast(_T, pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL)))


_DECLARE = re.compile(
    r"add (set|map) (\w+) (\w+) (\w+) \{ typeof ([^;{}]+);"
    r"(?: flags ([\w,]+);)?(?: timeout (\d+)s;)?(?: size (\d+);)? \}"
)


def _typeof_type(expr: str) -> str:
    expr = expr.strip()
    if expr.startswith("@"):
        return "integer"  # raw payload
    if expr.startswith(("numgen ", "jhash ", "symhash ")):
        return "integer"  # a hash or a counter: host byte order, 32 bits
    known = {
        "ip daddr": "ipv4_addr",
        "ip saddr": "ipv4_addr",
        "ip6 daddr": "ipv6_addr",
        "ip6 saddr": "ipv6_addr",
        "meta l4proto": "inet_proto",
        "th dport": "inet_service",
    }
    if expr not in known:
        raise Rejected("unsupported typeof expression", detail=expr)
    return known[expr]


def _is_interval(decl: JSONObj) -> bool:
    flags = decl.get("flags", [])
    return "interval" in (flags if isinstance(flags, list) else [flags])


def _types(decl: JSONObj) -> list[str]:
    t = decl.get("type")
    return list(t) if isinstance(t, list) else [str(t)]


def _canon_key(raw: Any, decl: JSONObj) -> Any:
    types = _types(decl)
    if len(types) > 1:
        parts = raw.get("concat") if isinstance(raw, dict) else None
        if not isinstance(parts, list) or len(parts) != len(types):
            raise Rejected("Error: datatype mismatch", detail=f"{raw!r} is not a {'.'.join(types)}")
        if _is_interval(decl):
            return tuple(
                str(_parse_net(f"{p['prefix']['addr']}/{p['prefix']['len']}", t))
                if isinstance(p, dict) and "prefix" in p
                else _check_value(p, t)
                for p, t in zip(parts, types, strict=True)
            )
        return tuple(_check_value(p, t) for p, t in zip(parts, types, strict=True))
    if _is_interval(decl):
        if isinstance(raw, dict) and "prefix" in raw:
            p = raw["prefix"]
            net = _parse_net(f"{p.get('addr')}/{p.get('len')}", types[0])
        else:
            net = _parse_net(str(raw), types[0])
        return str(net)
    return _check_value(raw, types[0])


def _parse_net(text: str, typ: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if "%" in text:  # Python takes zone ids, nft does not
        raise Rejected("Could not resolve hostname", detail=text)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise Rejected("Could not resolve hostname", detail=text) from exc
    if (typ == "ipv4_addr") != (net.version == 4):
        raise Rejected("Could not resolve hostname: Address family for hostname not supported", detail=text)
    return net


def _concat_overlap(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    for x, y in zip(a, b, strict=True):
        if x == y:
            continue
        if isinstance(x, str) and isinstance(y, str):
            try:
                if ipaddress.ip_network(x, strict=False).overlaps(ipaddress.ip_network(y, strict=False)):
                    continue
            except ValueError:
                pass
        return False
    return True


def _check_value(value: Any, typ: str) -> Any:
    """The canonical form of one value of an nft type, or Rejected."""
    if typ in ("ipv4_addr", "ipv6_addr"):
        if isinstance(value, str) and "%" in value:  # Python takes zone ids, nft does not
            raise Rejected("Could not resolve hostname", detail=repr(value))
        try:
            addr = ipaddress.ip_address(value)
        except ValueError as exc:
            raise Rejected("Could not resolve hostname", detail=repr(value)) from exc
        if (typ == "ipv4_addr") != (addr.version == 4):
            raise Rejected(
                "Could not resolve hostname: Address family for hostname not supported",
                detail=repr(value),
            )
        return str(addr)
    if typ == "inet_proto":
        if isinstance(value, int) and 0 <= value < 256:
            return value
        if isinstance(value, str) and value in _INET_PROTOS:
            return _INET_PROTOS[value]
        raise Rejected("Could not parse protocol", detail=repr(value))
    if typ == "inet_service":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 65536:
            return value
        raise Rejected("Could not parse service", detail=repr(value))
    if typ == "integer":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str) and value.startswith("0x"):
            return int(value, 16)
        raise Rejected("Could not parse integer", detail=repr(value))
    if typ == "verdict":
        if isinstance(value, dict) and len(value) == 1:
            return repr(sorted(value.items()))
        raise Rejected("Could not parse verdict", detail=repr(value))
    return value


def _list_key(raw: Any, decl: JSONObj) -> Any:
    types = _types(decl)
    if len(types) > 1:
        return {"concat": list(raw["concat"])}
    if _is_interval(decl):
        net = ipaddress.ip_network(_canon_key(raw, decl))
        if net.prefixlen == net.max_prefixlen:
            return str(net.network_address)
        return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}
    if types[0] in ("ipv4_addr", "ipv6_addr"):
        return str(ipaddress.ip_address(raw))
    return raw


def _overlaps(a: tuple[tuple[int, int, int], ...], b: tuple[tuple[int, int, int], ...]) -> bool:
    return any(va == vb and lo_a <= hi_b and lo_b <= hi_a for va, lo_a, hi_a in a for vb, lo_b, hi_b in b)


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _set_refs(rule: JSONObj) -> set[str]:
    return {v[1:] for v in _walk(rule.get("expr", [])) if isinstance(v, str) and v.startswith("@")}


def _jump_targets(expr: Any) -> set[str]:
    out: set[str] = set()
    for v in _walk(expr):
        if isinstance(v, dict):
            for verb in ("jump", "goto"):
                arg = v.get(verb)
                if isinstance(arg, dict) and "target" in arg:
                    out.add(str(arg["target"]))
    return out
