"""Egress steering (pure): which holder node gets which slot, and the mark of a slot.

On a node that does not hold an egress Service's LoadBalancer IP, the pods' outbound
packets are steered to the node that does (the *holder*): our table sets a mark on
them, an ``ip rule`` sends that mark to a routing table of ours, and that table's
default route goes via the holder's node address. One **slot** per holder node, not
per Service: every Service held by one node shares its slot. Slot ``s`` is the mark
value ``s`` shifted into the mark mask, and the routing table ``table_base + s``; slot
0 means "not steered" (an unmarked packet has 0 in the mask's bits, so 0 can never
select a holder). :mod:`wholeip.agent.policyroute` programs the rules and routes;
``docs/operations.md`` (egress steering) explains the defaults below.

Slots are **stable**: a holder keeps its slot for as long as it holds something, so
a change elsewhere never renumbers the marks of flows in progress, and a new holder
takes the lowest free slot. The mask is a flag; its width bounds the number of
holders (``2**bits - 1``). Holders beyond that are left out deterministically (new
holders in name order take the free slots, the rest get slot 0) and reported, so
that their Services can be told they are not served here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wholeip.settings import EgressSettings

_DEFAULTS = EgressSettings()

DEFAULT_MARK_MASK = _DEFAULTS.mark_mask
"""0x7f, bits 0-6: bits that no CNI or proxy wholeip expects beside it sets before routing
(kube-proxy 0xC000, Calico's default mask 0xFFFF0000, Cilium's magic 0x0F00, the CNI
portmap plugin 0x2000, the AWS VPC CNI 0x80, Weave 0x60000, Tailscale 0xC0000, MetalEG
0x00F00000). 127 holder nodes. docs/operations.md lists the overlaps that remain."""

DEFAULT_RULE_PRIORITY = _DEFAULTS.rule_priority
"""2000: after the local table (priority 0, or 100 where Cilium moves it, so that local
destinations stay local), Cilium's rules (1-112) and Calico's WireGuard rule (99);
before Tailscale's (5210-5270) and the main table (32766)."""

DEFAULT_TABLE_BASE = _DEFAULTS.table_base
"""300000, so tables 300001 and up: clear of Calico's route tables (1-250), Cilium's (200-202,
10 + an interface's index, 300 + an ENI's index), kube-router's (77-79), Tailscale's (52),
wg-quick's (51820) and MetalEG's (100000 and up)."""

ROUTE_PROTOCOL = 2
"""The ``proto`` of our routes and rules (``rtm_protocol``, ``FRA_PROTOCOL``): ``kernel``,
as Cilium does for its own, because systemd-networkd (Ubuntu, Flatcar) deletes every
rule and route of another protocol that its ``.network`` files do not name when it
starts (``ManageForeignRoutingPolicyRules=``, ``ManageForeignRoutes=``, on by default).
In our table range it also tells our routes from a route someone else put there
(``ip route add`` writes ``boot``), which is never touched. The kernel itself puts
no route into those tables."""


class MaskError(ValueError):
    """A mark mask that cannot hold slots: zero, wider than 32 bits, or not contiguous."""


def check_mask(mask: int) -> int:
    """``mask`` when it is a usable mark mask, else :class:`MaskError` saying why."""
    if not isinstance(mask, int) or isinstance(mask, bool):
        raise MaskError(f"mark mask must be an integer, not {mask!r}")
    if mask <= 0 or mask > 0xFFFFFFFF:
        raise MaskError(f"mark mask {mask:#x} must be non-zero and fit in 32 bits")
    shifted = mask >> _shift(mask)
    if shifted & (shifted + 1):
        raise MaskError(f"mark mask {mask:#010x} must be one run of contiguous bits (like 0x7f or 0x00f00000)")
    return mask


def parse_mask(text: str) -> int:
    """A mask from a flag's text (``0x7f``, ``127``, ``0o177``); :class:`MaskError` when bad."""
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise MaskError(f"mark mask {text!r} is not an integer (write it like 0x7f)") from None
    return check_mask(value)


def _shift(mask: int) -> int:
    return (mask & -mask).bit_length() - 1


def slot_capacity(mask: int) -> int:
    """How many holders ``mask`` can tell apart: ``2**bits - 1`` (slot 0 is "not steered")."""
    return check_mask(mask) >> _shift(mask)


