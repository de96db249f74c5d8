"""Egress steering's routing state: one ``ip rule`` and one routing table per holder slot.

On a node that does not hold an egress Service's LoadBalancer IP, our table marks the
member pods' outbound packets with the slot of the node that does (the holder, see
:mod:`wholeip.core.steering`). This module keeps the routing side equal to what the
caller asks for, in both families:

* a rule ``fwmark <slot mark>/<mask> lookup <table_base + slot> priority <priority>``
  per slot, ``proto kernel``;
* in that table a default route via the holder's node address, on the device that
  reaches it on-link (``proto kernel``: see :data:`~wholeip.core.steering.ROUTE_PROTOCOL`
  for why).

**Ownership.** A rule is ours when its priority is ours, its mask is ours and its
table is in our range (``table_base + 1 .. table_base + capacity``); a route is ours
when it is in our table range and carries our protocol, ``kernel``. Nothing else is ever
changed or deleted: a foreign rule at our priority with another mask or table, a
foreign route in one of our tables (another destination, or a default route of
another protocol) stay as they are. A foreign default route in a table we want is a
*conflict*: the slot is not steered in that family (reported), since our rule would
send the marked packets to it.

**Reconciling.** :meth:`PolicyRouter.apply` reads ours from the kernel every time and
compares with what is wanted, so it is idempotent and repairs drift (a rule or route
deleted by hand comes back, one pointing elsewhere is put right, one no longer wanted
goes). Routes are put in place before their rule and removed after it, so a rule never
points at an empty table of ours for longer than a netlink round trip (a packet that
meets an empty table falls through to the next rule: it leaves normally, never lost).

**On-link.** A holder is steered to only when this node reaches its address without a
gateway (``ip route get`` in this namespace: a connected route, the nodes share a
link). Otherwise it is skipped and reported in ``not_on_link``, and its slot has no
rule here: the marked packets take the normal route. A holder whose address is this
node's own is skipped as ``local`` (the caller should not steer to itself).

Blocking calls (pyroute2's synchronous :class:`~pyroute2.IPRoute`, one socket per
call, opened in the calling thread's network namespace): the agent runs them with
:func:`asyncio.to_thread`, tests in a namespace's thread. Per-item netlink failures are
collected in the report, never raised; only a socket that cannot be opened at all
raises. Nothing is logged here: the caller logs the report (the agent as structured
lines, ``wholeip cleanup`` as text), and raises Events for ``not_on_link``.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wholeip.core.steering import ROUTE_PROTOCOL, Holder, SteeringConfig

FAMILIES: tuple[tuple[int, int], ...] = ((4, socket.AF_INET), (6, socket.AF_INET6))
"""(IP version, address family) of both families."""

_FR_ACT_TO_TBL = 1
_RTN_UNICAST = 1
_RTN_LOCAL = 2


@dataclass(frozen=True, slots=True)
class RouteReport:
    """What one :meth:`PolicyRouter.apply` found and did."""

    rules_added: int = 0
    rules_removed: int = 0
    routes_added: int = 0
    """Routes added, or replaced because they pointed elsewhere."""
    routes_removed: int = 0
    steered: frozenset[tuple[str, int]] = frozenset()
    """(node, IP version) steered now: the rule and the route are in place."""
    not_on_link: frozenset[str] = frozenset()
    """Holders with an address (of either family) this node does not reach on-link: that
    family is not steered to them."""
    local: frozenset[str] = frozenset()
    """Holders whose address is this node's own: not steered (a node does not steer to itself)."""
    conflicts: frozenset[int] = frozenset()
    """Tables of our range that hold a default route that is not ours: their slot is not
    steered in that family."""
    errors: tuple[str, ...] = ()
    """Netlink operations that failed, and addresses that are not addresses, one line each."""

    @property
    def changed(self) -> bool:
        return bool(self.rules_added or self.rules_removed or self.routes_added or self.routes_removed)


@dataclass(frozen=True, slots=True)
class RuleSeen:
    """A rule of ours as the kernel lists it."""

    family: int
    fwmark: int
    table: int


@dataclass(frozen=True, slots=True)
class RouteSeen:
    """A route of ours as the kernel lists it."""

    family: int
    table: int
    dst: str | None
    dst_len: int
    gateway: str | None
    oif: int | None
    priority: int | None


@dataclass(frozen=True, slots=True)
class Wanted:
    """The route one slot's table must hold in one family."""

    node: str
    table: int
    fwmark: int
    gateway: str
    oif: int


