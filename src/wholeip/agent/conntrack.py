"""Stale conntrack entries: what a commit leaves behind in conntrack, and deleting it.

North-south traffic never enters conntrack (``raw_prerouting`` notracks it, in
the rule that rewrites its destination), so a re-pointed map element takes
effect for it with the next packet. Tracked traffic is different: the NAT
hooks see only a connection's first packet, and conntrack replays their
decision for every later one, for as long as packets keep coming. The tracked
entries our own rules make (see :mod:`wholeip.core.ruleset`):

* **hairpin**: an east-west packet to an external IP E (from a pod that has no
  external IP of its own, or from a node's own process) is DNATed to E's pod P:
  orig ``C -> E``, reply ``P -> C``. When E moves to another pod or goes away, a
  UDP client that keeps its source port and keeps sending (a DNS forwarder,
  WireGuard, syslog, a game client) keeps reaching P forever, and a TCP
  connection keeps talking to P;
* **self-hairpin**: ``hairpin_postrouting`` SNATs a tracked packet from P that
  was DNATed back to P to P's egress IP E: orig ``P -> E'``, reply ``P -> E``.
  Today's ruleset should never track one (``raw_prerouting`` notracks every
  packet from a local managed pod to a non-cluster address, and a pod
  with an external IP has its egress on its node, so its hairpin is
  stateless); the rule for them below is a safety net, one filtered IPv4 dump
  per removed egress element;
* **untranslated**: a flow to E that began while E was mapped to nothing (the
  pod not ready yet, or between an old pod leaving and a new one becoming
  ready) has no DNAT at all, orig ``C -> E``, reply ``E -> C``; once E is
  mapped, it keeps bypassing the hairpin DNAT.

So, after a commit, an entry is stale when (``Stale.matches``):

* its orig destination is E and its reply source is a pod E was mapped to and
  no longer is (an ``ingress4/6`` element the plan removed);
* its orig destination is E, E is mapped to P now (an ``ingress4/6`` element the
  plan added or changed), and its reply source is not P (another pod, or no
  DNAT at all);
* its orig source is P and its reply destination is E, for an ``egress4/6``
  element ``P -> E`` the plan removed (P's self-hairpin flows SNATed to E).

Nothing else is touched: a direct pod-to-pod flow ``C -> P`` never involves E,
a flow to another external IP has another destination, a flow already DNATed
to E's current pod is right. The per-port ``flows4/6`` memory is a set in our
table, not conntrack. For a created or rebuilt table only removed elements
count (``Plan.inserted`` is empty then: every element is written anew).

How: the :class:`ConntrackCleaner` is the Syncer's ``after_commit`` hook. It
turns the plan into a :class:`Stale` (pure, cheap) and hands it to a thread of
its own, so a slow cleanup never delays the next sync; plans that arrive
meanwhile are merged into one pending :class:`Stale` (``Stale.then``: the later
plan wins for an IP both touch). The thread dumps conntrack over ctnetlink
(pyroute2), checks every entry against the whole :class:`Stale`, and deletes
each stale one by its orig tuple, zone and id (an entry meanwhile replaced by
a new one with the same tuple is left alone). The thread keeps its event loop
and its ctnetlink sockets from run to run (a new pair per run cost the running
agent about 10 ms of CPU per change); a run that fails closes them.

Which dumps: for IPv4 the kernel filters (``CTA_FILTER``, Linux 5.8+): one dump
per touched external IP (orig destination E) and one per removed egress pair
(orig and reply source P: P's self-hairpin flows). For IPv6 the kernel's filter
cannot be used: ``ctnetlink_filter_match_tuple`` compares IPv6 addresses with
``!ipv6_addr_cmp()``, which inverts the test (a filter on orig destination E
returns every entry except E's; seen on 6.18, the code has been so since 5.8).
So IPv6 is dumped whole, once per cleanup run, and filtered here.

Cost, measured on the test VM (Linux 6.18, CPU shared) with 250,000 entries: a
filtered dump walks the whole table in the kernel but sends only matches,
30-45 ms; a pod move (two external IPs, two egress pairs) costs about 180 ms of
the cleaner's thread, not of the sync. An unfiltered dump costs pyroute2 about
0.1 ms per entry it sends (60-220 microseconds measured): that is the price of
each run that touches IPv6, per IPv6 entry on the node (20,000: 2.4 s), and of
IPv4 too on a kernel before 5.8 (the cleaner notices an unfiltered answer and
then dumps that family once per run).

A run takes the cheaper of the two ways for each IPv4 family: its filtered
dumps, or one whole dump filtered here. Measured in a namespace with 20,000 and
100,000 entries (2026-12-06): a filtered dump 4.8 and 8.2 ms (a fixed ~4 ms
plus the kernel's walk), a whole one 3.7 and 17.8 s (pyroute2 decoding ~180
microseconds per entry), so one whole dump costs as much as 770 to 2,200
filtered ones, more the bigger the table, and as much as one filtered dump
with 22 entries. The table's size is read from ``nf_conntrack_count`` at the
start of the run (:func:`whole_is_cheaper`). So a mass deletion on a busy node
(10,000 Services removed at once would cost 10,000 filtered dumps, minutes of
the thread) dumps the table once, and so does a run of a hundred moved pods on
a node with a few hundred entries: filtered, that was 0.4 s of CPU each time,
which under a churn of 100 writes a second (``make soak``) was 43 % of the
agent's CPU. Where the size cannot be read, more than ``WHOLE_DUMP_AFTER`` =
1,000 filtered dumps in a run are replaced by one whole dump.

Errors (no conntrack in the kernel, netlink refused) are logged once, then at
debug level until a cleanup works again; they never reach the sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from wholeip.core.model import IPAddress
from wholeip.core.ruleset import SLOT_CLASSES
from wholeip.names import EGRESS, INGRESS, NP_ADDR, PODNAT_ADDR, SVC_ADDR
from wholeip.nft.diff import Plan
from wholeip.nft.doc import Elem

log = structlog.get_logger(__name__)

WHOLE_DUMP_AFTER = 1000
"""More kernel-filtered dumps of one family than this in a run: dump it whole once instead
(when the number of entries in the table is not known; see :func:`whole_is_cheaper`)."""

FILTERED_DUMP_S = 4.0e-3
"""What one kernel-filtered dump costs the cleaner whatever it finds (pyroute2's request
and the answer, measured 2026-12-06: a filtered dump of 20,000 entries 4.8 ms)..."""
KERNEL_WALK_S = 4.25e-8
"""... plus the kernel's walk of every entry (100,000 entries: 8.2 ms)."""
DECODE_S = 1.8e-4
"""What each entry of a whole dump costs (pyroute2 decoding it, 60-220 microseconds)."""