def slot_mark(slot: int, mask: int) -> int:
    """The mark value of ``slot`` under ``mask`` (0 for slot 0); ValueError when out of range."""
    capacity = slot_capacity(mask)
    if not 0 <= slot <= capacity:
        raise ValueError(f"slot {slot} outside 0..{capacity} of mask {mask:#x}")
    return slot << _shift(mask)


@dataclass(frozen=True, slots=True)
class SteeringConfig:
    """Where the steering lives in the mark, the rule list and the routing tables
    (``--egress-mark-mask``, ``--egress-rule-priority``, ``--egress-table-base``)."""

    mark_mask: int = DEFAULT_MARK_MASK
    """The mark bits holding a slot (contiguous, non-zero)."""

    priority: int = DEFAULT_RULE_PRIORITY
    """The ``ip rule`` priority of every steering rule, both families (1-32765)."""

    table_base: int = DEFAULT_TABLE_BASE
    """Slot ``s`` routes through table ``table_base + s``."""

    @classmethod
    def from_settings(cls, settings: EgressSettings) -> SteeringConfig:
        """The configuration the flags describe; ValueError (a clear message) when unusable."""
        return cls(mark_mask=settings.mark_mask, priority=settings.rule_priority, table_base=settings.table_base)

    def __post_init__(self) -> None:
        check_mask(self.mark_mask)
        if not 1 <= self.priority <= 32765:
            raise ValueError(f"rule priority {self.priority} must be 1-32765 (0 is the local table, 32766 main)")
        last = self.table_base + self.capacity
        if self.table_base < 255 or last > 0xFFFFFFFE:
            # 253-255 are default, main and local; 0 and 2**32-1 are not tables either.
            raise ValueError(
                f"table base {self.table_base} must be at least 255 and leave room for"
                f" {self.capacity} tables below 2**32-1"
            )

    @property
    def capacity(self) -> int:
        """How many holders can be steered at once."""
        return slot_capacity(self.mark_mask)

    def mark(self, slot: int) -> int:
        """The mark of ``slot``."""
        return slot_mark(slot, self.mark_mask)

    def table(self, slot: int) -> int:
        """The routing table of ``slot`` (1..capacity)."""
        if not 1 <= slot <= self.capacity:
            raise ValueError(f"slot {slot} outside 1..{self.capacity}")
        return self.table_base + slot

    def slot_of_table(self, table: int) -> int | None:
        """The slot whose table is ``table``, or None when it is not one of ours."""
        slot = table - self.table_base
        return slot if 1 <= slot <= self.capacity else None


@dataclass(frozen=True, slots=True)
class Holder:
    """A node that holds egress IPs, and its node addresses that others steer to
    (``None``: the family is not steered to it)."""

    node: str
    address4: str | None = None
    address6: str | None = None


@dataclass(frozen=True, slots=True)
class Assignment:
    """The result of :func:`assign`: every holder's slot, and those left without one."""

    slots: Mapping[str, int]
    """Holder -> slot (1..capacity) for every holder that has one."""

    left_out: frozenset[str]
    """Holders beyond the capacity of the mask: not steered."""


def assign_slots(holders: Iterable[str], previous: Mapping[str, int], capacity: int) -> dict[str, int]:
    """Every holder's slot, stable across calls: ``previous`` (the last result) is kept
    for holders still there, new holders (in name order) take the lowest free slots.

    Every holder is in the result; those beyond ``capacity`` get slot 0, "not steered"
    (:func:`assign` also lists them). A slot of ``previous`` outside ``1..capacity``, or
    given to two holders (the first in name order keeps it), is treated as new."""
    wanted = sorted(set(holders))
    out: dict[str, int] = {}
    taken: set[int] = set()
    for name in wanted:
        slot = previous.get(name, 0)
        if isinstance(slot, int) and 1 <= slot <= capacity and slot not in taken:
            out[name] = slot
            taken.add(slot)
    free = (s for s in range(1, capacity + 1) if s not in taken)
    for name in wanted:
        if name not in out:
            out[name] = next(free, 0)
    return out


def assign(holders: Iterable[str], previous: Mapping[str, int], capacity: int) -> Assignment:
    """:func:`assign_slots`, split into the holders with a slot and those left out."""
    slots = assign_slots(holders, previous, capacity)
    return Assignment(
        slots={name: slot for name, slot in slots.items() if slot},
        left_out=frozenset(name for name, slot in slots.items() if not slot),
    )
