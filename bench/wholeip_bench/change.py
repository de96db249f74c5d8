"""Benchmarks 2 and 3: one change at scale inside the running agent, and the cost of observing.

For each N, in a fresh network namespace of its own:

1. the API server double starts with N whole-IP Services and their slices
   preloaded; one real ``wholeip run`` agent (real nftables) lists them and
   programs its table; its RSS is read from ``/proc`` once it is ready and idle;
2. **one change** (benchmark 2): ``--changes`` times, one Service's pod moves
   (a merge patch of its EndpointSlice over HTTP); the agent's own log says,
   for the sync that committed it, the time from the watch event to the
   committed transaction (``change_ms``); p50/p99 over all changes. The next
   change is sent once the previous one is committed. The floor is one
   ``nft add element`` of one map element into the same table (``nft`` is a
   process: its start-up is part of the floor), and, closer to what the agent
   does, the same element in one libnftables transaction from a warm process;
3. **observe** (benchmark 3): reading our table back from the kernel and
   comparing it with the desired table, as every full sync does (start-up and
   resync timer only; a normal sync trusts its memory of the last commit):
   ``Backend.read_table`` (libnftables for the skeleton, netlink for the
   elements) cold, then as the agent calls it (``known=`` its memory, so sets
   held exactly are compared while read), against the libnftables listing
   (``nft -j list table`` in JSON, parsed), measured in the same run.

The agent runs with ``--min-sync-interval 0`` so that the rate limiter, which
exists to bound a storm, does not add its wait to a lone change.
``--delegated``: N delegated Services of three endpoints each; a change replaces one
Service's first endpoint (docs/datapath.md row 16).

Prints a table and writes JSON. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from wholeip_bench import write_results
from wholeip_bench.commit import lb_services
from wholeip_testkit.netns import Netns
from wholeip_testkit.sandbox import wait_for
from wholeip_testkit.stats import percentile

PROBE_PORT = 9765


def _http(method: str, url: str, body: Any = None, ctype: str = "application/json") -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def _stamp(text: str) -> float:
    """A log line's ISO timestamp (UTC, "Z") as seconds since the epoch."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _cpu_ms(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, from the scheduler (ns resolution)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):  # a thread that ended meanwhile
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e6


