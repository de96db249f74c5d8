"""Set and map elements -> mappings (pure): the inverse of :mod:`wholeip.core.elements`.

:func:`wholeip.core.elements.entry_elements` turns one mapping (external IP -> pod
IP, its mode, filters, and where its pod lives) into elements of the fixed
skeleton's sets and maps. :func:`decode` reads a table's elements back into those
mappings, for ``wholeip status`` (what does this node do now?) and for telling
which mapping an element that drifted belongs to. It is written against the
encoding and checked against it: ``tests/unit/test_decode.py`` encodes arbitrary
clusters, decodes them and encodes the result again, which must give back the very
same elements.

What the encoding keeps, the decoding gives back; what it drops stays unknown:

* the Service a mapping comes from, and the pod's node by name: the table only
  says whether the pod is on *this* node (its IP is a key of ``egress``, which
  holds this node's pods only) or not;
* source ranges of the other family: they only make the address ``ranged`` (no
  one outside the cluster may reach it), as ranges that were all invalid do
  (``closed``), so :attr:`TableMapping.ranged` may be true with no
  :attr:`TableMapping.source_ranges`;
* a per-port Service's ICMP policy and ports are kept; a whole-IP mapping has none;
* the filter a pod's own node applies for it under the pod IP (``arrive``) is read
  on that node only, onto the mapping that gives the pod its egress.

Every element no decoded mapping accounts for (a hand edit, a half-deleted mapping)
is returned in :attr:`DecodedTable.stray`, so nothing in the table goes unshown.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from wholeip.core.elements import OPEN, PodFilter, entry_elements
from wholeip.core.model import Mode, PortSpec
from wholeip.names import (
    ARRIVE,
    AWAY,
    CLUSTER,
    DISPATCH,
    EGRESS,
    FILTERED,
    ICMP,
    ICMPFIX4,
    ICMPGUARD6,
    INGRESS,
    PER_PORT,
    PORTS,
    RANGED,
    SELF_HAIRPIN,
    SOURCES,
    PerFamily,
)
from wholeip.nft.doc import Elem
from wholeip.settings import IPNetwork

MAPPING_SETS: frozenset[str] = frozenset(
    {
        *(
            name
            for per in (CLUSTER, INGRESS, EGRESS, SELF_HAIRPIN, DISPATCH, ARRIVE, AWAY, FILTERED, PORTS, ICMP, RANGED)
            for name in per.both
        ),
        *SOURCES.both,
        ICMPFIX4,
        ICMPGUARD6,
    }
)
"""The sets and maps the mappings and the cluster networks are written to: what :func:`decode`
reads and accounts for (other sets, e.g. the packet path's ``flows``, are not its business)."""

_ELSEWHERE = "\x00elsewhere"
"""A node name no node has: re-encoding a mapping whose pod is known to be on another node."""


@dataclass(frozen=True, slots=True)
class TableMapping:
    """One external IP -> pod IP as a node's table holds it."""

    external_ip: str
    pod_ip: str
    mode: Mode
    allow_icmp: bool
    """Per-port only: ICMP echo requests pass the filter."""
    ports: tuple[PortSpec, ...]
    """Per-port only: what the filter lets in."""
    ranged: bool
    """``loadBalancerSourceRanges`` restrict who outside the cluster may reach it."""
    source_ranges: tuple[IPNetwork, ...]
    """Those ranges of the external IP's family (none while ``ranged``: nobody outside)."""
    pod_here: bool
    """The pod lives on this node (this node is where its egress leaves)."""
    egress: bool
    """This mapping gives the pod its source address on the way out (one per pod and family)."""
    away: bool
    """The pod is on another node, which filters UDP/SCTP that arrives here for it."""
    at_pod: PodFilter | None
    """On the egress mapping: the filter this node applies under the pod IP to UDP/SCTP that
    arrived for the pod at another node (see :func:`wholeip.core.elements.pod_filter`)."""

    @property
    def version(self) -> int:
        return 6 if ":" in self.external_ip else 4

    def elements(self, *, node_name: str) -> list[tuple[str, Elem]]:
        """This mapping encoded again (:func:`~wholeip.core.elements.entry_elements`)."""
        if self.pod_here:
            pod_node: str | None = node_name
        else:
            pod_node = _ELSEWHERE if self.away else None
        at_pod = self.at_pod
        if self.away and at_pod is None:
            at_pod = OPEN  # some filter exists at the pod's node; this node cannot see which
        return entry_elements(
            self.external_ip,
            self.pod_ip,
            egress=self.egress,
            pod_node=pod_node,
            node_name=node_name,
            mode=self.mode,
            allow_icmp=self.allow_icmp,
            ports=self.ports,
            source_ranges=self.source_ranges,
            at_pod=at_pod,
            # Ranged without a range of its family (ranges of the other family only, or all
            # invalid): the same elements as a mapping closed to every outside source.
            closed=self.ranged and not self.source_ranges,
        )


@dataclass(frozen=True, slots=True)
class DecodedTable:
    """What a table's elements say."""

    mappings: tuple[TableMapping, ...]
    """Ordered by family, then external IP."""
    cluster_networks: tuple[IPNetwork, ...]
    stray: Mapping[str, frozenset[Elem]]
    """Per set of :data:`MAPPING_SETS`, the elements no mapping accounts for (only sets that
    have some)."""


def _network(text: str) -> list[IPNetwork]:
    """An interval element (a prefix, a bare address or an ``a-b`` range) as networks."""
    if "-" in text:
        first, last = (ipaddress.ip_address(part) for part in text.split("-"))
        return list(ipaddress.summarize_address_range(first, last))
    return [ipaddress.ip_network(text, strict=False)]


def _filter_of(
    elements: Mapping[str, AbstractSet[Elem]], key: str, v: int, verdicts: Mapping[str, str]
) -> tuple[Mode, bool, tuple[PortSpec, ...], bool, tuple[IPNetwork, ...]]:
    """The filter keyed by ``key`` (an external IP, or a pod IP in ``arrive``): mode,
    allow_icmp, ports, ranged, the ranges of ``key``'s family."""
    verdict = verdicts.get(key)
    mode = Mode.PER_PORT if verdict == f"jump {PER_PORT[v]}" else Mode.WHOLE_IP
    ranged = key in elements.get(RANGED[v], ())
    return (
        mode,
        mode is Mode.PER_PORT and key in elements.get(ICMP[v], ()),
        _ports(elements, key, v) if mode is Mode.PER_PORT else (),
        ranged,
        _sources(elements, key, v) if ranged else (),
    )


def _ports(elements: Mapping[str, AbstractSet[Elem]], key: str, v: int) -> tuple[PortSpec, ...]:
    out = {
        PortSpec(str(e[1]), int(e[2]))
        for e in elements.get(PORTS[v], ())
        if isinstance(e, tuple) and len(e) == 3 and e[0] == key
    }
    return tuple(sorted(out))


def _sources(elements: Mapping[str, AbstractSet[Elem]], key: str, v: int) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = []
    for e in elements.get(SOURCES[v], ()):
        if isinstance(e, tuple) and len(e) == 2 and e[0] == key and isinstance(e[1], str):
            nets += _network(e[1])
    return tuple(sorted(set(nets), key=lambda n: (int(n.network_address), n.prefixlen)))


def _pairs(elements: Mapping[str, AbstractSet[Elem]], name: PerFamily, v: int) -> dict[str, str]:
    """A map of address -> address or verdict, as a dict."""
    out: dict[str, str] = {}
    for e in elements.get(name[v], ()):
        if isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str):
            out[e[0]] = e[1]
    return out


