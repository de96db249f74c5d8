"""Reliability end to end: what happens to traffic when the agent, the kernel's table
or the API server misbehaves. Real agents (``wholeip run``) in node namespaces, the
API server double, and long-lived streams (a TCP connection and a UDP flow, a
sequence number every 10 ms, echoed) whose every lost number is counted.

* an agent killed with SIGKILL and restarted under a stream: nothing lost, the
  connection lasts, and the new agent commits nothing;
* someone else changes our table (flush, delete, elements, a foreign rule): the
  next resync repairs it, counts it and logs it once, and a foreign table next to
  ours is never touched;
* the API server goes away (stopped, watches answering 410, watches stalled):
  the rules stay, traffic flows, the probes say what docs/operations.md says,
  and a change made when the server is back is applied.

Every wait is a condition with a deadline. Figures (restart gap, packets sent and
lost) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator

import pytest

from wholeip_testkit.sandbox import POD_IP, Sandbox, wait_for
from wholeip_testkit.topology import Node
from wholeip_testkit.traffic import Stream, StreamResult, exchange

pytestmark = pytest.mark.kernel

EXT = ("203.0.113.10", "2001:db8:100::10")  # routed to n1, the node of pod A
LATE = "203.0.113.20"  # routed to n2, for a Service made after an outage
RESYNC = 2.0  # --max-sync-interval of these agents
DRIFT_EVENT = "drift repaired: our table was changed outside the agent"
FOREIGN = """
table inet someoneelse {
    set blocked { type ipv4_addr; elements = { 192.0.2.99 } }
    chain guard {
        type filter hook prerouting priority 10; policy accept;
        ip saddr @blocked drop
    }
    chain spare {
        ip daddr 192.0.2.98 accept
    }
}
"""


@pytest.fixture(scope="module")
def sb(kernel_ok: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    # A short resync, so that drift is repaired within seconds; debug logs, so that
    # a sync that changes nothing still says so.
    with Sandbox(
        workdir=tmp_path_factory.mktemp("sandbox"),
        agent_args=["--max-sync-interval", str(RESYNC), "--log-level", "debug"],
    ) as sandbox:
        for node in ("n1", "n2"):
            sandbox.t.nft(node, "-f", "-", input=FOREIGN)
        sandbox.wait_ready()
        sandbox.apply([sandbox.service_manifest("rel"), *sandbox.slices_manifest("rel", "pod_a")])
        sandbox.set_load_balancer_ips("rel", EXT)
        sandbox.kubectl("annotate", "service", "rel", "networking.cozystack.io/wholeIP=true")
        sandbox.wait_mapping(EXT[0], POD_IP["pod_a"][0])
        reaches(sandbox, "pod_a", EXT[0])
        yield sandbox


def reaches(sb: Sandbox, pod: str, ext: str, *, within: float = 15) -> None:
    """Until an outside client reaches ``pod`` through ``ext`` (and sees ``ext`` reply)."""

    def ok() -> bool:
        r = exchange(sb.t, client="ext", server=pod, addr=ext, proto="udp", timeout=1.0)  # type: ignore[arg-type]
        return r.ok and r.client_reply_from == ext

    wait_for(ok, within=within, what=f"outside -> {ext} -> {pod}")


def more_echoes(*streams: Stream, count: int = 100, within: float = 15) -> None:
    """Until every stream got ``count`` more UDP echoes (traffic demonstrably flows now)."""
    marks = [s.echoed() for s in streams]
    for stream, mark in zip(streams, marks, strict=True):

        def flowed(stream: Stream = stream, mark: int = mark) -> bool:
            return stream.echoed() >= mark + count

        wait_for(flowed, within=within, what=f"{count} more echoes")


def assert_clean(result: StreamResult, *, peer: str, reply_from: str) -> None:
    """Nothing lost or duplicated, the TCP connection intact, the right addresses on both ends."""
    assert result.udp_lost == 0, f"UDP lost at the server: {result.udp_lost_sample} ({result.summary()})"
    assert result.udp_unechoed == 0, result.summary()
    assert result.udp_duplicates == 0, result.summary()
    assert result.tcp_intact, result.summary()
    assert result.server_peers == [peer], result.server_peers
    assert result.client_reply_from == [reply_from], result.client_reply_from


def sample(metrics: dict[str, float], name: str) -> float:
    return metrics.get(name, 0.0)


def _listing(sb: Sandbox, table: str) -> str:
    return sb.t.nft("n1", "-j", "list", "table", "inet", table)


def count_events(sb: Sandbox, node: Node, event: str) -> int:
    return sum(1 for e in sb.agent_events(node, current=False) if e.get("event") == event)


# --------------------------------------------------------------------------- 1. restart


def test_sigkill_restart_keeps_streams_and_commits_nothing(sb: Sandbox) -> None:
    """Both families at once: into the pod and out of it, through one SIGKILL restart."""
    foreign = _listing(sb, "someoneelse")
    clients = {f: sb.t.addr("ext", f) for f in (4, 6)}
    with contextlib.ExitStack() as stack:
        inbound = {
            f: stack.enter_context(Stream(sb.t, client="ext", server="pod_a", addr=EXT[k]))
            for k, f in enumerate((4, 6))
        }
        outbound = {f: stack.enter_context(Stream(sb.t, client="pod_a", server="ext", addr=clients[f])) for f in (4, 6)}
        streams = (*inbound.values(), *outbound.values())
        more_echoes(*streams, count=50)
        killed_at = time.monotonic()
        assert sb.kill_agent("n1", signal.SIGKILL) == -signal.SIGKILL
        sb.start_agent("n1")
        sb.wait_ready(within=30)
        restart_gap = time.monotonic() - killed_at
        # Keep streaming a while after the new agent is ready: its first sync is behind us.
        more_echoes(*streams, count=100)
        into = {f: s.stop() for f, s in inbound.items()}
        out = {f: s.stop() for f, s in outbound.items()}
    print(f"\nrestart gap (SIGKILL -> ready) {restart_gap:.2f}s")
    for k, f in enumerate((4, 6)):
        print(f"outside -> {EXT[k]} -> pod A: {into[f].summary()}")
        print(f"pod A -> outside as {EXT[k]}: {out[f].summary()}")
        assert_clean(into[f], peer=clients[f], reply_from=EXT[k])
        assert into[f].server_locals == [POD_IP["pod_a"][k]]
        assert_clean(out[f], peer=EXT[k], reply_from=clients[f])
        assert into[f].udp_sent > restart_gap / 0.01 * 0.5, "the stream ran through the restart"

    # The restarted agent found the table as it wanted it: one full sync, no changes.
    metrics = sb.metrics("n1", strict=True)
    assert sample(metrics, 'wholeip_syncs_total{result="success"}') == 0, metrics
    assert sample(metrics, 'wholeip_syncs_total{result="noop"}') >= 1, metrics
    assert sample(metrics, 'wholeip_syncs_total{result="error"}') == 0, metrics
    assert sample(metrics, "wholeip_drift_repairs_total") == 0, metrics
    synced = [e for e in sb.agent_events("n1") if e.get("event") == "synced"]
    assert synced, "the restarted agent logged no sync"
    assert synced[0]["full"] is True, synced[0]
    assert synced[0]["changes"] == "no changes", synced[0]
    assert all(e["changes"] == "no changes" for e in synced), synced
    assert _listing(sb, "someoneelse") == foreign


# --------------------------------------------------------------------------- 2. drift


def _canonical(listing: str) -> list[str]:
    """Our table's listing without what legitimately changes: handles, dynamic sets' elements."""
    objects: list[str] = []
    for obj in json.loads(listing)["nftables"]:
        for kind, body in obj.items():
            if not isinstance(body, dict):
                continue
            body = {k: v for k, v in body.items() if k != "handle"}
            if kind in ("set", "map"):
                if "dynamic" in body.get("flags", []) or "timeout" in body:
                    body.pop("elem", None)
                elif "elem" in body:
                    body["elem"] = sorted(body["elem"], key=json.dumps)
            objects.append(json.dumps({kind: body}, sort_keys=True))
    return sorted(objects)


FULL_SYNCS = 'wholeip_sync_duration_seconds_count{kind="full"}'
DAMAGE = {
    "flush-table": ["flush", "table", "inet", "wholeip"],
    "delete-table": ["delete", "table", "inet", "wholeip"],
    "delete-element": ["delete", "element", "inet", "wholeip", "ingress4", "{", EXT[0], "}"],
    "add-element": ["add", "element", "inet", "wholeip", "ingress4", "{", "203.0.113.99", ":", "10.244.1.10", "}"],
    "insert-rule": ["insert", "rule", "inet", "wholeip", "raw_prerouting", "ip", "daddr", EXT[0], "drop"],
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_drift_is_repaired_counted_and_logged_once(sb: Sandbox, damage: str) -> None:
    foreign = _listing(sb, "someoneelse")
    ours = _canonical(_listing(sb, "wholeip"))
    before = sb.metrics("n1", strict=True)
    repairs = sample(before, "wholeip_drift_repairs_total")
    fulls = sample(before, FULL_SYNCS)
    warnings = count_events(sb, "n1", DRIFT_EVENT)

    damaged_at = time.monotonic()
    sb.t.nft("n1", *DAMAGE[damage])
    seen: dict[str, float] = {}

    def repaired() -> bool:
        seen.update(sb.metrics("n1"))
        return sample(seen, "wholeip_drift_repairs_total") > repairs

    wait_for(repaired, within=RESYNC + 5, what=f"{damage} repaired")
    took = time.monotonic() - damaged_at
    syncs = sample(seen, FULL_SYNCS) - fulls
    print(f"\n{damage}: repaired {took:.2f}s after the damage, full sync {syncs:g} after it (resync {RESYNC:g}s)")
    # By the first full sync that read the table after the damage: the next one, or the one
    # after it if one was under way (the agent counts the repair and the sync with no
    # await between them, so a scrape that shows the repair shows its sync; a later one
    # may be counted too only if this poll lagged by a whole resync interval). Counted in
    # syncs, not seconds: a loaded machine stretches the seconds, not the count.
    assert 1 <= syncs <= 2
    assert took < 2 * RESYNC + 3  # and the interval is the one asked for (the default is 10 s)
    assert _canonical(_listing(sb, "wholeip")) == ours
    reaches(sb, "pod_a", EXT[0], within=3)

    # Once: one count and one warning, and the next full sync finds nothing to repair.
    full = sample(sb.metrics("n1", strict=True), FULL_SYNCS)
    wait_for(
        lambda: sample(sb.metrics("n1"), FULL_SYNCS) >= full + 1,
        within=RESYNC + 5,
        what="the next full sync",
    )
    assert sample(sb.metrics("n1", strict=True), "wholeip_drift_repairs_total") == repairs + 1
    # The log line is read from the agent's log file, which can trail the metric.
    wait_for(lambda: count_events(sb, "n1", DRIFT_EVENT) >= warnings + 1, within=5, what="the drift warning in the log")
    assert count_events(sb, "n1", DRIFT_EVENT) == warnings + 1
    # Someone else's table, next to ours all along, was never touched.
    assert _listing(sb, "someoneelse") == foreign


# --------------------------------------------------------------------------- 3. API server outage

OUTAGE = 60.0  # at most: the test ends the outage when its checks are done (a loaded machine may be slow)


def probes(sb: Sandbox, node: Node) -> tuple[int, int]:
    """(/healthz, /readyz) status codes of a node's agent."""
    return sb.probe(node, "/healthz")[0], sb.probe(node, "/readyz")[0]