def whole_is_cheaper(queries: int, entries: int | None, *, whole_after: int = WHOLE_DUMP_AFTER) -> bool:
    """Whether one whole dump of a family costs less than ``queries`` kernel-filtered ones,
    with ``entries`` entries in the table (None: not known, then more than ``whole_after``
    queries decide). A run that moves a hundred pods on a node with a few hundred entries
    dumps the table once (tens of ms) instead of a hundred times (about 0.4 s of CPU)."""
    if entries is None:
        return queries > whole_after
    return entries * DECODE_S < queries * (FILTERED_DUMP_S + entries * KERNEL_WALK_S)


# --------------------------------------------------------------------------- what is stale (pure)


@dataclass(frozen=True, slots=True)
class Pair:
    """One old mapping: external IP and pod IP. ``egress`` says which map it left:
    ``egress4/6`` (the pod's own flows SNATed to the external IP) or ``ingress4/6``
    (flows to the external IP DNATed to the pod)."""

    external: IPAddress
    pod: IPAddress
    egress: bool = False

    def __str__(self) -> str:
        return f"{self.pod}->{self.external}" if self.egress else f"{self.external}->{self.pod}"


def _addr(value: object) -> IPAddress | None:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        return None


def _pairs(elems: Iterable[Elem]) -> Iterable[tuple[IPAddress, IPAddress]]:
    for elem in elems:
        if isinstance(elem, tuple) and len(elem) == 2:
            key, value = _addr(elem[0]), _addr(elem[1])
            if key is not None and value is not None and key.version == value.version:
                yield key, value


