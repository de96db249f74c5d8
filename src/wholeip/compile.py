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
  cluster networks) are marked ``notrack``, so they skip conntrack entirely.
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

The output is deterministic: the same state gives byte-identical JSON.
"""

from __future__ import annotations

from typing import Any

from wholeip.model import ClusterState, Mapping1to1, Mode
from wholeip.nft.doc import ChainDecl, Elem, JSONObj, Rule, SetDecl, Skeleton, TableDoc

FAMILY = "inet"

PRIO_RAW = -300
PRIO_DSTNAT = -100
PRIO_SRCNAT = 100

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
        ]
    chains = (
        ChainDecl("raw_prerouting", "filter", "prerouting", PRIO_RAW, "accept"),
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
        ]
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
        saddr = _payload(proto, "saddr")
        rules.append(
            Rule(
                "stateless_postrouting",
                (
                    _ct_untracked(),
                    {"mangle": {"key": saddr, "value": _map_lookup(saddr, f"egress{v}")}},
                ),
            )
        )
    return Skeleton(sets=tuple(sets), chains=chains, rules=tuple(rules))


_SKELETON = skeleton()


# --------------------------------------------------------------------------- elements


def supported(mapping: Mapping1to1) -> bool:
    """Mappings this version programs (per-port mode is not compiled yet)."""
    return mapping.mode is Mode.WHOLE_IP


def elements(state: ClusterState, *, node_name: str) -> dict[str, frozenset[Elem]]:
    """Every set's and map's elements for node ``node_name``."""
    out: dict[str, set[Elem]] = {decl.name: set() for decl in _SKELETON.sets}
    for net in state.cluster_networks:
        out[f"cluster{net.version}"].add(str(net))
    for m in state.mappings:
        if not supported(m):
            continue
        v = m.external_ip.version
        ext, pod = str(m.external_ip), str(m.pod_ip)
        out[f"ingress{v}"].add((ext, pod))
        if m.egress and m.node_name == node_name:
            out[f"egress{v}"].add((pod, ext))
            out[f"selfhairpin{v}"].add((pod, pod))
    return {name: frozenset(elems) for name, elems in out.items()}


def compile_table(state: ClusterState, *, node_name: str, table: str = "wholeip") -> TableDoc:
    """The complete table node ``node_name`` must hold."""
    return TableDoc(family=FAMILY, name=table, skeleton=_SKELETON, elements=elements(state, node_name=node_name))


def count_mappings(doc: TableDoc) -> dict[str, int]:
    """Mappings per map, for metrics and summaries."""
    return {name: len(doc.elements.get(name, ())) for name in ("ingress4", "ingress6", "egress4", "egress6")}
