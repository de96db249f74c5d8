"""The compiler (pure): ClusterState + this node's name -> the whole table we want.

The table's skeleton is fixed: the same sets, chains and rules on every node
and for any number of Services. Everything the cluster says lands in set and
map elements, so a Service costs a few elements and never a rule; a packet
costs the same with one Service or a hundred thousand.

Layout (one ``inet`` table, both families; ``4`` and ``6`` name the family):

* ``cluster4/6``   interval sets: pod CIDRs, service CIDRs, node addresses.
* ``ingress4/6``   map external IP -> pod IP, every mapping of the cluster (any
  node may receive a packet for any external IP).
* ``egress4/6``    map pod IP -> external IP, pods on this node only.

Chains, in the order a packet meets them:

* ``raw_prerouting`` (priority raw): north-south packets (one end outside the
  cluster networks) are marked ``notrack``, so they skip conntrack entirely:
  to an external IP, from a local managed pod, and to a local managed pod
  (ingress another node has already rewritten).
* ``hairpin_prerouting``/``hairpin_output`` (nat, dstnat): east-west packets to
  an external IP (from a pod, or from a node's own processes) are tracked and
  DNATed to the pod, so conntrack restores the external IP on the replies.
* ``stateless_prerouting`` (filter, dstnat+1): untracked packets to an external
  IP get the pod IP as destination.
* ``stateless_postrouting`` (filter, srcnat+1): untracked packets from a local
  managed pod get its external IP as source. Rewriting after routing keeps
  strict rp_filter on the pod's interface happy.
* ``hairpin_postrouting`` (nat, srcnat-1): a managed pod talking to its own
  external IP (the DNAT sends the packet back to where it came from) is
  SNATed to its external IP, so it sees a peer it can answer.

Filtering (per-port mode and ``loadBalancerSourceRanges``) happens before any
address is rewritten, in ``filter_prerouting`` (priority mangle, -150): one
verdict-map lookup on the destination (``dispatch4/6``) jumps to a fixed chain
per mode; external IPs that need no filter are not in the map, so whole-IP
traffic pays one failed lookup. The data lives in sets:

* ``ports4/6``     ``external IP . protocol . port`` a per-port Service forwards;
* ``icmp4/6``      external IPs whose Service allows ICMP echo;
* ``ranged4/6`` and ``sources4/6``  external IPs with source ranges, and
  ``external IP . allowed source`` (concatenation with intervals);
* ``flows4/6``     a dynamic set the packet path fills (timeout 180 s) with the
  UDP/SCTP flows a filtered pod opened itself, so their replies are not taken
  for new inbound traffic. TCP needs no memory: a packet that is not a bare
  SYN cannot open a connection.

ICMP errors (unreachable, fragmentation needed / packet too big, time
exceeded, parameter problem) and IPv6 neighbour discovery always pass, so path
MTU discovery never breaks. Traffic from the cluster networks (east-west) is
exempt from source ranges: pods reach the pod IP directly anyway, NetworkPolicy
is the tool for that.

The output is deterministic: the same state gives byte-identical JSON.
"""

from __future__ import annotations

from typing import Any

from wholeip.model import ClusterState, Mode
from wholeip.nft.doc import ChainDecl, Elem, JSONObj, Rule, SetDecl, Skeleton, TableDoc
from wholeip.settings import IPNetwork

FAMILY = "inet"

PRIO_RAW = -300
PRIO_MANGLE = -150
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100

FLOW_TIMEOUT = 180
"""Seconds a UDP/SCTP flow opened by a filtered pod stays known without packets
(the kernel's own UDP conntrack timeout for streams is 120 s)."""
FLOW_CAPACITY = 131072
"""Most concurrent UDP/SCTP flows remembered per family and node."""

ICMP_ALWAYS = ("echo-reply", "destination-unreachable", "time-exceeded", "parameter-problem")
ICMPV6_ALWAYS = (
    "echo-reply",
    "destination-unreachable",
    "packet-too-big",
    "time-exceeded",
    "parameter-problem",
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
    "nd-redirect",
)

_FAMILIES: tuple[tuple[int, str, str], ...] = ((4, "ip", "ipv4_addr"), (6, "ip6", "ipv6_addr"))


# --------------------------------------------------------------------------- expression builders


def _payload(proto: str, field: str) -> JSONObj:
    return {"payload": {"protocol": proto, "field": field}}


def _match(left: Any, right: Any, op: str = "==") -> JSONObj:
    return {"match": {"op": op, "left": left, "right": right}}


def _map_lookup(key: Any, name: str) -> JSONObj:
    return {"map": {"key": key, "data": "@" + name}}


def _ct_untracked() -> JSONObj:
    return _match({"ct": {"key": "state"}}, "untracked", op="in")


def _ct_dnat() -> JSONObj:
    return _match({"ct": {"key": "status"}}, "dnat", op="in")


