"""Egress steering with real packets: a marked packet leaves through the holder.

The two-node topology of ``docs/datapath.md``: n1 and n2 share the router's bridge,
pod_b runs on n2, ext is the outside host. n1 is the holder; on n2 the policy router
installs the rule and route of slot 1 (n1's node addresses), and a test-only nft
table marks pod_b's UDP packets to port 7001 with slot 1's mark, as wholeip's own
table marks a member pod's egress. Packets to port 7002 stay unmarked. A counter in
n1's forward hook says which packets went through the holder; one in ext's input
hook says which arrived. Both families.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from wholeip.core.steering import SteeringConfig
from wholeip_testkit.topology import Family, Topology

CONFIG = SteeringConfig()
MARKED, UNMARKED = 7001, 7002

APPLY = """
import json, sys
from wholeip.agent.policyroute import PolicyRouter
from wholeip.core.steering import Holder, SteeringConfig
slots = {int(k): Holder(**v) for k, v in json.loads(sys.argv[1]).items()}
report = PolicyRouter(SteeringConfig()).apply(slots)
print(json.dumps({"steered": sorted(report.steered), "errors": list(report.errors),
                  "not_on_link": sorted(report.not_on_link)}))
"""

SEND = """
import socket, sys
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as s:
    for _ in range(count):
        s.sendto(b"steer me", (dst, port))
