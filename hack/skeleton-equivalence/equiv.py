"""Do two versions of the compiler's skeleton do the same to every packet?

    python hack/skeleton-equivalence/equiv.py --old /tmp/base/src --new src

Each ``--old``/``--new`` is a ``src`` directory holding a ``wholeip`` package; its
``ruleset.skeleton()`` is dumped in a child process (two versions of one package cannot
share an interpreter). Both skeletons then run, in a small model of nf_tables written
here, over an abstract packet space: every pair of source and destination out of a
small cluster (outside clients, external IPs filtered or not, local and remote pods, a
local pod outside the declared cluster networks, a node), TCP with three flag patterns,
UDP on listed and unlisted ports, SCTP, ICMP echo, and ICMP errors with every embedded
source and zero or non-zero spare words; both families; each arriving without conntrack
state, already untracked (someone else's notrack), or carrying a conntrack entry
(looped back from the node's own output). What is compared: the verdict, the addresses
after prerouting and after postrouting, the ICMP embedded source and spare words, the
conntrack state, NAT decisions and ``flows`` updates.

The model: base chains in priority order per hook; conntrack at -200 tracks a packet
that has no state yet; NAT chains run for a new tracked packet only; ``notrack`` only
affects a packet without state (as ``nft_notrack_eval``); ``jump``/``goto``/``return``
and base-chain policies as in ``nft_do_chain``; a failed map lookup ends the rule. It is
no kernel: it checks that a change of layout is a refactoring, the kernel tests
(``tests/nft``) check that the layout works. Exit status 1 when any packet differs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DUMP = """
import json
from wholeip.core.ruleset import skeleton
sk = skeleton()
print(json.dumps({"chains": [[c.name, c.type, c.hook, c.prio] for c in sk.chains],
                  "rules": [[r.chain, list(r.expr)] for r in sk.rules]}))