def _concat(*items: Any) -> JSONObj:
    return {"concat": list(items)}


def _meta(key: str) -> JSONObj:
    return {"meta": {"key": key}}


def _filter_rules() -> list[Rule]:
    """filter_prerouting and the per-mode chains it jumps to (see the module docstring)."""
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        rules.append(Rule("filter_prerouting", ({"vmap": {"key": _payload(proto, "daddr"), "data": f"@dispatch{v}"}},)))
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        icmp, always = ("icmp", ICMP_ALWAYS) if v == 4 else ("icmpv6", ICMPV6_ALWAYS)
        reply = _concat(daddr, _meta("l4proto"), _payload("th", "dport"), saddr, _payload("th", "sport"))
        rules += [
            # Not a bare SYN: cannot open a TCP connection, and is how replies to the pod's own
            # connections look.
            Rule(
                f"replies{v}",
                (
                    _match({"&": [_payload("tcp", "flags"), ["syn", "ack"]]}, "syn", op="!="),
                    {"accept": None},
                ),
            ),
            Rule(f"replies{v}", (_match(reply, f"@flows{v}"), {"accept": None})),
            Rule(f"replies{v}", (_match(_payload(icmp, "type"), {"set": list(always)}), {"accept": None})),
        ]
        out_of_range = (
            _match(saddr, f"@cluster{v}", op="!="),
            _match(daddr, f"@ranged{v}"),
            _match(_concat(daddr, saddr), f"@sources{v}", op="!="),
            {"drop": None},
        )
        rules += [
            Rule(f"per_port{v}", ({"jump": {"target": f"replies{v}"}},)),
            Rule(f"per_port{v}", out_of_range),
            Rule(
                f"per_port{v}",
                (
                    _match(_payload(icmp, "type"), "echo-request"),
                    _match(daddr, f"@icmp{v}"),
                    {"accept": None},
                ),
            ),
            Rule(
                f"per_port{v}",
                (_match(_concat(daddr, _meta("l4proto"), _payload("th", "dport")), f"@ports{v}"), {"accept": None}),
            ),
            Rule(f"per_port{v}", ({"drop": None},)),
            Rule(f"whole_ip{v}", ({"jump": {"target": f"replies{v}"}},)),
            Rule(f"whole_ip{v}", out_of_range),
        ]
    return rules


# --------------------------------------------------------------------------- skeleton


