"""Egress steering's rules and routes on a real kernel, in a network namespace.

The namespace plays a node on a shared link (``d0``: 10.9.0.1/24, fd00:9::1/64) whose
neighbours are the holders; 10.9.0.254 is its IPv4 default gateway, so an address
outside the link is reached through a gateway (not on-link), and IPv6 has no default
route, so an address outside the link is not reached at all. What the kernel holds is
read back with iproute2 (``ip -j``), not with the module under test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from wholeip.agent.policyroute import PolicyRouter, RouteReport, dump_routes
from wholeip.core.steering import Holder, SteeringConfig
from wholeip_testkit.netns import Netns

CONFIG = SteeringConfig()
N1 = Holder("n1", "10.9.0.2", "fd00:9::2")
N2 = Holder("n2", "10.9.0.3", "fd00:9::3")


@pytest.fixture
def node(kernel_ok: None) -> Iterator[Netns]:
    with Netns() as ns:
        for command in (
            "link set lo up",
            "link add d0 type veth peer name d1",
            "link set d0 up",
            "link set d1 up",
            "addr add 10.9.0.1/24 dev d0",
            "addr add fd00:9::1/64 dev d0 nodad",
            "route add default via 10.9.0.254",
        ):
            ip(ns, *command.split())
        yield ns


def ip(ns: Netns, *args: str) -> str:
    result = ns.run(["ip", *args])
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"
    return result.stdout


def rules(ns: Netns, version: int) -> list[dict[str, Any]]:
    """Every rule but the kernel's own (local, main, default)."""
    listed = json.loads(ip(ns, "-j", f"-{version}", "rule"))
    return [r for r in listed if r.get("table") not in ("local", "main", "default")]


def routes(ns: Netns, version: int, table: int) -> list[dict[str, Any]]:
    result = ns.run(["ip", "-j", f"-{version}", "route", "show", "table", str(table)])
    if result.returncode != 0:  # "FIB table does not exist": no route in it
        return []
    listed: list[dict[str, Any]] = json.loads(result.stdout or "[]")
    return listed


def our_rule(slot: int) -> dict[str, Any]:
    return {
        "priority": CONFIG.priority,
        "src": "all",
        "fwmark": hex(CONFIG.mark(slot)),
        "fwmask": hex(CONFIG.mark_mask),
        "table": str(CONFIG.table(slot)),
    }


def is_ours(rule: dict[str, Any]) -> bool:
    """By the definition of ownership: our priority, our mask, a table of our range."""
    return (
        rule.get("priority") == CONFIG.priority
        and rule.get("fwmask") == hex(CONFIG.mark_mask)
        and CONFIG.slot_of_table(int(rule.get("table", "0"))) is not None
    )


def default_via(ns: Netns, version: int, table: int) -> list[tuple[str, str]]:
    return [(r["gateway"], r["dev"]) for r in routes(ns, version, table) if r["dst"] == "default"]


def apply(ns: Netns, slots: dict[int, Holder], config: SteeringConfig = CONFIG) -> RouteReport:
    return ns.call(PolicyRouter(config).apply, slots)


def test_apply_creates_a_rule_and_a_route_per_slot_in_both_families(node: Netns) -> None:
    report = apply(node, {1: N1, 2: N2})
    assert report.errors == ()
    assert (report.rules_added, report.routes_added, report.rules_removed, report.routes_removed) == (4, 4, 0, 0)
    assert report.steered == {("n1", 4), ("n1", 6), ("n2", 4), ("n2", 6)}
    assert report.not_on_link == report.local == frozenset()
    for version in (4, 6):
        assert rules(node, version) == [our_rule(1), our_rule(2)]
    assert default_via(node, 4, 300001) == [("10.9.0.2", "d0")]
    assert default_via(node, 6, 300001) == [("fd00:9::2", "d0")]
    assert default_via(node, 4, 300002) == [("10.9.0.3", "d0")]
    assert default_via(node, 6, 300002) == [("fd00:9::3", "d0")]
    assert all(r["protocol"] == "kernel" for r in routes(node, 4, 300001) + routes(node, 6, 300002))


