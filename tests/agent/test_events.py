"""Which node reports a Service's problems, deduplication, and failures that must stay harmless."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from agentkit import eventually, node

from wholeip.core.model import ClusterState, Mapping1to1, Mode, ObjectRef, Problem
from wholeip.kube.api import ApiError
from wholeip.kube.events import EventRecorder, reporting_node

WEB = ObjectRef("Service", "default", "web", "uid-web")


def mapping(ip: str, pod: str, node_name: str | None) -> Mapping1to1:
    return Mapping1to1(
        service=WEB,
        external_ip=ipaddress.ip_address(ip),
        pod_ip=ipaddress.ip_address(pod),
        node_name=node_name,
        mode=Mode.WHOLE_IP,
        allow_icmp=False,
        ports=(),
        source_ranges=(),
        egress=True,
    )


def state(*problems: Problem, mappings: tuple[Mapping1to1, ...] = ()) -> ClusterState:
    return ClusterState(mappings=mappings, cluster_networks=(), problems=problems, managed_services=(WEB,))


NODES = [
    node("n3", "192.0.2.13", "10.244.3.0/24"),
    node("n1", "192.0.2.11", "10.244.1.0/24", ready=False),
    node("n2", "192.0.2.12", "10.244.2.0/24"),
]


# --------------------------------------------------------------------------- ownership


def test_the_backends_node_reports() -> None:
    s = state(mappings=(mapping("198.51.100.1", "10.244.3.5", "n3"),))
    assert reporting_node(WEB, state=s, nodes=NODES) == "n3"


def test_dual_stack_backends_on_two_nodes_pick_the_smaller_name() -> None:
    s = state(
        mappings=(
            mapping("198.51.100.1", "10.244.3.5", "n3"),
            mapping("2001:db8::1", "fd00::5", "n2"),
        )
    )
    assert reporting_node(WEB, state=s, nodes=NODES) == "n2"


def test_without_a_known_backend_the_smallest_ready_node_reports() -> None:
    assert reporting_node(WEB, state=state(), nodes=NODES) == "n2"  # n1 is smaller but not Ready
    # A backend on a node that is not (or no longer) a Node falls back too.
    s = state(mappings=(mapping("198.51.100.1", "10.244.9.5", "gone"),))
    assert reporting_node(WEB, state=s, nodes=NODES) == "n2"
    s = state(mappings=(mapping("198.51.100.1", "10.244.9.5", None),))
    assert reporting_node(WEB, state=s, nodes=NODES) == "n2"


def test_with_no_ready_node_the_smallest_node_reports() -> None:
    nodes = [node("b", "192.0.2.2", "10.244.2.0/24", ready=False), node("a", "192.0.2.1", "10.244.1.0/24", ready=False)]
    assert reporting_node(WEB, state=state(), nodes=nodes) == "a"
    assert reporting_node(WEB, state=state(), nodes=[]) is None


# --------------------------------------------------------------------------- recorder with a stand-in API


class FakeCore:
    """The two CoreV1Api Event methods, answering like ``_preload_content=False`` calls."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patched: list[tuple[str, dict[str, Any]]] = []
        self.fail: int = 0
        self.expired = False

    async def create_namespaced_event(self, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        if self.fail:
            self.fail -= 1
            return _Resp(500, {"kind": "Status", "code": 500, "message": "nope"})
        self.created.append(body)
        return _Resp(201, body)

    async def patch_namespaced_event(self, name: str, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
        assert kw["_content_type"] == "application/merge-patch+json"
        if self.expired:
            return _Resp(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "gone"})
        self.patched.append((name, body))
        return _Resp(200, {"metadata": {"name": name}, **body})


class _Resp:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self._body = body

    async def __aenter__(self) -> _Resp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        import json

        return json.dumps(self._body).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[EventRecorder, FakeCore, Clock]]:
    core, clock = FakeCore(), Clock()
    rec = EventRecorder(
        core=core,
        node_name="n2",
        reemit_interval=100.0,
        retry_interval=10.0,
        pace=0,
        clock=clock,
        wall_clock=lambda: datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    task = asyncio.create_task(rec.run())
    yield rec, core, clock
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)  # it never died of an API error


NO_ENDPOINT = Problem(WEB, "NoReadyEndpoint", "no ready IPv4 endpoint for external IP 198.51.100.1")


