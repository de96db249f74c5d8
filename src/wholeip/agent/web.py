"""The probe and metrics server: ``/healthz``, ``/readyz``, ``/metrics`` on aiohttp.

It binds an explicit address (``Settings.bind_address``, loopback by default):
the agent runs in the host network namespace, where ``0.0.0.0`` would expose
the metrics on every address of the node, external ones included.

Probes answer ``200 ok`` or ``503 <why>`` in plain text; ``/metrics`` renders
the agent's own Prometheus registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from wholeip.agent.health import Verdict


class WebServer:
    """Probes and metrics on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ready: Callable[[], Verdict],
        healthy: Callable[[], Verdict],
        registry: CollectorRegistry,
    ) -> None:
        self.host = host
        self.port = port
        self._ready = ready
        self._healthy = healthy
        self._registry = registry
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._probe(self._healthy))
        app.router.add_get("/readyz", self._probe(self._ready))
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server = site._server  # aiohttp exposes the bound port only here
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @staticmethod
    def _probe(check: Callable[[], Verdict]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            verdict = check()
            return web.Response(status=200 if verdict.ok else 503, text=verdict.detail + "\n")

        return handler

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
