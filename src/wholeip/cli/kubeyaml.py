"""A fast reader for the YAML that ``kubectl get -o yaml`` prints, with PyYAML as its judge.

kubectl prints block style only: mappings of ``key: value`` lines, sequences of
``- item`` lines, plain or quoted scalars on one line, ``{}`` and ``[]`` for empty
collections. PyYAML spends most of its time above libyaml's C parser, building
nodes and resolving every scalar's type in Python; this reader does that subset in
one pass over the lines and gives the very objects ``yaml.load_all(text,
SafeLoader)`` gives (scalars are typed by PyYAML's own resolver and constructors).

Anything outside the subset (block scalars ``|`` and ``>``, a scalar that continues
on the next line, flow collections other than ``{}`` and ``[]``, anchors, aliases,
tags, directives, complex keys, comments after a value, tabs, odd indentation)
raises :class:`Unsupported`, and the caller hands the whole text to PyYAML, which
also reports real YAML errors. So this module never decides what a document means
differently from PyYAML; ``tests/unit/test_kubeyaml.py`` holds it to that.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from yaml.nodes import ScalarNode

_CONSTRUCTOR = yaml.SafeLoader("")
_RESOLVERS: dict[str | None, list[tuple[str, re.Pattern[str]]]] = yaml.SafeLoader.yaml_implicit_resolvers
_CONSTRUCT = {
    "tag:yaml.org,2002:null": _CONSTRUCTOR.construct_yaml_null,
    "tag:yaml.org,2002:bool": _CONSTRUCTOR.construct_yaml_bool,
    "tag:yaml.org,2002:int": _CONSTRUCTOR.construct_yaml_int,
    "tag:yaml.org,2002:float": _CONSTRUCTOR.construct_yaml_float,
    "tag:yaml.org,2002:timestamp": _CONSTRUCTOR.construct_yaml_timestamp,
}
_NOT_PLAIN_START = frozenset("[]{}#&*!|>%@`,'\"?:")
"""Characters a plain scalar of this subset never starts with (indicators; quotes are
handled before; ``-``, ``?`` and ``:`` only followed by a space, which is checked apart)."""
_WILDCARD = _RESOLVERS.get(None, [])
_NON_PRINTABLE: re.Pattern[str] = yaml.reader.Reader.NON_PRINTABLE
_JSON_ESCAPES = re.compile(r'\\(?:["\\/bfnrt]|u(?![dD][89a-fA-F])[0-9a-fA-F]{4})')
_ANY_ESCAPE = re.compile(r"\\.")


class Unsupported(Exception):
    """The text leaves the subset this reader knows: let PyYAML read it."""


_LINE = re.compile(
    r"""( *)(- +)?"""
    r"""(?:([^\s'"#:?,\[\]{}&*!|>%@`-][^:]*?|"[^"\\]*"|'[^']*') *:(?: +(.*?))?|(.*?)) *$"""
)
"""One line: indentation, a sequence dash, then ``key:`` with its value, or a scalar."""

_LINES_KEPT = 1 << 16
"""How many distinct lines a document keeps the parts of: a dump repeats most of its lines
(in 10,000 Services with their slices, 83 % of 470,000 lines repeat one of 90,000), and
the common ones come first; the bound keeps a dump of unique lines from doubling in memory."""


def load_all(text: str) -> list[Any]:
    """The documents of ``text``, as ``yaml.load_all(text, SafeLoader)`` gives them."""
    if text.startswith("\ufeff") or _NON_PRINTABLE.search(text):
        raise Unsupported("byte order mark or a character YAML refuses")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if "\r" in text or "\x85" in text or "\u2028" in text or "\u2029" in text or "\t" in text:
        raise Unsupported("line break or tab")
    chunks: list[tuple[list[str], bool]] = []  # the lines of each document; whether "---" began it
    lines: list[str] = []
    explicit = False
    for line in text.split("\n"):
        if line.startswith(("---", "...", "%")):
            if line.rstrip(" ") != "---":
                raise Unsupported("document marker or directive")
            chunks.append((lines, explicit))
            lines, explicit = [], True
        else:
            lines.append(line)
    chunks.append((lines, explicit))
    # Text before the first "---" is a document only if it holds something.
    return [_document(lines) for lines, explicit in chunks if explicit or any(map(_holds, lines))]


def _holds(line: str) -> bool:
    stripped = line.lstrip(" ")
    return bool(stripped) and stripped[0] != "#"


def _document(lines: list[str]) -> Any:
    """One document: its block collections, line by line, with a stack of open ones."""
    match = _LINE.match
    cache: dict[str, Any] = {}  # scalar text -> value, for the immutable ones
    miss = cache  # a sentinel no scalar is

    def scalar(text: str) -> Any:
        value = cache.get(text, miss)
        if value is miss:
            value = _scalar(text)
            if type(value) is not dict and type(value) is not list:
                cache[text] = value
        return value

    seen: dict[str, tuple[Any, ...]] = {}  # line -> its parts (most lines of a dump repeat)
    root: Any = None
    stack: list[tuple[int, Any]] = []
    pending: tuple[dict[Any, Any], Any, int] | None = None
    only: str | None = None
    for line in lines:
        parts = seen.get(line)
        if parts is None:
            parts = match(line).groups()  # type: ignore[union-attr]
            if len(seen) < _LINES_KEPT:
                seen[line] = parts
        indent, dash, key, value, plain = parts
        if key is None and not dash:
            if not plain or plain[0] == "#":
                continue  # an empty line or a comment
            if root is None and only is None and not indent:
                only = plain  # a document that is one scalar, if nothing follows
                continue
            raise Unsupported("a scalar where a key or an item belongs")
        if only is not None:
            raise Unsupported("a scalar before a collection")
        at = len(indent)
        if pending is not None:
            owner, name, key_at = pending
            pending = None
            if at > key_at or (at == key_at and dash):
                block: Any = [] if dash else {}
                owner[name] = block
                stack.append((at, block))
        while stack and stack[-1][0] > at:
            stack.pop()
        if not stack:
            if root is not None or at:
                raise Unsupported("indentation")
            root = [] if dash else {}
            stack.append((0, root))
        top_at, top = stack[-1]
        if top_at != at:
            raise Unsupported("indentation")
        if dash:
            if type(top) is not list:
                raise Unsupported("an item where a key belongs")
            if key is None:
                if not plain or plain[0] == "#":
                    raise Unsupported("an empty item")
                top.append(scalar(plain))
                continue
            target: dict[Any, Any] = {}
            top.append(target)
            at += len(dash)
            stack.append((at, target))
        else:
            if type(top) is list:
                # The end of a sequence printed at its key's indentation ("key:" then "- x").
                stack.pop()
                if not stack or stack[-1][0] != at or type(stack[-1][1]) is not dict:
                    raise Unsupported("a key where an item belongs")
                top = stack[-1][1]
            target = top
        name = scalar(key)
        if not isinstance(name, (str, int, float, bool)) and name is not None:
            raise Unsupported("key type")
        if value:
            target[name] = scalar(value)
        else:
            target[name] = None
            pending = (target, name, at)
    if only is not None:
        return scalar(only)
    return root


def _quoted_end(content: str) -> int:
    """The index just past the closing quote of the quoted scalar ``content`` starts with."""
    quote = content[0]
    j = 1
    n = len(content)
    while j < n:
        c = content[j]
        if quote == '"' and c == "\\":
            j += 2
            continue
        if c == quote:
            if quote == "'" and j + 1 < n and content[j + 1] == "'":
                j += 2
                continue
            return j + 1
        j += 1
    raise Unsupported("quoted scalar continues on the next line")


def _scalar(text: str) -> Any:
    first = text[0]
    if first == '"':
        if _quoted_end(text) != len(text):
            raise Unsupported("text after a quoted scalar")
        body = text[1:-1]
        if "\\" not in body:
            return body
        if len(_ANY_ESCAPE.findall(body)) != len(_JSON_ESCAPES.findall(body)):
            raise Unsupported("escape")
        try:
            return json.loads(text)
        except ValueError as exc:  # a raw control character, which JSON refuses
            raise Unsupported("quoted scalar") from exc
    if first == "'":
        if _quoted_end(text) != len(text):
            raise Unsupported("text after a quoted scalar")
        return text[1:-1].replace("''", "'")
    if text == "{}":
        return {}
    if text == "[]":
        return []
    if (
        first in _NOT_PLAIN_START
        or (first == "-" and text[1:2] in ("", " "))
        or " #" in text
        or ": " in text
        or text.endswith(":")
    ):
        raise Unsupported("not a plain scalar of the subset")
    resolvers = _RESOLVERS.get(first)
    if resolvers is None and not _WILDCARD:
        return text
    for tag, regexp in (resolvers or []) + _WILDCARD:
        if regexp.match(text):
            construct = _CONSTRUCT.get(tag)
            if construct is None:
                raise Unsupported(tag)
            return construct(ScalarNode(tag, text))
    return text
