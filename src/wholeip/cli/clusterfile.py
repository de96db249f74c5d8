"""Cluster files: Kubernetes objects as ``kubectl get -o yaml`` (or ``-o json``) prints them.

A file holds one or more YAML documents; each is an object or a list
(``kind: List``, ``ServiceList`` ...) whose ``items`` are objects. Objects of
kinds the model does not use are skipped with a note, not an error: a dump of
a whole namespace is a valid input. Unreadable files and YAML errors raise
:class:`InputError` with a message fit for a terminal.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import yaml

# libyaml's safe loader when PyYAML was built with it; the pure one otherwise.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

USED_KINDS = frozenset({"Service", "EndpointSlice", "Node"})


class InputError(Exception):
    """The cluster file cannot be read at all."""


def _flatten(doc: Any, where: str, notes: list[str]) -> Iterator[dict[str, Any]]:
    if doc is None:
        return
    if not isinstance(doc, dict):
        notes.append(f"{where}: skipping a {type(doc).__name__}, expected a Kubernetes object")
        return
    kind = doc.get("kind")
    items = doc.get("items")
    if isinstance(items, list) and (not isinstance(kind, str) or kind.endswith("List")):
        list_kind = kind[: -len("List")] if isinstance(kind, str) and kind != "List" else None
        for i, item in enumerate(items):
            if isinstance(item, dict) and "kind" not in item and list_kind:
                item = {**item, "kind": list_kind}
            yield from _flatten(item, f"{where} item {i}", notes)
        return
    if not isinstance(kind, str):
        notes.append(f"{where}: skipping an object without kind")
        return
    if kind not in USED_KINDS:
        notes.append(f"{where}: skipping kind {kind} (only Service, EndpointSlice and Node are used)")
        return
    yield doc


def parse_text(text: str, *, name: str = "<input>") -> tuple[list[dict[str, Any]], list[str]]:
    """The objects in ``text`` and notes on what was skipped."""
    docs: list[Any] | None = None
    if text.lstrip()[:1] in ("{", "["):
        # kubectl -o json output: the json module is ~50x faster than YAML on large dumps.
        try:
            docs = [json.loads(text)]
        except ValueError:
            docs = None  # YAML flow style also starts with a brace; let YAML decide
    if docs is None:
        try:
            docs = list(yaml.load_all(text, Loader=_Loader))
        except yaml.YAMLError as exc:
            raise InputError(f"{name}: not valid YAML: {exc}") from exc
    notes: list[str] = []
    objects: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        objects += _flatten(doc, f"{name} document {i + 1}", notes)
    return objects, notes


def load(paths: Iterable[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Objects from files (``-`` is standard input)."""
    objects: list[dict[str, Any]] = []
    notes: list[str] = []
    for path in paths:
        try:
            if path == "-":
                text = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text") from exc
        objs, more = parse_text(text, name=path)
        objects += objs
        notes += more
    return objects, notes
