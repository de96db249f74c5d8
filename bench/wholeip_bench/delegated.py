"""Delegated Services' endpoint slots (docs/datapath.md row 16): two ways to fill them.

A front-end's endpoint is chosen by ``hash mod N`` over N slots (:mod:`wholeip.core.ruleset`,
"delegated Services"). How the slots are filled decides how many clients move to another
endpoint when one endpoint comes or goes, and what an endpoint change costs to commit:

* **modulo**: N = n endpoints up to 8, slot i holds endpoint i mod n; beyond 8, the class
  of at least 8n slots, filled the same way;
* **maglev**: at least 256 slots (the class of 8n beyond 32 endpoints), filled as Maglev does.

The product uses modulo up to 8 endpoints without affinity (the fewest elements) and
Maglev for the rest (affinity, or more than 8 endpoints), after these numbers.

For each n, with one endpoint removed and one added, over the hash space (every slot
weighs 1/N): the share of clients whose endpoint changes, and of those the share that
did not have to move (their endpoint is still there); the slot elements a change
rewrites (what the commit sends); and the time to compute a front-end's slots.

Without affinity a moved hash moves no connection: conntrack keeps every established flow
on its endpoint, a new flow is a new choice anyway; with affinity (the client's address
is the hash) a moved hash is a client that changes endpoint. Prints a table and writes
JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from wholeip.core.delegated import GENERATION_SETS, maglev
from wholeip.core.index import load
from wholeip.core.ruleset import slot_count
from wholeip.settings import ModelSettings
from wholeip_bench import write_results

Endpoint = tuple[str, int]


def modulo(endpoints: Sequence[Endpoint]) -> list[Endpoint]:
    return [endpoints[i % len(endpoints)] for i in range(slot_count(len(endpoints)))]


FILLS: dict[str, Callable[[Sequence[Endpoint]], list[Endpoint]]] = {"modulo": modulo, "maglev": maglev}


def _endpoints(n: int, salt: int = 0) -> list[Endpoint]:
    return sorted((f"10.{128 + (k + salt) % 2}.{(k * 37 + salt) % 250}.{1 + k % 250}", 8080) for k in range(n))


def _share_at(table: list[Endpoint], u: float) -> Endpoint:
    return table[int(u * len(table))]


def moved(before: list[Endpoint], after: list[Endpoint], gone: Endpoint | None) -> tuple[float, float]:
    """(share of the hash space whose endpoint changed, share that changed although its
    endpoint is still there). Tables of different sizes are compared over a fine grid."""
    grid = 65536
    changed = needless = 0
    for g in range(grid):
        u = (g + 0.5) / grid
        a, b = _share_at(before, u), _share_at(after, u)
        if a != b:
            changed += 1
            if a != gone:
                needless += 1
    return changed / grid, needless / grid


def row(n: int, fill_name: str) -> dict[str, Any]:
    fill = FILLS[fill_name]
    eps = _endpoints(n)
    base = fill(eps)
    t0 = time.perf_counter()
    for _ in range(20):
        fill(eps)
    fill_us = (time.perf_counter() - t0) / 20 * 1e6
    gone = eps[n // 2]
    removed = fill([e for e in eps if e != gone])
    added = fill(sorted([*eps, ("10.130.0.1", 8080)]))
    rem_changed, rem_needless = moved(base, removed, gone)
    add_changed, _ = moved(base, added, None)

    def rewritten(after: list[Endpoint]) -> int:
        # A slot element is rewritten when its slot's endpoint changes; slots that appear
        # or disappear are added or deleted. Address and port: two maps, two elements.
        common = sum(1 for a, b in zip(base, after, strict=False) if a != b)
        return 2 * (common + abs(len(base) - len(after)))

    return {
        "endpoints": n,
        "fill": fill_name,
        "slots": len(base),
        "remove_moved": round(rem_changed, 4),
        "remove_moved_needlessly": round(rem_needless, 4),
        "add_moved": round(add_changed, 4),
        "ideal_add_moved": round(1 / (n + 1), 4),
        "remove_elements": rewritten(removed),
        "add_elements": rewritten(added),
        "fill_us": round(fill_us, 1),
    }


def _affinity_objects(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    service = {
        "kind": "Service",
        "metadata": {
            "namespace": "b",
            "name": "s",
            "labels": {"service.kubernetes.io/service-proxy-name": "wholeip"},
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIPs": ["10.96.0.10"],
            "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }
    return service, _slice(n)


def _slice(n: int) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"namespace": "b", "name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4",
        "ports": [{"port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "nodeName": "n1"} for a, _ in _endpoints(n)],
    }


def generation_row(n: int) -> dict[str, Any]:
    """An endpoint joining a front-end with affinity, through the agent's index: the
    elements the change writes (slots, and the previous table its recent clients keep)
    and the index's time for it; every recent client keeps its endpoint by construction."""
    service, before = _affinity_objects(n)
    grown = _slice(n)
    grown["endpoints"].append({"addresses": ["10.130.0.1"], "nodeName": "n1"})
    node = {"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.128.0.0/16"]}}
    times = []
    slots = history = 0
    for _ in range(5):
        idx = load(services=[service], endpoint_slices=[before], nodes=[node], node_name="n1", settings=ModelSettings())
        had = {k: set(idx.elements[k]) for k in ("svcaddr4", "svcport4", *GENERATION_SETS)}
        t0 = time.perf_counter()
        idx.update(slices={"b/s-1": grown})
        times.append(time.perf_counter() - t0)
        slots = sum(len(idx.elements[k] - had[k]) for k in ("svcaddr4", "svcport4"))
        history = sum(len(idx.elements[k] - had[k]) for k in GENERATION_SETS)
    return {
        "endpoints": n,
        "fill": "maglev, affinity generation",
        "slot_elements": slots,
        "generation_elements": history,
        "update_us": round(min(times) * 1e6),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wholeip_bench.delegated", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoints", default="2,3,5,8,16,50,200", help="comma-separated n")
    parser.add_argument("--out", default="bench-results/delegated-slots.json")
    args = parser.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.endpoints.split(",")):
        for fill in FILLS:
            r = row(n, fill)
            rows.append(r)
            print(
                f"n={n:>4} {fill:<7} slots={r['slots']:>5}  remove: moved {r['remove_moved']:.3f}"
                f" (needlessly {r['remove_moved_needlessly']:.3f}, {r['remove_elements']} elements)"
                f"  add: moved {r['add_moved']:.3f} (ideal {r['ideal_add_moved']:.3f},"
                f" {r['add_elements']} elements)  fill {r['fill_us']:.0f} us",
                flush=True,
            )
    for n in (int(x) for x in args.endpoints.split(",")):
        g = generation_row(n)
        rows.append(g)
        print(
            f"n={n:>4} affinity, one endpoint joins: {g['slot_elements']} slot elements written"
            f" + {g['generation_elements']} for the generation (the previous table, the records' chains),"
            f" index {g['update_us']} us",
            flush=True,
        )
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