def stale_pairs(removed: Mapping[str, AbstractSet[Elem]]) -> frozenset[Pair]:
    """The old mappings a plan took away (``Plan.removed``): ``ingress4/6`` elements
    ``(external, pod)`` and ``egress4/6`` elements ``(pod, external)``, a changed
    element with its old value."""
    out: set[Pair] = set()
    for name in INGRESS.both:
        out |= {Pair(ext, pod) for ext, pod in _pairs(removed.get(name, ()))}
    for name in EGRESS.both:
        out |= {Pair(ext, pod, egress=True) for pod, ext in _pairs(removed.get(name, ()))}
    # A pod's published port on the node's address (``podnat4/6``: ``(address, proto, port)
    # -> pod``): the flows DNATed from that address to that pod. By address, as every rule
    # here: the pod's other published ports on the same address lose their entries too, and
    # conntrack picks those flows up again through the maps (docs/design.md).
    for name in PODNAT_ADDR.both:
        keyed: list[Elem] = []
        for elem in removed.get(name, ()):
            if isinstance(elem, tuple) and len(elem) == 2 and isinstance(elem[0], tuple) and elem[0]:
                keyed.append((elem[0][0], elem[1]))
        out |= {Pair(addr, pod) for addr, pod in _pairs(keyed)}
    return frozenset(out)


_DATAGRAM_PROTOCOLS = {"udp": socket.IPPROTO_UDP, "sctp": 132}
"""What kube-proxy deletes the entries of when an endpoint goes: a TCP connection to a
gone endpoint is reset by the kernel anyway, one to a terminating pod may finish."""


def _slot_endpoints(elems: Iterable[Elem]) -> set[tuple[IPAddress, int, IPAddress]]:
    """(ClusterIP, protocol number, endpoint) of ``svcaddr4/6`` slot elements
    ``((ClusterIP, protocol, port, slot), endpoint)`` of UDP and SCTP ports."""
    out: set[tuple[IPAddress, int, IPAddress]] = set()
    for elem in elems:
        if not (isinstance(elem, tuple) and len(elem) == 2 and isinstance(elem[0], tuple) and len(elem[0]) == 4):
            continue
        proto = _DATAGRAM_PROTOCOLS.get(str(elem[0][1]))
        front, endpoint = _addr(elem[0][0]), _addr(elem[1])
        if proto is not None and front is not None and endpoint is not None:
            out.add((front, proto, endpoint))
    return out


def _gone(plan: Plan, names: tuple[str, str]) -> list[Elem]:
    """The slot elements ``((front..., slot), endpoint)`` the plan removed whose endpoint no
    slot of the same front-end holds afterwards: the plan did not write it into another
    slot, and the desired table has it in none of its slots (Maglev rewrites a few slots of
    endpoints that stay; a rebuilt table lists nothing as inserted)."""
    inserted = {_split(e) for name in names for e in plan.inserted.get(name, ()) if _is_slot(e)}
    out: list[Elem] = []
    for name in names:
        desired = plan.desired.get(name, frozenset())
        for e in plan.removed.get(name, ()):
            if not _is_slot(e):
                continue
            front, endpoint = _split(e)
            if (front, endpoint) in inserted or not any(str(p) in _DATAGRAM_PROTOCOLS for p in front):
                continue  # kept, or TCP (never cleaned): no need to look for it in the slots
            if desired and any(((*front, i), endpoint) in desired for i in range(SLOT_CLASSES[-1])):
                continue
            out.append(e)
    return out


def _is_slot(e: Elem) -> bool:
    return isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], tuple) and len(e[0]) >= 3


def _split(e: Any) -> tuple[tuple[Any, ...], Any]:
    """A slot element's front-end (its key without the slot) and endpoint."""
    return e[0][:-1], e[1]


