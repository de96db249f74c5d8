"""``make bench``: cold commit of N whole-IP Services against the ``nft -f`` floor.

For each N, in fresh network namespaces on this machine, side by side:

* **ours, the split**: a child process reads the cluster file (JSON) as
  ``wholeip apply`` reads it (``clusterfile.load``), builds the model and its
  elements as it does (``index.load_objects``, then the table over the index's
  sets), commits with the engine (libnftables JSON), and reports the time of each
  stage (the model's also per Service) and its peak RSS; then, in the same
  process, the least Python can do to turn the same objects into the same
  whole-IP elements (``python_floor``: no index, no checks), the model's baseline;
* **ours, the process**: the ``wholeip apply`` command itself on the same file,
  from its start to its exit, in a fresh namespace of its own;
* **floor**: ``nft -f`` of the very same table (our table listed back in nft
  syntax, so the same sets, chains, rules and elements; only the three
  constant ICMP-error rules are left out, nft cannot parse its own listing of
  them), timed in another fresh namespace.

It prints a table and writes it as JSON. Ratios are what to read: these
machines are noisy, absolute times are context. Not part of the test suite.

``--delegated`` measures N delegated Services (labelled for us, 3 endpoints each: their
ClusterIP's slots, docs/datapath.md row 16) instead of whole-IP ones.

``--lb-services M`` adds M LoadBalancer Services nobody manages (one IPv4
LoadBalancer IP, one ClusterIP, two ports each) and runs with ``--lb-to-clusterip``:
the cost of that flag's ``lbclusterip4`` elements (two per Service) in the same
cold commit.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wholeip_bench import write_results
from wholeip_testkit.netns import Netns


def lb_services(m: int) -> list[dict[str, Any]]:
    """M LoadBalancer Services wholeip does not manage: LB IPs from 198.18.0.0/15, ClusterIPs
    from 10.96.0.0/12, TCP 80 and 443 (what ``--lb-to-clusterip`` redirects)."""
    lb_net, svc_net = ipaddress.ip_network("198.18.0.0/15"), ipaddress.ip_network("10.96.0.0/12")
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"lb-{i}", "namespace": "other", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": str(svc_net.network_address + 1 + i),
                "ports": [{"port": 80, "protocol": "TCP"}, {"port": 443, "protocol": "TCP"}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": str(lb_net.network_address + 1 + i)}]}},
        }
        for i in range(m)
    ]


def child(path: str) -> None:
    """Inside the namespace: load, model, compile, commit; print timings as JSON."""
    from wholeip.cli import clusterfile
    from wholeip.core import index
    from wholeip.engine import Engine
    from wholeip.nft.libnft import LibnftBackend
    from wholeip.settings import ModelSettings

    t0 = time.perf_counter()
    objects = clusterfile.load([path]).objects
    t1 = time.perf_counter()
    settings = ModelSettings(lb_to_clusterip=os.environ.get("WHOLEIP_BENCH_LB") == "1")
    # What ``wholeip apply`` does: the index of every object (the model, the elements with
    # it), then the table over its sets.
    idx = index.load_objects(objects, node_name="n1", settings=settings)
    t2 = time.perf_counter()
    doc = idx.doc()
    t3 = time.perf_counter()
    result = Engine(backend=LibnftBackend()).sync(doc)
    t4 = time.perf_counter()
    loop_s = python_floor(objects, "n1")
    print(
        json.dumps(
            {
                "load_s": t1 - t0,
                "model_s": t2 - t1,
                "model_us_per_service": (t2 - t1) * 1e6 / max(1, sum(o.get("kind") == "Service" for o in objects)),
                "compile_s": t3 - t2,
                "python_floor_s": loop_s,
                "model_over_python_floor": (t2 - t1) / loop_s,
                "commit_s": t4 - t3,
                "elements": result.plan.added,
                "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )
    gc.freeze()  # as the wholeip command ends (wholeip.cli.main.entry): exit leaves it to the OS


_OCTETS = {str(i): i for i in range(256)}


def python_floor(objects: list[dict[str, Any]], node: str) -> float:
    """The model's baseline in the same process: seconds for the least a Python program
    can do to turn these objects into the whole-IP elements, with the cyclic collector
    paused as the model has it. It reads each Service's external IP and each slice's
    first endpoint without checking anything, pairs them and adds the ingress, ICMP and
    (for a pod on ``node``) egress and hairpin elements to sets; no index, no problems,
    no other reader. Only the synthetic whole-IP clusters' shape is understood."""

    def number(text: str) -> int:
        a, b, c, d = text.split(".")
        return _OCTETS[a] << 24 | _OCTETS[b] << 16 | _OCTETS[c] << 8 | _OCTETS[d]

    was = gc.isenabled()
    gc.disable()
    started = time.perf_counter()
    services: dict[tuple[str, str], str] = {}
    pods: dict[tuple[str, str], tuple[str, str]] = {}
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] == "Service":
            ingress = obj.get("status", {}).get("loadBalancer", {}).get("ingress")
            if ingress and meta.get("annotations", {}).get("networking.cozystack.io/wholeIP") == "true":
                services[(meta["namespace"], meta["name"])] = ingress[0]["ip"]
        elif obj["kind"] == "EndpointSlice":
            endpoint = obj["endpoints"][0]
            key = (meta["namespace"], meta["labels"]["kubernetes.io/service-name"])
            pods[key] = (endpoint["addresses"][0], endpoint.get("nodeName"))
    sets: dict[str, set[Any]] = {name: set() for name in ("ingress", "icmp", "egress", "hairpin")}
    for key, ext in services.items():
        if key not in pods:
            continue
        pod, where = pods[key]
        ext_n, pod_n = number(ext), number(pod)
        sets["ingress"].add((ext, pod))
        sets["icmp"].add(((ext, ext_n), (ext_n - pod_n) & 0xFFFF))
        if where == node:
            sets["egress"].add((pod, ext))
            sets["hairpin"].add((pod, pod))
            sets["icmp"].add(((ext, pod_n), (pod_n - ext_n) & 0xFFFF))
    spent = time.perf_counter() - started
    if was:
        gc.enable()
    return spent


