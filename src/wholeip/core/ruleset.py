"""The fixed skeleton of the table (pure): every set, map, chain and rule.

The skeleton is the same on every node and for any number of Services, so it is
built once (:data:`SKELETON`) and every table document shares it. Everything the
cluster says lands in set and map elements (:mod:`wholeip.core.elements`), so a
Service costs a few elements and never a rule; a packet costs the same with one
Service or a hundred thousand. Every name is spelled through :mod:`wholeip.names`.
The rows cited below are those of docs/datapath.md, where each is tested.

Layout (one ``inet`` table, both families; ``4`` and ``6`` name the family):

* ``cluster4/6``   interval sets: pod CIDRs, service CIDRs, node addresses.
* ``ingress4/6``   map external IP -> pod IP, every mapping of the cluster (any
  node may receive a packet for any external IP).
* ``egress4/6``    map pod IP -> external IP, pods on this node only.

Chains, in the order a packet meets them. A north-south packet (one end
outside the cluster networks) passes two base chains, ``raw_prerouting`` and
``stateless_postrouting``; it skips conntrack and the NAT hooks (they never run
for an untracked packet). Inbound it costs three lookups before routing
(``dispatch4``, ``cluster4``, ``ingress4``) and two after it (``egress4``, the
protocol set; ``filtered4`` too for UDP/SCTP); a managed pod's packet to the
outside costs five (``dispatch4``, ``cluster4``, ``egress4``, ``cluster4``,
``ingress4``; for UDP/SCTP the protocol set and ``filtered4`` too) and the same
after routing. ``ingress4`` and ``egress4`` are the big maps (every mapping of
the cluster, every managed pod of the node); ``dispatch4`` and ``filtered4``
hold the filtered external IPs (and filtered pods of the node) only,
``cluster4`` a few networks. Every packet of the whole-IP path is decided as in
the earlier layout of five base chains (``hack/skeleton-equivalence`` checked
that when the layout changed; the filter at the pod's node came later).

* ``raw_prerouting`` (filter, priority raw, after defragmentation): all of the
  prerouting work, in this order:

  1. the filter (below): ``ip daddr vmap @dispatch4`` (and ``6``);
  2. a packet that already carries its conntrack state (looped back from
     this node's output, or notracked by someone else's rule before ours)
     goes to ``ct_decided``; for every other packet conntrack's state reads
     "invalid" this early, and the rest of the chain decides. Then per family:
  3. an ICMP packet from outside the cluster networks jumps to ``icmp_errors``;
  4. from outside the cluster networks to an external IP: the destination
     becomes the pod IP, ``notrack``, ``accept``, in one rule; the ``ingress4``
     lookup fails for every other destination, which ends the rule. Not when the
     packet's TTL / hop limit ends at this node: then ``notrack``, ``accept``
     alone, so the "time exceeded" this node sends quotes the external IP the
     client sent to (docs/datapath.md row 15);
  5. from a local managed pod to outside the cluster networks: ``notrack``,
     ``goto untracked4``;
  6. UDP/SCTP from outside (not from an external IP) to a local filtered pod:
     the filter again, keyed by the pod IP (``arrive4``, see below);
  7. from outside to a local managed pod (ingress another node has already
     rewritten, docs/datapath.md row 12): ``notrack``, ``accept``.

  ``accept`` ends this chain only; later hooks still see the packet. The
  source is not rewritten here: before routing, strict rp_filter on the
  pod's interface would see the external IP. Everything else (east-west
  traffic, also to an external IP) stays tracked and untouched.
* ``untracked4/6`` (regular, entered by ``goto``): an untracked packet's
  destination: ICMP errors go to ``icmp_errors``; a local filtered pod's
  UDP/SCTP flow is remembered under its pod IP (below); a packet to an external
  IP (from a local managed pod: any Service's, its own: docs/datapath.md row 11)
  gets the pod IP, statelessly. The chain's end is ``raw_prerouting``'s end.
* ``ct_decided`` (regular): an untracked packet goes on to ``untracked4/6``,
  a tracked one is left alone (a ``notrack`` could not change it any more).
* ``icmp_errors`` (regular): neighbour discovery addressed to an external IP
  (a router's unicast NUD probe) is accepted as it is, so the node that
  answers for the address on its link (an L2 speaker, proxy NDP) gets it.
  ICMP errors to an external IP about a packet the pod sent get the pod IP
  back in their embedded header too, with a checksum-neutral compensation, so
  path-MTU discovery works (docs/datapath.md row 13); such a rule rewrites the
  outer destination too, then ``notrack``, ``accept``.
* ``hairpin_prerouting``/``hairpin_output`` (nat, dstnat): east-west packets to
  an external IP (from a pod, or from a node's own processes) are tracked and
  DNATed to the pod, so conntrack restores the external IP on the replies.
* ``hairpin_postrouting`` (nat, srcnat-1): a managed pod talking to its own
  external IP (the DNAT sends the packet back to where it came from) is
  SNATed to its external IP, so it sees a peer it can answer. Only a packet
  first addressed to an external IP: kube-proxy's own hairpin (a pod sent back
  to itself through a ClusterIP) is kube-proxy's to masquerade.
* ``stateless_postrouting`` (filter, srcnat+1): untracked packets from a local
  managed pod get its external IP as source. Rewriting after routing keeps
  strict rp_filter on the pod's interface happy. Then UDP/SCTP packets from a
  filtered external IP are remembered in ``flows4/6`` (below). That rule looks
  at every packet, not only at the ones just rewritten: a pod on another node
  sending to an external IP arrives here already from its own external IP, and
  its replies must pass this node's filter. Last, an untracked ICMP error from a
  local managed pod, now from its external IP, gets that external IP back as the
  destination of the packet it quotes (the inbound rewrite had put the pod IP
  there), checksum-neutrally like the errors of ``icmp_errors``, so the outside
  client matches it to its socket (docs/datapath.md row 15).

Filtering (per-port mode and ``loadBalancerSourceRanges``) happens before any
address is rewritten, as the first rule of ``raw_prerouting``: one
verdict-map lookup on the destination (``dispatch4/6``) jumps to a fixed chain
per mode, which ends in ``drop`` or ``return`` (``accept`` there would end
``raw_prerouting`` before the rewrite); external IPs that need no filter are
not in the map, so whole-IP traffic pays one failed lookup. The filter uses
only headers and sets, never conntrack state (it runs before conntrack).
The data lives in sets:

* ``ports4/6``     ``external IP . protocol . port`` a per-port Service forwards;
* ``icmp4/6``      external IPs whose Service allows ICMP echo;
* ``ranged4/6`` and ``sources4/6``  external IPs with source ranges, and
  ``external IP . allowed source`` (concatenation with intervals);
* ``flows4/6``     a dynamic set the packet path fills (timeout 180 s) with the
  UDP/SCTP flows a filtered pod opened itself, so their replies are not taken
  for new inbound traffic. TCP needs no memory: a packet that is not a bare
  SYN cannot open a connection.

The flow memory is per node, so UDP/SCTP from outside that arrives at a node
without the pod is filtered at the pod's node: there the sets above also hold
the pod's filter keyed by its pod IP (UDP/SCTP ports only), with ``arrive4/6``
(pod IP -> the same per-mode chains) as its dispatch map; on the other nodes
the external IP is in ``away4/6`` and the filter chains let such packets on.
Not for a pod whose mappings filter UDP/SCTP with differing source ranges (see
:func:`wholeip.core.elements.pod_filter`); packets from another external IP are filtered where
they arrive, as before (their node remembered the flow on the way out).

ICMP errors (unreachable, fragmentation needed / packet too big, time
exceeded, parameter problem) and IPv6 neighbour discovery always pass, so path
MTU discovery never breaks. Traffic from the cluster networks (east-west) is
exempt from source ranges: pods reach the pod IP directly anyway, NetworkPolicy
is the tool for that.

The output is deterministic: the same state gives byte-identical JSON.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Final

from wholeip.core.model import IPAddress
from wholeip.core.steering import SteeringConfig, slot_capacity, slot_mark
from wholeip.names import (
    AFF_CHAIN,
    AFF_OLD_CHAIN,
    ARRIVE,
    AWAY,
    CLUSTER,
    CT_DECIDED,
    DISPATCH,
    EGRESS,
    EGRESS_SNAT,
    EGRESS_STEER,
    EGRESS_STEER_CHAIN,
    FILTERED,
    FLOWS,
    HAIRPIN_OUTPUT,
    HAIRPIN_POSTROUTING,
    HAIRPIN_PREROUTING,
    ICMP,
    ICMP_ERRORS,
    ICMPFIX4,
    ICMPGUARD6,
    INGRESS,
    LB_CHAIN,
    LB_CLUSTER_IP,
    LOCAL_PODS,
    MASQ_MARK,
    NODEPORT,
    NP_ADDR,
    NP_AFF_TIME,
    NP_GEN_B,
    NP_MASQ,
    NP_OLD_ADDR,
    NP_OLD_PORT,
    NP_PORT,
    NP_REFUSE,
    PER_PORT,
    PODNAT_ADDR,
    PODNAT_PORT,
    PODNAT_SELF,
    PORTS,
    RANGED,
    RAW_PREROUTING,
    REC_CHAIN,
    RECENT,
    REFUSE,
    SELF_HAIRPIN,
    SOURCES,
    STATELESS_POSTROUTING,
    SVC,
    SVC_ADDR,
    SVC_AFF_TIME,
    SVC_FILTER_OUTPUT,
    SVC_FILTER_PREROUTING,
    SVC_GEN_B,
    SVC_OLD_ADDR,
    SVC_OLD_PORT,
    SVC_PORT,
    SVC_REFUSE,
    SVC_SELF,
    SVC_UPORT6,
    UNTRACKED,
    WHOLE_IP,
    steer_slot_chain,
)
from wholeip.nft.doc import ChainDecl, JSONObj, Rule, SetDecl, Skeleton

PRIO_RAW = -300
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100

FLOW_TIMEOUT = 180
"""Seconds a UDP/SCTP flow opened by a filtered pod stays known without packets
(the kernel's own UDP conntrack timeout for streams is 120 s)."""
FLOW_CAPACITY = 131072
"""Most concurrent UDP/SCTP flows remembered per family and node."""

AT_POD_PROTOCOLS = ("udp", "sctp")
"""What a filtered pod's node filters when it arrived at another node (replies to the
flows the pod opened are known on its node only); and what ``flows4/6`` remember."""

ND_TYPES = ("nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "nd-redirect")
"""ICMPv6 neighbour discovery (RFC 4861): link-local protocol, never NATed."""

ICMP_ALWAYS = ("echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem")
ICMPV6_ALWAYS = (
    "echo-reply",
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    *ND_TYPES,
)

_FAMILIES: tuple[tuple[int, str, str], ...] = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))


