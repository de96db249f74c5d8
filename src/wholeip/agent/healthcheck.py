"""The ``healthCheckNodePort`` servers of delegated Services (docs/datapath.md row 17).

A Service with ``externalTrafficPolicy: Local`` gets a ``spec.healthCheckNodePort``; an
outside load balancer asks every node on that port whether to send it traffic. kube-proxy
answers for the Services it serves; for the ones labelled for us it does not, so we do,
in its format: ``GET`` any path ->

* ``200`` when this node has local endpoints of the Service, ``503`` when it has none;
* a JSON body ``{"service": {"namespace": ..., "name": ...}, "localEndpoints": N,
  "serviceProxyHealthy": true}``.

One aiohttp site per port, on every address of the node (``host=None``: IPv4 and IPv6),
as kube-proxy binds them; the set of ports follows the model after every sync
(:meth:`HealthCheckServers.update`), a port that cannot be bound is logged and retried at
the next update.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import structlog
from aiohttp import web

from wholeip.core.model import HealthCheck

log = structlog.get_logger(__name__)


class HealthCheckServers:
    """The health-check ports of this node's delegated Services, kept as the model says."""

    def __init__(self, *, host: str | None = None) -> None:
        self.host = host
        self._checks: dict[int, HealthCheck] = {}
        self._runners: dict[int, web.AppRunner] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def ports(self) -> list[int]:
        """The ports served now."""
        return sorted(self._runners)

    def update(self, checks: Sequence[HealthCheck]) -> None:
        """The health checks after a sync: answers change at once, ports open and close
        in the background (call from the event loop)."""
        self._checks = {c.port: c for c in checks}
        if set(self._checks) != set(self._runners):
            self._task = asyncio.get_running_loop().create_task(self.settle())

    async def settle(self) -> None:
        """Open the ports the model has and close the others."""
        async with self._lock:
            for port in sorted(set(self._runners) - set(self._checks)):
                await self._runners.pop(port).cleanup()
            for port in sorted(set(self._checks) - set(self._runners)):
                runner = web.AppRunner(self._app(port), access_log=None, handle_signals=False, shutdown_timeout=1.0)
                await runner.setup()
                try:
                    await web.TCPSite(runner, self.host, port).start()
                except OSError as exc:
                    await runner.cleanup()
                    log.warning("health check port not served", port=port, error=str(exc))
                    continue
                self._runners[port] = runner

    async def stop(self) -> None:
        self._checks = {}
        await self.settle()

    def _app(self, port: int) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            check = self._checks.get(port)
            count = check.local_endpoints if check is not None else 0
            body = {
                "service": {
                    "namespace": check.service.namespace if check else "",
                    "name": check.service.name if check else "",
                },
                "localEndpoints": count,
                "serviceProxyHealthy": True,
            }
            return web.Response(
                status=200 if count > 0 else 503, text=json.dumps(body) + "\n", content_type="application/json"
            )

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", answer)
        return app