def test_a_second_apply_changes_nothing(node: Netns) -> None:
    apply(node, {1: N1, 2: N2})
    before = (rules(node, 4), rules(node, 6), routes(node, 4, 300001), routes(node, 6, 300002))
    again = apply(node, {1: N1, 2: N2})
    assert not again.changed
    assert again.errors == ()
    assert again.steered == {("n1", 4), ("n1", 6), ("n2", 4), ("n2", 6)}
    assert (rules(node, 4), rules(node, 6), routes(node, 4, 300001), routes(node, 6, 300002)) == before


def test_a_deleted_rule_or_route_comes_back_on_the_next_apply(node: Netns) -> None:
    apply(node, {1: N1, 2: N2})
    ip(node, "-4", "rule", "del", "priority", "2000", "fwmark", "0x2/0x7f", "table", "300002")
    ip(node, "-6", "route", "del", "default", "table", "300001")
    report = apply(node, {1: N1, 2: N2})
    assert (report.rules_added, report.routes_added, report.rules_removed, report.routes_removed) == (1, 1, 0, 0)
    assert rules(node, 4) == [our_rule(1), our_rule(2)]
    assert default_via(node, 6, 300001) == [("fd00:9::2", "d0")]
    assert not apply(node, {1: N1, 2: N2}).changed


def test_a_route_or_rule_changed_by_hand_is_put_right(node: Netns) -> None:
    apply(node, {1: N1})
    ip(node, "-4", "route", "replace", "default", "via", "10.9.0.99", "table", "300001", "proto", "kernel")
    # A second copy of our rule, as a careless script would add it.
    ip(node, "-6", "rule", "add", "priority", "2000", "fwmark", "0x1/0x7f", "table", "300001")
    report = apply(node, {1: N1})
    assert report.routes_added == 1
    assert report.rules_removed == 1
    assert default_via(node, 4, 300001) == [("10.9.0.2", "d0")]
    assert len(rules(node, 6)) == 1


def test_a_second_default_route_of_ours_goes_in_one_apply(node: Netns) -> None:
    apply(node, {1: N1})
    ip(node, "-4", "route", "replace", "default", "via", "10.9.0.99", "table", "300001", "proto", "kernel")
    ip(node, "-4", "route", "add", "default", "via", "10.9.0.98", "table", "300001", "proto", "kernel", "metric", "7")
    ip(node, "-6", "route", "add", "default", "via", "fd00:9::98", "table", "300001", "proto", "kernel", "metric", "7")
    report = apply(node, {1: N1})
    assert (report.routes_added, report.routes_removed) == (1, 2)
    assert default_via(node, 4, 300001) == [("10.9.0.2", "d0")]
    assert default_via(node, 6, 300001) == [("fd00:9::2", "d0")]
    assert not apply(node, {1: N1}).changed


def test_a_holder_that_moves_slot_or_leaves_takes_its_rule_and_route_along(node: Netns) -> None:
    apply(node, {1: N1, 2: N2})
    report = apply(node, {3: N2})
    assert (report.rules_added, report.routes_added, report.rules_removed, report.routes_removed) == (2, 2, 4, 4)
    for version in (4, 6):
        assert rules(node, version) == [our_rule(3)]
        assert routes(node, version, 300001) == routes(node, version, 300002) == []
    assert default_via(node, 4, 300003) == [("10.9.0.3", "d0")]


def test_a_family_without_an_address_is_not_steered(node: Netns) -> None:
    apply(node, {1: N1})
    report = apply(node, {1: Holder("n1", "10.9.0.2", None)})
    assert report.steered == {("n1", 4)}
    assert (report.rules_removed, report.routes_removed) == (1, 1)
    assert rules(node, 6) == []
    assert routes(node, 6, 300001) == []
    assert rules(node, 4) == [our_rule(1)]