async def test_one_event_per_problem_while_it_persists(recorder: tuple[EventRecorder, FakeCore, Clock]) -> None:
    rec, core, clock = recorder
    for _ in range(5):
        rec.observe(state(NO_ENDPOINT), NODES)
        await eventually(lambda: rec.backlog == 0)
    assert len(core.created) == 1
    event = core.created[0]
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": "default",
        "name": "web",
        "uid": "uid-web",
    }
    assert (event["reason"], event["type"], event["count"]) == ("NoReadyEndpoint", "Warning", 1)
    assert event["source"] == {"component": "wholeip", "host": "n2"}
    assert event["reportingComponent"] == "wholeip"
    assert event["reportingInstance"] == "n2"
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2024-01-02T03:04:05Z"
    assert event["metadata"]["name"].startswith("web.")

    clock.now = 150.0  # past the re-emit interval: the same Event is patched
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: len(core.patched) == 1)
    assert core.patched[0] == (event["metadata"]["name"], {"count": 2, "lastTimestamp": "2024-01-02T03:04:05Z"})

    core.expired = True  # the server dropped the Event (TTL): a new one is created
    clock.now = 300.0
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: len(core.created) == 2)


async def test_a_problem_that_returns_is_reported_again(recorder: tuple[EventRecorder, FakeCore, Clock]) -> None:
    rec, core, _ = recorder
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: len(core.created) == 1)
    rec.observe(state(), NODES)
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: len(core.created) == 2)
    changed = Problem(WEB, "NoReadyEndpoint", "no ready IPv6 endpoint for external IP 2001:db8::1")
    rec.observe(state(changed), NODES)
    await eventually(lambda: len(core.created) == 3)  # another message is another Event
    assert core.created[2]["type"] == "Warning"
    info = Problem(WEB, "NoExternalIP", "no IP yet", warning=False)
    rec.observe(state(info), NODES)
    await eventually(lambda: len(core.created) == 4)
    assert core.created[3]["type"] == "Normal"


async def test_only_the_owner_reports_and_only_services(recorder: tuple[EventRecorder, FakeCore, Clock]) -> None:
    rec, core, _ = recorder
    elsewhere = state(NO_ENDPOINT, mappings=(mapping("198.51.100.1", "10.244.3.5", "n3"),))
    rec.observe(elsewhere, NODES)  # the backend lives on n3: not ours
    slice_problem = Problem(ObjectRef("EndpointSlice", "default", "web-a"), "InvalidEndpointAddress", "bad")
    rec.observe(state(slice_problem), NODES)
    await asyncio.sleep(0.05)
    assert core.created == []


async def test_a_nodes_own_egress_steering_findings_are_its_own_to_report(
    recorder: tuple[EventRecorder, FakeCore, Clock],
) -> None:
    """``EgressNodeNotOnLink`` is what this node (n2) found about its own steering: it is
    written here even though n3 hosts the Service's backend (and reports the rest)."""
    rec, core, _ = recorder
    mine = Problem(WEB, "EgressNodeNotOnLink", "the holder n9 is not on-link from node n2")
    rec.observe(state(NO_ENDPOINT, mine, mappings=(mapping("198.51.100.1", "10.244.3.5", "n3"),)), NODES)
    await eventually(lambda: len(core.created) == 1)
    assert core.created[0]["reason"] == "EgressNodeNotOnLink"
    assert "node n2" in core.created[0]["message"]


async def test_api_failures_are_retried_later_and_never_raise(recorder: tuple[EventRecorder, FakeCore, Clock]) -> None:
    rec, core, clock = recorder
    core.fail = 1
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: rec.backlog == 0)
    assert core.created == []
    rec.observe(state(NO_ENDPOINT), NODES)  # too early for a retry
    await asyncio.sleep(0.05)
    assert core.created == []
    clock.now = 11.0
    rec.observe(state(NO_ENDPOINT), NODES)
    await eventually(lambda: len(core.created) == 1)


def test_api_error_carries_the_status() -> None:
    err = ApiError(500, "boom", reason="InternalError")
    assert err.status == 500
    assert "InternalError" in str(err)


async def test_a_problem_gone_before_it_settles_is_never_written() -> None:
    core, clock = FakeCore(), Clock()
    slept: list[float] = []
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        if seconds <= 0:  # the pace between writes
            return
        slept.append(seconds)
        await gate.wait()  # the test decides when the settle time is over
        gate.clear()

    rec = EventRecorder(core=core, node_name="n2", pace=0, settle=2.0, clock=clock, sleep=sleep)
    task = asyncio.create_task(rec.run())
    try:
        rec.observe(state(NO_ENDPOINT), NODES)  # seen by one sync...
        await eventually(lambda: slept == [2.0])
        rec.observe(state(), NODES)  # ...and gone at the next one (watches out of step)
        clock.now = 2.0
        gate.set()
        await eventually(lambda: rec.backlog == 0)
        assert core.created == []
        rec.observe(state(NO_ENDPOINT), NODES)  # a lasting problem is written after settling
        await eventually(lambda: len(slept) == 2)
        rec.observe(state(NO_ENDPOINT), NODES)  # more syncs while it settles...
        rec.observe(state(NO_ENDPOINT), NODES)
        clock.now = 4.0
        gate.set()
        await eventually(lambda: len(core.created) == 1)
        await eventually(lambda: rec.backlog == 0)
        assert core.patched == []  # ...still one write
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