def stale_endpoints(plan: Plan) -> frozenset[tuple[IPAddress, int, IPAddress]]:
    """Delegated Services (docs/datapath.md row 16): the UDP/SCTP endpoints a ClusterIP port
    no longer sends to, as kube-proxy cleans them (see :func:`_gone`)."""
    return frozenset(_slot_endpoints(_gone(plan, SVC_ADDR.both)))


def _node_port_endpoints(elems: Iterable[Elem]) -> set[tuple[int, int, IPAddress]]:
    """(protocol number, NodePort, endpoint) of ``npaddr4/6`` slot elements
    ``((protocol, NodePort, slot), endpoint)`` of UDP and SCTP NodePorts."""
    out: set[tuple[int, int, IPAddress]] = set()
    for elem in elems:
        if not (isinstance(elem, tuple) and len(elem) == 2 and isinstance(elem[0], tuple) and len(elem[0]) == 3):
            continue
        proto = _DATAGRAM_PROTOCOLS.get(str(elem[0][0]))
        port, endpoint = elem[0][1], _addr(elem[1])
        if proto is not None and isinstance(port, int) and endpoint is not None:
            out.add((proto, port, endpoint))
    return out


def stale_node_ports(plan: Plan) -> frozenset[tuple[int, int, IPAddress]]:
    """The same for NodePorts: (protocol number, NodePort, endpoint) a NodePort of this
    node no longer sends to (the flows' destination is any address of this node)."""
    return frozenset(_node_port_endpoints(_gone(plan, NP_ADDR.both)))


def _now(inserted: Mapping[str, AbstractSet[Elem]], names: tuple[str, ...]) -> dict[IPAddress, IPAddress]:
    """Key -> value of the map elements a plan added one by one (``Plan.inserted``)."""
    return {key: value for name in names for key, value in _pairs(inserted.get(name, ()))}


@dataclass(frozen=True, slots=True)
class Stale:
    """What one or more commits made stale; see the module docstring for the rules."""

    pairs: frozenset[Pair] = frozenset()
    mapped: Mapping[IPAddress, IPAddress] = field(default_factory=dict)
    """External IPs the plans (re)mapped, and their pod now."""
    egress_now: Mapping[IPAddress, IPAddress] = field(default_factory=dict)
    """Pods whose egress IP the plans set, and that IP (only to merge plans)."""
    endpoints: frozenset[tuple[IPAddress, int, IPAddress]] = frozenset()
    """(ClusterIP, protocol number, endpoint) a delegated Service's port no longer sends to."""
    node_ports: frozenset[tuple[int, int, IPAddress]] = frozenset()
    """(protocol number, NodePort, endpoint) a delegated Service's NodePort no longer sends to."""

    @property
    def empty(self) -> bool:
        return not (self.pairs or self.mapped or self.endpoints or self.node_ports)

    @classmethod
    def of(cls, plan: Plan) -> Stale:
        """What ``plan`` makes stale."""
        pairs = stale_pairs(plan.removed)
        # Plan.inserted is empty for a created or rebuilt table (every element is written
        # anew): then only what the plan removed counts.
        ingress_now = _now(plan.inserted, INGRESS.both)
        egress_now = _now(plan.inserted, EGRESS.both)
        return cls(pairs, ingress_now, egress_now, stale_endpoints(plan), stale_node_ports(plan)).settled()

    def settled(self) -> Stale:
        """Without the old pairs that are current again (a mapping that went and came back)."""
        pairs = frozenset(
            p
            for p in self.pairs
            if (self.egress_now.get(p.pod) if p.egress else self.mapped.get(p.external))
            != (p.external if p.egress else p.pod)
        )
        if pairs == self.pairs:
            return self
        return Stale(pairs, self.mapped, self.egress_now, self.endpoints, self.node_ports)

    def then(self, later: Stale) -> Stale:
        """``self`` followed by ``later``, as one: what both made stale, as of ``later``."""
        gone = {p.external for p in later.pairs if not p.egress} - later.mapped.keys()
        gone_egress = {p.pod for p in later.pairs if p.egress} - later.egress_now.keys()
        mapped = {e: p for e, p in self.mapped.items() if e not in gone} | dict(later.mapped)
        egress_now = {p: e for p, e in self.egress_now.items() if p not in gone_egress} | dict(later.egress_now)
        return Stale(
            self.pairs | later.pairs,
            mapped,
            egress_now,
            self.endpoints | later.endpoints,
            self.node_ports | later.node_ports,
        ).settled()

    def matches(self, entry: Tuples) -> bool:
        """True when the conntrack entry ``entry`` belongs to an old mapping."""
        if Pair(entry.orig_dst, entry.reply_src) in self.pairs:
            return True
        if (entry.orig_dst, entry.proto, entry.reply_src) in self.endpoints:
            return True
        if entry.orig_dst != entry.reply_src and (entry.proto, entry.dport, entry.reply_src) in self.node_ports:
            return True  # DNATed from a NodePort (on any address of this node) to a gone endpoint
        now = self.mapped.get(entry.orig_dst)
        if now is not None and entry.reply_src != now:
            return True
        return Pair(entry.reply_dst, entry.orig_src, egress=True) in self.pairs

    def queries(self) -> list[Query]:
        """The kernel-filtered dumps that find every entry :meth:`matches` can accept."""
        externals = {p.external for p in self.pairs if not p.egress} | set(self.mapped)
        externals |= {front for front, _, _ in self.endpoints}
        out = [Query(orig_dst=e) for e in externals]
        # P's self-hairpin flows: from P, DNATed back to P (the reply destination E is
        # checked here, see Query).
        out += [Query(orig_src=p.pod, reply_src=p.pod) for p in self.pairs if p.egress]
        # NodePorts: the flows' destination is any address of this node; by the endpoint
        # that answers them.
        out += [Query(reply_src=endpoint) for _, _, endpoint in self.node_ports]
        return sorted(set(out), key=Query.sort_key)

    def describe(self) -> list[str]:
        pairs = sorted(str(p) for p in self.pairs)
        gone = sorted(f"{front}/{proto}-x->{ep}" for front, proto, ep in self.endpoints)
        gone += sorted(f"nodeport {port}/{proto}-x->{ep}" for proto, port, ep in self.node_ports)
        return pairs + sorted(f"{e}=>{p}" for e, p in self.mapped.items()) + gone


