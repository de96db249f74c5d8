"""Probes and metrics over real HTTP on 127.0.0.1 (a free port), with stand-in informers and loop."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from wholeip.agent.health import Health
from wholeip.agent.metrics import Metrics
from wholeip.agent.web import WebServer


@dataclass
class FakeInformer:
    resource: str
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    cache: dict[str, object] = field(default_factory=dict)
    restarts: collections.Counter[str] = field(default_factory=collections.Counter)

    def failing_for(self) -> float:
        return 0.0


@dataclass
class FakeLoop:
    first_commit: asyncio.Event = field(default_factory=asyncio.Event)
    age: float = 0.0

    def pending_age(self) -> float:
        return self.age


@dataclass
class Stack:
    url: str
    informers: list[FakeInformer]
    loop: FakeLoop
    metrics: Metrics
    session: aiohttp.ClientSession

    async def get(self, path: str) -> tuple[int, str]:
        async with self.session.get(self.url + path) as response:
            return response.status, await response.text()


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    informers = [FakeInformer("services"), FakeInformer("nodes")]
    loop = FakeLoop()
    metrics = Metrics()
    metrics.track_informers(informers)  # type: ignore[arg-type]
    health = Health(informers=informers, loop=loop, timeout=60.0)
    server = WebServer(host="127.0.0.1", port=0, ready=health.ready, healthy=health.healthy, registry=metrics.registry)
    await server.start()
    assert server.port != 0
    try:
        async with aiohttp.ClientSession() as session:
            yield Stack(server.url, informers, loop, metrics, session)
    finally:
        await server.stop()


async def test_readyz_waits_for_informers_then_for_the_first_commit(stack: Stack) -> None:
    status, body = await stack.get("/readyz")
    assert status == 503
    assert "services" in body
    assert "nodes" in body

    for informer in stack.informers:
        informer.synced.set()
    status, body = await stack.get("/readyz")
    assert status == 503
    assert "first sync" in body

    stack.loop.first_commit.set()
    assert await stack.get("/readyz") == (200, "ok\n")


async def test_healthz_fails_when_a_change_waits_too_long(stack: Stack) -> None:
    # Not ready yet, but healthy: a slow start is no reason for a restart.
    assert await stack.get("/healthz") == (200, "ok\n")
    stack.loop.age = 59.0
    assert (await stack.get("/healthz"))[0] == 200
    stack.loop.age = 61.0
    status, body = await stack.get("/healthz")
    assert status == 503
    assert "61.0s" in body


async def test_metrics_are_served_from_the_agents_own_registry(stack: Stack) -> None:
    m = stack.metrics
    m.syncs.labels("success").inc()
    m.syncs.labels("noop").inc(2)
    m.sync_duration.labels("full").observe(0.02)
    m.set_mappings({"ingress4": 3, "egress4": 1, "ingress6": 2})
    m.set_problems(["NoExternalIP", "NoExternalIP", "ExternalIPConflict"])
    m.set_problems(["NoExternalIP"])  # the conflict went away
    m.drift_repairs.inc()
    m.last_success.set(1700000000)
    stack.informers[0].restarts["expired"] += 2
    stack.informers[0].synced.set()

    async with stack.session.get(stack.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    lines = set(text.splitlines())
    for expected in (
        'wholeip_syncs_total{result="success"} 1.0',
        'wholeip_syncs_total{result="noop"} 2.0',
        'wholeip_syncs_total{result="error"} 0.0',
        'wholeip_sync_duration_seconds_count{kind="full"} 1.0',
        'wholeip_mappings{direction="ingress",ip_family="ipv4"} 3.0',
        'wholeip_mappings{direction="ingress",ip_family="ipv6"} 2.0',
        'wholeip_mappings{direction="egress",ip_family="ipv4"} 1.0',
        'wholeip_mappings{direction="egress",ip_family="ipv6"} 0.0',
        'wholeip_problems{reason="NoExternalIP"} 1.0',
        "wholeip_drift_repairs_total 1.0",
        "wholeip_last_successful_sync_timestamp_seconds 1.7e+09",
        'wholeip_watch_restarts_total{reason="expired",resource="services"} 2.0',
        'wholeip_watch_restarts_total{reason="idle",resource="nodes"} 0.0',
        'wholeip_informer_synced{resource="services"} 1.0',
        'wholeip_informer_synced{resource="nodes"} 0.0',
    ):
        assert expected in lines, expected
    assert "ExternalIPConflict" not in text
    # Nothing from prometheus_client's global registry (process and platform collectors).
    assert "process_cpu_seconds_total" not in text
    assert "python_info" not in text


async def test_two_agents_metrics_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.syncs.labels("success").inc()
    assert b.syncs.labels("success")._value.get() == 0


async def test_explicit_bind_address_is_honoured() -> None:
    metrics = Metrics()
    loop = FakeLoop()
    health = Health(informers=[], loop=loop, timeout=1.0)
    server = WebServer(host="127.0.0.1", port=0, ready=health.ready, healthy=health.healthy, registry=metrics.registry)
    await server.start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as session, session.get(server.url + "/nope") as response:
            assert response.status == 404
    finally:
        await server.stop()
