"""Reading set elements straight from nf_tables over netlink, for full syncs.

Listing a table through libnftables costs far more than the table: at 100,000
Services (300,000 elements) ``nft -j list table`` holds ~390 MiB of C memory
(its cache turns every element into expression trees, then into a JSON tree)
and the agent ~150 MiB more to decode the text, for about 5 s. A full sync
only needs each element's bytes. So the elements of plain sets and maps are
dumped here (``NFT_MSG_GETSETELEM``, the dump ``nft`` itself starts with) and
decoded one message at a time into the same normalised values
:func:`wholeip.nft.listing.normalize_elem` gives for libnftables' JSON; the table's
declarations, chains and rules still come from libnftables (``nft -j -t list
table``, which fetches no element).

Decoded here: keys and data made of ``ipv4_addr``, ``ipv6_addr``,
``inet_proto``, ``inet_service`` and big-endian ``integer`` fields (the raw
payload of a ``typeof`` set), and verdicts. Interval sets and anything else
return ``None`` from :func:`decoder`, and the caller lists them through
libnftables. ``tests/nft/test_netlink.py`` holds this module to libnftables'
listing for every set of our table, filled by the compiler.

The attribute numbers are the kernel's UAPI (``linux/netfilter/nf_tables.h``,
``linux/netfilter/nfnetlink.h``, ``linux/netlink.h``).
"""

from __future__ import annotations

import errno as errno_mod
import functools
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from wholeip.names import HOST_ORDER_KEYS
from wholeip.nft.doc import Elem, Key, SetDecl

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETSET = 10
NFT_MSG_GETSETELEM = 13

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_TYPE_MASK = 0x3FFF

NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFTA_SET_KEY_LEN = 5
NFTA_SET_DATA_LEN = 7
NFTA_SET_DESC = 9
NFTA_SET_DESC_CONCAT = 2
NFTA_LIST_ELEM = 1
NFTA_SET_FIELD_LEN = 1

NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_KEY = 1
NFTA_SET_ELEM_DATA = 2
NFTA_SET_ELEM_FLAGS = 3
NFTA_DATA_VALUE = 1
NFTA_DATA_VERDICT = 2
NFTA_VERDICT_CODE = 1
NFTA_VERDICT_CHAIN = 2

NFT_SET_INTERVAL = 0x4
NFT_SET_MAP = 0x8
NFT_SET_TIMEOUT = 0x10
NFT_SET_ELEM_INTERVAL_END = 0x1
NFT_SET_ELEM_CATCHALL = 0x2

FAMILIES = {"unspec": 0, "inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}

VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 132: "sctp"}
"""``inet_proto`` numbers as libnftables prints them (its names come from
``/etc/protocols``; these are the ones our sets hold)."""

