#!/usr/bin/env python3
"""Where the stateless path's fixed cost goes (docs/performance.md, "Where b's fixed cost goes").

Floods of new flows (benchmark 5's sender and sink) through hand-built variants of
the inbound path at n1, each an ``inet`` table of its own installed with ``nft -f``
next to the benchmark's own tables, with 1,000 mappings so the size of the maps
plays no part. Each flood is paired with one through a (the bare node), like
``wholeip_bench.datapath``. Only the inbound direction is rewritten, so these variants
are measured with floods (one way), never with request/response.

    .venv/bin/python hack/fixed-cost.py [--rounds 5]

Root and the benchmark's topology (network namespaces) are needed; about 4 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from wholeip_bench import datapath as bp

N = 1000
NETWORKS = [*bp.CLUSTER_CIDRS.split(","), "192.0.2.0/24"]  # pod networks, the client's, the nodes'
REWRITE = "ip daddr set ip daddr map @ingress4 notrack accept"
FROM_OUTSIDE = "ip saddr != @cluster4 " + REWRITE
POSTROUTING = [
    "ct state untracked ip saddr set ip saddr map @egress4",
    "meta nfproto ipv4 meta l4proto { udp, sctp } ip saddr @filtered4"
    " update @flows4 { ip saddr . meta l4proto . th sport . ip daddr . th dport }",
    "ct state untracked ip6 saddr set ip6 saddr map @egress6",
    "meta nfproto ipv6 meta l4proto { udp, sctp } ip6 saddr @filtered6 counter",
]
VARIANTS: dict[str, tuple[list[str], list[str] | None]] = {
    "rewrite": ([REWRITE], None),
    "from_outside": ([FROM_OUTSIDE], None),
    "masked_compare": (["ip saddr & 255.192.0.0 != 10.128.0.0 " + REWRITE], None),
    "prefix_hash": (["ip saddr & 255.255.0.0 != @prefixes16 " + REWRITE], None),
    "trivial_post": ([FROM_OUTSIDE], ["meta mark 0x4242 counter"]),
    "whole_post": ([FROM_OUTSIDE], POSTROUTING),
}


def table(name: str, mappings: list[tuple[str, str]], pre: list[str], post: list[str] | None) -> str:
    ingress = ", ".join(f"{ext} : {pod}" for ext, pod in mappings)
    egress = ", ".join(f"{pod} : {ext}" for ext, pod in mappings)
    prefixes = ", ".join(sorted({".".join(n.split(".")[:2]) + ".0.0" for n in NETWORKS}))
    lines = [
        f"table inet {name} {{",
        f"  set cluster4 {{ type ipv4_addr; flags interval; elements = {{ {', '.join(NETWORKS)} }}; }}",
        f"  set prefixes16 {{ type ipv4_addr; elements = {{ {prefixes} }}; }}",
        f"  map ingress4 {{ type ipv4_addr : ipv4_addr; elements = {{ {ingress} }}; }}",
        f"  map egress4 {{ type ipv4_addr : ipv4_addr; elements = {{ {egress} }}; }}",
        "  map egress6 { type ipv6_addr : ipv6_addr; }",
        "  set filtered4 { type ipv4_addr; }",
        "  set filtered6 { type ipv6_addr; }",
        "  set flows4 { type ipv4_addr . inet_proto . inet_service . ipv4_addr . inet_service;"
        " flags timeout; timeout 180s; size 131072; }",
        "  chain raw { type filter hook prerouting priority raw; policy accept;",
        *(f"    {rule}" for rule in pre),
        "  }",
    ]
    if post:
        lines += ["  chain post { type filter hook postrouting priority srcnat + 1; policy accept;"]
        lines += [*(f"    {rule}" for rule in post), "  }"]
    return "\n".join([*lines, "}", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    cfg = bp.Config(
        mappings=N,
        rule_sizes=(100, N),
        rounds=args.rounds,
        requests=1000,
        iperf=None,
        flood_seconds=2,
        ct_max=0,
        seed=1,
        quick=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        setup = bp.build(cfg, Path(tmp))
        try:
            bp.install(setup, cfg)
            by_name = {v.name: v for v in bp.variants(cfg)}
            group = [by_name["b"], by_name["l"]]  # wholeip's own table, the lookup floor (both N)
            for name, (pre, post) in VARIANTS.items():
                path = Path(tmp) / f"{name}.nft"
                path.write_text(table(name, setup.mappings[:N], pre, post))
                bp._run(setup.topo, "n1", ["nft", "-f", str(path)])
                setup.tables.append(f"inet {name}")
                group.append(bp.Variant(name, name, f"inet {name}", bp.CLIENT_OUT, "ext", N))
            measured = bp.Measured()
            bp.measure_floods(setup, cfg, by_name["a"], [bp.Flood(v.name, v, 0, v.label) for v in group], measured)
        finally:
            setup.topo.close()
    print("\nflood rate / a (median over rounds; each round's ratio)")
    for v in group:
        ratios = measured.flood_ratio[v.name]
        print(f"{v.name:>15}: {statistics.median(ratios):.3f}  {' '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