def test_a_holder_not_on_link_is_reported_and_not_steered(node: Netns) -> None:
    far = Holder("far", "198.51.100.7", "2001:db8:77::1")  # via the gateway / no route at all
    half = Holder("half", "10.9.0.4", "2001:db8:77::2")  # IPv4 on the link, IPv6 not
    report = apply(node, {1: far, 2: half, 3: N1})
    assert report.not_on_link == {"far", "half"}
    assert report.steered == {("half", 4), ("n1", 4), ("n1", 6)}
    assert report.errors == ()
    assert rules(node, 4) == [our_rule(2), our_rule(3)]
    assert rules(node, 6) == [our_rule(3)]
    assert routes(node, 4, 300001) == routes(node, 6, 300001) == routes(node, 6, 300002) == []


def test_the_node_itself_is_never_a_gateway(node: Netns) -> None:
    report = apply(node, {1: Holder("me", "10.9.0.1", "fd00:9::1")})
    assert report.local == {"me"}
    assert report.steered == frozenset()
    assert rules(node, 4) == rules(node, 6) == []


def test_bad_addresses_are_reported_never_raised(node: Netns) -> None:
    report = apply(node, {1: Holder("x", "not-an-ip", "10.9.0.2"), 2: N2})
    assert any("'not-an-ip' is not an IP address" in e for e in report.errors)
    assert any("'10.9.0.2' is not an IPv6 address" in e for e in report.errors)
    assert report.steered == {("n2", 4), ("n2", 6)}


def foreign(ns: Netns) -> dict[str, Any]:
    """Rules and routes that are not ours, set up around ours; returns a snapshot."""
    for command in (
        # Our priority, another mask; our priority and mask, a table outside our range;
        # another priority with our mask and table.
        "-4 rule add priority 2000 fwmark 0x1/0xff table 300001",
        "-4 rule add priority 2000 fwmark 0x1/0x7f table 100",
        "-6 rule add priority 1999 fwmark 0x1/0x7f table 300001",
        "-4 rule add priority 2000 from 10.9.0.0/24 table 300002",
        # Another destination in one of our tables, and a default route of another
        # protocol in another of our tables.
        "-4 route add 10.50.0.0/16 via 10.9.0.2 table 300001",
        "-6 route add fd00:50::/64 via fd00:9::2 table 300001 proto static",
        "-4 route add default via 10.9.0.3 table 300005",
    ):
        ip(ns, *command.split())
    return snapshot(ns)


def snapshot(ns: Netns) -> dict[str, Any]:
    return {
        "rules4": [r for r in rules(ns, 4) if not is_ours(r)],
        "rules6": [r for r in rules(ns, 6) if not is_ours(r)],
        "routes": {
            (v, t): [r for r in routes(ns, v, t) if r.get("protocol") != "kernel"]
            for v in (4, 6)
            for t in (300001, 300002, 300005)
        },
    }


def test_rules_and_routes_that_are_not_ours_stay_untouched(node: Netns) -> None:
    before = foreign(node)
    assert before["rules4"]
    assert before["routes"][(4, 300005)]
    report = apply(node, {1: N1, 5: N2})
    assert report.conflicts == {300005}  # a default route that is not ours holds slot 5's table
    assert report.steered == {("n1", 4), ("n1", 6), ("n2", 6)}
    assert snapshot(node) == before
    assert default_via(node, 4, 300001) == [("10.9.0.2", "d0")]
    assert default_via(node, 4, 300005) == [("10.9.0.3", "d0")]  # still the foreign one
    assert our_rule(5) not in rules(node, 4)
    assert our_rule(5) in rules(node, 6)
    # Moving and removing ours leaves them alone too.
    apply(node, {2: N1})
    assert snapshot(node) == before
    node.call(PolicyRouter(CONFIG).cleanup)
    assert snapshot(node) == before
    assert not any(is_ours(r) for v in (4, 6) for r in rules(node, v))


def test_cleanup_removes_ours_only(node: Netns) -> None:
    before = foreign(node)
    apply(node, {1: N1, 2: N2, 3: Holder("n3", "10.9.0.4", None)})
    node.call(PolicyRouter(CONFIG).cleanup)
    assert snapshot(node) == before
    for version in (4, 6):
        assert [r for r in rules(node, version) if is_ours(r)] == []
        for table in (300001, 300002, 300003):
            assert [r for r in routes(node, version, table) if r.get("protocol") == "kernel"] == []
    assert not node.call(PolicyRouter(CONFIG).remove_all).changed


