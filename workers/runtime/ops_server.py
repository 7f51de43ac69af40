"""The worker's HTTP endpoint for operators: /metrics (Prometheus), /healthz and /readyz (JSON).

- `/healthz`: 200 while the broker connection is open and the last database check succeeded, else 503.
- `/readyz`: the same, and the worker is consuming (503 while starting or draining).
Both bodies say which check failed and why. One server per worker process, on its own port.
"""

from collections.abc import Callable

import structlog
from aiohttp import web

from workers.runtime.health import HealthMonitor
from workers.runtime.metrics import CONTENT_TYPE, WorkerMetrics

log = structlog.get_logger(__name__)


class PortInUse(OSError):
    pass


class OpsServer:
    def __init__(
        self,
        *,
        metrics: WorkerMetrics,
        health: HealthMonitor,
        consuming: Callable[[], bool],
        host: str,
        port: int,
    ) -> None:
        self._metrics = metrics
        self._health = health
        self._consuming = consuming
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the bound port (the OS's pick when configured as 0)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._serve_health)
        app.router.add_get("/readyz", self._serve_ready)
        return app

    async def _serve_metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE
        return response

    async def _serve_health(self, _: web.Request) -> web.Response:
        ok, body = self._health.report()
        return web.json_response(body, status=200 if ok else 503)

    async def _serve_ready(self, _: web.Request) -> web.Response:
        ok, body = self._health.report(consuming=self._consuming())
        return web.json_response(body, status=200 if ok else 503)

    async def start(self) -> None:
        runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise PortInUse(
                f"cannot serve metrics on {self._host}:{self._port} ({exc.strerror or exc}): set "
                "APPT_METRICS_PORT to a free port, 0 for any free one, or leave it unset to turn it off"
            ) from exc
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info(
            "ops_server.listening", host=self._host, port=self.port, paths=["/metrics", "/healthz", "/readyz"]
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
