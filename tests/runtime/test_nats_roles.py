"""The runtime as a NATS role: a real nats-server with the environment's generated
authorization, the runtime's own publisher and pull consumer with the role's seed file.

A connector of tier2 that publishes into tier1 is refused by the server: the violation is
logged once with the subject and counted in `ssmd_nats_permission_errors_total{shard, role}`,
nothing lands in tier1's stream, and the connector keeps publishing its own shard. A process
given no seed, a malformed one or another role's stops at start-up with the file named.
"""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from waiting import eventually

from runtime.connector.service import Connector
from runtime.connector.settings import ConnectorSettings
from runtime.nats.consumer import Delivery, PullClient
from runtime.nats.credentials import role_credentials
from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.adapters import jetstream
from ssmd_infra.adapters.nats_auth import write_auth_dir
from ssmd_infra.core.environment import Environment, load_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_auth import ADMIN_ROLE, archiver_role, connector_role
from ssmd_infra.core.nkey_seeds import read_seed_file, seed_file_name
from ssmd_infra.core.streams import stream_specs
from ssmd_infra.core.subjects import archiver_consumer, internal_stream, internal_subject
from ssmd_infra.local.servers import ServerProcess, start_nats

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[2]
ENV = """
name: rolestest
feed: kalshi
symbols:
  BTCUSD: {tier: 1}
  KXHIGHNY-24DEC05-B43.5: {tier: 2}
streams:
  internal: {max_age: 1h, max_bytes: 64Mi, duplicate_window: 1m}
  client: {max_age: 1h, max_bytes: 64Mi, duplicate_window: 1m}
shards:
  tier1: {selector: {tier: 1}, replicas: 1}
  tier2: {selector: {tier: 2}, replicas: 1}
"""


@dataclass
class Secured:
    env: Environment
    env_file: Path
    server: ServerProcess
    auth_dir: Path

    def seed(self, role: str) -> Path:
        return self.auth_dir / seed_file_name(role)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("nats-roles")
    env_file = root / "rolestest.yaml"
    env_file.write_text(ENV)
    env = load_environment(env_file)
    changes = write_auth_dir(env, root / "auth")
    server = start_nats(root / "nats", extra_config=changes.config.read_text())
    try:
        admin = read_seed_file(changes.directory / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)
        asyncio.run(jetstream.reconcile_streams(server.url, stream_specs(env), seed=admin))
        yield Secured(env, env_file, server, changes.directory)
    finally:
        server.stop()


async def stored(secured: Secured, shard: str) -> int:
    admin = read_seed_file(secured.seed(ADMIN_ROLE), ADMIN_ROLE)
    async with jetstream.connect(secured.server.url, seed=admin) as nc:
        info = await jetstream.stream_raw_info(nc, internal_stream(shard))
    assert info is not None
    return int(info["state"]["messages"])


def trade(symbol: str, n: int) -> bytes:
    return json.dumps(
        {"type": "trade", "sid": 1, "seq": n, "msg": {"market_ticker": symbol}}
    ).encode()


async def test_a_tier2_connector_publishing_into_tier1_is_refused_counted_and_logged_once(
    secured: Secured, caplog: pytest.LogCaptureFixture
) -> None:
    credentials = role_credentials(
        secured.env, connector_role("tier2"), secured.seed(connector_role("tier2"))
    )
    settings = ConnectorSettings(
        nats_url=secured.server.url,
        kalshi_ws_url="ws://127.0.0.1:9",  # never connected: the test drives the publisher
        metrics_port=None,
        member="roles-test",
        ack_timeout=0.3,
        nats_credentials=credentials,
    )
    connector = Connector(secured.env, "tier2", settings)
    publisher = connector.publisher
    before_tier1 = await stored(secured, "tier1")
    before_tier2 = await stored(secured, "tier2")
    caplog.set_level(logging.ERROR, logger="ssmd.nats")
    await publisher.start()
    try:
        assert await publisher.wait_connected(5)
        foreign = internal_subject("tier1", "kalshi", "trade", "BTCUSD")
        for n in range(3):  # the same subject three times: logged once, counted each time
            publisher.publish(foreign.encode(), trade("BTCUSD", n), f"foreign-{n}".encode())
        own = internal_subject("tier2", "kalshi", "trade", "KXHIGHNY-24DEC05-B43.5")
        publisher.publish(own.encode(), trade("KXHIGHNY-24DEC05-B43.5", 0), b"own-0")
        stats = publisher.connection.stats
        await eventually(lambda: stats.permission_violations >= 3, "three violations")
        await eventually(lambda: publisher.stats.acked >= 1, "its own shard acknowledged")
        assert publisher.connected  # the connection stays up: the process keeps running
    finally:
        await publisher.close()
    assert await stored(secured, "tier1") == before_tier1  # nothing landed in tier1
    assert await stored(secured, "tier2") == before_tier2 + 1  # PubAck reached its inbox
    denials = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
    assert len(denials) == 1 and f"Publish to {foreign}" in denials[0], denials
    exported = generate_latest(connector.registry).decode()
    line = 'ssmd_nats_permission_errors_total{role="connector-tier2",shard="tier2"}'
    value = float(next(x for x in exported.splitlines() if x.startswith(line)).split()[-1])
    assert value == stats.permission_violations >= 3