def _tokens(listing: str) -> list[str]:
    """An nft listing's words in order of their text: equal for the same table whatever
    order its hash sets list their elements in."""
    return sorted(listing.replace(",", " ").split())


def _icmp_fix_rule(line: str) -> bool:
    """A rule of the ICMP-error fix (raw payload writes, see core/ruleset.py)."""
    text = line.strip()
    return text.startswith(("icmp type", "icmpv6 type")) and "@th," in text and " set " in text


def measure(n: int, workdir: Path, *, lb: int = 0, delegated: bool = False) -> dict[str, Any]:
    from wholeip_testkit import synth

    cluster = workdir / f"cluster-{n}.json"
    objects = synth.delegated_cluster(n) if delegated else synth.cluster(n)
    cluster.write_text(json.dumps(synth.as_list(objects + lb_services(lb))))
    with Netns() as ours:
        argv = [sys.executable, "-m", "wholeip_bench.commit", "--child", str(cluster)]
        out = ours.run(["env", f"WHOLEIP_BENCH_LB={int(lb > 0)}", *argv])
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        stats: dict[str, Any] = json.loads(out.stdout)
        listing = ours.run(["nft", "list", "table", "inet", "wholeip"]).stdout
    with Netns() as apply_ns:
        # The command a user runs, start to exit (the interpreter, imports, the file, the
        # model, the commit, the exit): what the floor is compared with.
        argv = [sys.executable, "-m", "wholeip", "apply", "-f", str(cluster), "--node-name", "n1"]
        started = time.perf_counter()
        out = apply_ns.run([*argv, *(["--lb-to-clusterip"] if lb else [])])
        wall = time.perf_counter() - started
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        if _tokens(apply_ns.run(["nft", "list", "table", "inet", "wholeip"]).stdout) != _tokens(listing):
            raise RuntimeError("wholeip apply left another table than the measured commit")
    # nft prints the raw-payload writes of the three ICMP-fix rules in a typed form it
    # cannot parse back; they are constant and cost nothing next to N elements, so the
    # floor's file leaves them out (it is still the same sets, maps and elements).
    text = workdir / f"table-{n}.nft"
    rules = [line for line in listing.splitlines() if not _icmp_fix_rule(line)]
    text.write_text("\n".join(rules) + "\n")
    with Netns() as floor_ns:
        started = time.perf_counter()
        result = floor_ns.run(["nft", "-f", str(text)])
        floor = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
    return {
        "services": n,
        "kind": "delegated" if delegated else "whole-ip",
        "lb_services": lb,
        **stats,
        "ours_process_s": wall,
        "floor_nft_f_s": floor,
        "commit_over_floor": stats["commit_s"] / floor,
        "process_over_floor": wall / floor,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wholeip_bench.commit", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated N")
    parser.add_argument("--out", default="bench-results/bench.json", help="where the JSON table goes")
    parser.add_argument(
        "--lb-services",
        type=int,
        default=0,
        metavar="M",
        help="also M unmanaged LoadBalancer Services, with --lb-to-clusterip",
    )
    parser.add_argument(
        "--delegated", action="store_true", help="delegated Services (3 endpoints each) instead of whole-IP ones"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            rows.append(measure(n, Path(tmp), lb=args.lb_services, delegated=args.delegated))
            r = rows[-1]
            print(
                f"{r['kind']} N={n:>7}  elements={r['elements']:>7}  commit={r['commit_s']:.3f}s"
                f"  floor(nft -f)={r['floor_nft_f_s']:.3f}s"
                f"  commit/floor={r['commit_over_floor']:.2f}  process={r['ours_process_s']:.2f}s"
                f"  (load {r['load_s']:.2f} model {r['model_s']:.2f} = {r['model_us_per_service']:.0f} us/Service"
                f" compile {r['compile_s']:.2f}; a bare Python loop {r['python_floor_s']:.2f},"
                f" model/loop={r['model_over_python_floor']:.1f})  process/floor={r['process_over_floor']:.1f}"
                f"  rss={r['rss_mib']:.0f} MiB",
                flush=True,
            )
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
