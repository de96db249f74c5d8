"""The compact values the cluster index is made of, with types of their own (pure).

The agent keeps :class:`~wholeip.core.index.ClusterIndex` for every Service of the
cluster: 100,000 of them in well under 300 MiB. At that count every container an
entry holds is paid 100,000 times (an empty list is 56 bytes, a set 216, a
one-tuple 48), so the index never wraps a value that usually comes alone:

* :data:`OneOrMany`: one value as itself, several as a list. Nearly every external IP
  has one claimant, nearly every pod one external IP, nearly every Service one
  slice. (A list, not a tuple, marks several: a :data:`ServiceKey` is itself a tuple.)
* :data:`Ready`: a Service's ready endpoints of one family as one flat tuple, pod
  IP, node, next pod IP, next node... One endpoint, the usual case, is one 2-tuple
  instead of a tuple holding a pair.
* :data:`PackedUid`: a Service's UID as its 16 bytes instead of its 36 characters.

The types cost nothing at run time: aliases, a ``NewType`` (the identity), and
functions that read the layouts. They exist so that ``mypy --strict`` checks every
use, and so that each layout is read and written in one place: the functions here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Generic, NewType, TypeAlias, TypeVar, cast

ServiceKey: TypeAlias = tuple[str, str]
"""A Service's (namespace, name): its key in the index (an EndpointSlice's too)."""

# --------------------------------------------------------------------------- one value, or several

K = TypeVar("K")
V = TypeVar("V", str, ServiceKey)
"""What a :data:`OneOrMany` holds: never a list itself, so a list always means several."""

OneOrMany: TypeAlias = "V | list[V]"
"""One value as itself, or a list of two or more (never a list of one, never empty)."""


def all_of(entry: OneOrMany[V] | None) -> list[V]:
    """Every value of an entry (none for a missing one), as a new list."""
    if entry is None:
        return []
    return list(entry) if isinstance(entry, list) else [entry]


def first_of(entry: OneOrMany[V] | None) -> V | None:
    """An entry's first value: the one it holds, or the first of several."""
    if isinstance(entry, list):
        return entry[0]
    return entry


def one_or_many(values: list[V]) -> OneOrMany[V]:
    """The entry of these values (one or more, distinct): the one itself, or the list."""
    return values if len(values) > 1 else values[0]


def add_to(index: dict[K, OneOrMany[V]], key: K, value: V) -> None:
    """Add ``value`` under ``key`` (nothing if it is there already), last of the values."""
    have = index.get(key)
    if have is None:
        index[key] = value
    elif isinstance(have, list):
        if value not in have:
            have.append(value)
    elif have != value:
        index[key] = [have, value]


def discard_from(index: dict[K, OneOrMany[V]], key: K, value: V) -> None:
    """Take ``value`` away from under ``key``; the key goes when its last value does."""
    have = index.get(key)
    if isinstance(have, list):
        index[key] = one_or_many([v for v in have if v != value])
    elif have == value:
        del index[key]


# --------------------------------------------------------------------------- ready endpoints

Endpoint: TypeAlias = tuple[str, "str | None"]
"""A ready endpoint: its pod IP (canonical text) and its node (None: unknown)."""

Ready = NewType("Ready", tuple["str | None", ...])
"""A family's ready endpoints, flat: pod IP, node, pod IP, node... (see the module
docstring). Made by :func:`ready_of` only; read with the functions below."""

NO_ENDPOINTS = Ready(())


def ready_of(endpoints: Iterable[Endpoint]) -> Ready:
    """The flat form of these endpoints."""
    return Ready(tuple(x for endpoint in endpoints for x in endpoint))


def endpoints(ready: Ready) -> list[Endpoint]:
    """The endpoints, as (pod IP, node) pairs."""
    # Even positions hold the pod IPs: ready_of only ever writes a str there.
    return [(cast(str, ready[i]), ready[i + 1]) for i in range(0, len(ready), 2)]


def pod_ips(ready: Ready) -> tuple[str, ...]:
    """The endpoints' pod IPs."""
    return cast(tuple[str, ...], ready[0::2])


def endpoint_count(ready: Ready) -> int:
    """How many endpoints there are."""
    return len(ready) // 2


def chosen(ready: Ready) -> Endpoint:
    """The backend among a family's ready endpoints (there must be one): the only one,
    or the one with the lowest address (a whole IP maps to one pod)."""
    if len(ready) == 2:
        return cast(str, ready[0]), ready[1]
    return min(endpoints(ready), key=lambda endpoint: numeric(endpoint[0]))


def numeric(address: str) -> int:
    """An address in canonical text as its number, to order addresses of one family."""
    return int(address_of(address))


# --------------------------------------------------------------------------- addresses from text


_OCTETS = {str(octet): octet for octet in range(256)}
"""Every octet as :mod:`ipaddress` accepts it (decimal, no leading zero) -> its value."""