_FIELD_WIDTH = {"ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 1, "inet_service": 2}
_HDR = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_BE16 = struct.Struct(">H")
_BE32 = struct.Struct(">I")
_BE32S = struct.Struct(">i")
_RECV_SIZE = 1 << 20


class NetlinkError(OSError):
    """The kernel answered a request with an error (``errno`` is set)."""


class Undecodable(NetlinkError):
    """An element this module does not decode (an interval end, a catch-all): list the
    set through libnftables instead."""


class Interrupted(NetlinkError):
    """The table changed while it was being dumped (``NLM_F_DUMP_INTR``): dump again."""

    def __init__(self) -> None:
        super().__init__(errno_mod.EINTR, "nf_tables changed during the dump")


@dataclass(frozen=True, slots=True)
class Layout:
    """What the kernel says of a set's shape: total key and data lengths in bytes, and
    the length of each field of a concatenated key."""

    name: str
    flags: int
    key_len: int
    data_len: int
    fields: tuple[int, ...]


RawElem = tuple[bytes, bytes | tuple[int, str] | None]
"""A dumped element: key bytes, and data bytes, a verdict (code, chain) or None."""


def _attrs(buf: memoryview, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``buf[start:end]``."""
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(buf, start)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return _NLA.pack(length, kind) + payload + b"\0" * (-length % 4)


def _string(value: str) -> bytes:
    return value.encode() + b"\0"


class Socket:
    """One netlink socket to nf_tables, opened in the calling thread's network namespace."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._seq = 0
        self._buf = bytearray(_RECV_SIZE)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, msg_type: int, flags: int, family: str, attrs: bytes) -> int:
        self._seq += 1
        body = struct.pack("=BBH", FAMILIES[family], 0, 0) + attrs
        header = _HDR.pack(_HDR.size + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, self._seq, 0)
        self._sock.send(header + body)
        return self._seq

    def _replies(self, seq: int, *, strict: bool = True) -> Iterator[tuple[memoryview, int, int]]:
        """Each reply message of request ``seq``: (buffer, attributes start, end), until done.

        A dump that a commit (to any table) overlapped is read to its end, then
        :class:`Interrupted` is raised: a socket runs one dump at a time, so one left
        half-read would refuse the next request. Overlapped: the kernel flags the message
        (``NLM_F_DUMP_INTR``), or the ruleset generation nf_tables puts in every message's
        ``res_id`` (its low 16 bits) differs from the first message's. ``strict=False``
        yields such a dump whole instead."""
        view = memoryview(self._buf)
        interrupted = False
        generation: int | None = None
        while True:
            got = self._sock.recv_into(self._buf)
            offset = 0
            while offset + _HDR.size <= got:
                length, kind, flags, msg_seq, _pid = _HDR.unpack_from(view, offset)
                if length < _HDR.size:
                    raise NetlinkError(errno_mod.EPROTO, "short netlink message")
                end = offset + length
                if msg_seq == seq:
                    interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
                    if kind not in (NLMSG_DONE, NLMSG_ERROR) and length >= _HDR.size + 4:
                        (res_id,) = _BE16.unpack_from(view, offset + _HDR.size + 2)
                        if generation is None:
                            generation = res_id
                        interrupted = interrupted or res_id != generation
                    interrupted = interrupted and strict
                    if kind == NLMSG_DONE:
                        if interrupted:
                            raise Interrupted()
                        return
                    if kind == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", view, offset + _HDR.size)
                        if code:
                            raise NetlinkError(-code, os.strerror(-code))
                        return  # an acknowledgement
                    if not interrupted:
                        yield view, offset + _HDR.size + 4, end
                    if not flags & NLM_F_MULTI:
                        if interrupted:
                            raise Interrupted()
                        return
                offset += (length + 3) & ~3

    def layouts(self, family: str, table: str) -> dict[str, Layout]:
        """Every set of ``table``: its :class:`Layout`, by name."""
        seq = self._send(NFT_MSG_GETSET, NLM_F_REQUEST | NLM_F_DUMP, family, _attr(NFTA_SET_TABLE, _string(table)))
        out: dict[str, Layout] = {}
        for buf, start, end in self._replies(seq):
            name, set_table, flags, key_len, data_len = "", "", 0, 0, 0
            fields: list[int] = []
            for kind, a, b in _attrs(buf, start, end):
                if kind == NFTA_SET_NAME:
                    name = bytes(buf[a : b - 1]).decode()
                elif kind == NFTA_SET_TABLE:
                    set_table = bytes(buf[a : b - 1]).decode()
                elif kind == NFTA_SET_FLAGS:
                    (flags,) = _BE32.unpack_from(buf, a)
                elif kind == NFTA_SET_KEY_LEN:
                    (key_len,) = _BE32.unpack_from(buf, a)
                elif kind == NFTA_SET_DATA_LEN:
                    (data_len,) = _BE32.unpack_from(buf, a)
                elif kind == NFTA_SET_DESC:
                    fields = _concat_fields(buf, a, b)
            if set_table == table and name:
                out[name] = Layout(name, flags, key_len, data_len, tuple(fields))
        return out

    def elements(self, family: str, table: str, name: str, *, strict: bool = True) -> Iterator[list[RawElem]]:
        """The elements of one set, a dump message's worth at a time.

        The whole dump is received before the first element is decoded (its raw messages,
        ~50 bytes per element): the kernel builds the dump as it is read, so decoding in
        between would keep the dump open, and exposed to interrupting commits, about
        three times longer. ``strict``: see :meth:`_replies`."""
        attrs = _attr(NFTA_SET_ELEM_LIST_TABLE, _string(table)) + _attr(NFTA_SET_ELEM_LIST_SET, _string(name))
        seq = self._send(NFT_MSG_GETSETELEM, NLM_F_REQUEST | NLM_F_DUMP, family, attrs)
        messages = [bytes(buf[start:end]) for buf, start, end in self._replies(seq, strict=strict)]
        for message in messages:
            view = memoryview(message)
            batch: list[RawElem] = []
            for kind, a, b in _attrs(view, 0, len(message)):
                if kind == NFTA_SET_ELEM_LIST_ELEMENTS:
                    for _kind, ea, eb in _attrs(view, a, b):
                        batch.append(_element(view, ea, eb))
            yield batch


def _concat_fields(buf: memoryview, start: int, end: int) -> list[int]:
    fields: list[int] = []
    for kind, a, b in _attrs(buf, start, end):
        if kind == NFTA_SET_DESC_CONCAT:
            for _elem, ea, eb in _attrs(buf, a, b):
                for fkind, fa, _fb in _attrs(buf, ea, eb):
                    if fkind == NFTA_SET_FIELD_LEN:
                        fields.append(_BE32.unpack_from(buf, fa)[0])
    return fields


def _element(buf: memoryview, start: int, end: int) -> RawElem:
    """One element's key and data. Called for every element of a full sync (300,000 at
    100,000 Services), so the attributes are walked inline, not through :func:`_attrs`."""
    unpack = _NLA.unpack_from
    key = b""
    data: bytes | tuple[int, str] | None = None
    flags = 0
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(buf, pos)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind in (NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA):
            # A nest that starts with its NFTA_DATA_VALUE (every one the kernel writes),
            # read in place; anything else the long way.
            vlen, vkind = unpack(buf, pos + 4)
            if vkind & NLA_TYPE_MASK == NFTA_DATA_VALUE and 4 <= vlen <= length - 4:
                value: bytes | None = bytes(buf[pos + 8 : pos + 4 + vlen])
            else:
                value = _value(buf, pos + 4, pos + length)
            if kind == NFTA_SET_ELEM_KEY:
                key = value if value is not None else key
            else:
                data = value if value is not None else _verdict(buf, pos + 4, pos + length)
        elif kind == NFTA_SET_ELEM_FLAGS:
            (flags,) = _BE32.unpack_from(buf, pos + 4)
        pos += (length + 3) & ~3
    if flags & (NFT_SET_ELEM_INTERVAL_END | NFT_SET_ELEM_CATCHALL):
        raise Undecodable(errno_mod.EPROTO, f"element flags {flags:#x} need libnftables")
    return key, data


def _value(buf: memoryview, start: int, end: int) -> bytes | None:
    """The ``NFTA_DATA_VALUE`` payload of a data nest, or None when it holds none."""
    unpack = _NLA.unpack_from
    pos = start
    while pos + 4 <= end:
        length, kind = unpack(buf, pos)
        if length < 4:
            break
        if kind & NLA_TYPE_MASK == NFTA_DATA_VALUE:
            return bytes(buf[pos + 4 : pos + length])
        pos += (length + 3) & ~3
    return None


def _verdict(buf: memoryview, start: int, end: int) -> tuple[int, str] | None:
    """The (code, chain) of a data nest's ``NFTA_DATA_VERDICT``, or None."""
    for vkind, va, vb in _attrs(buf, start, end):
        if vkind == NFTA_DATA_VERDICT:
            code, chain = 0, ""
            for ckind, ca, cb in _attrs(buf, va, vb):
                if ckind == NFTA_VERDICT_CODE:
                    (code,) = _BE32S.unpack_from(buf, ca)
                elif ckind == NFTA_VERDICT_CHAIN:
                    chain = bytes(buf[ca : cb - 1]).decode()
            return code, chain
    return None


# --------------------------------------------------------------------------- decoding (pure)

FieldDecoder = Callable[[bytes], str | int]


def _field_decoder(typ: str, *, host_order: bool = False) -> FieldDecoder | None:
    if typ == "ipv4_addr":
        return functools.partial(socket.inet_ntop, socket.AF_INET)
    if typ == "ipv6_addr":
        return lambda b: str(ipaddress.IPv6Address(b))
    if typ == "inet_proto":
        return lambda b: PROTOCOLS.get(b[0], b[0])
    if typ == "integer" and host_order:
        return lambda b: int.from_bytes(b, sys.byteorder)
    if typ in ("inet_service", "integer"):
        return lambda b: int.from_bytes(b, "big")
    return None


def _key_decoder(
    types: tuple[str, ...], key_len: int, fields: tuple[int, ...], *, host_order: bool = False
) -> Callable[[bytes], Key] | None:
    widths: list[int]
    if len(types) == 1:
        widths = [key_len]
    elif fields:
        if len(fields) != len(types):
            return None
        widths = list(fields)
    else:
        # The kernel keeps field lengths only for interval concatenations. Every field
        # takes a multiple of 4 bytes; the known types have fixed widths, one integer
        # (a raw payload field: ours are 32 or 128 bits) takes what is left.
        known = sum((_FIELD_WIDTH[t] + 3) & ~3 for t in types if t in _FIELD_WIDTH)
        unknown = [t for t in types if t not in _FIELD_WIDTH]
        if len(unknown) > 1 or (unknown and key_len - known <= 0):
            return None
        widths = [_FIELD_WIDTH.get(t, key_len - known) for t in types]
    parts: list[tuple[int, int, FieldDecoder]] = []
    offset = 0
    for typ, width in zip(types, widths, strict=True):
        decode = _field_decoder(typ, host_order=host_order)
        if decode is None or (typ in _FIELD_WIDTH and _FIELD_WIDTH[typ] != width):
            return None
        parts.append((offset, offset + width, decode))
        offset += (width + 3) & ~3 if len(types) > 1 else width
    if offset != key_len:
        return None
    if len(parts) == 1:
        ((_a, _b, single),) = parts
        return single
    return lambda b: tuple(decode(b[lo:hi]) for lo, hi, decode in parts)


def decoder(decl: SetDecl, layout: Layout) -> Callable[[RawElem], Elem] | None:
    """How to turn ``decl``'s dumped elements into normalised ones; None when this module
    does not decode such a set (interval or dynamic sets, unknown types)."""
    if decl.interval or decl.dynamic or layout.flags & (NFT_SET_INTERVAL | NFT_SET_TIMEOUT):
        return None
    # A hash or a counter in a ``typeof`` key (the slots of delegated Services) is an
    # integer in host byte order, not a payload's network order.
    host_order = decl.name in HOST_ORDER_KEYS
    key = _key_decoder(decl.type, layout.key_len, layout.fields, host_order=host_order)
    if key is None:
        return None
    if decl.data is None:
        return lambda raw: key(raw[0])
    if decl.data == "verdict":

        def verdict(raw: RawElem) -> Elem:
            data = raw[1]
            if not isinstance(data, tuple):
                raise Undecodable(errno_mod.EPROTO, f"{decl.name}: an element without a verdict")
            code, chain = data
            word = VERDICTS.get(code)
            if word is None:
                raise Undecodable(errno_mod.EPROTO, f"{decl.name}: verdict code {code}")
            return (key(raw[0]), f"{word} {chain}" if chain else word)

        return verdict
    value = _field_decoder(decl.data)
    if value is None or (decl.data in _FIELD_WIDTH and _FIELD_WIDTH[decl.data] != layout.data_len):
        return None

    def mapped(raw: RawElem) -> Elem:
        data = raw[1]
        if not isinstance(data, bytes):
            raise Undecodable(errno_mod.EPROTO, f"{decl.name}: an element without data")
        return (key(raw[0]), value(data))

    return mapped