@dataclass
class _Tally:
    rules_added: int = 0
    rules_removed: int = 0
    routes_added: int = 0
    routes_removed: int = 0
    steered: set[tuple[str, int]] = field(default_factory=set)
    not_on_link: set[str] = field(default_factory=set)
    local: set[str] = field(default_factory=set)
    conflicts: set[int] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors.append(message)

    def report(self) -> RouteReport:
        return RouteReport(
            rules_added=self.rules_added,
            rules_removed=self.rules_removed,
            routes_added=self.routes_added,
            routes_removed=self.routes_removed,
            steered=frozenset(self.steered),
            not_on_link=frozenset(self.not_on_link),
            local=frozenset(self.local),
            conflicts=frozenset(self.conflicts),
            errors=tuple(self.errors),
        )


# --------------------------------------------------------------------------- route dumps

_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_RTM_GETROUTE = 26
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_TABLE = 1, 4, 5, 6, 15


def dump_routes(family: int, protocol: int) -> list[RouteSeen]:
    """Every route of ``family`` with ``protocol``, all tables, in this thread's namespace.

    Asked of the kernel with strict checking (Linux 4.20+), so the kernel sends only the
    routes of that protocol: a node's main table can hold thousands of routes (a CNI's
    per-node blocks, BGP), which pyroute2 would dump and decode whole on every sync. An
    older kernel ignores the filter and sends them all; they are filtered here as well."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        with contextlib.suppress(OSError):
            sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        body = _RTMSG.pack(family, 0, 0, 0, 0, protocol, 0, 0, 0)
        sock.send(_NLMSG.pack(_NLMSG.size + len(body), _RTM_GETROUTE, _NLM_F_REQUEST_DUMP, 1, 0) + body)
        out: list[RouteSeen] = []
        while True:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError(errno.EPROTO, "short netlink message")
                if seq == 1:
                    if kind == _NLMSG_DONE:
                        return out
                    if kind == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _NLMSG.size)
                        raise OSError(-code, f"route dump: {os.strerror(-code)}")
                    route = _route(family, protocol, data, offset + _NLMSG.size, offset + length)
                    if route is not None:
                        out.append(route)
                offset += (length + 3) & ~3


def _route(family: int, protocol: int, data: bytes, start: int, end: int) -> RouteSeen | None:
    fam, dst_len, _src_len, _tos, table, proto, _scope, _type, _flags = _RTMSG.unpack_from(data, start)
    if fam != family or proto != protocol:
        return None
    attrs: dict[int, bytes] = {}
    pos = start + _RTMSG.size
    while pos + _RTA.size <= end:
        rta_len, rta_type = _RTA.unpack_from(data, pos)
        if rta_len < _RTA.size:
            break
        attrs[rta_type] = data[pos + _RTA.size : pos + rta_len]
        pos += (rta_len + 3) & ~3

    def address(kind: int) -> str | None:
        raw = attrs.get(kind)
        return None if raw is None else socket.inet_ntop(family, raw)

    def number(kind: int) -> int | None:
        raw = attrs.get(kind)
        return None if raw is None else int(_U32.unpack(raw[:4])[0])

    return RouteSeen(
        family=family,
        table=number(_RTA_TABLE) or table,
        dst=address(_RTA_DST),
        dst_len=dst_len,
        gateway=address(_RTA_GATEWAY),
        oif=number(_RTA_OIF),
        priority=number(_RTA_PRIORITY),
    )


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


class PolicyRouter:
    """Keeps this network namespace's steering rules and routes equal to the slots asked for."""

    def __init__(self, config: SteeringConfig) -> None:
        self.config = config
        self._lock = threading.Lock()

    # -- reading -----------------------------------------------------------------

    def _is_our_rule(self, msg: Any) -> bool:
        table = _attr(msg, "FRA_TABLE") or msg["table"]
        return (
            msg["action"] == _FR_ACT_TO_TBL
            and _attr(msg, "FRA_PRIORITY") == self.config.priority
            and _attr(msg, "FRA_FWMASK") == self.config.mark_mask
            and self.config.slot_of_table(int(table)) is not None
        )

    def rules(self, ipr: Any) -> list[RuleSeen]:
        """Our rules, both families (duplicates included)."""
        out: list[RuleSeen] = []
        for _version, family in FAMILIES:
            for msg in ipr.get_rules(family=family):
                if self._is_our_rule(msg):
                    table = int(_attr(msg, "FRA_TABLE") or msg["table"])
                    out.append(RuleSeen(family, int(_attr(msg, "FRA_FWMARK") or 0), table))
        return out

    def routes(self) -> list[RouteSeen]:
        """Our routes, both families: our protocol, in our table range."""
        return [
            route
            for _version, family in FAMILIES
            for route in dump_routes(family, ROUTE_PROTOCOL)
            if self.config.slot_of_table(route.table) is not None
        ]

    # -- resolving holders ---------------------------------------------------------

    def _resolve(self, ipr: Any, routes: Mapping[int, Holder], tally: _Tally) -> dict[int, dict[int, Wanted]]:
        """family -> table -> the route wanted there, for every holder reached on-link."""
        wanted: dict[int, dict[int, Wanted]] = {family: {} for _v, family in FAMILIES}
        for slot, holder in sorted(routes.items()):
            if self.config.slot_of_table(self.config.table_base + slot) is None:
                tally.errors.append(f"holder {holder.node}: slot {slot} outside 1..{self.config.capacity}")
                continue
            for version, family in FAMILIES:
                text = holder.address4 if version == 4 else holder.address6
                if text is None:
                    continue
                try:
                    address = ipaddress.ip_address(text)
                except ValueError:
                    tally.errors.append(f"holder {holder.node}: {text!r} is not an IP address")
                    continue
                if address.version != version:
                    tally.errors.append(f"holder {holder.node}: {text!r} is not an IPv{version} address")
                    continue
                try:
                    found = ipr.route("get", dst=str(address), family=family)
                except Exception as exc:  # no route at all (ENETUNREACH): not on-link
                    if _code(exc) is None:
                        raise
                    tally.not_on_link.add(holder.node)
                    continue
                first = found[0] if found else None
                if first is None or first["type"] not in (_RTN_UNICAST, _RTN_LOCAL):
                    tally.not_on_link.add(holder.node)
                elif first["type"] == _RTN_LOCAL:
                    tally.local.add(holder.node)
                elif _attr(first, "RTA_GATEWAY") is not None or _attr(first, "RTA_OIF") is None:
                    tally.not_on_link.add(holder.node)
                else:
                    table = self.config.table(slot)
                    wanted[family][table] = Wanted(
                        holder.node, table, self.config.mark(slot), str(address), int(_attr(first, "RTA_OIF"))
                    )
        return wanted

    # -- writing -------------------------------------------------------------------

    def _route_args(self, family: int, want: Wanted) -> dict[str, Any]:
        return {
            "family": family,
            "dst": "0.0.0.0/0" if family == socket.AF_INET else "::/0",
            "table": want.table,
            "gateway": want.gateway,
            "oif": want.oif,
            "proto": ROUTE_PROTOCOL,
        }

    def _rule_args(self, family: int, fwmark: int, table: int) -> dict[str, Any]:
        return {
            "family": family,
            "priority": self.config.priority,
            "fwmark": fwmark,
            "fwmask": self.config.mark_mask,
            "table": table,
            "action": "FR_ACT_TO_TBL",
        }

    def _delete_route(self, ipr: Any, route: RouteSeen, tally: _Tally) -> None:
        args: dict[str, Any] = {
            "family": route.family,
            "table": route.table,
            "dst": f"{route.dst or ('0.0.0.0' if route.family == socket.AF_INET else '::')}/{route.dst_len}",
            "proto": ROUTE_PROTOCOL,
        }
        if route.gateway is not None:
            args["gateway"] = route.gateway
        if route.oif is not None:
            args["oif"] = route.oif
        if route.priority is not None:
            args["priority"] = route.priority
        try:
            ipr.route("del", **args)
            tally.routes_removed += 1
        except Exception as exc:
            if _code(exc) is None:
                raise
            if _code(exc) != errno.ESRCH:  # gone meanwhile: what we wanted
                tally.error(f"delete route {args}: {exc}")

    def _delete_rule(self, ipr: Any, rule: RuleSeen, tally: _Tally) -> None:
        args = self._rule_args(rule.family, rule.fwmark, rule.table)
        try:
            ipr.rule("del", **args)
            tally.rules_removed += 1
        except Exception as exc:
            if _code(exc) is None:
                raise
            if _code(exc) not in (errno.ENOENT, errno.ESRCH):
                tally.error(f"delete rule {args}: {exc}")

    def _sync_family(
        self,
        ipr: Any,
        version: int,
        family: int,
        wanted: Mapping[int, Wanted],
        rules: list[RuleSeen],
        routes: list[RouteSeen],
        tally: _Tally,
    ) -> None:
        by_table: dict[int, list[RouteSeen]] = {}
        for route in routes:
            by_table.setdefault(route.table, []).append(route)
        placed: dict[int, Wanted] = {}
        # The metric the kernel gives a route added without one: what "replace" replaces.
        standard = {None, 0} if family == socket.AF_INET else {1024}
        # 1. Routes first, so that no rule of ours ever points at a table we are filling.
        for table, want in sorted(wanted.items()):
            ours = by_table.pop(table, [])
            defaults = [r for r in ours if r.dst_len == 0]
            good = sorted(
                (r for r in defaults if r.gateway == want.gateway and r.oif == want.oif),
                key=lambda r: r.priority not in standard,
            )
            if good:
                placed[table] = want
                # Anything else of ours in the table (a second default, another prefix) goes.
                for route in ours:
                    if route is not good[0]:
                        self._delete_route(ipr, route, tally)
                continue
            args = self._route_args(family, want)
            try:
                ipr.route("replace" if any(r.priority in standard for r in defaults) else "add", **args)
                tally.routes_added += 1
                placed[table] = want
            except Exception as exc:
                if _code(exc) is None:
                    raise
                if _code(exc) == errno.EEXIST:
                    tally.conflicts.add(table)
                else:
                    tally.error(f"add route {args}: {exc}")
            # What was not replaced: other prefixes, and defaults of ours with another metric.
            for route in ours:
                if route.dst_len != 0 or route.priority not in standard:
                    self._delete_route(ipr, route, tally)
        # 2. Rules: the wanted ones whose route is in place, each once; every other of ours goes.
        want_rules = {(w.fwmark, w.table): w for w in placed.values()}
        seen = Counter((r.fwmark, r.table) for r in rules if r.family == family)
        for key, want in sorted(want_rules.items()):
            if seen[key]:
                tally.steered.add((want.node, version))
                continue
            args = self._rule_args(family, *key)
            try:
                ipr.rule("add", **args, protocol=ROUTE_PROTOCOL)
                tally.rules_added += 1
                tally.steered.add((want.node, version))
            except Exception as exc:
                if _code(exc) is None:
                    raise
                tally.error(f"add rule {args}: {exc}")
        for key, count in sorted(seen.items()):
            surplus = count - (1 if key in want_rules else 0)
            for _ in range(surplus):
                self._delete_rule(ipr, RuleSeen(family, *key), tally)
        # 3. Routes of ours in tables no longer wanted, after their rules are gone.
        for table in sorted(by_table):
            for route in by_table[table]:
                self._delete_route(ipr, route, tally)

    def apply(self, routes: Mapping[int, Holder]) -> RouteReport:
        """Make this namespace's rules and routes of ours equal to ``routes`` (slot -> holder),
        both families; remove every other rule and route of ours. Idempotent."""
        from pyroute2 import IPRoute

        tally = _Tally()
        with self._lock, IPRoute() as ipr:
            wanted = self._resolve(ipr, routes, tally)
            rules = self.rules(ipr)
            seen_routes = self.routes()
            for version, family in FAMILIES:
                self._sync_family(
                    ipr,
                    version,
                    family,
                    wanted[family],
                    [r for r in rules if r.family == family],
                    [r for r in seen_routes if r.family == family],
                    tally,
                )
        return tally.report()

    def reach(self, routes: Mapping[int, Holder]) -> RouteReport:
        """Which holders this namespace reaches on-link, writing nothing: ``steered`` is what
        :meth:`apply` would steer (``wholeip diff`` and ``status`` build the table as the
        agent would on this node)."""
        from pyroute2 import IPRoute

        tally = _Tally()
        with self._lock, IPRoute() as ipr:
            wanted = self._resolve(ipr, routes, tally)
        for version, family in FAMILIES:
            tally.steered.update((w.node, version) for w in wanted[family].values())
        return tally.report()

    def cleanup(self) -> None:
        """Remove every rule and route of ours, both families, and nothing else."""
        self.remove_all()

    def remove_all(self) -> RouteReport:
        """:meth:`cleanup`, with its report (what ``wholeip cleanup`` prints)."""
        return self.apply({})

    def snapshot(self) -> tuple[list[RuleSeen], list[RouteSeen]]:
        """Our rules and routes as the kernel holds them now (for status and tests)."""
        from pyroute2 import IPRoute

        with self._lock, IPRoute() as ipr:
            return self.rules(ipr), self.routes()