def expired_restarts(sb: Sandbox) -> float:
    """Relists after 410 on every watch of both agents (Services, EndpointSlices, Nodes, and
    the Pods and ServiceCIDRs watches: the double's injected 410s fall on any of them)."""
    return sum(
        value
        for node in ("n1", "n2")
        for name, value in sb.metrics(node, strict=True).items()
        if name.startswith("wholeip_watch_restarts_total{") and 'reason="expired"' in name
    )


def test_api_server_outage_keeps_rules_and_catches_up(sb: Sandbox) -> None:
    assert sb.api_up()
    before = sb.metrics("n2", strict=True)
    with (
        Stream(sb.t, client="ext", server="pod_a", addr=EXT[0]) as stream,
        Stream(sb.t, client="ext", server="pod_a", addr=EXT[1]) as stream6,
    ):
        more_echoes(stream, stream6, count=50)
        gone_at = time.monotonic()
        assert sb.api_call("POST", f"/_double/stop?seconds={OUTAGE:g}") is not None
        wait_for(lambda: not sb.api_up(), within=5, what="the API server to go away")

        # Running agents: alive and ready (the table they committed stays and is served).
        def noticed() -> bool:
            m = sb.metrics("n2")
            key = 'wholeip_watch_restarts_total{reason="error",resource="services"}'
            return sample(m, key) > sample(before, key)

        wait_for(noticed, within=5, what="the agent to see its watches fail")
        assert probes(sb, "n1") == (200, 200)
        assert probes(sb, "n2") == (200, 200)

        # An agent (re)started during the outage cannot list: not ready, but healthy
        # (a restart would not help), and the table its predecessor left keeps working.
        assert sb.kill_agent("n1", signal.SIGKILL) == -signal.SIGKILL
        sb.start_agent("n1")
        wait_for(lambda: probes(sb, "n1")[0] == 200, within=10, what="the new n1 agent to answer")
        status, body = sb.probe("n1", "/readyz")
        assert status == 503, (status, body)
        assert "informers not synced" in body
        more_echoes(stream, stream6, count=100)
        assert probes(sb, "n1") == (200, 503)
        assert probes(sb, "n2") == (200, 200)
        # The resync against the kernel goes on without the API server.
        after = sb.metrics("n2", strict=True)
        stamp = "wholeip_last_successful_sync_timestamp_seconds"
        assert sample(after, stamp) > sample(before, stamp)
        assert not sb.api_up(), f"the checks took longer than the {OUTAGE:g}s outage"

        sb.resume_api()
        wait_for(sb.api_up, within=10, what="the API server to come back")
        back_at = time.monotonic()
        # A change right after it is back is applied on every node.
        sb.apply([sb.service_manifest("late"), *sb.slices_manifest("late", "pod_b")])
        sb.set_load_balancer_ips("late", [LATE])
        sb.kubectl("annotate", "service", "late", "networking.cozystack.io/wholeIP=true")
        sb.wait_mapping(LATE, POD_IP["pod_b"][0], within=40)
        caught_up = time.monotonic() - back_at
        sb.wait_ready(within=30)
        more_echoes(stream, stream6, count=50)
        result, result6 = stream.stop(), stream6.stop()
    print(f"\nAPI server away {back_at - gone_at:.1f}s; change applied {caught_up:.1f}s after it was back")
    print(f"outside -> {EXT[0]} -> pod A through the outage: {result.summary()}")
    print(f"outside -> {EXT[1]} -> pod A through the outage: {result6.summary()}")
    assert_clean(result, peer=sb.t.addr("ext", 4), reply_from=EXT[0])
    assert_clean(result6, peer=sb.t.addr("ext", 6), reply_from=EXT[1])
    reaches(sb, "pod_b", LATE, within=5)
    sb.kubectl("delete", "service", "late")
    sb.wait_mapping(LATE, None, within=15)


