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


def _yields_a_server(fixturedef: object) -> bool:
    """A fixture annotated to return (or yield) a `ServerProcess` starts a server."""
    func = getattr(fixturedef, "func", None)
    return "ServerProcess" in str(getattr(func, "__annotations__", {}).get("return", ""))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `servers` every test that uses a server fixture, directly or through another."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        definitions = info.name2fixturedefs.values() if info is not None else ()
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())) or any(
            _yields_a_server(d) for defs in definitions for d in defs
        ):
            item.add_marker(pytest.mark.servers)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[object]:
    """A test not marked `servers` may not start one, in any phase: also not through a
    module- or session-scoped fixture that its setup runs first."""
    if item.get_closest_marker("servers") is not None:
        return (yield)

    def refuse(name: str) -> str:
        raise AssertionError(
            f"{item.nodeid} starts {name} but is not marked `servers` "
            f"(add pytestmark = pytest.mark.servers to its module)"
        )

    original = servers.find_binary
    servers.find_binary = refuse
    try:
        return (yield)
    finally:
        servers.find_binary = original
