"""The real backend: the official libnftables binding, JSON in and JSON out.

One ``Nftables`` context per backend, behind a lock: libnftables contexts are
not thread-safe, and the agent runs commits in a worker thread. Each
transaction is one ``json_cmd`` call, which libnftables sends to the kernel as
one netlink batch: all of it is applied or none.

Errors come back as text on libnftables' error buffer; they are mapped to the
types in :mod:`wholeip.nft.backend` by the errno text the kernel reports, so
callers never parse messages. The JSON schema version is checked once, at
construction: an nft whose JSON we do not know is refused up front rather
than misread later.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from wholeip.nft import netlink
from wholeip.nft.backend import Exists, NftError, NotFound, Rejected, Unavailable
from wholeip.nft.doc import Elem, JSONObj, SetDecl, TableDoc
from wholeip.nft.listing import parse_listing

SUPPORTED_SCHEMA_VERSIONS = (1,)
_READ_ATTEMPTS = 3


def classify(message: str) -> type[NftError]:
    """Which error type an nft error text means."""
    text = message.lower()
    if "no such file or directory" in text or "does not exist" in text:
        return NotFound
    if "file exists" in text:
        return Exists
    return Rejected


class LibnftBackend:
    """:class:`~wholeip.nft.backend.Backend` over libnftables."""

    def __init__(self, *, nft: Any = None) -> None:
        self._fresh: Callable[[], Any] | None = None
        """Makes a throwaway context for listings (None: list with ``nft``, as given)."""
        if nft is None:
            try:
                import nftables
            except ImportError as exc:  # pragma: no cover - depends on the machine
                raise Unavailable(
                    "the Python module 'nftables' is missing",
                    detail="install python3-nftables (system Python) or oxl-libnftables (virtualenv)",
                ) from exc
            try:
                nft = nftables.Nftables()
            except OSError as exc:  # pragma: no cover - depends on the machine
                raise Unavailable("libnftables.so.1 could not be loaded", detail=str(exc)) from exc
            self._fresh = nftables.Nftables
        self._nft = nft
        self._nft.set_json_output(True)
        self._nft.set_handle_output(True)
        self._lock = threading.Lock()
        self.schema_version = self._schema_version()
        if self.schema_version not in SUPPORTED_SCHEMA_VERSIONS:
            raise Unavailable(f"libnftables JSON schema version {self.schema_version} is not supported")

    def _schema_version(self) -> int:
        # Any JSON output starts with the metainfo. Not "list tables": nftables 1.0.6 fills
        # its whole cache for it, every element of every set included (275 MiB, 1.8 s with
        # our table at 100,000 Services); chains come without rules or sets.
        rc, out, err = self._nft.cmd("list chains")
        if rc != 0:
            raise Unavailable("nft cannot list chains", detail=err.strip())
        for obj in json.loads(out).get("nftables", []):
            if "metainfo" in obj:
                return int(obj["metainfo"].get("json_schema_version", 0))
        return 0

    def list_table(self, family: str, name: str) -> list[JSONObj] | None:
        rc, out, err = self._list({"list": {"table": {"family": family, "name": name}}})
        if rc != 0:
            kind = classify(str(err))
            if kind is NotFound:
                return None
            raise kind(f"listing table {family} {name} failed", detail=str(err).strip())
        objects: list[JSONObj] = out.get("nftables", []) if isinstance(out, dict) else []
        return objects

    def _list(self, command: JSONObj) -> tuple[int, Any, str]:
        """One listing command: (rc, the decoded JSON output or None, error text).

        A context keeps what it listed in its cache until it is freed: 210 MiB of C
        memory after listing 300,000 elements, held between two full syncs. So a listing
        gets a context of its own, freed before its text is decoded (the cache and the
        decoded objects never coexist)."""
        request = {"nftables": [command]}
        if self._fresh is None:
            with self._lock:
                rc, out, err = self._nft.json_cmd(request)
            return rc, out, err
        nft = self._fresh()
        nft.set_json_output(True)
        nft.set_handle_output(True)
        with self._lock:
            rc, text, err = nft.cmd(json.dumps(request))
        del nft
        return rc, (json.loads(text) if rc == 0 and text else None), err

    def read_table(
        self, family: str, name: str, *, known: Mapping[str, AbstractSet[Elem]] | None = None
    ) -> TableDoc | None:
        """The table, normalised, the way a full sync needs it and without what makes
        ``list table`` dear (see :mod:`wholeip.nft.netlink`): the declarations, chains
        and rules from libnftables' terse listing of the family's ruleset (it fetches no
        element), the elements over netlink, the sets netlink cannot decode through
        libnftables one at a time.

        ``known``: sets the table probably holds (the last commit). A set the kernel holds
        exactly is compared while it is read and returned as that very object, so reading
        an unchanged table never holds a second copy of its elements.

        Each part is read as a snapshot: a set's dump that a commit overlapped is dumped
        again (up to ``_READ_ATTEMPTS`` times, the last one taken as it is). The parts
        are not one snapshot together:
        only someone else changing our table between two of them (the agent's own commits
        never overlap a read) could show a mix, which the next full sync sees. Commits to
        other tables, every second on a node whose kube-proxy is busy, cost a re-read of
        the one set they interrupted, not of the table. A table or set that disappears
        meanwhile makes the whole reading start over, once."""
        for attempt in range(2):
            try:
                with netlink.Socket() as sock:
                    return self._read(sock, family, name, known or {})
            except netlink.NetlinkError as exc:
                if exc.errno != errno.ENOENT:
                    raise Unavailable("reading the table over netlink failed", detail=str(exc)) from exc
                if attempt:
                    raise Unavailable("our table changed under the reading twice", detail=str(exc)) from exc
        return None  # pragma: no cover - the loop returns or raises

    def _read(
        self, sock: netlink.Socket, family: str, name: str, known: Mapping[str, AbstractSet[Elem]]
    ) -> TableDoc | None:
        with self._lock:
            self._nft.set_terse_output(True)
            try:
                rc, out, err = self._nft.cmd(f"list ruleset {family}")
            finally:
                self._nft.set_terse_output(False)
        if rc != 0:
            raise classify(str(err))(f"listing the {family} ruleset failed", detail=str(err).strip())
        objects = json.loads(out).get("nftables", []) if out else []
        if not any(o.get("table", {}).get("name") == name for o in objects):
            return None
        skeleton = parse_listing(objects, family=family, name=name).skeleton
        layouts = sock.layouts(family, name)
        elements: dict[str, AbstractSet[Elem]] = {}
        for decl in skeleton.sets:
            if decl.dynamic:
                elements[decl.name] = frozenset()  # the packet path's, never compared
                continue
            layout = layouts.get(decl.name)
            decode = netlink.decoder(decl, layout) if layout is not None else None
            read: AbstractSet[Elem] | None = None
            if decode is not None:
                read = _read_set(sock, family, name, decl.name, decode, known.get(decl.name))
            elements[decl.name] = read if read is not None else self._list_set(family, name, decl)
        return TableDoc(family, name, skeleton, elements)

    def _list_set(self, family: str, table: str, decl: SetDecl) -> AbstractSet[Elem]:
        """One set's elements through libnftables (see :meth:`_list`)."""
        kind = "set" if decl.data is None else "map"
        rc, out, err = self._list({"list": {kind: {"family": family, "table": table, "name": decl.name}}})
        if rc != 0:
            code = errno.ENOENT if classify(str(err)) is NotFound else errno.EPROTO
            raise netlink.NetlinkError(code, str(err).strip())
        objects = out.get("nftables", []) if isinstance(out, dict) else []
        return parse_listing(objects, family=family, name=table).elements.get(decl.name, frozenset())

    def transact(self, commands: Sequence[JSONObj]) -> None:
        if not commands:
            return
        self.transact_text(json.dumps({"nftables": list(commands)}))

    def transact_text(self, text: str) -> None:
        with self._lock:
            # The context reads JSON input while its output is JSON: set at construction, and
            # every method that turns it off turns it on again before it lets the lock go. Not
            # set again here: each call into the library gives the GIL up and must win it
            # back, up to a switch interval later while another thread runs Python (see
            # engine.send_fill).
            rc, _out, err = self._nft.cmd(text)
        if rc != 0:
            detail = str(err).strip()
            raise classify(detail)("nft transaction refused", detail=detail)

    def check(self, commands: Sequence[JSONObj]) -> None:
        if not commands:
            return
        with self._lock:
            _set_dry_run(self._nft, True)
            try:
                rc, _out, err = self._nft.json_cmd({"nftables": list(commands)})
            finally:
                _set_dry_run(self._nft, False)
        if rc != 0:
            text = str(err).strip()
            raise classify(text)("nft check refused", detail=text)

    def declare(self, script: str) -> None:
        with self._lock:
            self._nft.set_json_output(False)
            try:
                rc, _out, err = self._nft.cmd(script)
            finally:
                self._nft.set_json_output(True)
        if rc != 0:
            text = str(err).strip()
            raise classify(text)("nft declaration refused", detail=text)