"""

ADDRS = ("X", "X2", "E1", "E2", "E3", "E4", "E5", "P1", "P2", "Q", "R", "C", "N", "Pout")
"""X, X2 outside (X2 inside E4's source ranges); E1 per-port on local pod P1; E2 whole IP on
local P2; E3 on remote pod Q; E4 whole IP with source ranges on remote R; E5 on local Pout,
whose address may lie outside the declared cluster networks; C a pod without external IP;
N a node."""


class Break(Exception):
    """The rule stops matching (NFT_BREAK)."""


class Verdict(Exception):
    def __init__(self, kind: str, target: str | None = None) -> None:
        self.kind, self.target = kind, target


def dump(src: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", DUMP], env={"PYTHONPATH": str(src)}, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def world(v: int, pout_in_cluster: bool) -> dict[str, Any]:
    def p(name: str) -> str:
        return f"{name}{v}"

    cluster = {p(x) for x in ("P1", "P2", "Q", "R", "C", "N")} | ({p("Pout")} if pout_in_cluster else set())
    ingress = {p("E1"): p("P1"), p("E2"): p("P2"), p("E3"): p("Q"), p("E4"): p("R"), p("E5"): p("Pout")}
    egress = {p("P1"): p("E1"), p("P2"): p("E2"), p("Pout"): p("E5")}
    sets: dict[str, Any] = {
        f"cluster{v}": cluster,
        f"ingress{v}": ingress,
        f"egress{v}": egress,
        f"selfhairpin{v}": {(a, a) for a in egress},
        f"dispatch{v}": {p("E1"): ("jump", f"per_port{v}"), p("E4"): ("jump", f"whole_ip{v}")},
        f"filtered{v}": {p("E1"), p("E4")},
        f"ports{v}": {(p("E1"), "udp", 53), (p("E1"), "tcp", 80)},
        f"icmp{v}": {p("E1")},
        f"ranged{v}": {p("E4")},
        f"sources{v}": {(p("E4"), p("X2"))},
        f"flows{v}": {(p("E1"), "udp", 1000, p("X"), 2000), (p("E4"), "udp", 1000, p("X"), 2000)},
    }
    if v == 4:
        sets["icmpfix4"] = {(e, e): f"comp({e})" for e in ingress}
    else:
        sets["icmpguard6"] = {(e, e) for e in ingress}
    return sets


def _payload_get(pkt: dict[str, Any], e: dict[str, Any]) -> Any:
    pl = e["payload"]
    if "protocol" in pl:
        proto, field = pl["protocol"], pl["field"]
        if proto in ("ip", "ip6"):
            if pkt["nfproto"] != (4 if proto == "ip" else 6):
                raise Break
            return pkt[field]
        if proto == "tcp":
            if pkt["l4"] != "tcp":
                raise Break
            return pkt["flags"]
        if proto in ("icmp", "icmpv6"):
            if pkt["l4"] != ("icmp" if proto == "icmp" else "ipv6-icmp"):
                raise Break
            return pkt[field]
        if proto == "th":
            return pkt[field]
        raise NotImplementedError(pl)
    base, off, length = pl["base"], pl["offset"], pl["len"]
    if base == "th" and (off, length) in ((160, 32), (128, 128)):
        return pkt["inner"]
    if base == "th" and length == 16:
        return pkt[f"word{off}"]
    if base == "nh" and (off, length) in ((128, 32), (192, 128)):
        return pkt["daddr"]
    raise NotImplementedError(pl)


def _payload_set(pkt: dict[str, Any], e: dict[str, Any], value: Any) -> None:
    pl = e["payload"]
    if "protocol" in pl:
        if pl["protocol"] not in ("ip", "ip6"):
            raise NotImplementedError(pl)
        if pkt["nfproto"] != (4 if pl["protocol"] == "ip" else 6):
            raise Break
        pkt[pl["field"]] = value
        return
    base, off, length = pl["base"], pl["offset"], pl["len"]
    if base == "th" and (off, length) in ((160, 32), (128, 128)):
        pkt["inner"] = value
    elif base == "th" and length == 16:
        pkt[f"word{off}"] = value
    elif base == "nh":
        pkt["daddr"] = value
    else:
        raise NotImplementedError(pl)


def _value(pkt: dict[str, Any], sets: dict[str, Any], e: Any) -> Any:
    if not isinstance(e, dict):
        return e
    if "payload" in e:
        return _payload_get(pkt, e)
    if "meta" in e:
        key = e["meta"]["key"]
        if key == "l4proto":
            return pkt["l4"]
        if key == "nfproto":
            return "ipv4" if pkt["nfproto"] == 4 else "ipv6"
        raise NotImplementedError(e)
    if "ct" in e:
        key = e["ct"]["key"]
        if key == "state":  # no conntrack state yet reads as "invalid"
            return "invalid" if pkt["ct"] == "none" else pkt["ct"]
        if key == "status":
            return {"dnat"} if pkt.get("dnat") else set()
        raise NotImplementedError(e)
    if "concat" in e:
        return tuple(_value(pkt, sets, x) for x in e["concat"])
    if "&" in e:
        left, mask = e["&"]
        return frozenset(_value(pkt, sets, left)) & frozenset(mask)
    if "map" in e:
        key = _value(pkt, sets, e["map"]["key"])
        table = sets[e["map"]["data"][1:]]
        if key not in table:
            raise Break
        return table[key]
    raise NotImplementedError(e)


def _match(pkt: dict[str, Any], sets: dict[str, Any], m: dict[str, Any]) -> None:
    left = _value(pkt, sets, m["left"])
    right, op = m["right"], m["op"]
    if isinstance(right, str) and right.startswith("@"):
        hit = left in sets[right[1:]]
    elif isinstance(right, dict) and "set" in right:
        hit = left in right["set"]
    elif op == "in":
        want = {right} if isinstance(right, str) else set(right)
        hit = left in want if isinstance(left, str) else bool(set(left) & want)
    elif isinstance(left, frozenset):
        hit = left == (frozenset([right]) if isinstance(right, str) else frozenset(right))
    else:
        hit = left == right
    if op == "!=":
        hit = not hit
    if not hit:
        raise Break


def _rule(pkt: dict[str, Any], sets: dict[str, Any], expr: list[dict[str, Any]], log: list[Any]) -> None:
    for e in expr:
        ((kind, body),) = e.items()
        if kind == "match":
            _match(pkt, sets, body)
        elif kind == "mangle":
            _payload_set(pkt, body["key"], _value(pkt, sets, body["value"]))
        elif kind == "notrack":
            if pkt["ct"] == "none":
                pkt["ct"] = "untracked"
        elif kind in ("accept", "drop", "return"):
            raise Verdict(kind)
        elif kind in ("jump", "goto"):
            raise Verdict(kind, body["target"])
        elif kind == "vmap":
            key = _value(pkt, sets, body["key"])
            table = sets[body["data"][1:]]
            if key not in table:
                raise Break
            raise Verdict(*table[key])
        elif kind in ("dnat", "snat"):
            value = _value(pkt, sets, body["addr"])
            pkt["daddr" if kind == "dnat" else "saddr"] = value
            pkt[kind] = True
            log.append((kind, value))
        elif kind == "set":
            log.append(("flow", _value(pkt, sets, body["elem"])))
        else:
            raise NotImplementedError(e)


def _chain(pkt: dict[str, Any], sets: dict[str, Any], rules: dict[str, list[Any]], base: str, log: list[Any]) -> str:
    stack: list[tuple[str, int]] = []
    chain, i = base, 0
    while True:
        if i >= len(rules.get(chain, [])):
            if stack:
                chain, i = stack.pop()
                continue
            return "accept"  # every base chain of ours has policy accept
        expr = rules[chain][i]
        i += 1
        try:
            _rule(pkt, sets, expr, log)
        except Break:
            continue
        except Verdict as v:
            if v.kind in ("accept", "drop"):
                return v.kind
            if v.kind == "return":
                if not stack:
                    return "accept"
                chain, i = stack.pop()
                continue
            if v.kind == "jump":
                stack.append((chain, i))
            chain, i = str(v.target), 0


def outcome(skel: dict[str, Any], sets: dict[str, Any], packet: dict[str, Any]) -> tuple[Any, ...]:
    pkt = dict(packet, ct="established" if packet["ct"] == "loop" else packet["ct"])
    rules: dict[str, list[Any]] = {}
    for chain, expr in skel["rules"]:
        rules.setdefault(chain, []).append(expr)
    log: list[Any] = []
    pre = sorted([(c[3], c[0], c[1]) for c in skel["chains"] if c[2] == "prerouting"] + [(-200, "", "conntrack")])
    for _, name, typ in pre:
        if typ == "conntrack":
            if pkt["ct"] == "none":
                pkt["ct"] = "new"
        elif (typ != "nat" or pkt["ct"] == "new") and _chain(pkt, sets, rules, name, log) == "drop":
            return ("drop",)
    log.append(("routing", pkt["saddr"], pkt["daddr"], pkt["inner"], pkt["word32"], pkt["word48"], pkt["ct"]))
    for _, name, typ in sorted((c[3], c[0], c[1]) for c in skel["chains"] if c[2] == "postrouting"):
        if (typ != "nat" or pkt["ct"] == "new") and _chain(pkt, sets, rules, name, log) == "drop":
            return ("drop",)
    return ("accept", tuple(map(str, log)), pkt["saddr"], pkt["daddr"], pkt["ct"])


def packets(v: int) -> Iterator[dict[str, Any]]:
    icmp = "icmp" if v == 4 else "ipv6-icmp"
    errors = ("destination-unreachable", "time-exceeded", "parameter-problem", "packet-too-big")
    for s, d, ct in itertools.product(ADDRS, ADDRS, ("none", "untracked", "loop")):
        base = {"nfproto": v, "saddr": f"{s}{v}", "daddr": f"{d}{v}", "ct": ct, "word32": 0, "word48": 0, "inner": None}
        for sport, dport in ((1000, 2000), (2000, 1000), (5, 53), (5, 80), (5, 81)):
            yield {**base, "l4": "udp", "sport": sport, "dport": dport, "flags": ()}
            for flags in (("syn",), ("syn", "ack"), ("ack",)):
                yield {**base, "l4": "tcp", "sport": sport, "dport": dport, "flags": flags}
        yield {**base, "l4": "sctp", "sport": 1000, "dport": 2000, "flags": ()}
        for kind in ("echo-request", "echo-reply"):
            yield {**base, "l4": icmp, "type": kind, "code": 0, "sport": 0, "dport": 0, "flags": ()}
        for kind, code, inner, (w32, w48) in itertools.product(
            errors, ("frag-needed", "port-unreachable"), ADDRS, ((0, 0), (1500, 0), (0, 7))
        ):
            yield {
                **base,
                **{"l4": icmp, "type": kind, "code": code, "inner": f"{inner}{v}", "word32": w32, "word48": w48},
                **{"sport": 0, "dport": 0, "flags": ()},
            }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="a src directory (the reference)")
    parser.add_argument("--new", type=Path, required=True, help="a src directory (the candidate)")
    parser.add_argument("--show", type=int, default=10, help="differing packets to print")
    args = parser.parse_args()
    old, new = dump(args.old), dump(args.new)
    total, classes = 0, Counter[tuple[str, ...]]()
    for v, pout_in_cluster in itertools.product((4, 6), (True, False)):
        sets = world(v, pout_in_cluster)
        for pkt in packets(v):
            total += 1
            a, b = outcome(old, sets, pkt), outcome(new, sets, pkt)
            if a != b:
                if sum(classes.values()) < args.show:
                    print("differs:", {k: x for k, x in pkt.items() if x not in (None, ())})
                    print("   old:", a)
                    print("   new:", b)
                classes[(pkt["ct"], pkt["l4"], pkt["saddr"][:-1], pkt["daddr"][:-1])] += 1
    for key, count in sorted(classes.items()):
        ct, proto, src, dst = key
        print(f"{count} x ct={ct} {proto} {src} -> {dst}")
    print(f"{total} packets, {sum(classes.values())} decided differently")
    return 1 if classes else 0


if __name__ == "__main__":
    raise SystemExit(main())
