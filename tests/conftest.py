"""Shared fixtures: real nats-server and redis-server on free loopback ports.

Session-scoped servers are shared by tests that only need *a* server; tests that kill or
restart a server start their own with `ssmd_infra.local.servers`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ssmd_infra.local import servers
from ssmd_infra.local.servers import ServerProcess, start_nats, start_redis

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_nats(tmp_path_factory.mktemp("nats"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: ServerProcess) -> str:
    return nats_server.url


@pytest.fixture
def redis_url(redis_server: ServerProcess) -> str:
    return redis_server.url


SERVER_FIXTURES = frozenset({"nats_server", "redis_server", "nats_url", "redis_url"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


@pytest.fixture(autouse=True)
def _servers_only_when_marked(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request.node.get_closest_marker("servers") is not None:
        return

    def refuse(name: str) -> str:
        raise AssertionError(
            f"this test starts {name} but is not marked `servers` "
            f"(add pytestmark = pytest.mark.servers to its module)"
        )

    monkeypatch.setattr(servers, "find_binary", refuse)