@pytest.mark.parametrize("fault", ["fail-watches", "stall-watches"])
def test_watch_faults_keep_traffic_probes_and_table(sb: Sandbox, fault: str) -> None:
    """410 storms and silent watches (their catch-up is in test_sandbox.py): traffic and
    probes stay up, and a relist of unchanged objects commits nothing."""
    sb.wait_ready()
    committed = [sample(sb.metrics(n, strict=True), 'wholeip_syncs_total{result="success"}') for n in ("n1", "n2")]
    expired = expired_restarts(sb)
    with Stream(sb.t, client="ext", server="pod_a", addr=EXT[0]) as stream:
        more_echoes(stream, count=50)
        try:
            if fault == "fail-watches":
                # The next 12 watch requests get 410 Gone; make every watch reconnect now.
                assert sb.api_call("POST", "/_double/fail-watches?count=12") is not None
                assert sb.api_call("POST", "/_double/drop-watches") is not None
                wait_for(lambda: expired_restarts(sb) >= expired + 12, within=20, what="12 relists after 410")
            else:
                assert sb.api_call("POST", "/_double/stall-watches") is not None
            more_echoes(stream, count=100)
            assert probes(sb, "n1") == (200, 200)
            assert probes(sb, "n2") == (200, 200)
        finally:
            sb.api_call("POST", "/_double/release-watches")
        result = stream.stop()
    print(f"\n{fault}: {result.summary()}")
    assert_clean(result, peer=sb.t.addr("ext", 4), reply_from=EXT[0])
    assert [
        sample(sb.metrics(n, strict=True), 'wholeip_syncs_total{result="success"}') for n in ("n1", "n2")
    ] == committed