def ipv4_number(text: str) -> int | None:
    """The number of an IPv4 address in dotted decimal, exactly as :mod:`ipaddress` reads
    it (four ASCII decimal octets, no leading zero, at most 255: the keys of ``_OCTETS``);
    None for any other text, which may still be an address :mod:`ipaddress` reads (IPv6).
    A fraction of the time of ``ipaddress.ip_address``, which every Service, slice and
    mapping of a cluster pays several times."""
    try:
        a, b, c, d = text.split(".")
        return _OCTETS[a] << 24 | _OCTETS[b] << 16 | _OCTETS[c] << 8 | _OCTETS[d]
    except (ValueError, KeyError):  # not four parts; a part that is no octet
        return None


def address_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """``ipaddress.ip_address(text)``, faster for IPv4 (ValueError alike)."""
    number = ipv4_number(text)
    return ipaddress.IPv4Address(number) if number is not None else ipaddress.ip_address(text)


# --------------------------------------------------------------------------- UIDs

PackedUid: TypeAlias = "str | bytes"
"""A UID in its canonical text (what the API server hands out) as its 16 bytes; any
other text as it is."""


def pack_uid(uid: str) -> PackedUid:
    """A UID as the index keeps it: 49 bytes of Python instead of 85 for a canonical one.

    Canonical is what ``str(uuid.UUID(...))`` prints: 32 lower-case hex digits with dashes
    after the 8th, 12th, 16th and 20th. Read without :mod:`uuid` (a third of the time):
    the dashes in place, and the digits between them read back as the very same text
    (``bytes.fromhex`` also takes upper case and spaces, which ``hex()`` does not print)."""
    if len(uid) != 36 or not uid[8] == uid[13] == uid[18] == uid[23] == "-":
        return uid
    digits = uid[:8] + uid[9:13] + uid[14:18] + uid[19:23] + uid[24:]
    try:
        packed = bytes.fromhex(digits)
    except ValueError:
        return uid
    return packed if packed.hex() == digits else uid


def unpack_uid(uid: PackedUid) -> str:
    """The UID as the API server wrote it."""
    if isinstance(uid, bytes):
        h = uid.hex()  # str(uuid.UUID(bytes=uid)), without the UUID object
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return uid


# --------------------------------------------------------------------------- slice ports

SlicePorts: TypeAlias = tuple[tuple[tuple[str, str], int], ...]
"""An EndpointSlice's ports: ((port name, protocol), pod port) pairs. Most slices list the
same few, so the index keeps one copy of each list and every slice shares it."""

NO_PORTS: SlicePorts = ()


# --------------------------------------------------------------------------- addresses by network


class AddressBook(Generic[V]):
    """Addresses (canonical text), each with its values (a :data:`OneOrMany`),
    filed by their /24 (IPv4) or /64 (IPv6): to find the few that lie inside a network
    without parsing all of them. The index asks it which external IPs or endpoints a
    Node change can concern (those inside the networks that changed).

    An IPv4 address is filed under its text up to the last dot, so filing one costs no
    parsing; an IPv6 address is parsed once, to its /64. Only a network longer than the
    bucket parses the addresses of its one bucket."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[str | int, dict[str, OneOrMany[V]]] = {}

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    @staticmethod
    def _bucket(address: str) -> str | int:
        if ":" in address:
            return int(ipaddress.IPv6Address(address)) >> 64
        return address[: address.rindex(".")]

    def get(self, address: str) -> OneOrMany[V] | None:
        """The values filed under ``address`` (None: none)."""
        bucket = self._buckets.get(self._bucket(address))
        return bucket.get(address) if bucket is not None else None

    def add(self, address: str, value: V) -> None:
        add_to(self._buckets.setdefault(self._bucket(address), {}), address, value)

    def discard(self, address: str, value: V) -> None:
        key = self._bucket(address)
        bucket = self._buckets.get(key)
        if bucket is not None:
            discard_from(bucket, address, value)
            if not bucket:
                del self._buckets[key]

    def within(self, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> list[tuple[str, list[V]]]:
        """Every address inside ``net`` with its values."""
        out: list[tuple[str, list[V]]] = []
        v6 = net.version == 6
        width = 64 if v6 else 8  # the bits below a bucket
        first = int(net.network_address) >> width
        span = 1 << max(0, net.max_prefixlen - width - net.prefixlen)
        if span <= len(self._buckets):
            keys: list[str | int] = [b if v6 else _v4_bucket(b) for b in range(first, first + span)]
        else:
            keys = [k for k in self._buckets if isinstance(k, int) == v6 and first <= _bucket_number(k) < first + span]
        for key in keys:
            bucket = self._buckets.get(key)
            if bucket is None:
                continue
            partial = net.prefixlen > net.max_prefixlen - width
            out += [(a, all_of(v)) for a, v in bucket.items() if not partial or address_of(a) in net]
        return out


def _v4_bucket(number: int) -> str:
    """The bucket of the /24 with this number (its first 24 bits)."""
    return f"{number >> 16}.{(number >> 8) & 255}.{number & 255}"


def _bucket_number(key: str | int) -> int:
    if isinstance(key, int):
        return key
    a, b, c = key.split(".")
    return (int(a) << 16) | (int(b) << 8) | int(c)