def _rss_mib(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


class _Log:
    """The agent's JSON log, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def lines(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        out = []
        for raw in data[:end].splitlines():
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return out


def child(
    n: int, changes: int, node_cycles: int, workdir: Path, *, delegated: bool = False, lb: int = 0
) -> dict[str, Any]:
    """Inside the namespace: double + agent, then the measurements. ``delegated``: N
    delegated Services of 3 endpoints each instead of whole-IP Services, and a change
    replaces one Service's first endpoint (docs/datapath.md row 16). ``lb``: that many
    LoadBalancer Services nobody manages too, and the agent runs with ``--lb-to-clusterip``."""
    from wholeip.core import index
    from wholeip.core.elements import compile_table
    from wholeip.engine import Engine
    from wholeip.nft.diff import diff
    from wholeip.nft.libnft import LibnftBackend
    from wholeip.nft.listing import parse_listing
    from wholeip.settings import ModelSettings
    from wholeip_testkit import synth

    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    objects = synth.delegated_cluster(n) if delegated else synth.cluster(n)
    services = 0
    for obj in objects:
        if obj["kind"] == "Service" and not delegated:  # delegated ones carry their ClusterIPs
            # Preassigned ClusterIPs: the double's allocator is not what is measured.
            # Numbered from 10.96.0.1: the network address is not a Service's (a real server refuses it).
            services += 1
            obj["spec"]["clusterIP"] = f"10.{96 + (services >> 16)}.{(services >> 8) & 255}.{services & 255}"
            obj["spec"].pop("type", None)
    for i, obj in enumerate(lb_services(lb)):
        # Their ClusterIPs after the ones above (10.96.0.0/12 holds both); no node ports
        # (there are 2,768: a real server would refuse the rest too).
        obj["spec"]["clusterIP"] = f"10.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"
        obj["spec"]["allocateLoadBalancerNodePorts"] = False
        objects.append(obj)
    settings = ModelSettings(lb_to_clusterip=bool(lb))
    cluster = workdir / "cluster.json"
    cluster.write_text(json.dumps(synth.as_list(objects)))
    kubeconfig = workdir / "kubeconfig"
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wholeip_testkit.apiserver",
            "--preload",
            str(cluster),
            "--kubeconfig",
            str(kubeconfig),
            "--history",
            "100000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    agent: subprocess.Popen[bytes] | None = None
    try:
        assert api.stdout is not None
        url = api.stdout.readline().strip()
        if not url:
            raise RuntimeError("the API double did not start")
        log_path = workdir / "agent.log"
        started = time.perf_counter()
        wall_started = time.time()
        with log_path.open("wb") as log_file:
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "wholeip",
                    "run",
                    "--node-name",
                    "n1",
                    "--kubeconfig",
                    str(kubeconfig),
                    "--min-sync-interval",
                    "0",
                    "--max-sync-interval",
                    "3600",
                    "--port",
                    str(PROBE_PORT),
                    *(["--lb-to-clusterip", "true"] if lb else []),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        log = _Log(log_path)

        def ready() -> bool:
            if agent is not None and agent.poll() is not None:
                raise RuntimeError(f"the agent exited ({agent.returncode}) before it was ready")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PROBE_PORT}/readyz", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        # Every 100 ms: a probe every 5 ms took a tenth of the agent's CPU while it listed
        # (py-spy: aiohttp answering /readyz), which the split below would count as its own.
        wait_for(ready, within=600, what="the agent to be ready", interval=0.1)
        ready_s = time.perf_counter() - started
        # Where start-up went, from the agent's own log: listing (process start included)
        # until "informers synced", then the first sync's index and commit.
        startup = log.lines()
        informed = next(line for line in startup if line.get("event") == "informers synced")
        first = next(line for line in startup if line.get("event") == "synced")
        # The start-up index filled as the lists came (absent: built from the caches at the gate).
        prefill = next((line for line in startup if line.get("event") == "start-up index followed the lists"), {})
        # The table's elements sent meanwhile (absent: the table existed, or nothing was sent).
        early_event = "early fill: elements sent while the informers listed"
        early = next((line for line in startup if line.get("event") == early_event), {})
        list_s = _stamp(informed["timestamp"]) - wall_started
        time.sleep(1.0)  # let the allocator settle before reading RSS (no condition to wait on)
        rss, hwm = _rss_mib(agent.pid)

        def committed() -> dict[str, Any] | None:
            for line in log.lines():
                if line.get("event") == "synced" and line.get("change_ms") is not None:
                    return line
            return None

        # Benchmark 2: one change at a time.
        latencies: list[float] = []
        commits: list[float] = []
        elements: list[int] = []
        service_cpu: list[float] = []
        for k in range(changes):
            i = (k * 7919) % n
            # A free address in n1's pod CIDR (10.128.0.0/16; synth's pods end below
            # 10.128.196.0): a pod outside the pod networks would be refused, and the
            # change would only delete the mapping.
            pod = f"10.128.{200 + ((k >> 8) % 56)}.{k & 255}"
            name = f"svc-{i}-ipv4"
            endpoints = [{"addresses": [pod], "nodeName": "n1", "conditions": {"ready": True}}]
            if delegated:
                # One of the Service's three endpoints replaced by a new pod.
                name = f"dlg-{i}-ipv4"
                endpoints = synth.delegated(i, generation=k + 1)[1]["endpoints"]
                pod = endpoints[0]["addresses"][0]
            cpu = _cpu_ms(agent.pid)
            _http(
                "PATCH",
                f"{url}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{name}",
                {"endpoints": endpoints},
                "application/merge-patch+json",
            )

            line = wait_for(committed, within=60, what=f"change {k} committed", interval=0.002)
            service_cpu.append(_cpu_ms(agent.pid) - cpu)
            latencies.append(float(line["change_ms"]))
            commits.append(float(line["commit_ms"]))
            elements.append(int(str(line["changes"]).split(" elements added")[0].split()[-1]))
            if not elements[-1]:
                raise RuntimeError(f"change {k} added no element (was the pod refused?): {line}")
        rss_after, hwm_after = _rss_mib(agent.pid)

        # Node changes: a Node joins (created, then its addresses written), changes its
        # address, and leaves; the agent's CPU time from the request to the committed sync.
        node_cpu: list[float] = []
        node_ms: list[float] = []
        node_elements: list[int] = []
        for k in range(node_cycles):
            name = f"n{3 + k}"
            spec = synth.node(name, 2 + k)
            status = spec.pop("status")
            moved = {"addresses": [{"type": "InternalIP", "address": f"198.51.100.{k + 1}"}]}
            steps: list[tuple[str, str, Any, str]] = [
                ("POST", f"{url}/api/v1/nodes", spec, "application/json"),
                ("PATCH", f"{url}/api/v1/nodes/{name}/status", {"status": status}, "application/merge-patch+json"),
                ("PATCH", f"{url}/api/v1/nodes/{name}/status", {"status": moved}, "application/merge-patch+json"),
                ("DELETE", f"{url}/api/v1/nodes/{name}", None, "application/json"),
            ]
            for method, where, body, ctype in steps:
                cpu = _cpu_ms(agent.pid)
                _http(method, where, body, ctype)
                line = wait_for(committed, within=120, what=f"node change {method} {where}", interval=0.002)
                node_cpu.append(_cpu_ms(agent.pid) - cpu)
                node_ms.append(float(line["change_ms"]))
                counts = str(line["changes"]).split(" elements added, ")
                node_elements.append(int(counts[0].split()[-1]) + int(counts[1].split()[0]))

        # Floors: one element, by nft (a process) and by libnftables (warm, in-process).
        backend = LibnftBackend()
        nft_ms: list[float] = []
        lib_ms: list[float] = []
        for k in range(changes):
            ext, pod = f"198.18.{k >> 8}.{k & 255}", f"10.250.{k >> 8}.{k & 255}"
            t0 = time.perf_counter()
            subprocess.run(["nft", "add", "element", "inet", "wholeip", "ingress4", f"{{ {ext} : {pod} }}"], check=True)
            nft_ms.append((time.perf_counter() - t0) * 1000)
            ext = f"198.19.{k >> 8}.{k & 255}"
            t0 = time.perf_counter()
            backend.transact(
                [
                    {
                        "add": {
                            "element": {
                                "family": "inet",
                                "table": "wholeip",
                                "name": "ingress4",
                                "elem": [[ext, pod]],
                            }
                        }
                    }
                ]
            )
            lib_ms.append((time.perf_counter() - t0) * 1000)

        # Benchmark 3: observe = list + parse + compare, as a full sync does.
        cpu = time.process_time()
        state = index.build_state_from_objects(objects, node_name="n1", settings=settings)
        # What a Node change cost before it updated the index: a rebuild (here: the model at once).
        rebuild_cpu = (time.process_time() - cpu) * 1000
        desired = compile_table(state, node_name="n1")
        engine = Engine(backend=backend)
        observe: list[float] = []
        compare: list[float] = []
        as_agent: list[float] = []
        listing: list[float] = []
        for _ in range(3):
            t0 = time.perf_counter()
            current = engine.observe()
            t1 = time.perf_counter()
            diff(desired, current)
            t2 = time.perf_counter()
            observe.append(t1 - t0)
            compare.append(t2 - t1)
            # The agent passes its memory of the last commit, which is what the kernel
            # holds (the 200 changes above made it differ from ``desired``).
            memory = {name: set(elems) for name, elems in current.elements.items()} if current else {}
            del current
            t0 = time.perf_counter()
            diff(desired, engine.observe(memory))
            as_agent.append(time.perf_counter() - t0)
            del memory
            t0 = time.perf_counter()
            listed = backend.list_table("inet", "wholeip")
            diff(desired, parse_listing(listed or [], family="inet", name="wholeip"))
            listing.append(time.perf_counter() - t0)
            del listed
        return {
            "services": n,
            "kind": "delegated" if delegated else "whole-ip",
            "lb_services": lb,
            "agent_ready_s": ready_s,
            "startup_list_s": list_s,
            "startup_list_cpu_s": float(informed.get("cpu_s", 0.0)),
            "startup_index_s": float(first["index_ms"]) / 1000,
            "startup_index_cpu_s": float(first["index_cpu_ms"]) / 1000,
            "startup_commit_s": (float(first["observe_ms"]) + float(first["commit_ms"])) / 1000,
            "startup_observe_s": float(first["observe_ms"]) / 1000,
            "startup_prefilled_objects": int(prefill.get("listed", 0)),
            "startup_prefill_cpu_s": float(prefill.get("cpu_s", 0.0)),
            "startup_early_steps": int(early.get("steps", 0)),
            "startup_early_elements": int(early.get("elements", 0)),
            "startup_early_sending_s": float(early.get("sending_s", 0.0)),
            "agent_rss_mib": rss,
            "agent_peak_rss_mib": max(hwm, hwm_after),
            "agent_rss_after_changes_mib": rss_after,
            "changes": changes,
            "change_to_commit_p50_ms": percentile(latencies, 0.5),
            "change_to_commit_p99_ms": percentile(latencies, 0.99),
            "change_to_commit_each_ms": latencies,
            "service_change_cpu_each_ms": service_cpu,
            "commit_p50_ms": percentile(commits, 0.5),
            "elements_added_per_change": statistics.median(elements),
            "service_change_cpu_p50_ms": percentile(service_cpu, 0.5),
            "node_changes": len(node_cpu),
            "node_change_cpu_p50_ms": percentile(node_cpu, 0.5),
            "node_change_cpu_max_ms": max(node_cpu),
            "node_change_to_commit_p50_ms": percentile(node_ms, 0.5),
            "node_change_elements_max": max(node_elements),
            "rebuild_cpu_ms": rebuild_cpu,
            "floor_nft_add_element_p50_ms": percentile(nft_ms, 0.5),
            "floor_nft_add_element_p99_ms": percentile(nft_ms, 0.99),
            "floor_libnft_one_element_p50_ms": percentile(lib_ms, 0.5),
            "p50_over_nft_floor": percentile(latencies, 0.5) / percentile(nft_ms, 0.5),
            "p50_over_libnft_floor": percentile(latencies, 0.5) / percentile(lib_ms, 0.5),
            "observe_list_parse_s": min(observe),
            "observe_compare_s": min(compare),
            "observe_over_change_p50": (min(observe) + min(compare)) * 1000 / percentile(latencies, 0.5),
            "observe_as_agent_s": min(as_agent),
            "observe_libnftables_listing_s": min(listing),
            "observe_as_agent_over_listing": min(as_agent) / min(listing),
        }
    finally:
        for proc in (agent, api):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (every row needs a sample), not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wholeip_bench.change", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N")
    parser.add_argument("--changes", type=_at_least_one, default=200, help="changes per N")
    parser.add_argument(
        "--node-cycles", type=_at_least_one, default=5, help="Nodes that join, move and leave (4 changes each)"
    )
    parser.add_argument("--out", default="bench-results/change.json", help="where the JSON table goes")
    parser.add_argument(
        "--delegated", action="store_true", help="delegated Services (3 endpoints each) instead of whole-IP ones"
    )
    parser.add_argument(
        "--lb-services",
        type=int,
        default=0,
        help="also M LoadBalancer Services nobody manages, the agent with --lb-to-clusterip",
    )
    parser.add_argument("--keep-logs", help="a directory to copy each size's agent log to")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = child(
            args.child,
            args.changes,
            args.node_cycles,
            Path(args.workdir),
            delegated=args.delegated,
            lb=args.lb_services,
        )
        print(json.dumps(result), flush=True)
        return 0
    if os.geteuid() != 0:
        print("the benchmark needs root (network namespaces)", file=sys.stderr)
        return 2
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp, Netns() as ns:
            argv_child = [sys.executable, "-m", "wholeip_bench.change", "--child", str(n)]
            extra = ["--delegated"] if args.delegated else []
            extra += ["--lb-services", str(args.lb_services)] if args.lb_services else []
            out = ns.run(
                [
                    *argv_child,
                    "--changes",
                    str(args.changes),
                    "--node-cycles",
                    str(args.node_cycles),
                    "--workdir",
                    tmp,
                    *extra,
                ]
            )
            if args.keep_logs:
                Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(Path(tmp, "agent.log"), Path(args.keep_logs, f"agent-{n}.log"))
            if out.returncode != 0:
                log = Path(tmp, "agent.log")
                tail = log.read_text()[-3000:] if log.exists() else ""
                raise RuntimeError(f"{out.stderr[-3000:]}\n--- agent log ---\n{tail}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(
            f"{r['kind']} N={n:>7}  change->commit p50={r['change_to_commit_p50_ms']:.1f}ms"
            f" p99={r['change_to_commit_p99_ms']:.1f}ms (commit p50 {r['commit_p50_ms']:.1f}ms)"
            f"  floor: nft add element p50={r['floor_nft_add_element_p50_ms']:.1f}ms"
            f" libnft 1 elem p50={r['floor_libnft_one_element_p50_ms']:.2f}ms"
            f"  observe={r['observe_list_parse_s']:.2f}s + compare {r['observe_compare_s']:.2f}s"
            f" (as the agent {r['observe_as_agent_s']:.2f}s; nft -j list + parse + compare"
            f" {r['observe_libnftables_listing_s']:.2f}s)"
            f"  agent rss={r['agent_rss_mib']:.0f} MiB (peak {r['agent_peak_rss_mib']:.0f})"
            f"  ready in {r['agent_ready_s']:.1f}s",
            flush=True,
        )
        print(
            f"N={n:>7}  start to ready {r['agent_ready_s']:.1f}s: listing (process start included)"
            f" {r['startup_list_s']:.1f}s ({r['startup_list_cpu_s']:.1f}s of the agent's CPU),"
            f" index {r['startup_index_s']:.2f}s ({r['startup_index_cpu_s']:.2f}s of its"
            f" thread's CPU; {r['startup_prefilled_objects']} objects filled in while listing, with"
            f" {r['startup_prefill_cpu_s']:.2f}s of CPU; {r['startup_early_elements']} elements sent meanwhile"
            f" in {r['startup_early_steps']} steps, {r['startup_early_sending_s']:.2f}s in their thread),"
            f" commit {r['startup_commit_s']:.2f}s"
            f" (of which reading the table {r['startup_observe_s']:.2f}s);"
            f" the agent's own part (index + commit) {r['startup_index_s'] + r['startup_commit_s']:.2f}s",
            flush=True,
        )
        print(
            f"N={n:>7}  node change: agent CPU p50={r['node_change_cpu_p50_ms']:.1f}ms"
            f" max={r['node_change_cpu_max_ms']:.1f}ms over {r['node_changes']} changes,"
            f" change->commit p50={r['node_change_to_commit_p50_ms']:.1f}ms,"
            f" at most {r['node_change_elements_max']} elements per transaction;"
            f" one Service change: CPU p50={r['service_change_cpu_p50_ms']:.1f}ms;"
            f" a rebuild (the model at once, as a Node change cost before): {r['rebuild_cpu_ms']:.0f}ms CPU",
            flush=True,
        )
    write_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
