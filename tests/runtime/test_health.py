"""The metrics/health server every runtime process runs."""

from __future__ import annotations

import socket

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from runtime.health import HealthServer
from ssmd_infra.core.errors import SsmdError


async def test_serves_metrics_and_health_on_an_ephemeral_port() -> None:
    server = HealthServer(CollectorRegistry(), lambda: (False, "not subscribed"), 0, "127.0.0.1")
    await server.start()
    try:
        assert server.port
        async with aiohttp.ClientSession() as http:
            health = await http.get(f"http://127.0.0.1:{server.port}/healthz")
            assert (health.status, await health.text()) == (503, "not subscribed\n")
            metrics = await http.get(f"http://127.0.0.1:{server.port}/metrics")
            assert metrics.status == 200
    finally:
        await server.stop()


async def test_a_port_in_use_is_a_user_error_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HealthServer(CollectorRegistry(), lambda: (True, "ok"), port, "127.0.0.1")
        with pytest.raises(SsmdError, match=f"cannot serve metrics on port {port}: "):
            await server.start()
        await server.stop()  # nothing left to clean up: a no-op