_Batches = Iterator[list[netlink.RawElem]]
_Decode = Callable[[netlink.RawElem], Elem]


def _read_set(
    sock: netlink.Socket, family: str, table: str, name: str, decode: _Decode, expected: AbstractSet[Elem] | None
) -> AbstractSet[Elem] | None:
    """One set over netlink: ``expected`` itself when the kernel holds exactly that, else
    the decoded elements; None when an element does not decode (the caller lists the set
    through libnftables). A dump a commit overlapped is taken again; the last attempt is
    taken as it is (commits to other tables cannot change our set; only someone else
    changing it meanwhile could make it off, as between two sets, see read_table)."""
    for attempt in range(_READ_ATTEMPTS):
        strict = attempt < _READ_ATTEMPTS - 1
        try:
            if expected is not None and _holds_exactly(
                sock.elements(family, table, name, strict=strict), decode, expected
            ):
                return expected
            return _decoded(sock.elements(family, table, name, strict=strict), decode)
        except netlink.Interrupted:
            continue
    return None  # pragma: no cover - the last attempt is not strict


def _holds_exactly(batches: _Batches, decode: _Decode, expected: AbstractSet[Elem]) -> bool:
    """Whether a set dump holds exactly ``expected`` (a set holds each element once: every
    element expected and as many as expected). The dump is read to its end either way:
    a netlink socket runs one dump at a time."""
    count, same = 0, True
    for batch in batches:
        if not same:
            continue
        try:
            for raw in batch:
                if decode(raw) not in expected:
                    same = False
                    break
        except (netlink.Undecodable, ValueError, IndexError):
            same = False
        count += len(batch)
    return same and count == len(expected)


def _decoded(batches: _Batches, decode: _Decode) -> set[Elem] | None:
    """A set dump's elements; None when one of them does not decode (read to the end anyway)."""
    out: set[Elem] | None = set()
    for batch in batches:
        if out is None:
            continue
        try:
            out.update(decode(raw) for raw in batch)
        except (netlink.Undecodable, ValueError, IndexError):
            out = None
    return out


_dry_run_fn: Any = None


def _set_dry_run(nft: Any, on: bool) -> None:
    """``nft --check`` for the context: the batch goes to the kernel, which validates it
    and aborts instead of committing. The Python binding of nftables 1.0.6 has no
    setter, the C library does (``nft_ctx_set_dry_run``)."""
    global _dry_run_fn
    if hasattr(nft, "set_dry_run"):
        nft.set_dry_run(on)
        return
    if _dry_run_fn is None:
        lib = ctypes.CDLL(ctypes.util.find_library("nftables") or "libnftables.so.1")
        _dry_run_fn = lib.nft_ctx_set_dry_run
        _dry_run_fn.argtypes = [ctypes.c_void_p, ctypes.c_bool]
        _dry_run_fn.restype = None
    _dry_run_fn(nft._Nftables__ctx, on)
