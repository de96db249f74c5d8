"""The kernel's listing as a table document (pure): libnftables JSON -> :class:`TableDoc`.

The inverse of :mod:`wholeip.nft.render`, and its only other reader of
libnftables' JSON shapes. Every element is normalised to the form the compiler
writes (see :mod:`wholeip.nft.doc`), so that a listed table and a desired one
compare with ``==``: the kernel prints a full-length prefix inside a
concatenation, ranges for intervals, hex strings for wide integers and verdicts
as objects, and each comes back here as the one canonical value.
:mod:`wholeip.nft.netlink` decodes netlink attributes to the same values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from wholeip.nft.doc import (
    ChainDecl,
    Elem,
    JSONObj,
    Key,
    ListingError,
    Rule,
    SetDecl,
    Skeleton,
    TableDoc,
)

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
