"""Pods publishing ports on the node's address (the podnat annotation), at scale.

``python -m wholeip_bench.podnat [--pods N] [--changes K]``: N pods of this node, one
published TCP port each (srcPort 10000+i), in a fresh network namespace:

* **cold**: the index filled with N pods, then the cold commit of the table (libnftables,
  the real kernel) and its element count;
* **one change**: K times, one pod changes its pod port (the index update, then the
  engine's sync of the touched elements, one transaction); percentiles of each.

Prints one JSON object. Not part of the test suite (tests/unit/test_podnat.py checks
that one change touches only its own elements).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import time
from typing import Any

from wholeip.core.index import ClusterIndex
from wholeip.engine import Engine
from wholeip.names import PODNAT_ADDR
from wholeip.settings import ModelSettings, PodNatSettings
from wholeip_testkit.netns import Netns, NetnsBackend

NODE = {
    "kind": "Node",
    "metadata": {"name": "n1"},
    "spec": {"podCIDRs": ["10.128.0.0/14"]},
    "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.11"}]},
}
SETTINGS = ModelSettings(podnat=PodNatSettings(default_sources=(ipaddress.ip_address("192.0.2.11"),)))


def pod(i: int, pod_port: int = 80) -> dict[str, Any]:
    ip = ipaddress.ip_address("10.128.0.0") + 1 + i
    return {
        "kind": "Pod",
        "metadata": {"namespace": "bench", "name": f"p{i}", "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": {"bln.space/podnat": json.dumps(
                         {"entries": [{"srcPort": 10000 + i, "dstPort": pod_port}]})}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "podIPs": [{"ip": str(ip)}]},
    }  # fmt: skip


def _ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values) * 1000, 3),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 3),
    }


def run(n: int, changes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"pods": n}
    started = time.perf_counter()
    index = ClusterIndex(settings=SETTINGS, node_name="n1", nodes=[NODE])
    index.update(pod_objects={("bench", f"p{i}"): pod(i) for i in range(n)})
    out["index_s"] = round(time.perf_counter() - started, 3)
    out["published"] = len(index.elements[PODNAT_ADDR[4]])
    with Netns() as ns:
        engine = Engine(backend=NetnsBackend(ns))
        started = time.perf_counter()
        engine.sync(index.doc())
        out["cold_commit_s"] = round(time.perf_counter() - started, 3)
        update, sync = [], []
        for k in range(changes):
            i = (k * 7919) % n
            t0 = time.perf_counter()
            touched = index.update(pod_objects={("bench", f"p{i}"): pod(i, 81 + k % 2)})
            t1 = time.perf_counter()
            result = engine.sync(index.doc(), touched=touched)
            t2 = time.perf_counter()
            assert not result.plan.empty
            update.append(t1 - t0)
            sync.append(t2 - t1)
        out["one_change_index"] = _ms(update)
        out["one_change_commit"] = _ms(sync)
        listed = ns.run(["nft", "list", "map", "inet", "wholeip", PODNAT_ADDR[4]])
        out["kernel_elements"] = listed.stdout.count(" : ") - 1  # the declaration line has one too
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.pods, args.changes)))


if __name__ == "__main__":
    main()
