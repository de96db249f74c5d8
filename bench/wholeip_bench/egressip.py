"""Egress IP at scale (docs/datapath.md row 18): 1,000 egress Services of 10 pods each.

``python -m wholeip_bench.egressip [--services N] [--pods P] [--nodes K] [--changes C]``:
N egress Services, P ready pods each spread over K nodes, each Service's IP held by one
of the K nodes (round robin, from MetalLB ServiceL2Status objects), seen from node n1:
it SNATs the members of the Services it holds and steers its own members of the others.
In a fresh network namespace, against the real kernel:

* **cold**: the index filled (Services, slices, statuses), then the cold commit of the
  table (libnftables), with its element counts;
* **one change**: C times, one Service loses one pod and gains another (an EndpointSlice
  update): the index update, then the engine's sync of the touched elements (one
  transaction); p50/p99 of each.

The baseline, measured in the same run the same way: the same number of Services as
whole-IP Services (one pod each: the existing feature), cold and one change (its pod
moves). Ratios are egress / baseline. Prints a table and writes JSON. Not part of the
test suite (tests/unit/test_egressip.py checks that a change touches only its elements).
"""

from __future__ import annotations

import argparse
import ipaddress
import time
from collections.abc import Callable
from typing import Any

from wholeip.core.index import ClusterIndex
from wholeip.engine import Engine
from wholeip.names import EGRESS_IP_ANNOTATION, EGRESS_SNAT, EGRESS_STEER, WHOLE_IP_ANNOTATION
from wholeip.settings import ModelSettings
from wholeip_bench import write_results
from wholeip_testkit.netns import Netns, NetnsBackend
from wholeip_testkit.stats import percentile

SETTINGS = ModelSettings()
POD_BASE = ipaddress.ip_address("10.128.0.0")
LB_BASE = ipaddress.ip_address("198.18.0.0")