async def test_the_archivers_pull_client_gets_its_replies_under_its_role_inbox(
    secured: Secured,
) -> None:
    """A pull request's reply subject is under `_INBOX_archiver-tier2`: the server delivers
    it (under the default `_INBOX` it would drop every reply as a subscription violation)."""
    connector = role_credentials(
        secured.env, connector_role("tier2"), secured.seed(connector_role("tier2"))
    )
    publisher = JetStreamPublisher(
        secured.server.url,
        nkey_seed_file=connector.seed_file,
        inbox_prefix=connector.inbox_prefix,
    )
    await publisher.start()
    try:
        subject = internal_subject("tier2", "kalshi", "trade", "KXHIGHNY-24DEC05-B43.5")
        publisher.publish(subject.encode(), trade("KXHIGHNY-24DEC05-B43.5", 7), b"pull-7")
        assert await publisher.drain(10)
    finally:
        await publisher.close()
    admin = read_seed_file(secured.seed(ADMIN_ROLE), ADMIN_ROLE)
    stream, consumer = internal_stream("tier2"), archiver_consumer("tier2")
    async with jetstream.connect(secured.server.url, seed=admin) as nc:
        await nc.jetstream().add_consumer(stream, durable_name=consumer, ack_policy="explicit")
    credentials = role_credentials(
        secured.env, archiver_role("tier2"), secured.seed(archiver_role("tier2"))
    )
    pull = PullClient(
        secured.server.url,
        stream,
        consumer,
        nkey_seed_file=credentials.seed_file,
        inbox_prefix=credentials.inbox_prefix,
    )
    await pull.start()
    try:
        assert await pull.connection.wait_connected(5)
        assert pull.request(100, 1 << 20, 2.0)
        received: list[Delivery] = []
        await eventually(lambda: bool(received.extend(pull.take()) or received), "a delivery")
        assert all(subject.startswith(b"internal.tier2.") for subject, *_ in received)
        assert pull.connection.stats.permission_violations == 0
    finally:
        await pull.close()


def run_connector(secured: Secured, shard: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "runtime",
            "connector",
            str(secured.env_file),
            shard,
            "--nats-url",
            secured.server.url,
            "--metrics-port",
            "0",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin"},  # no NATS_NKEY_SEED inherited
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "rolestest has nats.auth: nkeys: connector-tier1 needs its seed file"),
        ("connector-tier2.nk", "is the seed of role 'connector-tier2', not of 'connector-tier1'"),
        ("missing/connector-tier1.nk", "does not exist"),
        ("bad/connector-tier1.nk", "is not a NATS user seed"),
    ],
)
def test_a_connector_without_its_own_seed_stops_at_start_up_naming_the_file(
    secured: Secured, tmp_path: Path, given: str | None, expected: str
) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "connector-tier1.nk").write_text("SUAM-not-a-seed\n")
    source = secured.auth_dir if given == "connector-tier2.nk" else tmp_path
    extra = ("--nats-nkey-seed", str(source / given)) if given else ()
    result = run_connector(secured, "tier1", *extra)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr
    assert result.stderr.startswith("error: ")  # one line, no traceback
    assert "Traceback" not in result.stderr


def test_role_credentials_under_nats_auth_none_are_anonymous(secured: Secured) -> None:
    shared = load_environment(secured.env_file)
    shared_dev = shared.model_copy(update={"nats": shared.nats.model_copy(update={"auth": "none"})})
    credentials = role_credentials(shared_dev, connector_role("tier1"))
    assert credentials.seed_file is None and credentials.inbox_prefix == "_INBOX"
    with pytest.raises(ConfigError, match="not a NATS role"):
        role_credentials(shared_dev, connector_role("nowhere"))
