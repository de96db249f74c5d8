"""The healthCheckNodePort servers of delegated Services over real HTTP on 127.0.0.1
(docs/datapath.md row 17): 200 with the local endpoint count, 503 with none, the port
closed once the Service has no health check any more."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from wholeip.agent.healthcheck import HealthCheckServers
from wholeip.core.model import HealthCheck, ObjectRef


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def get(port: int) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status, await r.json()


async def test_answers_follow_the_local_endpoints_and_the_port_closes() -> None:
    servers = HealthCheckServers(host="127.0.0.1")
    port = free_port()
    ref = ObjectRef("Service", "ns", "web")
    try:
        servers.update([HealthCheck(port, ref, 2)])
        await servers.settle()
        assert servers.ports == [port]
        status, body = await get(port)
        assert status == 200
        assert body == {"service": {"namespace": "ns", "name": "web"}, "localEndpoints": 2, "serviceProxyHealthy": True}
        servers.update([HealthCheck(port, ref, 0)])  # the last local endpoint went: 503 at once
        status, body = await get(port)
        assert status == 503
        assert body["localEndpoints"] == 0
        servers.update([])
        await servers.settle()
        assert servers.ports == []
        with pytest.raises(aiohttp.ClientConnectorError):
            await get(port)
    finally:
        await servers.stop()


async def test_a_port_in_use_is_skipped_and_taken_later() -> None:
    servers = HealthCheckServers(host="127.0.0.1")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = int(busy.getsockname()[1])
        servers.update([HealthCheck(port, ObjectRef("Service", "ns", "web"), 1)])
        await servers.settle()
        assert servers.ports == []
    servers.update([HealthCheck(port, ObjectRef("Service", "ns", "web"), 1)])
    await servers.settle()
    try:
        assert servers.ports == [port]
        assert (await get(port))[0] == 200
    finally:
        await servers.stop()