"""


@pytest.fixture(scope="module")
def steered(kernel_ok: None) -> Iterator[Topology]:
    with Topology.create() as topo:
        mark = CONFIG.mark(1)
        keep = 0xFFFFFFFF & ~CONFIG.mark_mask
        topo.nft(
            "n2",
            "-f",
            "-",
            input=(
                "table inet r17mark {\n"
                "  chain pre { type filter hook prerouting priority mangle; policy accept;\n"
                f'    iifname "vpb" udp dport {MARKED} meta mark set meta mark and {keep:#x} or {mark:#x}\n'
                "  }\n}\n"
            ),
        )
        for role, hook in (("n1", "forward"), ("ext", "input")):
            rules = "\n".join(
                f"    {proto} saddr {topo.addr('pod_b', fam)} udp dport {port} counter"
                for fam, proto in ((4, "ip"), (6, "ip6"))
                for port in (MARKED, UNMARKED)
            )
            topo.nft(
                role,
                "-f",
                "-",
                input=(
                    "table inet r17count {\n"
                    f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n{rules}\n  }}\n}}\n"
                ),
            )
        yield topo


def apply(topo: Topology, slots: dict[int, dict[str, str | None]]) -> dict[str, list[object]]:
    result = topo.exec("n2", [sys.executable, "-c", APPLY, json.dumps(slots)], check=True)
    report: dict[str, list[object]] = json.loads(result.stdout)
    return report


def counters(topo: Topology, role: str) -> dict[tuple[int, int], int]:
    """(family, port) -> packets counted in the role's test table."""
    listed = json.loads(topo.nft(role, "-j", "list", "table", "inet", "r17count"))
    out: dict[tuple[int, int], int] = {}
    for item in listed["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        family = port = packets = 0
        for expr in rule["expr"]:
            match = expr.get("match")
            if match and match["left"].get("payload", {}).get("field") == "saddr":
                family = 6 if match["left"]["payload"]["protocol"] == "ip6" else 4
            if match and match["left"].get("payload", {}).get("field") == "dport":
                port = match["right"]
            if "counter" in expr:
                packets = expr["counter"]["packets"]
        out[(family, port)] = packets
    return out


def send_until_seen(topo: Topology, family: Family, port: int, before: dict[tuple[int, int], int]) -> int:
    """Send from pod_b to ext until ext has seen three more packets; returns how many it saw."""
    deadline = time.monotonic() + 10
    while True:
        topo.exec("pod_b", [sys.executable, "-c", SEND, topo.addr("ext", family), str(port), "3"], check=True)
        seen = counters(topo, "ext")[(family, port)] - before[(family, port)]
        if seen >= 3:
            return seen
        assert time.monotonic() < deadline, f"ext saw {seen} packets to port {port} (IPv{family})"
        time.sleep(0.05)


@pytest.mark.parametrize("family", [4, 6])
def test_marked_packets_leave_through_the_holder_and_unmarked_ones_do_not(steered: Topology, family: Family) -> None:
    topo = steered
    report = apply(topo, {1: {"node": "n1", "address4": topo.addr("n1", 4), "address6": topo.addr("n1", 6)}})
    assert report["errors"] == []
    assert report["steered"] == [["n1", 4], ["n1", 6]]
    at_holder, at_ext = counters(topo, "n1"), counters(topo, "ext")
    marked = send_until_seen(topo, family, MARKED, at_ext)
    unmarked = send_until_seen(topo, family, UNMARKED, at_ext)
    through_holder = counters(topo, "n1")
    # Every marked packet that reached ext went through n1; no unmarked one did.
    assert through_holder[(family, MARKED)] - at_holder[(family, MARKED)] >= marked
    assert through_holder[(family, UNMARKED)] == at_holder[(family, UNMARKED)]
    assert unmarked >= 3


@pytest.mark.parametrize("family", [4, 6])
def test_without_the_steering_marked_packets_take_the_normal_route(steered: Topology, family: Family) -> None:
    topo = steered
    report = apply(topo, {})
    assert report["steered"] == []
    at_holder, at_ext = counters(topo, "n1"), counters(topo, "ext")
    send_until_seen(topo, family, MARKED, at_ext)
    assert counters(topo, "n1") == at_holder


def test_a_holder_not_on_link_is_not_steered_to(steered: Topology) -> None:
    topo = steered
    # ext's address: n2 reaches it only through the router.
    report = apply(topo, {1: {"node": "far", "address4": topo.addr("ext", 4), "address6": topo.addr("ext", 6)}})
    assert report["not_on_link"] == ["far"]
    assert report["steered"] == []
    at_holder, at_ext = counters(topo, "n1"), counters(topo, "ext")
    send_until_seen(topo, 4, MARKED, at_ext)
    assert counters(topo, "n1") == at_holder


def icmp_redirects_sent(topo: Topology, role: str) -> tuple[int, int]:
    """(IPv4, IPv6) ICMP redirects the role's kernel has sent."""
    snmp = topo.exec(role, ["cat", "/proc/net/snmp"], check=True).stdout.splitlines()
    names, values = (line.split()[1:] for line in snmp if line.startswith("Icmp:"))
    snmp6 = dict(line.split() for line in topo.exec(role, ["cat", "/proc/net/snmp6"], check=True).stdout.splitlines())
    return int(dict(zip(names, values, strict=True))["OutRedirects"]), int(snmp6["Icmp6OutRedirects"])


def test_the_holder_sends_no_redirect_to_the_pods(steered: Topology) -> None:
    """The holder forwards the steered packets out of the interface they came in on, the
    case ICMP redirects are for; the kernel sends one only to a source on that link (and
    for IPv6 only towards a link-local next hop), and a pod's address is not on it."""
    topo = steered
    apply(topo, {1: {"node": "n1", "address4": topo.addr("n1", 4), "address6": topo.addr("n1", 6)}})
    before, at_ext = icmp_redirects_sent(topo, "n1"), counters(topo, "ext")
    for family in (4, 6):
        send_until_seen(topo, family, MARKED, at_ext)
    assert icmp_redirects_sent(topo, "n1") == before


@pytest.mark.parametrize(("rp_filter", "arrives"), [(1, False), (2, True)])
def test_a_strict_rp_filter_on_the_holder_drops_pods_it_routes_elsewhere(
    make_topo: Callable[..., Topology], rp_filter: int, arrives: bool
) -> None:
    """With an overlay the holder's route back to another node's pods leaves through a
    tunnel device, not the interface the steered packets come in on: strict reverse-path
    filtering (1) on that interface drops them, loose (2) lets them through. Modelled by
    moving n1's route to n2's pod network onto another device."""
    topo = make_topo()
    topo.nft(
        "n2",
        "-f",
        "-",
        input=(
            "table inet r17mark {\n"
            "  chain pre { type filter hook prerouting priority mangle; policy accept;\n"
            f'    iifname "vpb" meta mark set {CONFIG.mark(1):#x}\n'
            "  }\n}\n"
        ),
    )
    for role, hook in (("n1", "forward"), ("ext", "input")):
        topo.nft(
            role,
            "-f",
            "-",
            input=(
                "table inet r17count {\n"
                f"  chain c {{ type filter hook {hook} priority 0; policy accept;\n"
                f"    ip saddr {topo.addr('pod_b', 4)} udp dport {MARKED} counter\n  }}\n}}\n"
            ),
        )
    topo.exec("n1", ["ip", "route", "replace", "10.244.2.0/24", "dev", "vpa"], check=True)
    topo.exec("n1", ["sysctl", "-qw", f"net.ipv4.conf.eth0.rp_filter={rp_filter}"], check=True)
    apply(topo, {1: {"node": "n1", "address4": topo.addr("n1", 4), "address6": None}})
    if arrives:
        send_until_seen(topo, 4, MARKED, counters(topo, "ext"))
        return
    # Dropped at n1's input, and counted there as a reverse-path drop; never forwarded.
    deadline = time.monotonic() + 10
    while rp_drops(topo, "n1") < 3:
        assert time.monotonic() < deadline, "n1 counted no reverse-path drop"
        topo.exec("pod_b", [sys.executable, "-c", SEND, topo.addr("ext", 4), str(MARKED), "3"], check=True)
    assert counters(topo, "n1")[(4, MARKED)] == 0
    assert counters(topo, "ext")[(4, MARKED)] == 0


def rp_drops(topo: Topology, role: str) -> int:
    """Packets the role's kernel dropped for failing the reverse-path filter."""
    lines = topo.exec(role, ["cat", "/proc/net/netstat"], check=True).stdout.splitlines()
    names, values = (line.split()[1:] for line in lines if line.startswith("TcpExt:"))
    return int(dict(zip(names, values, strict=True))["IPReversePathFilter"])
