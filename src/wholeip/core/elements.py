"""Model -> set and map elements (pure): what the cluster says, as the data of the fixed
skeleton (:mod:`wholeip.core.ruleset`).

The skeleton never changes with Services; everything the cluster says is here, as
elements of its sets and maps. The rule that shapes this module: every element
belongs to exactly one mapping (one external IP -> one pod IP), keyed by that
external IP, or by the pod IP when it comes from the pod's egress mapping (one per
pod and family). Two mappings never contribute the same element, so a mapping's
elements can be added or taken away without looking at the others. That is what
lets :mod:`wholeip.core.index` keep the table current one mapping at a time by
recomputing a mapping's elements instead of storing them, and :func:`elements`
build the whole table from scratch with the very same function
(:func:`entry_elements`): the two paths cannot disagree.

One thing depends on more than one mapping: the filter a pod's node applies, under
the pod IP, to UDP/SCTP that arrived for the pod at another node (the flows the pod
opened are remembered on its node only). :func:`pod_filter` merges a pod's mappings'
filters into one; the egress mapping carries it, so it still belongs to one mapping,
and whoever changes a pod's mappings recomputes it.

Elements keep addresses as canonical text, the strings the caller passes in: the
agent's index holds each address once and every element shares it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from typing import NamedTuple

from wholeip.core.compact import ipv4_number
from wholeip.core.delegated import delegated_elements
from wholeip.core.model import ClusterState, IPAddress, LbRedirect, Mapping1to1, Mode, PortSpec
from wholeip.core.podnat import pod_port_elements
from wholeip.core.ruleset import AT_POD_PROTOCOLS, SKELETON, icmp4_compensation, skeleton_for
from wholeip.names import (
    ARRIVE,
    AWAY,
    DISPATCH,
    EGRESS,
    EGRESS_SNAT,
    EGRESS_STEER,
    FAMILY,
    FILTERED,
    ICMP,
    ICMPFIX4,
    ICMPGUARD6,
    INGRESS,
    LB_CLUSTER_IP,
    LOCAL_PODS,
    PER_PORT,
    PORTS,
    RANGED,
    SELF_HAIRPIN,
    SOURCES,
    TABLE,
    WHOLE_IP,
    PerFamily,
    steer_slot_chain,
)
from wholeip.nft.doc import Elem, TableDoc
from wholeip.nft.journal import JournaledSet
from wholeip.settings import IPNetwork


class PodFilter(NamedTuple):
    """How UDP/SCTP from outside to a pod is filtered, for one mapping or, at the pod's
    node, for all of them (:func:`pod_filter`). Whole-IP mode without ranges lets all in."""

    mode: Mode
    ports: frozenset[PortSpec]
    """The UDP/SCTP ports a per-port filter forwards."""
    ranges: frozenset[IPNetwork]
    closed: bool = False
    """No outside source is admitted (the Service's source ranges were all invalid)."""


def udp_filter(
    mode: Mode, ports: Iterable[PortSpec], source_ranges: Iterable[IPNetwork], *, closed: bool = False
) -> PodFilter | None:
    """A mapping's filter of UDP/SCTP from outside; None: it has none. ``closed``: see
    :attr:`wholeip.core.model.Mapping1to1.closed`."""
    ranges = frozenset(source_ranges)
    if mode is Mode.WHOLE_IP and not ranges and not closed:
        return None
    listed = frozenset(p for p in ports if p.protocol in AT_POD_PROTOCOLS) if mode is Mode.PER_PORT else frozenset()
    return PodFilter(mode, listed, ranges, closed)


OPEN = PodFilter(Mode.WHOLE_IP, frozenset(), frozenset())
"""The pod's node lets every UDP/SCTP packet to the pod in."""


def pod_filter(filters: Iterable[PodFilter | None]) -> PodFilter | None:
    """The one filter the node of a pod whose mappings have these :func:`udp_filter`
    values applies, under the pod IP, to UDP/SCTP that arrived for any of them at another
    node; None: the pod's node does not, every node filters such packets by the external
    IP they were sent to. The pod's node no longer sees which external IP that was, so the
    filter must let in what any of them lets in and nothing more:

    * one of them filters nothing: nothing (the pod takes all UDP through that one);
    * all have the same source ranges (or none): those ranges, and any port if one of
      them is whole-IP, else the union of their ports (all filter alike: that filter);
    * else (ranges that differ): None. A union of (source range x port) boxes is not
      one concatenated set without overlapping elements; such a pod keeps the gap.
    (TCP ports and the ICMP policy may differ: those are filtered where they arrive.)"""
    distinct = set(filters)
    if not distinct or distinct == {None}:
        return None  # nothing to filter
    if None in distinct:
        return OPEN
    some = [f for f in distinct if f is not None]
    if len({(f.ranges, f.closed) for f in some}) != 1:
        return None
    ranges, closed = some[0].ranges, some[0].closed
    if any(f.mode is Mode.WHOLE_IP for f in some):
        return PodFilter(Mode.WHOLE_IP, frozenset(), ranges, closed)
    return PodFilter(Mode.PER_PORT, frozenset().union(*(f.ports for f in some)), ranges, closed)


def pod_filters(mappings: Iterable[Mapping1to1]) -> dict[IPAddress, PodFilter]:
    """The filter each pod's node applies for it (see :func:`pod_filter`), for the pods
    that have one (per family: a pod IP is of one)."""
    filters: dict[IPAddress, set[PodFilter | None]] = {}
    for m in mappings:
        filters.setdefault(m.pod_ip, set()).add(udp_filter(m.mode, m.ports, m.source_ranges, closed=m.closed))
    out = {pod: pod_filter(fs) for pod, fs in filters.items()}
    return {pod: f for pod, f in out.items() if f is not None}


def mapping_elements(m: Mapping1to1, *, node_name: str, at_pod: PodFilter | None = None) -> list[tuple[str, Elem]]:
    """The (set, element) pairs one mapping contributes on node ``node_name``; ``at_pod``:
    the filter the pod's node applies for the pod (:func:`pod_filters`), if any.

    Every element is keyed by the mapping's external IP, or by its pod IP (egress, and
    the filter at the pod's node) from the pod's one egress mapping, so two mappings
    never contribute the same element: a mapping can be added or taken away without
    looking at the others, as long as the pod's egress and ``at_pod`` stay as they were.
    """
    return entry_elements(
        str(m.external_ip),
        str(m.pod_ip),
        egress=m.egress,
        pod_node=m.node_name,
        node_name=node_name,
        mode=m.mode,
        allow_icmp=m.allow_icmp,
        ports=m.ports,
        source_ranges=m.source_ranges,
        closed=m.closed,
        at_pod=at_pod,
        addresses=(m.external_ip, m.pod_ip),
    )


def entry_elements(
    ext: str,
    pod: str,
    *,
    egress: bool,
    pod_node: str | None,
    node_name: str,
    mode: Mode,
    allow_icmp: bool,
    ports: tuple[PortSpec, ...],
    source_ranges: tuple[IPNetwork, ...],
    closed: bool = False,
    at_pod: PodFilter | None = None,
    addresses: tuple[IPAddress, IPAddress] | None = None,
) -> list[tuple[str, Elem]]:
    """:func:`mapping_elements` for addresses given as canonical text (``str(ip)``).

    ``egress``: the mapping is its pod's egress; ``pod_node``: the pod's node (None:
    unknown); ``node_name``: the node whose table this is. Whether the pod is here, or
    known to be elsewhere, is decided here and nowhere else (the index and the full
    build both call this function). ``at_pod``: the filter the pod's node applies to
    UDP/SCTP from outside for all of the pod's mappings, keyed by the pod IP
    (:func:`pod_filter`); the egress mapping brings those elements on that node, and on
    every node the pod is known to be elsewhere the external IP, when it has a filter,
    goes to ``away``. ``closed``: no outside source is admitted (source ranges that were
    all invalid), encoded as ranges of neither family: ``ranged`` without ``sources``.

    The elements hold the very strings passed in, so a caller that keeps its addresses
    as text (the agent's index) shares them instead of holding a copy per element.
    ``addresses``: the same two as objects, when the caller has them (not parsed again).
    """
    ext4, pod4 = (None, None) if addresses else (ipv4_number(ext), ipv4_number(pod))
    egress_here = egress and pod_node == node_name
    pod_elsewhere = pod_node is not None and pod_node != node_name
    if ext4 is not None and pod4 is not None:
        # Two dotted IPv4 addresses (the index's, nearly always): their numbers, no objects.
        v = 4
        out = plain_elements(ext, pod, ext4, pod4, here=egress_here)
    else:
        ext_ip, pod_ip = addresses or (ipaddress.ip_address(ext), ipaddress.ip_address(pod))
        v = ext_ip.version
        fixes = (icmp4_compensation(ext_ip, pod_ip), icmp4_compensation(pod_ip, ext_ip)) if v == 4 else None
        out = _entry(v, ext, pod, int(ext_ip), int(pod_ip), fixes, egress_here)
    out += _filter_elements(
        ext, v, DISPATCH, mode=mode, allow_icmp=allow_icmp, ports=ports, ranges=source_ranges, closed=closed
    )
    if at_pod is not None and egress_here:
        # Only UDP/SCTP takes this way: TCP and ICMP were filtered where they arrived.
        out += _filter_elements(
            pod,
            v,
            ARRIVE,
            mode=at_pod.mode,
            allow_icmp=False,
            ports=tuple(at_pod.ports),
            ranges=tuple(at_pod.ranges),
            closed=at_pod.closed,
        )
    if at_pod is not None and pod_elsewhere and (mode is Mode.PER_PORT or source_ranges or closed):
        out.append((AWAY[v], ext))
    return out


def plain_elements(ext: str, pod: str, ext_n: int, pod_n: int, *, here: bool) -> list[tuple[str, Elem]]:
    """:func:`entry_elements` of a plain whole-IP IPv4 mapping that is its pod's egress (no
    ports, no source ranges, no filter at the pod's node), from the two addresses as text
    and as numbers: what the index's bulk load writes for nearly every Service. ``here``:
    the pod is on this node."""
    return _entry(4, ext, pod, ext_n, pod_n, _icmp4_words(ext_n, pod_n), here)


def _entry(
    v: int, ext: str, pod: str, ext_n: int, pod_n: int, fixes: tuple[int, int] | None, egress_here: bool
) -> list[tuple[str, Elem]]:
    """The elements every mapping has, whatever its filter: the address rewrite both ways
    and the ICMP errors' (``fixes``: the IPv4 checksum words in, out; None for IPv6)."""
    out: list[tuple[str, Elem]] = [(INGRESS[v], (ext, pod))]
    if fixes is not None:
        out.append((ICMPFIX4, ((ext, ext_n), fixes[0])))
    else:
        out.append((ICMPGUARD6, (ext, ext_n)))
    if egress_here:
        out.append((EGRESS[v], (pod, ext)))
        out.append((SELF_HAIRPIN[v], (pod, pod)))
        # Errors the pod sends about what came in through ``ext`` (docs/datapath.md row 15),
        # keyed after the source rewrite: ``ext`` outside, the pod IP embedded.
        if fixes is not None:
            out.append((ICMPFIX4, ((ext, pod_n), fixes[1])))
        else:
            out.append((ICMPGUARD6, (ext, pod_n)))
    return out


def _icmp4_words(ext: int, pod: int) -> tuple[int, int]:
    """:func:`~wholeip.core.ruleset.icmp4_compensation` of two IPv4 addresses given as
    numbers, both ways (``ext`` to ``pod``, ``pod`` to ``ext``): the ones'-complement sum of
    one's 16-bit words and the complements of the other's, folded (adding the four words
    first and folding twice gives what folding after each gives; tests/unit/test_fastparse.py
    holds it to the long way)."""
    e = (ext >> 16) + (ext & 0xFFFF)
    p = (pod >> 16) + (pod & 0xFFFF)
    fix_in = e + 0x1FFFE - p  # the complement of a word w is 0xFFFF - w
    fix_in = (fix_in & 0xFFFF) + (fix_in >> 16)
    fix_out = p + 0x1FFFE - e
    fix_out = (fix_out & 0xFFFF) + (fix_out >> 16)
    return (fix_in & 0xFFFF) + (fix_in >> 16), (fix_out & 0xFFFF) + (fix_out >> 16)


def _filter_elements(
    key: str,
    v: int,
    dispatch: PerFamily,
    *,
    mode: Mode,
    allow_icmp: bool,
    ports: tuple[PortSpec, ...],
    ranges: tuple[IPNetwork, ...],
    closed: bool = False,
) -> list[tuple[str, Elem]]:
    """The filter's elements keyed by ``key``: an external IP (``dispatch``), or the pod IP
    at the pod's node (``arrive``)."""
    out: list[tuple[str, Elem]] = []
    # Source ranges of the other family only still restrict this address: to nobody
    # outside the cluster (as Kubernetes does), never to everybody; so do ranges that were
    # all invalid (``closed``).
    ranged = bool(ranges) or closed
    if mode is Mode.PER_PORT:
        out.append((dispatch[v], (key, f"jump {PER_PORT[v]}")))
        out += [(PORTS[v], (key, p.protocol, p.port)) for p in ports]
        if allow_icmp:
            out.append((ICMP[v], key))
    elif ranged:
        out.append((dispatch[v], (key, f"jump {WHOLE_IP[v]}")))
    if mode is Mode.PER_PORT or ranged:
        out.append((FILTERED[v], key))
    if ranged:
        out.append((RANGED[v], key))
        out += [(SOURCES[v], (key, _host_or_net(r))) for r in ranges if r.version == v]
    return out


def network_elements(networks: Iterable[IPNetwork]) -> list[tuple[str, Elem]]:
    """The cluster networks' (set, element) pairs."""
    return [(f"cluster{net.version}", str(net)) for net in networks]


def lb_redirect_element(lb_ip: str, protocol: str, port: int, cluster_ip: str) -> tuple[str, Elem]:
    """``--lb-to-clusterip``: the (map, element) that sends ``protocol``/``port`` of a
    LoadBalancer IP to the Service's ClusterIP (addresses as canonical text, one family).
    Keyed by the port too, not the address alone: two Services may share one LoadBalancer
    IP on different ports (MetalLB's ``allow-shared-ip``), each with its own ClusterIP."""
    return (LB_CLUSTER_IP[6 if ":" in lb_ip else 4], ((lb_ip, protocol, port), cluster_ip))


def lb_elements(redirects: Iterable[LbRedirect], local_pods: Iterable[IPNetwork]) -> list[tuple[str, Elem]]:
    """``--lb-to-clusterip``: the redirects' elements and this node's pod CIDRs (the sources
    the prerouting redirect takes). Both empty when the flag is off."""
    out = [lb_redirect_element(r.lb_ip, r.protocol, r.port, r.cluster_ip) for r in redirects]
    out += [(LOCAL_PODS[net.version], str(net)) for net in local_pods]
    return out


def empty_elements() -> dict[str, set[Elem]]:
    """One empty set per declared set and map."""
    return {decl.name: set() for decl in SKELETON.sets}


def live_elements() -> dict[str, set[Elem]]:
    """One empty set per declared set and map, for sets kept and changed in place (the
    agent's index): journaled, so that the engine can tell what they held at its last
    commit without a copy (:mod:`wholeip.nft.journal`)."""
    return {decl.name: JournaledSet() for decl in SKELETON.sets}


def elements(state: ClusterState, *, node_name: str) -> dict[str, frozenset[Elem]]:
    """Every set's and map's elements for node ``node_name``."""
    out = empty_elements()
    for name, elem in network_elements(state.cluster_networks):
        out[name].add(elem)
    at_pod = pod_filters(state.mappings)
    for m in state.mappings:
        for name, elem in mapping_elements(m, node_name=node_name, at_pod=at_pod.get(m.pod_ip)):
            out[name].add(elem)
    for name, elem in lb_elements(state.lb_redirects, state.local_pod_networks):
        out[name].add(elem)
    for name, elem in pod_port_elements(state.pod_ports, state.podnat_pods):
        out[name].add(elem)
    for name, elem in egress_ip_elements(state.egress_snat, state.egress_steer):
        out[name].add(elem)
    for name, elem in delegated_elements(state.frontends):
        out[name].add(elem)
    return {name: frozenset(elems) for name, elems in out.items()}


def egress_ip_elements(snat: Iterable[tuple[str, str]], steer: Iterable[tuple[str, int]]) -> list[tuple[str, Elem]]:
    """The egress IP elements of a state (the index's are the same, pod by pod)."""
    out: list[tuple[str, Elem]] = [(EGRESS_SNAT[6 if ":" in pod else 4], (pod, ip)) for pod, ip in snat]
    out += [(EGRESS_STEER[6 if ":" in pod else 4], (pod, f"goto {steer_slot_chain(slot)}")) for pod, slot in steer]
    return out


def _host_or_net(net: IPNetwork) -> str:
    # The kernel lists a full-length prefix inside a concatenation as a bare address.
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def table_doc(
    elements: Mapping[str, AbstractSet[Elem]], *, table: str = TABLE, mark_mask: int | None = None
) -> TableDoc:
    """The table: the one skeleton (built once, :data:`~wholeip.core.ruleset.SKELETON`) and
    these elements. Both ways to the elements (:func:`elements` from a ClusterState, the
    agent's index object by object) end here."""
    skeleton = SKELETON if mark_mask is None else skeleton_for(mark_mask)
    return TableDoc(family=FAMILY, name=table, skeleton=skeleton, elements=elements)


def compile_table(state: ClusterState, *, node_name: str, table: str = TABLE, mark_mask: int | None = None) -> TableDoc:
    """The complete table node ``node_name`` must hold."""
    return table_doc(elements(state, node_name=node_name), table=table, mark_mask=mark_mask)


def count_mappings(doc: TableDoc) -> dict[str, int]:
    """Mappings per map, for metrics and summaries."""
    return {name: len(doc.elements.get(name, ())) for name in (*INGRESS.both, *EGRESS.both)}