def nodes(k: int) -> list[dict[str, Any]]:
    return [
        {
            "kind": "Node",
            "metadata": {"name": f"n{i + 1}"},
            "spec": {"podCIDRs": [f"10.{128 + i}.0.0/16"]},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.{2 + i // 250}.{1 + i % 250}"}]},
        }
        for i in range(k)
    ]


def pod_ip(node: int, n: int) -> str:
    """The n-th pod address on node ``node`` (its /16)."""
    return f"10.{128 + node}.{n // 250}.{1 + n % 250}"


def service(i: int, *, egress: bool) -> dict[str, Any]:
    annotation = EGRESS_IP_ANNOTATION if egress else WHOLE_IP_ANNOTATION
    return {
        "kind": "Service",
        "metadata": {"namespace": "bench", "name": f"s{i}", "uid": f"u{i}",
                     "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {annotation: "true"}},
        "spec": {"type": "LoadBalancer"},
        "status": {"loadBalancer": {"ingress": [{"ip": str(LB_BASE + i)}]}},
    }  # fmt: skip


def slice_obj(i: int, endpoints: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {"namespace": "bench", "name": f"s{i}-0", "labels": {"kubernetes.io/service-name": f"s{i}"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "nodeName": n, "conditions": {"ready": True}} for a, n in endpoints],
    }


def status(i: int, k: int) -> dict[str, Any]:
    return {
        "kind": "ServiceL2Status",
        "metadata": {"namespace": "metallb-system", "name": f"l2-s{i}"},
        "status": {"node": f"n{1 + i % k}", "serviceName": f"s{i}", "serviceNamespace": "bench"},
    }


def members(i: int, p: int, k: int, shift: int = 0) -> list[tuple[str, str]]:
    """Service i's pods: pod j on node (i + j) % k, a distinct address per (Service, pod)."""
    out = []
    for j in range(p):
        node = (i + j + shift) % k
        out.append((pod_ip(node, i * p + j), f"n{node + 1}"))
    return out


def _ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(percentile(values, 0.5) * 1000, 3), "p99_ms": round(percentile(values, 0.99) * 1000, 3)}


def measure(
    build: Callable[[ClusterIndex], None], change: Callable[[ClusterIndex, int], dict[str, Any]], changes: int, k: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    started = time.perf_counter()
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=nodes(k))
    build(index)
    out["index_s"] = round(time.perf_counter() - started, 3)
    out["elements"] = sum(len(v) for v in index.elements.values())
    out["snat"] = len(index.elements[EGRESS_SNAT[4]])
    out["steer"] = len(index.elements[EGRESS_STEER[4]])
    with Netns() as ns:
        engine = Engine(backend=NetnsBackend(ns))
        started = time.perf_counter()
        engine.sync(index.doc())
        out["cold_commit_s"] = round(time.perf_counter() - started, 3)
        update, sync = [], []
        for c in range(changes):
            t0 = time.perf_counter()
            touched = index.update(slices=change(index, c))
            t1 = time.perf_counter()
            engine.sync(index.doc(), touched=touched)
            t2 = time.perf_counter()
            update.append(t1 - t0)
            sync.append(t2 - t1)
        out["one_change_index"] = _ms(update)
        out["one_change_commit"] = _ms(sync)
    return out


def run(n: int, p: int, k: int, changes: int) -> dict[str, Any]:
    def egress_build(index: ClusterIndex) -> None:
        index.update(
            services={("bench", f"s{i}"): [service(i, egress=True)] for i in range(n)},
            slices={f"bench/s{i}-0": slice_obj(i, members(i, p, k)) for i in range(n)},
            l2_statuses={f"metallb-system/l2-s{i}": status(i, k) for i in range(n)},
        )

    def egress_change(index: ClusterIndex, c: int) -> dict[str, Any]:
        i = (c * 7919) % n
        return {f"bench/s{i}-0": slice_obj(i, members(i, p, k, shift=1 + c % 2))}

    def whole_build(index: ClusterIndex) -> None:
        index.update(
            services={("bench", f"s{i}"): [service(i, egress=False)] for i in range(n)},
            slices={f"bench/s{i}-0": slice_obj(i, members(i, 1, k)) for i in range(n)},
        )

    def whole_change(index: ClusterIndex, c: int) -> dict[str, Any]:
        i = (c * 7919) % n
        return {f"bench/s{i}-0": slice_obj(i, members(i, 1, k, shift=1 + c % 2))}

    egress = measure(egress_build, egress_change, changes, k)
    baseline = measure(whole_build, whole_change, changes, k)
    ratios = {
        "cold_commit": round(egress["cold_commit_s"] / baseline["cold_commit_s"], 2),
        "one_change_index_p50": round(
            egress["one_change_index"]["p50_ms"] / max(baseline["one_change_index"]["p50_ms"], 1e-3), 2
        ),
        "one_change_commit_p50": round(
            egress["one_change_commit"]["p50_ms"] / max(baseline["one_change_commit"]["p50_ms"], 1e-3), 2
        ),
    }
    return {
        "services": n,
        "pods_per_service": p,
        "nodes": k,
        "egress": egress,
        "baseline_whole_ip": baseline,
        "ratio": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=10)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--out", default="bench-results/egressip.json")
    args = parser.parse_args()
    result = run(args.services, args.pods, args.nodes, args.changes)
    e, b, r = result["egress"], result["baseline_whole_ip"], result["ratio"]
    print(f"egress IP: {args.services} Services x {args.pods} pods over {args.nodes} nodes, seen from n1")
    print(f"{'':24}{'egress':>14}{'whole-IP baseline':>20}{'ratio':>8}")
    print(f"{'elements':24}{e['elements']:>14}{b['elements']:>20}")
    print(f"{'  of which snat/steer':24}{e['snat']:>7}/{e['steer']:<6}")
    print(f"{'index build (s)':24}{e['index_s']:>14}{b['index_s']:>20}")
    print(f"{'cold commit (s)':24}{e['cold_commit_s']:>14}{b['cold_commit_s']:>20}{r['cold_commit']:>8}")
    for what in ("index", "commit"):
        key = f"one_change_{what}"
        print(f"{'one change, ' + what + ' p50 ms':24}{e[key]['p50_ms']:>14}{b[key]['p50_ms']:>20}{r[key + '_p50']:>8}")
        print(f"{'one change, ' + what + ' p99 ms':24}{e[key]['p99_ms']:>14}{b[key]['p99_ms']:>20}")
    write_results(args.out, result)


if __name__ == "__main__":
    main()
