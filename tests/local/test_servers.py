"""The test suite really runs nats-server ≥ 2.10 with JetStream and redis-server."""

from __future__ import annotations

import nats
import pytest
import redis

from ssmd_infra.local.servers import (
    MIN_NATS_VERSION,
    ServerProcess,
    find_binary,
    nats_server_version,
)

pytestmark = pytest.mark.servers


def test_nats_server_binary_is_at_least_2_10() -> None:
    assert nats_server_version(find_binary("nats-server")) >= MIN_NATS_VERSION


async def test_nats_server_has_jetstream(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_redis_server_answers(redis_server: ServerProcess) -> None:
    client = redis.Redis.from_url(redis_server.url)
    assert client.ping() is True
    client.close()