# --------------------------------------------------------------------------- expression builders


def _payload(proto: str, field: str) -> JSONObj:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> JSONObj:
    return {"match": {"op": op, "left": left, "right": right}}


def _map_lookup(key: Any, name: str) -> JSONObj:
    return {"map": {"key": key, "data": "@" + name}}


def _ct_state() -> JSONObj:
    return {"ct": {"key": "state"}}


def _ct_untracked() -> JSONObj:
    return _match(_ct_state(), "untracked", op="in")


def _ct_dnat() -> JSONObj:
    return _match({"ct": {"key": "status"}}, "dnat", op="in")


def _concat(*items: Any) -> JSONObj:
    return {"concat": list(items)}


def _meta(key: str) -> JSONObj:
    return {"meta": {"key": key}}


def _raw(base: str, offset: int, length: int) -> JSONObj:
    return {"payload": {"base": base, "offset": offset, "len": length}}


# The ICMP errors of docs/datapath.md row 13 (path MTU): the embedded header is what
# the pod sent after our egress rewrite, so its source is the external IP. The pod can
# only match the error to its socket once that source is the pod IP again. nft raw
# payload writes never update checksums, hence a compensation (see
# hack/datapath-lab/FINDINGS.md).
# Row 15 is the same the other way round: an error the pod sends about a packet that
# came in through the external IP quotes the pod IP as that packet's destination (the
# inbound rewrite put it there); the outside client matches the error to its socket
# only once that destination is the external IP again. The same two maps hold both
# directions, told apart by their keys: ``external IP . external IP`` (inbound errors,
# keyed by the outer destination and the embedded source) and ``external IP . pod IP``
# (the pod's errors after the source rewrite, keyed by the outer source and the
# embedded destination); an external IP is never a pod IP, so they never meet.
INNER_SADDR4 = _raw("th", 160, 32)  # ICMP header (8) + IPv4 saddr offset (12), in bits
INNER_SADDR6 = _raw("th", 128, 128)  # ICMPv6 header (8) + IPv6 saddr offset (8)
INNER_DADDR4 = _raw("th", 192, 32)  # ICMP header (8) + IPv4 daddr offset (16)
INNER_DADDR6 = _raw("th", 256, 128)  # ICMPv6 header (8) + IPv6 daddr offset (24)
OUTER_SADDR4 = _raw("nh", 96, 32)
OUTER_SADDR6 = _raw("nh", 64, 128)
OUTER_DADDR4 = _raw("nh", 128, 32)
OUTER_DADDR6 = _raw("nh", 192, 128)
ICMP_FIX = {
    4: SetDecl(
        ICMPFIX4,
        ("ipv4_addr", "integer"),
        data="integer",
        typeof="ip daddr . @th,160,32 : @th,32,16",
    ),
    6: SetDecl(ICMPGUARD6, ("ipv6_addr", "integer"), typeof="ip6 daddr . @th,128,128"),
}


def icmp4_compensation(ext: IPAddress, pod: IPAddress) -> int:
    """The 16-bit word that, written into a zero word of an ICMPv4 error, keeps its checksum
    right when an embedded address changes from ``ext`` to ``pod``: the ones'-complement sum
    of ext's words minus pod's words. (Row 15's errors change the embedded destination from
    the pod IP to the external IP: ``icmp4_compensation(pod, ext)``.)"""
    total = 0
    for word in _words(ext.packed):
        total = _ones_add(total, word)
    for word in _words(pod.packed):
        total = _ones_add(total, ~word & 0xFFFF)
    return total


def _words(packed: bytes) -> list[int]:
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]


def _ones_add(a: int, b: int) -> int:
    total = a + b
    return (total & 0xFFFF) + (total >> 16)


_ICMP4_ERRORS = ("destination-unreachable", "time-exceeded", "parameter-problem")
_ICMP6_ERRORS = ("destination-unreachable", "packet-too-big", "time-exceeded", "parameter-problem")


def _icmp4_compensated(
    chain: str, key: JSONObj, rewrite: tuple[JSONObj, ...], *, only: tuple[JSONObj, ...] = ()
) -> list[Rule]:
    """ICMPv4 errors (that also match ``only``) whose ``key`` is in ``icmpfix4``: the
    compensation found there goes into the error's zero word, then ``rewrite`` makes the
    address changes it pays for. One rule
    per place of that word: frag-needed keeps the next-hop MTU in bytes 6-7, so the zero
    word is at offset 4; the other errors leave 4-7 zero but octet 5 may carry an RFC 4884
    length. A word that is not zero (an error already compensated once) is left alone."""
    rules = []
    for types, zero_word in (
        (
            (
                _match(_payload("icmp", "type"), "destination-unreachable"),
                _match(_payload("icmp", "code"), "frag-needed"),
            ),
            32,
        ),
        ((_match(_payload("icmp", "type"), {"set": list(_ICMP4_ERRORS)}),), 48),
    ):
        word = _raw("th", zero_word, 16)
        rules.append(
            Rule(
                chain,
                (
                    *types,
                    *only,
                    _match(key, f"@{ICMPFIX4}"),
                    _match(word, 0),
                    {"mangle": {"key": word, "value": _map_lookup(key, ICMPFIX4)}},
                    *rewrite,
                ),
            )
        )
    return rules