def decode(elements: Mapping[str, AbstractSet[Elem]], *, node_name: str = "") -> DecodedTable:
    """The mappings a table's elements encode, its cluster networks, and what is left over.

    ``node_name`` is only used to encode the result again and find the stray elements;
    any name gives the same answer (the table holds no node names).
    """
    mappings: list[TableMapping] = []
    for v in (4, 6):
        ingress = _pairs(elements, INGRESS, v)
        egress = _pairs(elements, EGRESS, v)
        dispatch = _pairs(elements, DISPATCH, v)
        arrive = _pairs(elements, ARRIVE, v)
        away = elements.get(AWAY[v], frozenset())
        for ext, pod in ingress.items():
            mode, allow_icmp, ports, ranged, ranges = _filter_of(elements, ext, v, dispatch)
            gives_egress = egress.get(pod) == ext
            at_pod = None
            if gives_egress and pod in arrive:
                pod_mode, _, pod_ports, pod_ranged, pod_ranges = _filter_of(elements, pod, v, arrive)
                at_pod = PodFilter(
                    pod_mode, frozenset(pod_ports), frozenset(pod_ranges), closed=pod_ranged and not pod_ranges
                )
            mappings.append(
                TableMapping(
                    external_ip=ext,
                    pod_ip=pod,
                    mode=mode,
                    allow_icmp=allow_icmp,
                    ports=ports,
                    ranged=ranged,
                    source_ranges=ranges,
                    pod_here=pod in egress,
                    egress=gives_egress,
                    away=ext in away,
                    at_pod=at_pod,
                )
            )
    mappings.sort(key=lambda m: (m.version, int(ipaddress.ip_address(m.external_ip))))
    networks: list[IPNetwork] = []
    explained: dict[str, set[Elem]] = {}
    for v in (4, 6):
        for e in elements.get(CLUSTER[v], ()):
            if isinstance(e, str):
                networks += _network(e)
                explained.setdefault(CLUSTER[v], set()).add(e)
    for m in mappings:
        for name, elem in m.elements(node_name=node_name or "node"):
            explained.setdefault(name, set()).add(elem)
    stray = {
        name: frozenset(elems - explained.get(name, set()))
        for name, elems in elements.items()
        if name in MAPPING_SETS and elems - explained.get(name, set())
    }
    return DecodedTable(
        mappings=tuple(mappings),
        cluster_networks=tuple(ipaddress.collapse_addresses(n for n in networks if n.version == 4))
        + tuple(ipaddress.collapse_addresses(n for n in networks if n.version == 6)),
        stray=stray,
    )
