"""Prometheus `/metrics` and `/healthz` for every runtime process, on one small HTTP server.

Each process owns a `CollectorRegistry` (so several processes' worth of metrics can live in
one test interpreter) and a health callable: `/healthz` answers 200 when it returns True,
503 otherwise — the Kubernetes liveness/readiness probes point here.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ssmd_infra.core.errors import SsmdError

HealthCheck = Callable[[], tuple[bool, str]]


class ShardMetrics:
    """Builds a process's metric families at scrape time, each labelled with its shard, so
    the collectors read plain counters and nothing is done on the hot path."""

    def __init__(self, shard: str) -> None:
        self._shard = [shard]

    def gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, doc, labels=["shard"])
        family.add_metric(self._shard, value)
        return family

    def counter(self, name: str, doc: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=["shard"])
        family.add_metric(self._shard, value)
        return family


class HealthServer:
    """Serves `/metrics` from `registry` and `/healthz` from `check` on 0.0.0.0:`port`."""

    def __init__(
        self, registry: CollectorRegistry, check: HealthCheck, port: int, host: str = "0.0.0.0"
    ) -> None:
        self._registry = registry
        self._check = check
        self._port = port
        self._host = host
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        return self._port

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        ok, detail = self._check()
        return web.Response(status=200 if ok else 503, text=detail + "\n")

    async def start(self) -> None:
        """Listen; a port that cannot be bound (in use, not permitted) is a user error."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise SsmdError(f"cannot serve metrics on port {self._port}: {exc.strerror}") from None
        if self._port == 0:  # an ephemeral port was asked for: report the real one
            server = site._server
            sockets = getattr(server, "sockets", None)  # asyncio.Server; typed as AbstractServer
            if sockets:
                self._port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