@dataclass(frozen=True, slots=True)
class Tuples:
    """The addresses of one conntrack entry, both directions."""

    orig_src: IPAddress
    orig_dst: IPAddress
    reply_src: IPAddress
    reply_dst: IPAddress
    proto: int = 0
    """The IP protocol number (0: unknown)."""
    dport: int = 0
    """The orig tuple's destination port (0: none, or unknown)."""


@dataclass(frozen=True, slots=True)
class Query:
    """One kernel-side filter: every given address must match (the kernel ANDs them).

    A reply filter is only ever used with the same fields as the orig one (orig and
    reply source): from 5.8 until 5.16 ("netfilter: ctnetlink: fix filtering with
    CTA_TUPLE_REPLY", November 2021, backported to stable) the kernel parsed the
    reply filter with the orig filter's flags."""

    orig_src: IPAddress | None = None
    orig_dst: IPAddress | None = None
    reply_src: IPAddress | None = None

    @property
    def version(self) -> int:
        for addr in (self.orig_dst, self.orig_src, self.reply_src):
            if addr is not None:
                return addr.version
        raise ValueError("empty query")

    def accepts(self, t: Tuples) -> bool:
        return (
            (self.orig_src is None or t.orig_src == self.orig_src)
            and (self.orig_dst is None or t.orig_dst == self.orig_dst)
            and (self.reply_src is None or t.reply_src == self.reply_src)
        )

    def sort_key(self) -> tuple[int, str]:
        return self.version, f"{self.orig_src} {self.orig_dst} {self.reply_src}"


# --------------------------------------------------------------------------- netlink


@dataclass(frozen=True, slots=True)
class Entry:
    """A conntrack entry as dumped: its addresses, and what deleting it takes."""

    tuples: Tuples
    ident: tuple[Any, ...]
    """Identity for de-duplication (family, zone, id, orig tuple)."""
    handle: Any = field(default=None, compare=False, hash=False)
    """Opaque to everything but the netlink layer that made it."""