def _inbound_error_rules() -> list[Rule]:
    """``stateless_postrouting``, after the source rewrite (docs/datapath.md row 15): an
    untracked ICMP error from a local managed pod now leaves from its external IP; the
    packet it quotes came in through that external IP and was rewritten to the pod IP, so
    its destination gets the external IP back. IPv4: the compensation of ``icmpfix4``
    (keyed ``external IP . pod IP``) and a raw copy of the outer source. IPv6: as in
    ``icmp_errors``, the outer source is charged twice by typed rewrites around a raw copy
    (back to the pod IP, again to the external IP), which pays for the raw copy of the
    external IP into the embedded destination."""
    saddr4, saddr6 = _payload("ip", "saddr"), _payload("ip6", "saddr")
    # Only what the stateless path rewrote: a tracked error is conntrack's to translate.
    untracked = (_ct_untracked(),)
    rules = _icmp4_compensated(
        STATELESS_POSTROUTING,
        _concat(saddr4, INNER_DADDR4),
        ({"mangle": {"key": INNER_DADDR4, "value": OUTER_SADDR4}},),
        only=untracked,
    )
    rules.append(
        Rule(
            STATELESS_POSTROUTING,
            (
                _match(_payload("icmpv6", "type"), {"set": list(_ICMP6_ERRORS)}),
                *untracked,
                _match(_concat(saddr6, INNER_DADDR6), f"@{ICMPGUARD6}"),
                {"mangle": {"key": OUTER_SADDR6, "value": INNER_DADDR6}},
                {"mangle": {"key": saddr6, "value": _map_lookup(saddr6, EGRESS[6])}},
                {"mangle": {"key": INNER_DADDR6, "value": OUTER_SADDR6}},
            ),
        )
    )
    return rules


def _icmp_error_rules() -> list[Rule]:
    """The ``icmp_errors`` chain: every rule that matches also ends the packet's prerouting
    work. Neighbour discovery is accepted as it is; an ICMP error has its destination
    rewritten like any north-south packet's, so its rule ends with ``notrack accept``."""
    daddr4, daddr6 = _payload("ip", "daddr"), _payload("ip6", "daddr")
    fix_key = _concat(daddr4, INNER_SADDR4)
    rewrite4 = {"mangle": {"key": daddr4, "value": _map_lookup(daddr4, INGRESS[4])}}
    rewrite6 = {"mangle": {"key": daddr6, "value": _map_lookup(daddr6, INGRESS[6])}}
    done = ({"notrack": None}, {"accept": None})
    # Neighbour discovery is never rewritten: a router's unicast NUD probe to an external
    # IP (announced on the node's link by a MetalLB-style L2 speaker or proxy NDP) must
    # reach the node that answers for the address, not the pod, or the router's entry
    # fails every reachable time. Conntrack does not track ND, so a plain accept.
    rules = [Rule(ICMP_ERRORS, (_match(_payload("icmpv6", "type"), {"set": list(ND_TYPES)}), {"accept": None}))]
    rules += _icmp4_compensated(
        ICMP_ERRORS, fix_key, (rewrite4, {"mangle": {"key": INNER_SADDR4, "value": OUTER_DADDR4}}, *done)
    )
    # ICMPv6's checksum covers the pseudo-header, so a typed rewrite of the outer
    # destination updates it. Rewrite, copy the old address back raw, rewrite again:
    # the checksum is charged twice, which pays for the raw copy into the inner source.
    rules.append(
        Rule(
            ICMP_ERRORS,
            (
                _match(_payload("icmpv6", "type"), {"set": list(_ICMP6_ERRORS)}),
                _match(_concat(daddr6, INNER_SADDR6), f"@{ICMPGUARD6}"),
                rewrite6,
                {"mangle": {"key": OUTER_DADDR6, "value": INNER_SADDR6}},
                rewrite6,
                {"mangle": {"key": INNER_SADDR6, "value": OUTER_DADDR6}},
                *done,
            ),
        )
    )
    return rules