def test_another_configuration_owns_other_rules(node: Netns) -> None:
    other = SteeringConfig(mark_mask=0x00F00000, priority=3000, table_base=100000)
    apply(node, {1: N1})
    apply(node, {1: N2}, other)
    assert {r["table"] for r in rules(node, 4)} == {"300001", "100001"}
    node.call(PolicyRouter(CONFIG).cleanup)
    assert [r["table"] for r in rules(node, 4)] == ["100001"]
    assert default_via(node, 4, 100001) == [("10.9.0.3", "d0")]


WHOLEIP = [sys.executable, "-m", "wholeip"]


def test_wholeip_cleanup_removes_the_steering_too(node: Netns) -> None:
    before = foreign(node)
    apply(node, {1: N1, 2: N2})
    argv = ["ip", "netns", "exec", node.name, *WHOLEIP, "cleanup"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "removed 4 egress steering rule(s) and 4 route(s)" in result.stdout
    assert snapshot(node) == before
    again = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert "no egress steering rules or routes: nothing to do" in again.stdout


def test_wholeip_cleanup_with_other_flags_finds_other_rules(node: Netns) -> None:
    apply(node, {1: N1}, SteeringConfig(mark_mask=0xF0, priority=3000, table_base=5000))
    apply(node, {1: N1})
    env = {**os.environ, "WHOLEIP_EGRESS_MARK_MASK": "0xf0"}
    argv = ["ip", "netns", "exec", node.name, *WHOLEIP, "cleanup", "--egress-rule-priority", "3000"]
    argv += ["--egress-table-base", "5000"]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
    assert "removed 2 egress steering rule(s)" in result.stdout
    assert [r["table"] for r in rules(node, 4)] == ["300001"]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--egress-mark-mask", "0x5", "contiguous"),
        ("--egress-mark-mask", "0", "non-zero"),
        ("--egress-rule-priority", "32766", "1-32765"),
        ("--egress-table-base", "12", "255-"),
    ],
)
def test_bad_egress_flags_are_refused_with_a_reason(node: Netns, flag: str, value: str, message: str) -> None:
    argv = ["ip", "netns", "exec", node.name, *WHOLEIP, "cleanup"]
    result = subprocess.run([*argv, flag, value], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    env = {**os.environ, "WHOLEIP_" + flag[2:].upper().replace("-", "_"): value}
    from_env = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    assert from_env.returncode == 2
    assert message in from_env.stderr
    assert "Traceback" not in from_env.stderr


def test_our_protocol_outside_our_tables_is_not_ours(node: Netns) -> None:
    # The protocol is only half of what makes a route ours; the table range is the other.
    ip(node, "-6", "route", "add", "fd00:77::/64", "via", "fd00:9::2", "table", "299999", "proto", "kernel")
    for number in range(300):  # the kernel filters the dump by protocol; these never reach us
        ip(node, "-4", "route", "add", f"10.{100 + number // 250}.{number % 250}.0/24", "via", "10.9.0.2")
    listed = node.call(dump_routes, socket.AF_INET, 2)  # kernel: the connected and local routes
    assert {(r.dst, r.dst_len, r.table) for r in listed} >= {("10.9.0.0", 24, 254), ("10.9.0.1", 32, 255)}
    assert all(r.gateway is None for r in listed)  # none of the 300 routes via 10.9.0.2 (boot)
    assert [r.dst for r in node.call(dump_routes, socket.AF_INET6, 2) if r.table == 299999] == ["fd00:77::"]
    apply(node, {1: N1})
    node.call(PolicyRouter(CONFIG).cleanup)
    assert "fd00:77::/64 via fd00:9::2 dev d0 proto kernel" in ip(node, "-6", "route", "show", "table", "299999")
    rules_seen, routes_seen = node.call(PolicyRouter(CONFIG).snapshot)
    assert (rules_seen, routes_seen) == ([], [])