def skeleton() -> Skeleton:
    """The fixed part of the table (independent of the cluster)."""
    sets: list[SetDecl] = []
    for v, _, addr_type in _FAMILIES:
        sets += [
            SetDecl(f"cluster{v}", (addr_type,), flags=("interval",)),
            SetDecl(f"ingress{v}", (addr_type,), data=addr_type),
            SetDecl(f"egress{v}", (addr_type,), data=addr_type),
            SetDecl(f"selfhairpin{v}", (addr_type, addr_type)),
            SetDecl(f"dispatch{v}", (addr_type,), data="verdict"),
            SetDecl(f"filtered{v}", (addr_type,)),
            SetDecl(f"ports{v}", (addr_type, "inet_proto", "inet_service")),
            SetDecl(f"icmp{v}", (addr_type,)),
            SetDecl(f"ranged{v}", (addr_type,)),
            SetDecl(f"sources{v}", (addr_type, addr_type), flags=("interval",)),
            SetDecl(
                f"flows{v}",
                (addr_type, "inet_proto", "inet_service", addr_type, "inet_service"),
                flags=("timeout",),
                timeout=FLOW_TIMEOUT,
                size=FLOW_CAPACITY,
            ),
        ]
    chains = (
        ChainDecl("raw_prerouting", "filter", "prerouting", PRIO_RAW, "accept"),
        ChainDecl("filter_prerouting", "filter", "prerouting", PRIO_MANGLE, "accept"),
        ChainDecl("replies4"),
        ChainDecl("replies6"),
        ChainDecl("per_port4"),
        ChainDecl("per_port6"),
        ChainDecl("whole_ip4"),
        ChainDecl("whole_ip6"),
        ChainDecl("hairpin_prerouting", "nat", "prerouting", PRIO_DSTNAT, "accept"),
        ChainDecl("hairpin_output", "nat", "output", PRIO_DSTNAT, "accept"),
        ChainDecl("hairpin_postrouting", "nat", "postrouting", PRIO_SRCNAT - 1, "accept"),
        ChainDecl("stateless_prerouting", "filter", "prerouting", PRIO_DSTNAT + 1, "accept"),
        ChainDecl("stateless_postrouting", "filter", "postrouting", PRIO_SRCNAT + 1, "accept"),
    )
    rules: list[Rule] = []
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        rules += [
            Rule(
                "raw_prerouting",
                (
                    _match(daddr, f"@ingress{v}"),
                    _match(saddr, f"@cluster{v}", op="!="),
                    {"notrack": None},
                ),
            ),
            Rule(
                "raw_prerouting",
                (
                    _match(saddr, f"@egress{v}"),
                    _match(daddr, f"@cluster{v}", op="!="),
                    {"notrack": None},
                ),
            ),
            # North-south traffic another node already rewrote (it arrived there, row 12)
            # reaches the pod's node addressed to the pod: keep it out of conntrack too.
            Rule(
                "raw_prerouting",
                (
                    _match(daddr, f"@egress{v}"),
                    _match(saddr, f"@cluster{v}", op="!="),
                    {"notrack": None},
                ),
            ),
        ]
    rules += _filter_rules()
    for chain in ("hairpin_prerouting", "hairpin_output"):
        for v, proto, _ in _FAMILIES:
            daddr = _payload(proto, "daddr")
            rules.append(Rule(chain, ({"dnat": {"family": proto, "addr": _map_lookup(daddr, f"ingress{v}")}},)))
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        rules.append(
            Rule(
                "hairpin_postrouting",
                (
                    _ct_dnat(),
                    _match(_concat(saddr, daddr), f"@selfhairpin{v}"),
                    {"snat": {"family": proto, "addr": _map_lookup(saddr, f"egress{v}")}},
                ),
            )
        )
    for v, proto, _ in _FAMILIES:
        daddr = _payload(proto, "daddr")
        rules.append(
            Rule(
                "stateless_prerouting",
                (
                    _ct_untracked(),
                    {"mangle": {"key": daddr, "value": _map_lookup(daddr, f"ingress{v}")}},
                ),
            )
        )
    for v, proto, _ in _FAMILIES:
        saddr, daddr = _payload(proto, "saddr"), _payload(proto, "daddr")
        rules.append(
            Rule(
                "stateless_postrouting",
                (
                    _ct_untracked(),
                    {"mangle": {"key": saddr, "value": _map_lookup(saddr, f"egress{v}")}},
                ),
            )
        )
        # After the rewrite: remember the UDP/SCTP flows a filtered pod opens, so that
        # their replies pass the port and source-range filters.
        flow = _concat(saddr, _meta("l4proto"), _payload("th", "sport"), daddr, _payload("th", "dport"))
        rules.append(
            Rule(
                "stateless_postrouting",
                (
                    _match(_meta("l4proto"), {"set": ["udp", "sctp"]}),
                    _match(saddr, f"@filtered{v}"),
                    {"set": {"op": "update", "elem": flow, "set": f"@flows{v}"}},
                ),
            )
        )
    return Skeleton(sets=tuple(sets), chains=chains, rules=tuple(rules))


_SKELETON = skeleton()


# --------------------------------------------------------------------------- elements


def elements(state: ClusterState, *, node_name: str) -> dict[str, frozenset[Elem]]:
    """Every set's and map's elements for node ``node_name``."""
    out: dict[str, set[Elem]] = {decl.name: set() for decl in _SKELETON.sets}
    for net in state.cluster_networks:
        out[f"cluster{net.version}"].add(str(net))
    for m in state.mappings:
        v = m.external_ip.version
        ext, pod = str(m.external_ip), str(m.pod_ip)
        out[f"ingress{v}"].add((ext, pod))
        if m.egress and m.node_name == node_name:
            out[f"egress{v}"].add((pod, ext))
            out[f"selfhairpin{v}"].add((pod, pod))
        ranges = [r for r in m.source_ranges if r.version == v]
        if m.mode is Mode.PER_PORT:
            out[f"dispatch{v}"].add((ext, f"jump per_port{v}"))
            out[f"ports{v}"] |= {(ext, p.protocol, p.port) for p in m.ports}
            if m.allow_icmp:
                out[f"icmp{v}"].add(ext)
        elif ranges:
            out[f"dispatch{v}"].add((ext, f"jump whole_ip{v}"))
        if m.mode is Mode.PER_PORT or ranges:
            out[f"filtered{v}"].add(ext)
        if ranges:
            out[f"ranged{v}"].add(ext)
            out[f"sources{v}"] |= {(ext, _host_or_net(r)) for r in ranges}
    return {name: frozenset(elems) for name, elems in out.items()}


def _host_or_net(net: IPNetwork) -> str:
    # The kernel lists a full-length prefix inside a concatenation as a bare address.
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def compile_table(state: ClusterState, *, node_name: str, table: str = "wholeip") -> TableDoc:
    """The complete table node ``node_name`` must hold."""
    return TableDoc(family=FAMILY, name=table, skeleton=_SKELETON, elements=elements(state, node_name=node_name))


def count_mappings(doc: TableDoc) -> dict[str, int]:
    """Mappings per map, for metrics and summaries."""
    return {name: len(doc.elements.get(name, ())) for name in ("ingress4", "ingress6", "egress4", "egress6")}
