"""Label and field selectors, parsed the way the real API server parses them.

A selector is parsed once per request into a list of requirements; matching is
then a pure function of one object.  Parse errors raise :class:`BadRequest`,
as the real server answers 400 for a malformed selector or an unsupported
field label, so a client bug shows up here exactly as it would on a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .errors import BadRequest
from .registry import Obj, ResourceType

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_SET_RE = re.compile(rf"^({_KEY})\s+(in|notin)\s*\((.*)\)$")
_NOT_EXISTS_RE = re.compile(rf"^!\s*({_KEY})$")
_CMP_RE = re.compile(rf"^({_KEY})\s*(==|=|!=|<|>)\s*([-A-Za-z0-9_.]*)$")
_EXISTS_RE = re.compile(rf"^({_KEY})$")


@dataclass(frozen=True, slots=True)
class LabelRequirement:
    key: str
    op: str
    """One of ``=``, ``!=``, ``in``, ``notin``, ``exists``, ``!``, ``<``, ``>``."""
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            # Like the real server: an absent key satisfies a negative requirement.
            return not present or value not in self.values
        # "<" / ">": numeric comparison; a non-integer label never matches.
        try:
            have, want = int(value or ""), int(next(iter(self.values)))
        except ValueError:
            return False
        return have < want if self.op == "<" else have > want


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside ``( ... )`` (set-based requirements)."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def parse_label_selector(text: str | None) -> list[LabelRequirement]:
    """Parse ``labelSelector``; an empty selector selects everything."""
    if not text or not text.strip():
        return []
    reqs: list[LabelRequirement] = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if m := _SET_RE.match(part):
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(LabelRequirement(m.group(1), m.group(2), values))
        elif m := _NOT_EXISTS_RE.match(part):
            reqs.append(LabelRequirement(m.group(1), "!", frozenset()))
        elif m := _CMP_RE.match(part):
            op = "=" if m.group(2) == "==" else m.group(2)
            if op in "<>" and not re.fullmatch(r"-?\d+", m.group(3)):
                raise BadRequest(f"unable to parse requirement: {part!r}: not an integer")
            reqs.append(LabelRequirement(m.group(1), op, frozenset([m.group(3)])))
        elif m := _EXISTS_RE.match(part):
            reqs.append(LabelRequirement(m.group(1), "exists", frozenset()))
        else:
            raise BadRequest(f"unable to parse requirement: found '{part}', expected: identifier")
    return reqs


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str

    def matches(self, obj: Obj) -> bool:
        return (field_value(obj, self.path) == self.value) != self.negate


def field_value(obj: Obj, path: str) -> str:
    """The string form of a field as the real server's field-label functions give it."""
    if path == "source":
        # Core events expose ``source`` as the reporting component.
        return str((obj.get("source") or {}).get("component", ""))
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def _split_escaped(text: str, sep: str) -> list[str]:
    r"""Split on ``sep`` unless escaped with a backslash (``\,`` ``\=`` ``\\``)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def parse_field_selector(text: str | None, rtype: ResourceType) -> list[FieldRequirement]:
    """Parse ``fieldSelector``; unknown field labels are a 400 like on a real cluster."""
    if not text or not text.strip():
        return []
    reqs: list[FieldRequirement] = []
    for raw in _split_escaped(text, ","):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)(.*)$", raw)
        if not m:
            raise BadRequest(f"invalid selector: '{text}'; can't understand '{raw}'")
        path, op, value = m.group(1), m.group(2), _unescape(m.group(3).strip())
        if not rtype.supports_field(path):
            raise BadRequest(
                f"field label not supported: {path}",
            )
        reqs.append(FieldRequirement(path, op == "!=", value))
    return reqs


@dataclass(frozen=True, slots=True)
class Selector:
    """Both selectors of one request, plus the namespace the URL restricts to."""

    labels: tuple[LabelRequirement, ...] = ()
    fields: tuple[FieldRequirement, ...] = ()
    namespace: str | None = None

    def matches(self, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        labels = meta.get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(r.matches(obj) for r in self.fields)

    @classmethod
    def parse(
        cls,
        rtype: ResourceType,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
    ) -> Selector:
        return cls(
            tuple(parse_label_selector(label_selector)),
            tuple(parse_field_selector(field_selector, rtype)),
            namespace,
        )