class Netlink(Protocol):
    """The cleaner's view of ctnetlink; one instance per cleanup run, closed after it."""

    def dump(self, version: int, query: Query | None) -> AsyncIterator[Entry]:
        """Entries of one family; ``query`` is a filter the kernel may or may not apply."""
        ...

    async def delete(self, entry: Entry) -> bool:
        """Delete one entry; False when it no longer exists."""
        ...

    def count(self) -> int | None:
        """How many entries the table holds (every family), None when that cannot be read."""
        ...

    async def aclose(self) -> None: ...


CONNTRACK_COUNT = "/proc/sys/net/netfilter/nf_conntrack_count"


class Pyroute2Netlink:
    """:class:`Netlink` over pyroute2's ``AsyncNFCTSocket``: one socket per family, opened on
    first use in the calling thread's network namespace."""

    def __init__(self) -> None:
        self._sockets: dict[int, Any] = {}

    def count(self) -> int | None:
        # (The calling thread's network namespace's, as the sockets are.)
        try:
            with open(CONNTRACK_COUNT, encoding="ascii") as fh:
                return int(fh.read())
        except (OSError, ValueError):
            return None

    def _socket(self, version: int) -> Any:
        sock = self._sockets.get(version)
        if sock is None:
            from pyroute2.netlink.nfnetlink.nfctsocket import AsyncNFCTSocket

            sock = AsyncNFCTSocket(nfgen_family=socket.AF_INET6 if version == 6 else socket.AF_INET)
            self._sockets[version] = sock
        return sock

    async def dump(self, version: int, query: Query | None) -> AsyncIterator[Entry]:
        from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
        from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET, NFCTAttrTuple, nfct_msg

        family = socket.AF_INET6 if version == 6 else socket.AF_INET
        kwargs: dict[str, Any] = {}
        if query is not None:
            filters = []
            orig = {k: str(v) for k, v in (("saddr", query.orig_src), ("daddr", query.orig_dst)) if v is not None}
            if orig:
                kwargs["tuple_orig"] = t = NFCTAttrTuple(family=family, **orig)
                t.attrs()  # computes t.flags
                filters.append(["CTA_FILTER_ORIG_FLAGS", t.flags])
            if query.reply_src is not None:
                kwargs["tuple_reply"] = t = NFCTAttrTuple(family=family, saddr=str(query.reply_src))
                t.attrs()
                filters.append(["CTA_FILTER_REPLY_FLAGS", t.flags])
            kwargs["cta_filter"] = {"attrs": filters}
        msg = nfct_msg.create_from(**kwargs)
        sock = self._socket(version)
        async for reply in await sock.request(msg, IPCTNL_MSG_CT_GET, msg_flags=NLM_F_REQUEST | NLM_F_DUMP):
            entry = _entry(reply, version)
            if entry is not None:
                yield entry

    async def delete(self, entry: Entry) -> bool:
        from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
        from pyroute2.netlink.exceptions import NetlinkError
        from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_DELETE, nfct_msg, terminate_error_msg

        raw_tuple, zone, ct_id = entry.handle
        msg = nfct_msg.create_from(tuple_orig=raw_tuple, zone=zone, id=ct_id)
        sock = self._socket(entry.tuples.orig_src.version)
        try:
            async for _ in await sock.request(
                msg, IPCTNL_MSG_CT_DELETE, msg_flags=NLM_F_REQUEST | NLM_F_ACK, terminate=terminate_error_msg
            ):
                pass
        except NetlinkError as exc:
            if exc.code == errno.ENOENT:  # expired, replaced, or deleted by someone else
                return False
            raise
        return True

    async def aclose(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close()


def _plain(attrs: Any) -> list[list[Any]]:
    """A decoded nested attribute -> the ``[[name, value], ...]`` form pyroute2 encodes."""
    out: list[list[Any]] = []
    for name, value, *_ in attrs:
        if not name.startswith("CTA_"):  # an attribute this pyroute2 cannot name
            continue
        out.append([name, {"attrs": _plain(value["attrs"])} if hasattr(value, "get_attr") else value])
    return out


def _entry(msg: Any, version: int) -> Entry | None:
    orig, reply = msg.get_attr("CTA_TUPLE_ORIG"), msg.get_attr("CTA_TUPLE_REPLY")
    if orig is None or reply is None:
        return None
    v = "V6" if version == 6 else "V4"
    oip, rip = orig.get_attr("CTA_TUPLE_IP"), reply.get_attr("CTA_TUPLE_IP")
    addrs = [
        _addr(ip.get_attr(f"CTA_IP_{v}_{d}")) for ip, d in ((oip, "SRC"), (oip, "DST"), (rip, "SRC"), (rip, "DST"))
    ]
    if any(a is None for a in addrs):
        return None
    proto_attr = orig.get_attr("CTA_TUPLE_PROTO")
    proto = proto_attr.get_attr("CTA_PROTO_NUM") if proto_attr is not None else None
    dport = proto_attr.get_attr("CTA_PROTO_DST_PORT") if proto_attr is not None else None
    o_src, o_dst, r_src, r_dst = addrs
    if o_src is None or o_dst is None or r_src is None or r_dst is None:
        return None
    tuples = Tuples(
        o_src,
        o_dst,
        r_src,
        r_dst,
        proto=proto if isinstance(proto, int) else 0,
        dport=dport if isinstance(dport, int) else 0,
    )
    raw = {"attrs": _plain(orig["attrs"])}
    zone, ct_id = msg.get_attr("CTA_ZONE"), msg.get_attr("CTA_ID")
    return Entry(tuples, ident=(version, zone, ct_id, repr(raw)), handle=(raw, zone, ct_id))


# --------------------------------------------------------------------------- the cleaner


class _Session:
    """An event loop and the netlink client made on it, kept across runs by one thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, make: Callable[[], Netlink]) -> None:
        self.loop = loop
        self._make = make
        self._client: Netlink | None = None

    def client(self) -> Netlink:
        if self._client is None:
            self._client = self._make()
        return self._client

    def drop(self) -> None:
        """Close the client (after a failure: its socket may be what failed)."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                self.loop.run_until_complete(client.aclose())


class ConntrackCleaner:
    """Deletes the conntrack entries of old mappings after every commit (the Syncer's
    ``after_commit`` hook). Never raises; see the module docstring.

    ``on_deleted`` is called with the number of entries each run deleted (a metric).
    ``background=False`` cleans in the caller's thread (tests, and :meth:`clean`).
    ``netlink`` makes the ctnetlink client (a test seam). ``kernel_filters``: the IP
    versions whose dumps the kernel filters; not 6, see the module docstring.
    ``whole_after``: more filtered dumps of a family than this in one run, and it is dumped
    whole once instead, when the table's size cannot be read (otherwise the cheaper of
    the two ways is taken, see :func:`whole_is_cheaper`).
    """

    def __init__(
        self,
        *,
        on_deleted: Callable[[int], None] | None = None,
        background: bool = True,
        netlink: Callable[[], Netlink] = Pyroute2Netlink,
        kernel_filters: Iterable[int] = (4,),
        whole_after: int = WHOLE_DUMP_AFTER,
    ) -> None:
        self._on_deleted = on_deleted
        self._background = background
        self._netlink = netlink
        self._cond = threading.Condition()
        self._pending: Stale | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._failing = False
        self._filtered = frozenset(kernel_filters)
        self._whole_after = whole_after
        self.deleted_total = 0
        self.failures = 0

    # ---------------------------------------------------------------- hook

    def __call__(self, plan: Plan) -> None:
        try:
            stale = Stale.of(plan)
            if stale.empty:
                return
            if not self._background:
                self.clean(stale)
                return
            with self._cond:
                self._pending = stale if self._pending is None else self._pending.then(stale)
                if self._thread is None:
                    # A daemon: pending work is not worth delaying the process's exit for.
                    self._thread = threading.Thread(target=self._worker, name="wholeip-conntrack", daemon=True)
                    self._thread.start()
                self._cond.notify_all()
        except Exception as exc:  # the table is committed; this is best effort
            self._failed(exc)

    def wait_idle(self, timeout: float) -> bool:
        """Until nothing is pending or running (tests); False at the timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending is not None or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _worker(self) -> None:
        # One event loop and one netlink client for the thread's life (it never leaves the
        # network namespace it was started in): a fresh loop and pyroute2 socket per run
        # cost each change of the running agent about 10 ms of CPU (py-spy at 100,000
        # Services), taken from the next sync. A run that fails closes the client; the
        # next one opens another.
        session = _Session(asyncio.new_event_loop(), self._netlink)
        while True:
            with self._cond:
                while self._pending is None:
                    self._cond.wait()
                stale, self._pending = self._pending, None
                self._busy = True
            try:
                self.clean(stale, session=session)
            except Exception as exc:
                self._failed(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # ---------------------------------------------------------------- one run

    def clean(self, stale: Stale, *, session: _Session | None = None) -> int:
        """Delete every entry ``stale`` matches, now, in this thread's network namespace.
        Returns how many were deleted; errors are logged, never raised. ``session``: the
        loop and client to reuse (the background thread's); none: made for this run."""
        if stale.empty:
            return 0
        started = time.perf_counter()
        try:
            if session is None:
                deleted, found, dumps = asyncio.run(self._clean(stale, None))
            else:
                deleted, found, dumps = session.loop.run_until_complete(self._clean(stale, session))
        except Exception as exc:
            if session is not None:
                session.drop()
            self._failed(exc)
            return 0
        if self._failing:
            log.info("conntrack cleanup works again")
            self._failing = False
        self.deleted_total += deleted
        if self._on_deleted is not None and deleted:
            self._on_deleted(deleted)
        fields = {
            "deleted": deleted,
            "matched": found,
            "dumps": dumps,
            "mappings": stale.describe()[:20],
            "ms": round((time.perf_counter() - started) * 1000, 2),
        }
        (log.info if deleted else log.debug)("stale conntrack entries deleted", **fields)
        return deleted

    async def _clean(self, stale: Stale, session: _Session | None) -> tuple[int, int, int]:
        netlink = session.client() if session is not None else self._netlink()
        try:
            found: dict[tuple[Any, ...], Entry] = {}
            whole: set[int] = set()  # families dumped whole, filtered here
            dumps = 0
            queries = stale.queries()
            per_family = Counter(q.version for q in queries if q.version in self._filtered)
            entries = netlink.count() if per_family else None
            whole.update(
                v for v, n in per_family.items() if whole_is_cheaper(n, entries, whole_after=self._whole_after)
            )
            for query in queries:
                if query.version not in self._filtered or query.version in whole:
                    whole.add(query.version)
                    continue
                dumps += 1
                async for entry in netlink.dump(query.version, query):
                    if not query.accepts(entry.tuples):
                        self._unfiltered(query.version)
                        whole.add(query.version)
                        break
                    if stale.matches(entry.tuples):
                        found.setdefault(entry.ident, entry)
            for version in sorted(whole):
                dumps += 1
                async for entry in netlink.dump(version, None):
                    if stale.matches(entry.tuples):
                        found.setdefault(entry.ident, entry)
            deleted = 0
            for entry in found.values():
                deleted += await netlink.delete(entry)
            return deleted, len(found), dumps
        finally:
            if session is None:
                await netlink.aclose()

    def _unfiltered(self, version: int) -> None:
        self._filtered = self._filtered - {version}
        log.warning(
            "the kernel ignores conntrack dump filters (Linux before 5.8):"
            " stale-entry cleanup dumps the whole table once per batch",
            ip_family=f"ipv{version}",
        )

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        error = f"{type(exc).__name__}: {exc}"
        if not self._failing:
            self._failing = True
            log.warning("conntrack cleanup failed; stale entries are left to time out", error=error)
        else:
            log.debug("conntrack cleanup failed again", error=error)
