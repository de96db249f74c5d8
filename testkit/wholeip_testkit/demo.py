"""``make demo``: the sandbox, a Service given a whole IP, real traffic, a short report.

Steps (each waits on a condition with a deadline and reports what it saw):

1. bring up the sandbox: two network-namespace nodes, a router, an outside
   client, the API server double, one ``wholeip run`` per node;
2. ``kubectl apply`` a LoadBalancer Service and its EndpointSlices (pod A on
   node 1), ``kubectl patch --subresource=status`` its IPs as MetalLB would,
   and show it as ``kubectl get -o wide`` does;
3. ``kubectl annotate`` it with ``networking.cozystack.io/wholeIP=true``;
4. traffic from the outside client to random TCP and UDP ports (IPv4 and
   IPv6), ICMP echo, the pod's egress, hairpin from pod B on the other node;
5. remove the annotation: the mapping disappears and the ports go dark;
6. tear everything down (also on Ctrl-C).

Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

from wholeip_testkit.sandbox import POD_IP, Sandbox, SandboxError
from wholeip_testkit.topology import Topology
from wholeip_testkit.traffic import exchange, ping

EXT = ("203.0.113.10", "2001:db8:100::10")
OUTSIDE = (Topology.addr("ext", 4), Topology.addr("ext", 6))


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.started = time.monotonic()

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def check(self, what: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        t0 = time.monotonic()
        try:
            ok, detail = fn()
        except SandboxError as exc:
            ok, detail = False, str(exc)
        mark = "ok  " if ok else "FAIL"
        print(f"  [{mark}] {what:<58} {detail} ({(time.monotonic() - t0) * 1000:.0f} ms)", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        return ok


def run() -> int:
    report = Report()
    with Sandbox() as sb:
        report.step("sandbox up: API server double on 192.0.2.1, agents on n1 and n2")
        report.check("agents ready (/readyz on each node)", lambda: (True, f"{sb.wait_ready():.2f}s"))

        report.step("kubectl apply a LoadBalancer Service 'vm' with its pod on n1")
        sb.apply([sb.service_manifest("vm"), *sb.slices_manifest("vm", "pod_a")])
        sb.set_load_balancer_ips("vm", EXT)
        for line in sb.kubectl("get", "service", "vm", "-o", "wide").stdout.splitlines():
            print(f"  {line}")  # (the columns a real API server sends: the double prints them too)

        report.step("kubectl annotate service vm networking.cozystack.io/wholeIP=true")
        sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP=true")
        for ext, pod in zip(EXT, POD_IP["pod_a"], strict=True):
            report.check(f"every node maps {ext} -> {pod}", _mapped(sb, ext, pod))

        report.step("real traffic")
        for fam in (0, 1):
            ext, outside, pod_b = EXT[fam], OUTSIDE[fam], POD_IP["pod_b"][fam]
            for proto in ("tcp", "udp"):
                report.check(
                    f"outside -> {ext} random {proto.upper()} port", _talk(sb, "ext", "pod_a", ext, proto, outside, ext)
                )
            report.check(f"outside pings {ext}", _ping(sb, ext))
            report.check(f"pod egress leaves as {ext}", _talk(sb, "pod_a", "ext", outside, "udp", ext, outside))
            report.check(f"hairpin: pod B on n2 -> {ext}", _talk(sb, "pod_b", "pod_a", ext, "tcp", pod_b, ext))

        report.step("kubectl annotate service vm networking.cozystack.io/wholeIP-")
        sb.kubectl("annotate", "service", "vm", "networking.cozystack.io/wholeIP-")
        for ext in EXT:
            report.check(f"every node forgot {ext}", _mapped(sb, ext, None))
        report.check(f"outside -> {EXT[0]} no longer reaches the pod", _dark(sb))
        if report.failed:
            sb.keep_workdir = True
            print(f"\nthe agents' logs are kept in {sb.workdir}")

    total = time.monotonic() - report.started
    print(f"\n{report.passed} passed, {report.failed} failed in {total:.1f}s; everything torn down.")
    return 0 if report.failed == 0 else 1


Check = Callable[[], tuple[bool, str]]


def _mapped(sb: Sandbox, ext: str, pod: str | None) -> Check:
    return lambda: (True, f"after {sb.wait_mapping(ext, pod):.2f}s")


def _talk(sb: Sandbox, client: str, server: str, addr: str, proto: str, expect_peer: str, expect_reply: str) -> Check:
    def check() -> tuple[bool, str]:
        port = random.randint(20000, 60000)
        r = exchange(sb.t, client=client, server=server, addr=addr, proto=proto, port=port)  # type: ignore[arg-type]
        detail = f"port {port}: server saw {r.server_peer}, reply from {r.client_reply_from}"
        return bool(r.ok and r.server_peer == expect_peer and r.client_reply_from == expect_reply), detail

    return check


def _ping(sb: Sandbox, ext: str) -> Check:
    def check() -> tuple[bool, str]:
        r = ping(sb.t, "ext", ext)
        return bool(r.ok and r.reply_from == ext), f"reply from {r.reply_from}"

    return check


def _dark(sb: Sandbox) -> Check:
    def check() -> tuple[bool, str]:
        r = exchange(sb.t, client="ext", server="pod_a", addr=EXT[0], proto="udp", timeout=1.0)
        return (not r.ok and r.server_peer is None), "no reply, the pod saw nothing"

    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wholeip_testkit.demo", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    try:
        return run()
    except KeyboardInterrupt:
        print("\ninterrupted; everything torn down.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