def _filter_rules() -> list[Rule]:
    """The per-mode chains ``raw_prerouting`` dispatches to (see the module docstring).

    They are entered with ``jump`` from a base chain whose later rules still have work to
    do, so a packet that passes ``return``s; ``accept`` would end ``raw_prerouting`` and
    skip the rewrite. For the same reason the reply checks are repeated in both chains
    instead of being a chain of their own: a ``return`` from there would land in the
    per-mode chain, not past it."""
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        icmp, always = ("icmp", ICMP_ALWAYS) if v == 4 else ("icmpv6", ICMPV6_ALWAYS)
        reply = _concat(daddr, _meta("l4proto"), _payload("th", "dport"), saddr, _payload("th", "sport"))
        replies = (
            # Not a bare SYN: cannot open a TCP connection, and is how replies to the pod's own
            # connections look.
            (_match({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn", op="!="), {"return": None}),
            (_match(reply, f"@{FLOWS[v]}"), {"return": None}),
            (_match(_payload(icmp, "type"), {"set": list(always)}), {"return": None}),
        )
        out_of_range = (
            _match(saddr, f"@{CLUSTER[v]}", op="!="),
            _match(daddr, f"@{RANGED[v]}"),
            _match(_concat(daddr, saddr), f"@{SOURCES[v]}", op="!="),
            {"drop": None},
        )
        # UDP/SCTP from outside to an external IP whose pod's node filters it (``away``): a
        # reply to a flow the pod opened is known there only, so the packet goes on to it.
        # Not from another external IP: such a packet comes from a managed pod through its
        # node, which remembered the flow on the way (see ``stateless_postrouting``), and it
        # is filtered here as before.
        at_the_pod = (
            _match(_meta("l4proto"), {"set": list(AT_POD_PROTOCOLS)}),
            _match(daddr, f"@{AWAY[v]}"),
            _match(saddr, f"@{CLUSTER[v]}", op="!="),
            _match(saddr, f"@{INGRESS[v]}", op="!="),
            {"return": None},
        )
        rules += [Rule(PER_PORT[v], expr) for expr in (*replies, at_the_pod)]
        rules += [
            Rule(PER_PORT[v], out_of_range),
            Rule(
                PER_PORT[v],
                (
                    _match(_payload(icmp, "type"), "echo-request"),
                    _match(daddr, f"@{ICMP[v]}"),
                    {"return": None},
                ),
            ),
            Rule(
                PER_PORT[v],
                (_match(_concat(daddr, _meta("l4proto"), _payload("th", "dport")), f"@{PORTS[v]}"), {"return": None}),
            ),
            Rule(PER_PORT[v], ({"drop": None},)),
        ]
        rules += [Rule(WHOLE_IP[v], expr) for expr in (*replies, at_the_pod)]
        rules.append(Rule(WHOLE_IP[v], out_of_range))
    return rules


def _remember_flow(v: int, proto: str) -> tuple[JSONObj, ...]:
    """A UDP/SCTP packet from a filtered address: its flow into ``flows``, source first."""
    saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
    flow = _concat(saddr, _meta("l4proto"), _payload("th", "sport"), daddr, _payload("th", "dport"))
    return (
        _match(_meta("l4proto"), {"set": list(AT_POD_PROTOCOLS)}),
        _match(saddr, f"@{FILTERED[v]}"),
        {"set": {"op": "update", "elem": flow, "set": f"@{FLOWS[v]}"}},
    )


def _prerouting_rules() -> list[Rule]:
    """``raw_prerouting``, ``ct_decided`` and ``untracked4/6`` (see the module docstring)."""
    rules = [
        Rule(RAW_PREROUTING, ({"vmap": {"key": _payload(p, "daddr"), "data": f"@{DISPATCH[v]}"}},))
        for v, p, _ in _FAMILIES
    ]
    # Conntrack has not seen a packet this early, so its state reads "invalid" here, unless
    # the packet carries its conntrack already: looped back from this node's own output, or
    # notracked (or given a conntrack template) by someone else's rule before ours. A
    # notrack would change nothing for such a packet, so it is left as conntrack decided.
    rules.append(Rule(RAW_PREROUTING, (_match(_ct_state(), "invalid", op="!="), {"goto": {"target": CT_DECIDED}})))
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        icmp = "icmp" if v == 4 else "ipv6-icmp"
        outside = _match(saddr, f"@{CLUSTER[v]}", op="!=")
        hops = _payload(proto, "ttl" if v == 4 else "hoplimit")
        rewrite = {"mangle": {"key": daddr, "value": _map_lookup(daddr, INGRESS[v])}}
        rules += [
            Rule(
                RAW_PREROUTING,
                (_match(_meta("l4proto"), icmp), outside, {"jump": {"target": ICMP_ERRORS}}),
            ),
            # The common case first and in one rule: from the outside to an external IP.
            # The source test has to come first (nothing after the rewrite could undo
            # it); the map lookup then fails for any other destination, ending the rule.
            # A packet whose hop limit ends at this node is not rewritten (next rule): the
            # "time exceeded" this node sends then quotes the external IP the client sent
            # to, not the pod IP (docs/datapath.md row 15; traceroute).
            Rule(RAW_PREROUTING, (outside, _match(hops, 1, op=">"), rewrite, {"notrack": None}, {"accept": None})),
            Rule(
                RAW_PREROUTING,
                (
                    _match(hops, 1, op="<="),
                    outside,
                    _match(daddr, f"@{INGRESS[v]}"),
                    {"notrack": None},
                    {"accept": None},
                ),
            ),
            _lb_keep_tracked(v, proto),
            Rule(
                RAW_PREROUTING,
                (
                    _match(saddr, f"@{EGRESS[v]}"),
                    _match(daddr, f"@{CLUSTER[v]}", op="!="),
                    {"notrack": None},
                    {"goto": {"target": UNTRACKED[v]}},
                ),
            ),
            # North-south traffic another node already rewrote (it arrived there,
            # docs/datapath.md row 12) reaches the pod's node addressed to the pod. UDP/SCTP
            # to a filtered pod was let through there (``away``) and meets the pod's filter
            # here, keyed by the pod IP, where the flows the pod opened are known. Then out
            # of conntrack too.
            Rule(
                RAW_PREROUTING,
                (
                    _match(_meta("l4proto"), {"set": list(AT_POD_PROTOCOLS)}),
                    outside,
                    _match(saddr, f"@{INGRESS[v]}", op="!="),
                    {"vmap": {"key": daddr, "data": f"@{ARRIVE[v]}"}},
                ),
            ),
            Rule(
                RAW_PREROUTING,
                (_match(daddr, f"@{EGRESS[v]}"), outside, {"notrack": None}, {"accept": None}),
            ),
            # An untracked packet to an external IP (from a local managed pod: any Service's,
            # its own: docs/datapath.md row 11) is rewritten here too, statelessly: the NAT
            # hooks never see it.
            Rule(UNTRACKED[v], (_match(_meta("l4proto"), icmp), {"jump": {"target": ICMP_ERRORS}})),
            # A filtered pod's flow, under its pod IP (``filtered`` holds it on the pod's node
            # when that node filters for the pod): for replies that arrive at another node and
            # come here rewritten. Inbound packets never pass this chain.
            Rule(UNTRACKED[v], _remember_flow(v, proto)),
            Rule(UNTRACKED[v], (rewrite,)),
            Rule(
                CT_DECIDED,
                (
                    _match(_ct_state(), "untracked"),
                    _match(_meta("nfproto"), "ipv4" if v == 4 else "ipv6"),
                    {"goto": {"target": UNTRACKED[v]}},
                ),
            ),
        ]
    return rules


# --------------------------------------------------------------------------- LoadBalancer IP -> ClusterIP
#
# ``--lb-to-clusterip`` (docs/datapath.md row 20): a pod of this node or the node itself
# that addresses the LoadBalancer IP of a Service we do not map 1:1 reaches the Service's
# ClusterIP instead, port unchanged, for proxies that leave that traffic unserved
# (kube-proxy's IPVS mode with externalTrafficPolicy Local, kubernetes issue 75262). One
# map per family, ``lbclusterip4/6`` (LB IP . protocol . port -> ClusterIP), and
# ``localpods4/6`` (this node's pod CIDRs); the rules are always there and inert while the
# maps are empty (the flag off): one skeleton whatever the flags, so turning the flag on or
# off changes elements only, never a declaration or a rule.
#
# * nat prerouting (``hairpin_prerouting``, after the external-IP DNAT, which ends the chain
#   for our own external IPs): from this node's pods only (``localpods``), so traffic from
#   outside the cluster, and from other nodes, is never touched.
# * nat output (``hairpin_output``): the node's own processes (host-network pods).
# * nat postrouting (``hairpin_postrouting``): the node's own connections among them are
#   masqueraded. Their source is a node address, often not one the endpoint's reply finds
#   its way back with: with IPVS the LoadBalancer IP itself is bound to kube-ipvs0 on every
#   node, so the kernel picks it as the source, and the reply to it from a remote endpoint
#   ends on the endpoint's node. Pods are not masqueraded: the endpoint replies to the pod
#   IP, which routes through the pod's node, where conntrack (and the proxy) turn the reply
#   back, whether the endpoint is on this node or another; the pod keeps its address for
#   the server's NetworkPolicy. A pod that the proxy sends back to itself is the proxy's own
#   ClusterIP hairpin, which it masquerades for ClusterIP traffic anyway (IPVS: KUBE-LOOP-BACK).
#   ipvs-node-controller masquerades pods too; we keep their address.
# * raw prerouting: a managed pod's packet to outside the cluster networks is made
#   untracked before the NAT hooks could see it; one to a redirected LB IP port is
#   accepted just before, so it stays tracked and takes the redirect like any pod's.


LB_PROTOCOLS = ("tcp", "udp", "sctp")
"""The protocols of Service ports, the ones ``lbclusterip4/6`` is keyed by."""


def _lb_key(proto: str, v: int) -> JSONObj:
    return _concat(_payload(proto, "daddr"), _meta("l4proto"), _payload("th", "dport"))


def _lb_keep_tracked(v: int, proto: str) -> Rule:
    """``raw_prerouting``, before a managed pod's packets to the outside are made untracked."""
    return Rule(
        RAW_PREROUTING,
        (
            _match(_payload(proto, "saddr"), f"@{EGRESS[v]}"),
            _match(_lb_key(proto, v), f"@{LB_CLUSTER_IP[v]}"),
            {"accept": None},
        ),
    )


def _lb_to_clusterip_rules() -> list[Rule]:
    """The DNATs and the masquerade of ``--lb-to-clusterip`` (see above)."""
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        redirect = {"dnat": {"family": proto, "addr": _map_lookup(_lb_key(proto, v), LB_CLUSTER_IP[v])}}
        rules.append(Rule(HAIRPIN_PREROUTING, (_match(_payload(proto, "saddr"), f"@{LOCAL_PODS[v]}"), redirect)))
        rules.append(Rule(HAIRPIN_OUTPUT, (redirect,)))
        original = _concat(
            {"ct": {"key": f"{proto} daddr", "dir": "original"}},
            _meta("l4proto"),
            {"ct": {"key": "proto-dst", "dir": "original"}},
        )
        # The connection's original port, not the packet's: the proxy may have translated
        # it (targetPort). nftables 1.0.6 gives ``ct original proto-dst`` a type only under
        # one protocol, hence a rule per protocol.
        rules += [
            Rule(
                HAIRPIN_POSTROUTING,
                (
                    _ct_dnat(),
                    _match(_meta("l4proto"), l4),
                    _match({"fib": {"result": "type", "flags": ["saddr"]}}, "local"),
                    _match(original, f"@{LB_CLUSTER_IP[v]}"),
                    {"masquerade": None},
                ),
            )
            for l4 in LB_PROTOCOLS
        ]
    return rules


# --------------------------------------------------------------------------- pod ports on the node's address
#
# The podnat annotation (docs/datapath.md row 19, :mod:`wholeip.core.podnat`): a pod of this
# node publishes ``(node address, protocol, port)`` as ``(pod IP, pod port)``. Unlike an
# external IP this is conntrack NAT, as podnat-controller does it: the node's address is
# shared with the node's own services, so only the published ports are taken, and the
# replies leave with the node's address because conntrack turns them back.
#
# * nat prerouting (``hairpin_prerouting``) and nat output (``hairpin_output``): ``dnat`` to
#   the pod through two maps keyed by ``daddr . l4proto . dport``: ``podnat4/6`` gives the
#   pod IP, ``podnatport4/6`` its port (nftables 1.0.6 cannot declare a map with
#   concatenated data in JSON; the lookups run for a connection's first packet only). A
#   port not in the maps fails the lookup and the packet goes on untouched: the node's own
#   services keep every port nobody published.
# * nat postrouting (``hairpin_postrouting``): a pod reaching its own published port
#   through the node's address comes back to itself; masqueraded (``podnatself4/6``) so its
#   reply has a peer other than itself.
# * the stateless path leaves these flows alone: a packet to a node address is not to an
#   external IP (the guards refuse node addresses as external IPs), so ``raw_prerouting``
#   neither rewrites nor untracks it; the reply from the pod stays tracked because a pod
#   with published ports is never a whole-IP backend on the same family (the model
#   withdraws its entries, ``PodNATOnManagedPod``): a managed pod's packets to the outside
#   are untracked and would leave with its external IP.

PODNAT_PROTOCOLS = ("tcp", "udp", "sctp")
"""The protocols a published port may have (podnat: tcp, udp; we add sctp)."""


def _podnat_rules() -> list[Rule]:
    """The DNATs and the self-hairpin masquerade of the published pod ports (see above)."""
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        key = _concat(_payload(proto, "daddr"), _meta("l4proto"), _payload("th", "dport"))
        publish = (
            _match(_meta("l4proto"), {"set": list(PODNAT_PROTOCOLS)}),
            {
                "dnat": {
                    "family": proto,
                    "addr": _map_lookup(key, PODNAT_ADDR[v]),
                    "port": _map_lookup(key, PODNAT_PORT[v]),
                }
            },
        )
        rules += [Rule(HAIRPIN_PREROUTING, publish), Rule(HAIRPIN_OUTPUT, publish)]
        rules.append(
            Rule(
                HAIRPIN_POSTROUTING,
                (
                    _ct_dnat(),
                    _match(_concat(_payload(proto, "saddr"), _payload(proto, "daddr")), f"@{PODNAT_SELF[v]}"),
                    {"masquerade": None},
                ),
            )
        )
    return rules


# --------------------------------------------------------------------------- egress IP
#
# An egress Service's members (docs/datapath.md row 18, :mod:`wholeip.core.egressip`) leave
# with its LoadBalancer IP, which one node holds (announces). Both halves are conntrack,
# not the stateless path: many pods share one address, so source ports must be allocated,
# and the replies find their pod through conntrack.
#
# * nat postrouting (``hairpin_postrouting``, srcnat-1, before a CNI's masquerade, which
#   then no longer runs for the connection): on the holder, a member's new flow to outside
#   the cluster networks is SNATed to the IP (``egresssnat4/6``: pod IP -> egress IP, every
#   member wherever it runs); no port range, so the kernel keeps the source port when it is
#   free. On another node, a member steered to the holder (below) gets a NAT binding to its
#   own address, so that a CNI's masquerade cannot give it the node's address on the way.
# * filter prerouting (``egress_steer``, dstnat+10, after a proxy's DNAT, so a flow to a
#   Service that became a flow to a pod is not steered): a packet of a flow a member of
#   this node opened (``ct direction original``: not the replies of a flow DNATed to it),
#   whose IP another node holds, to outside the cluster networks, goes through
#   ``egresssteer4/6`` (pod IP -> ``goto steer_slot_<n>``); chain ``steer_slot_<n>`` sets the
#   holder's slot into the mark bits (``--egress-mark-mask``) and keeps every other bit, so
#   the policy routing (:mod:`wholeip.agent.policyroute`) sends the packet to the holder.
#   nftables 1.0.6 cannot OR a map's value into the mark, hence one chain per slot: the
#   skeleton depends on the mask (:func:`skeleton_for`), never on the cluster.

PRIO_STEER = PRIO_DSTNAT + 10
STEER_SLOTS_MAX = 255
"""Most holder slots the skeleton has chains for (a wider mask has more values)."""


def steer_slots(mark_mask: int) -> int:
    """How many holder slots the table can mark with ``mark_mask``."""
    return min(slot_capacity(mark_mask), STEER_SLOTS_MAX)


def _egress_ip_rules(mark_mask: int) -> list[Rule]:
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        outside = _match(daddr, f"@{CLUSTER[v]}", op="!=")
        # The member's own flows only: a reply (of a flow DNATed to it, a NodePort or a
        # published port) leaves as its flow came, from this node.
        original = _match({"ct": {"key": "direction"}}, "original")
        rules.append(
            Rule(EGRESS_STEER_CHAIN, (outside, original, {"vmap": {"key": saddr, "data": f"@{EGRESS_STEER[v]}"}}))
        )
        snat = {"snat": {"family": proto, "addr": _map_lookup(saddr, EGRESS_SNAT[v])}}
        rules.append(Rule(HAIRPIN_POSTROUTING, (outside, snat)))
        rules.append(
            Rule(
                HAIRPIN_POSTROUTING,
                (outside, _match(saddr, f"@{EGRESS_STEER[v]}"), {"snat": {"family": proto, "addr": saddr}}),
            )
        )
    keep = ~mark_mask & 0xFFFFFFFF
    for slot in range(1, steer_slots(mark_mask) + 1):
        value = {"|": [{"&": [_meta("mark"), keep]}, slot_mark(slot, mark_mask)]}
        rules.append(Rule(steer_slot_chain(slot), ({"mangle": {"key": _meta("mark"), "value": value}},)))
    return rules


# --------------------------------------------------------------------------- delegated Services
#
# Services labelled ``service.kubernetes.io/service-proxy-name: <ours>`` are ignored by
# kube-proxy; their ClusterIPs and NodePorts are served here (docs/datapath.md rows 16 and
# 17, :mod:`wholeip.core.delegated`), with conntrack NAT as kube-proxy does, and without a
# rule per Service or endpoint:
#
# * a front-end (ClusterIP . protocol . port, or protocol . nodePort on this node's own
#   addresses, loopback excepted) is looked up in a verdict map (``svc4/6``,
#   ``nodeport4/6``, in ``hairpin_prerouting`` and ``hairpin_output``, after our other
#   DNATs) that says ``goto lb_<N>`` (or ``aff_<N>`` with sessionAffinity ClientIP): N is
#   the front-end's number of endpoint *slots*, one of the fixed :data:`SLOT_CLASSES`
#   (``nft``'s ``mod`` takes a constant, so the slot count chooses the chain);
# * the class chain DNATs to ``front . hash mod N`` looked up in the slot maps
#   (``svcaddr``/``svcport``, ``npaddr``/``npport``: address and port in two maps, as
#   nftables 1.0.6 cannot declare concatenated data in JSON; both lookups hash the same
#   packet the same way, so they agree). ``lb_<N>`` hashes the flow (``symhash``: each
#   connection on its own), ``aff_<N>`` the client's address (``jhash``: one client, one
#   endpoint). An IPv6 ClusterIP key and an IPv6 client hash, looked up twice, take more
#   registers than one nftables 1.0.6 statement has ("BUG: register reg_low 16 invalid"),
#   so ``aff_<N>`` takes an IPv6 ClusterIP's port from ``svcuport6`` (front-ends whose
#   endpoints share one port) and hashes the flow for the others (no affinity; README);
# * affinity across endpoint changes (:func:`wholeip.core.delegated.next_generation`):
#   ``aff_<N>`` records each client (``recenta/b4/6``: client . front-end, for the
#   Service's timeout, by the ``rec_<T>_<gen>`` chain its ``svcafftime``/``npafftime``
#   element jumps to) in the front-end's current generation; a client found recorded in
#   the other one (``svcgenb``/``npgenb`` say which is current) goes to ``affo_<N>``,
#   which refreshes that record and DNATs through the previous slot table
#   (``svcold*``/``npold*``, falling back to the current one): the clients of the last
#   table keep their endpoints within their timeout, new ones take the new table;
# * the slots (:func:`wholeip.core.delegated.frontend_elements`): up to 8 endpoints
#   without affinity, slot i is endpoint i; otherwise at least 256 slots (the class of 8n
#   beyond 32 endpoints) filled as Maglev does, so an endpoint change moves about its own
#   share of the clients (bench/wholeip_bench/delegated.py);
# * a front-end with no endpoint is in ``svcrefuse``/``nprefuse`` instead: ``goto refuse``
#   (TCP reset, ICMP port unreachable: refused at once), or ``drop`` for a Local policy
#   whose endpoints are all on other nodes; looked up before the DNAT (filter base chains
#   at dstnat-10 in prerouting and output), for new connections only;
# * masquerade (``hairpin_postrouting``): NodePorts with externalTrafficPolicy Cluster
#   (``npmasq``) and ClusterIP traffic from outside the cluster networks get kube-proxy's
#   mark bit (0x4000) before the DNAT and are masqueraded after it; a pod that its Service
#   sends back to itself (``svcself``) is masqueraded; and so is a flow from outside
#   DNATed to a local whole-IP or per-port pod (``egress4/6``): that pod's packets to the
#   outside are untracked and leave from its external IP, so its reply would never be
#   turned back into the NodePort's.

SLOT_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 64, 128, 256, 512, 1024, 4096)
"""The numbers of endpoint slots a front-end may have: one class chain each. ``nft``'s
``mod`` takes a constant, so a front-end's slot count chooses its chain."""

AFFINITY_CLASSES = tuple(c for c in SLOT_CLASSES if c >= 256)
"""The slot counts of front-ends with sessionAffinity ClientIP (at least 256 slots,
:data:`wholeip.core.delegated.AFFINITY_SLOTS`): ``aff_<N>`` and ``affo_<N>`` each."""

TIMEOUT_CLASSES = (1, 2, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
"""The affinity timeouts (seconds) the skeleton has a ``rec_`` chain for: an update's timeout
is a constant of its rule, and the skeleton does not grow with the cluster. Any other
``timeoutSeconds`` is applied as the nearest (:func:`timeout_class`)."""

GENERATIONS = ("a", "b")
"""A front-end with affinity alternates between two generations, one per endpoint change:
clients recorded in the previous one keep its slot table (see above)."""

RECENT_CAPACITY = 1 << 18
"""Most (client, front-end) records per ``recent`` set; beyond, new clients are not recorded
(they keep the current slot table, as unrecorded clients do)."""

_SVC_PROTOCOLS = ("tcp", "udp", "sctp")
_HASH_SEED = 0x77686970


def slot_count(endpoints: int) -> int:
    """How many slots a front-end with ``endpoints`` endpoints gets (see above)."""
    if endpoints <= 8:
        return endpoints
    return next((c for c in SLOT_CLASSES if c >= 8 * endpoints), SLOT_CLASSES[-1])


def _front_key(v: int, proto: str, *, nodeport: bool) -> list[JSONObj]:
    parts: list[JSONObj] = [] if nodeport else [_payload(proto, "daddr")]
    return [*parts, _meta("l4proto"), _payload("th", "dport")]


def _slot_typeof(v: int, *, nodeport: bool, data: str) -> str:
    proto = "ip" if v == 4 else "ip6"
    front = "meta l4proto . th dport" if nodeport else f"{proto} daddr . meta l4proto . th dport"
    value = f"{proto} daddr" if data == "addr" else "th dport"
    return f"{front} . numgen random mod 2 : {value}"


def _slot_decls(v: int, addr_type: str) -> list[SetDecl]:
    out = []
    for nodeport, addr_name, port_name in (
        (False, SVC_ADDR, SVC_PORT),
        (True, NP_ADDR, NP_PORT),
        (False, SVC_OLD_ADDR, SVC_OLD_PORT),
        (True, NP_OLD_ADDR, NP_OLD_PORT),
    ):
        key = (
            ("inet_proto", "inet_service", "integer")
            if nodeport
            else (addr_type, "inet_proto", "inet_service", "integer")
        )
        out.append(SetDecl(addr_name[v], key, data=addr_type, typeof=_slot_typeof(v, nodeport=nodeport, data="addr")))
        out.append(
            SetDecl(port_name[v], key, data="inet_service", typeof=_slot_typeof(v, nodeport=nodeport, data="port"))
        )
    if v == 6:
        out.append(SetDecl(SVC_UPORT6, (addr_type, "inet_proto", "inet_service"), data="inet_service"))
    return out


def _local_address(v: int, proto: str) -> tuple[JSONObj, ...]:
    """This node's address, not loopback (kube-proxy serves NodePorts on localhost only
    with route_localnet)."""
    loopback = {"prefix": {"addr": "127.0.0.0", "len": 8}} if v == 4 else "::1"
    return (
        _match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"),
        _match(_payload(proto, "daddr"), loopback, op="!="),
    )


def _is_service_protocol() -> JSONObj:
    return _match(_meta("l4proto"), {"set": list(_SVC_PROTOCOLS)})


def timeout_class(seconds: int) -> int:
    """The affinity timeout applied for ``seconds``: the nearest of :data:`TIMEOUT_CLASSES`
    by ratio (the larger on a tie)."""
    return min(TIMEOUT_CLASSES, key=lambda c: (abs(math.log(c / max(seconds, 1))), -c))


def rec_chain(timeout: int, generation: str) -> str:
    """The chain that records a client's use of a front-end for ``timeout`` seconds in
    ``recent<generation>4/6``."""
    return f"{REC_CHAIN}{timeout}_{generation}"


def _recent_key(v: int, proto: str) -> JSONObj:
    """(client, front-end) as the ``recent`` sets hold it: the addresses, protocol and port;
    for IPv6 a 32-bit hash of them (a key over 16 bytes does not fit one dynamic set update
    in nftables 1.0.6; two pairs that collide share a record, which can only send a client
    to the previous slot table of its own front-end, whose endpoints are all current)."""
    parts = _concat(_payload(proto, "saddr"), _payload(proto, "daddr"), _meta("l4proto"), _payload("th", "dport"))
    if v == 4:
        return parts
    return {"jhash": {"mod": 0xFFFFFFFF, "seed": _HASH_SEED, "expr": parts}}


def _dnat(proto: str, addr: JSONObj, port: JSONObj) -> JSONObj:
    return {"dnat": {"family": proto, "addr": addr, "port": port}}


def _slot_rules(chain: str, n: int, *, affinity: bool, old: bool = False) -> list[Rule]:
    """DNAT through a class chain's slot maps (``old``: the previous slot table's)."""
    rules: list[Rule] = []
    for nodeport in (False, True):
        if old:
            addr_map, port_map = (NP_OLD_ADDR, NP_OLD_PORT) if nodeport else (SVC_OLD_ADDR, SVC_OLD_PORT)
        else:
            addr_map, port_map = (NP_ADDR, NP_PORT) if nodeport else (SVC_ADDR, SVC_PORT)
        for v, proto, _ in _FAMILIES:
            front = _front_key(v, proto, nodeport=nodeport)
            client: JSONObj = {"jhash": {"mod": n, "seed": _HASH_SEED, "expr": _payload(proto, "saddr")}}
            if affinity and v == 6 and not nodeport:
                # An IPv6 ClusterIP key and a hash of the IPv6 client address, looked up
                # twice, take more registers than nftables 1.0.6 has for one statement
                # ("BUG: register reg_low 16 invalid"): the address comes from the slots by
                # the client's hash and the port from ``svcuport6``, which holds the
                # front-ends whose endpoints share one port. The others miss it and fall
                # through to the next rule: a hash of the flow (no affinity, README).
                lookup = _map_lookup(_concat(*front, client), addr_map[v])
                rules.append(Rule(chain, (_dnat(proto, lookup, _map_lookup(_concat(*front), SVC_UPORT6)),)))
                if old:
                    continue  # the current table's rules follow
            spread = client if affinity and (nodeport or v == 4) else {"symhash": {"mod": n}}
            key = _concat(*front, spread)
            rules.append(Rule(chain, (_dnat(proto, _map_lookup(key, addr_map[v]), _map_lookup(key, port_map[v])),)))
    return rules


def _record_rules(chain: str, which: str) -> list[Rule]:
    """Jump to the front-end's ``rec_`` chain of its timeout class: its current generation's
    (``which="cur"``) or its previous one's (``"old"``)."""
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        front = _concat(*_front_key(v, proto, nodeport=False))
        port = _concat(*_front_key(v, proto, nodeport=True))
        rules.append(Rule(chain, ({"vmap": {"key": front, "data": f"@{SVC_AFF_TIME[which][v]}"}},)))
        rules.append(
            Rule(
                chain,
                (*_local_address(v, proto), {"vmap": {"key": port, "data": f"@{NP_AFF_TIME[which][v]}"}}),
            )
        )
    return rules


def _class_rules() -> tuple[list[ChainDecl], list[Rule]]:
    chains: list[ChainDecl] = []
    rules: list[Rule] = []
    for n in SLOT_CLASSES:
        chains.append(ChainDecl(f"{LB_CHAIN}{n}"))
        rules += _slot_rules(f"{LB_CHAIN}{n}", n, affinity=False)
    for n in AFFINITY_CLASSES:
        aff, old = f"{AFF_CHAIN}{n}", f"{AFF_OLD_CHAIN}{n}"
        chains += [ChainDecl(aff), ChainDecl(old)]
        # A client recorded in the generation before the front-end's current one used the
        # previous slot table within its timeout: it keeps it (affo_N).
        for v, proto, _ in _FAMILIES:
            key = _recent_key(v, proto)
            front = _concat(*_front_key(v, proto, nodeport=False))
            port = _concat(*_front_key(v, proto, nodeport=True))
            for previous, current_b in (("b", "!="), ("a", "==")):
                seen = _match(key, f"@{RECENT[previous][v]}")
                # A ClusterIP front-end with affinity, then a NodePort one (this node's address).
                for where, k, times, gen_b in (
                    ((), front, SVC_AFF_TIME, SVC_GEN_B),
                    (_local_address(v, proto), port, NP_AFF_TIME, NP_GEN_B),
                ):
                    is_front = _match(k, f"@{times['cur'][v]}")
                    in_b = _match(k, f"@{gen_b[v]}", op=current_b)
                    rules.append(Rule(aff, (*where, seen, is_front, in_b, {"goto": {"target": old}})))
        rules += _record_rules(aff, "cur")
        rules += _slot_rules(aff, n, affinity=True)
        rules += _record_rules(old, "old")
        rules += _slot_rules(old, n, affinity=True, old=True)
        rules += _slot_rules(old, n, affinity=True)
    for timeout in TIMEOUT_CLASSES:
        for generation in GENERATIONS:
            chain = rec_chain(timeout, generation)
            chains.append(ChainDecl(chain))
            for v, proto, _ in _FAMILIES:
                elem = {"elem": {"val": _recent_key(v, proto), "timeout": timeout}}
                rules.append(
                    Rule(chain, ({"set": {"op": "update", "elem": elem, "set": f"@{RECENT[generation][v]}"}},))
                )
    return chains, rules


def _mark_masquerade() -> JSONObj:
    mark = _meta("mark")
    return {"mangle": {"key": mark, "value": {"|": [mark, MASQ_MARK]}}}


def _delegated_rules() -> tuple[list[ChainDecl], list[Rule]]:
    chains, rules = _class_rules()
    chains += [
        ChainDecl(REFUSE),
        ChainDecl(SVC_FILTER_PREROUTING, "filter", "prerouting", PRIO_DSTNAT - 10, "accept"),
        ChainDecl(SVC_FILTER_OUTPUT, "filter", "output", PRIO_DSTNAT - 10, "accept"),
    ]
    rules += [
        Rule(REFUSE, (_match(_meta("l4proto"), "tcp"), {"reject": {"type": "tcp reset"}})),
        Rule(REFUSE, ({"reject": {"type": "icmpx", "expr": "port-unreachable"}},)),
    ]
    new = _match(_ct_state(), "new", op="in")
    for chain in (SVC_FILTER_PREROUTING, SVC_FILTER_OUTPUT):
        for v, proto, _ in _FAMILIES:
            front = _concat(*_front_key(v, proto, nodeport=False))
            rules.append(
                Rule(chain, (new, _is_service_protocol(), {"vmap": {"key": front, "data": f"@{SVC_REFUSE[v]}"}}))
            )
            port = _concat(*_front_key(v, proto, nodeport=True))
            rules.append(
                Rule(
                    chain,
                    (
                        new,
                        _is_service_protocol(),
                        *_local_address(v, proto),
                        {"vmap": {"key": port, "data": f"@{NP_REFUSE[v]}"}},
                    ),
                )
            )
    for chain in (HAIRPIN_PREROUTING, HAIRPIN_OUTPUT):
        for v, proto, _ in _FAMILIES:
            front = _concat(*_front_key(v, proto, nodeport=False))
            port = _concat(*_front_key(v, proto, nodeport=True))
            if chain == HAIRPIN_PREROUTING:
                # From outside the cluster networks to a ClusterIP: masqueraded, as kube-proxy
                # does (the endpoint's reply must come back through this node).
                rules.append(
                    Rule(
                        chain,
                        (
                            _is_service_protocol(),
                            _match(_payload(proto, "saddr"), f"@{CLUSTER[v]}", op="!="),
                            _match(front, f"@{SVC[v]}"),
                            _mark_masquerade(),
                        ),
                    )
                )
            rules.append(Rule(chain, (_is_service_protocol(), {"vmap": {"key": front, "data": f"@{SVC[v]}"}})))
            local = _local_address(v, proto)
            if chain == HAIRPIN_PREROUTING:
                rules.append(
                    Rule(chain, (_is_service_protocol(), *local, _match(port, f"@{NP_MASQ[v]}"), _mark_masquerade()))
                )
            rules.append(
                Rule(chain, (_is_service_protocol(), *local, {"vmap": {"key": port, "data": f"@{NODEPORT[v]}"}}))
            )
    for v, proto, _ in _FAMILIES:
        rules.append(
            Rule(
                HAIRPIN_POSTROUTING,
                (
                    _ct_dnat(),
                    _match(_concat(_payload(proto, "saddr"), _payload(proto, "daddr")), f"@{SVC_SELF[v]}"),
                    {"masquerade": None},
                ),
            )
        )
        # An outside client DNATed to a local whole-IP (or per-port) pod: the pod's packets
        # to the outside are untracked and leave from its external IP (the stateless path),
        # so its reply would never be turned back into the NodePort's. Masqueraded, its
        # reply goes to this node, tracked (externalTrafficPolicy Local then loses the
        # client's address for such a pod; README).
        rules.append(
            Rule(
                HAIRPIN_POSTROUTING,
                (
                    _ct_dnat(),
                    _match(_payload(proto, "saddr"), f"@{CLUSTER[v]}", op="!="),
                    _match(_payload(proto, "daddr"), f"@{EGRESS[v]}"),
                    {"masquerade": None},
                ),
            )
        )
    rules.append(
        Rule(
            HAIRPIN_POSTROUTING,
            (
                _ct_dnat(),
                _match({"&": [_meta("mark"), MASQ_MARK]}, MASQ_MARK),
                {"masquerade": None},
            ),
        )
    )
    return chains, rules


def _affinity_sets(v: int, addr_type: str) -> list[SetDecl]:
    front = (addr_type, "inet_proto", "inet_service")
    port = ("inet_proto", "inet_service")
    out = []
    for generation in GENERATIONS:
        if v == 4:
            key: tuple[str, ...] = (addr_type, addr_type, "inet_proto", "inet_service")
            typeof = None
        else:
            key, typeof = ("integer",), "numgen random mod 2"  # a 32-bit hash, see _recent_key
        out.append(
            SetDecl(
                RECENT[generation][v],
                key,
                flags=("timeout",),
                timeout=TIMEOUT_CLASSES[-1],
                size=RECENT_CAPACITY,
                typeof=typeof,
            )
        )
    out += [SetDecl(SVC_GEN_B[v], front), SetDecl(NP_GEN_B[v], port)]
    for which in ("cur", "old"):
        out += [
            SetDecl(SVC_AFF_TIME[which][v], front, data="verdict"),
            SetDecl(NP_AFF_TIME[which][v], port, data="verdict"),
        ]
    return out


def _delegated_sets(v: int, addr_type: str) -> list[SetDecl]:
    front = (addr_type, "inet_proto", "inet_service")
    port = ("inet_proto", "inet_service")
    return [
        SetDecl(SVC[v], front, data="verdict"),
        SetDecl(NODEPORT[v], port, data="verdict"),
        *_slot_decls(v, addr_type),
        *_affinity_sets(v, addr_type),
        SetDecl(NP_MASQ[v], port),
        SetDecl(SVC_REFUSE[v], front, data="verdict"),
        SetDecl(NP_REFUSE[v], port, data="verdict"),
        SetDecl(SVC_SELF[v], (addr_type, addr_type)),
    ]


# --------------------------------------------------------------------------- skeleton


def skeleton(mark_mask: int = SteeringConfig().mark_mask) -> Skeleton:
    """The fixed part of the table (independent of the cluster; the egress mark bits decide
    the chains of the holder slots)."""
    sets: list[SetDecl] = []
    for v, _, addr_type in _FAMILIES:
        sets += [
            SetDecl(CLUSTER[v], (addr_type,), flags=("interval",)),
            SetDecl(INGRESS[v], (addr_type,), data=addr_type),
            SetDecl(EGRESS[v], (addr_type,), data=addr_type),
            SetDecl(SELF_HAIRPIN[v], (addr_type, addr_type)),
            SetDecl(PODNAT_ADDR[v], (addr_type, "inet_proto", "inet_service"), data=addr_type),
            SetDecl(PODNAT_PORT[v], (addr_type, "inet_proto", "inet_service"), data="inet_service"),
            SetDecl(PODNAT_SELF[v], (addr_type, addr_type)),
            SetDecl(DISPATCH[v], (addr_type,), data="verdict"),
            SetDecl(AWAY[v], (addr_type,)),
            SetDecl(ARRIVE[v], (addr_type,), data="verdict"),
            ICMP_FIX[v],
            SetDecl(FILTERED[v], (addr_type,)),
            SetDecl(LB_CLUSTER_IP[v], (addr_type, "inet_proto", "inet_service"), data=addr_type),
            SetDecl(LOCAL_PODS[v], (addr_type,), flags=("interval",)),
            SetDecl(EGRESS_SNAT[v], (addr_type,), data=addr_type),
            SetDecl(EGRESS_STEER[v], (addr_type,), data="verdict"),
            SetDecl(PORTS[v], (addr_type, "inet_proto", "inet_service")),
            SetDecl(ICMP[v], (addr_type,)),
            SetDecl(RANGED[v], (addr_type,)),
            SetDecl(SOURCES[v], (addr_type, addr_type), flags=("interval",)),
            SetDecl(
                FLOWS[v],
                (addr_type, "inet_proto", "inet_service", addr_type, "inet_service"),
                flags=("timeout",),
                timeout=FLOW_TIMEOUT,
                size=FLOW_CAPACITY,
            ),
            *_delegated_sets(v, addr_type),
        ]
    delegated_chains, delegated_rules = _delegated_rules()
    chains = (
        ChainDecl(RAW_PREROUTING, "filter", "prerouting", PRIO_RAW, "accept"),
        ChainDecl(ICMP_ERRORS),
        ChainDecl(CT_DECIDED),
        *(ChainDecl(name) for name in UNTRACKED.both),
        *(ChainDecl(name) for name in PER_PORT.both),
        *(ChainDecl(name) for name in WHOLE_IP.both),
        ChainDecl(HAIRPIN_PREROUTING, "nat", "prerouting", PRIO_DSTNAT, "accept"),
        ChainDecl(HAIRPIN_OUTPUT, "nat", "output", PRIO_DSTNAT, "accept"),
        ChainDecl(HAIRPIN_POSTROUTING, "nat", "postrouting", PRIO_SRCNAT - 1, "accept"),
        ChainDecl(STATELESS_POSTROUTING, "filter", "postrouting", PRIO_SRCNAT + 1, "accept"),
        ChainDecl(EGRESS_STEER_CHAIN, "filter", "prerouting", PRIO_STEER, "accept"),
        *(ChainDecl(steer_slot_chain(n)) for n in range(1, steer_slots(mark_mask) + 1)),
        *delegated_chains,
    )
    rules = _prerouting_rules()
    rules += _filter_rules()
    rules += _icmp_error_rules()
    rules += _podnat_rules()
    for chain in (HAIRPIN_PREROUTING, HAIRPIN_OUTPUT):
        for v, proto, _ in _FAMILIES:
            daddr = _payload(proto, "daddr")
            rules.append(Rule(chain, ({"dnat": {"family": proto, "addr": _map_lookup(daddr, INGRESS[v])}},)))
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        rules.append(
            Rule(
                HAIRPIN_POSTROUTING,
                (
                    _ct_dnat(),
                    _match(_concat(saddr, daddr), f"@{SELF_HAIRPIN[v]}"),
                    # Only what was addressed to an external IP (docs/datapath.md row 11): a
                    # pod that kube-proxy sends back to itself through a ClusterIP is
                    # kube-proxy's to masquerade; SNATed to the external IP, its reply would be
                    # handled statelessly and never turned back into the ClusterIP.
                    _match({"ct": {"key": f"{proto} daddr", "dir": "original"}}, f"@{INGRESS[v]}"),
                    {"snat": {"family": proto, "addr": _map_lookup(saddr, EGRESS[v])}},
                ),
            )
        )
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        # Remember the UDP/SCTP flows a filtered pod opens, so that their replies pass the
        # port and source-range filters. The family first: a packet of the other one then
        # costs a compare, not the protocol set.
        remember = (_match(_meta("nfproto"), "ipv4" if v == 4 else "ipv6"), *_remember_flow(v, proto))
        rules.append(
            Rule(
                STATELESS_POSTROUTING,
                (
                    _ct_untracked(),
                    {"mangle": {"key": saddr, "value": _map_lookup(saddr, EGRESS[v])}},
                ),
            )
        )
        # After the rewrite, keyed by the external IP: every packet from a filtered external
        # IP, also one another node rewrote (see the module docstring).
        rules.append(Rule(STATELESS_POSTROUTING, remember))
    rules += _inbound_error_rules()
    rules += _lb_to_clusterip_rules()
    rules += _egress_ip_rules(mark_mask)
    rules += delegated_rules
    return Skeleton(sets=tuple(sets), chains=chains, rules=tuple(rules))


skeleton_for: Final = functools.lru_cache(maxsize=4)(skeleton)
"""The skeleton of a mark mask, built once per mask: every table of the process shares it."""

SKELETON: Final = skeleton_for(SteeringConfig().mark_mask)
"""The skeleton with the default egress mark bits (the sets are the same for every mask)."""
