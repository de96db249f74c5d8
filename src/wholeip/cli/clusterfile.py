"""Cluster files: Kubernetes objects as ``kubectl get -o yaml`` (or ``-o json``) prints them.

A file holds one or more YAML documents; each is an object or a list
(``kind: List``, ``ServiceList`` ...) whose ``items`` are objects. Objects of
kinds the model does not use are skipped with a note, not an error: a dump of
a whole namespace is a valid input. Unreadable files (missing, a directory,
no permission, not UTF-8, a closed standard input) and YAML errors raise
:class:`InputError` with a message fit for a terminal. :attr:`Parsed.total`
counts the objects of every kind, so that a caller can tell empty input (a
failed ``kubectl get`` piped in) from a cluster without Services.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from wholeip.cli import kubeyaml
from wholeip.core.gcpause import gc_paused

# libyaml's safe loader when PyYAML was built with it; the pure one otherwise.
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

USED_KINDS = frozenset({"Service", "EndpointSlice", "Node", "ServiceCIDR", "Pod", "ServiceL2Status"})


class InputError(Exception):
    """The cluster file cannot be read at all."""


def _flatten(doc: Any, where: str, notes: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Kubernetes object (a mapping with a kind) in ``doc``, lists opened, with where it was."""
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
    yield where, doc


@dataclass
class Parsed:
    """What a cluster file (or a set of them) holds."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    """The objects of the kinds the model uses."""
    notes: list[str] = field(default_factory=list)
    """What was skipped, for the terminal."""
    total: int = 0
    """Kubernetes objects of any kind: 0 means the input was empty (or held no object at all)."""

    def add(self, other: Parsed) -> None:
        self.objects += other.objects
        self.notes += other.notes
        self.total += other.total


def parse_text(text: str, *, name: str = "<input>") -> Parsed:
    """The objects in ``text`` and notes on what was skipped.

    The cyclic collector is paused while the text is decoded: the objects of a large dump
    are hundreds of thousands of containers that all live on, and each collection on the
    way would scan every one made so far (at 100,000 Services the JSON decode took 2.4 s
    with the collector running, 0.5 s without it). What is made lives on for the model and
    goes to the oldest generation unscanned (``gc_paused(long_lived=True)``)."""
    with gc_paused(long_lived=True):
        return _parse_text(text, name)


def _parse_text(text: str, name: str) -> Parsed:
    docs: list[Any] | None = None
    if text.lstrip()[:1] in ("{", "["):
        # kubectl -o json output: the json module is ~50x faster than YAML on large dumps.
        try:
            docs = [json.loads(text)]
        except ValueError:
            docs = None  # YAML flow style also starts with a brace; let YAML decide
    if docs is None:
        try:
            # kubectl -o yaml output: read by kubeyaml in one pass over the lines; PyYAML
            # (libyaml's parser where installed) reads what kubeyaml leaves to it.
            docs = kubeyaml.load_all(text)
        except kubeyaml.Unsupported:
            docs = None
    if docs is None:
        try:
            docs = list(yaml.load_all(text, Loader=_Loader))
        except yaml.YAMLError as exc:
            raise InputError(f"{name}: not valid YAML: {exc}") from exc
    out = Parsed()
    for i, doc in enumerate(docs):
        for where, obj in _flatten(doc, f"{name} document {i + 1}", out.notes):
            out.total += 1
            if obj["kind"] in USED_KINDS:
                out.objects.append(obj)
            else:
                out.notes.append(
                    f"{where}: skipping kind {obj['kind']}"
                    " (only Service, EndpointSlice, Node, ServiceCIDR, Pod and ServiceL2Status are used)"
                )
    return out


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None:  # the process was started with file descriptor 0 closed
        raise InputError("-: standard input is closed, there is nothing to read")
    try:
        # Bytes, decoded here: the text layer would pass undecodable bytes on as
        # surrogates under a C locale, which the YAML parser cannot take.
        buffer = getattr(stream, "buffer", None)
        data = buffer.read() if buffer is not None else stream.read()
    except OSError as exc:
        raise InputError(f"-: cannot read standard input: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError("-: not UTF-8 text") from exc
    if isinstance(data, str):
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError("-: not UTF-8 text") from exc


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text") from exc
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise InputError(f"{path!r}: {exc}") from exc


def load(paths: Iterable[str]) -> Parsed:
    """Objects from files (``-`` is standard input); a note for each file without any object."""
    paths = list(paths)
    out = Parsed()
    for path in paths:
        parsed = parse_text(_read_stdin() if path == "-" else _read_file(path), name=path)
        if parsed.total == 0 and len(paths) > 1:
            parsed.notes.append(f"{path}: no Kubernetes objects")
        out.add(parsed)
    return out
