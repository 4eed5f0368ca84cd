"""Least privilege on NATS, enforced by a real nats-server started with the generated
authorization: each role can do its job and nothing else, and anonymous connections are refused.

Every client is nats-py connecting with the role's seed file (`nkeys_seed=`) and the role's
inbox prefix, as the runtime and the supervisor will. A refused publish is reported by the
server as a permissions violation (nats-py's error callback) and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js import api
from waiting import eventually

from ssmd_infra.adapters import jetstream
from ssmd_infra.adapters.nats_auth import require_authorization, write_auth_dir
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.nats_auth import (
    ADMIN_ROLE,
    CLIENT_ROLE,
    archiver_role,
    connector_role,
    nats_roles,
)
from ssmd_infra.core.nkey_seeds import generate_user_seed, read_seed_file, seed_file_name
from ssmd_infra.core.streams import internal_stream_spec, stream_specs
from ssmd_infra.core.subjects import (
    CLIENT_STREAM,
    archiver_consumer,
    client_subject,
    internal_stream,
    internal_subject,
)
from ssmd_infra.local.servers import ServerProcess, find_binary, start_nats

pytestmark = pytest.mark.servers

ENV = """
name: authtest
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
DENIED_TIMEOUT = 1.0  # a denied request gets no answer: the server drops it


def last_only() -> api.ConsumerConfig:
    """A consumer config starting at the last message of each subject (nats-py fills in the
    config it is given, so each consumer gets its own)."""
    return api.ConsumerConfig(deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT)


@dataclass
class Secured:
    env: Environment
    server: ServerProcess
    auth_dir: Path

    def seed_path(self, role: str) -> Path:
        return self.auth_dir / seed_file_name(role)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    env = parse_environment(ENV, "authtest.yaml")
    root = tmp_path_factory.mktemp("nats-auth")
    changes = write_auth_dir(env, root / "auth")
    server = start_nats(root / "nats", extra_config=changes.config.read_text())
    try:
        admin = read_seed_file(root / "auth" / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)
        asyncio.run(jetstream.reconcile_streams(server.url, stream_specs(env), seed=admin))
        yield Secured(env, server, root / "auth")
    finally:
        server.stop()


@dataclass
class Session:
    nc: Client
    errors: list[str]

    async def violations(self, expected: int = 0) -> list[str]:
        """The permission violations the server reported, once `expected` have arrived
        (they come asynchronously) and after a round trip."""
        await eventually(
            lambda: len(self._violations()) >= expected, f"{expected} permission violation(s)"
        )
        await self.nc.flush()
        return self._violations()

    def _violations(self) -> list[str]:
        return [e for e in self.errors if "permissions violation" in e]


def denied_publish(subject: str) -> str:
    """The error nats-py reports for a refused publish (it lower-cases the server's text)."""
    return f'nats: permissions violation for publish to "{subject}"'.lower()


@asynccontextmanager
async def connect_as(secured: Secured, role: str, **options: object) -> AsyncIterator[Session]:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    settings: dict[str, object] = {
        "inbox_prefix": nats_roles(secured.env)[role].inbox_prefix,
        **options,
    }
    nc = await nats.connect(
        secured.server.url,
        nkeys_seed=str(secured.seed_path(role)),
        error_cb=on_error,
        allow_reconnect=False,
        name=f"test-{role}",
        **settings,  # type: ignore[arg-type]
    )
    try:
        yield Session(nc, errors)
    finally:
        await nc.close()


async def stream_state(secured: Secured, stream: str) -> api.StreamState:
    async with connect_as(secured, ADMIN_ROLE) as admin:
        return (await admin.nc.jetstream().stream_info(stream)).state


def trade(symbol: str, n: int) -> bytes:
    return json.dumps({"type": "trade", "msg": {"market_ticker": symbol, "n": n}}).encode()


async def test_anonymous_and_unknown_keys_are_refused(secured: Secured, tmp_path: Path) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.server.url, allow_reconnect=False, connect_timeout=2)
    stranger = tmp_path / seed_file_name(ADMIN_ROLE)
    stranger.write_text(generate_user_seed() + "\n")
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(
            secured.server.url, nkeys_seed=str(stranger), allow_reconnect=False, connect_timeout=2
        )
    await require_authorization(secured.server.url, secured.env)  # refused: as required


async def test_a_server_without_authorization_is_refused_when_the_environment_asks_for_it(
    nats_url: str,
) -> None:
    env = parse_environment(ENV, "authtest.yaml")
    with pytest.raises(SsmdError, match="accepts connections without credentials") as raised:
        await require_authorization(nats_url, env)
    assert "nats.auth: nkeys" in str(raised.value)
    assert "ssmd nats auth authtest --out DIR" in str(raised.value)
    shared_dev = parse_environment(ENV + "nats: {auth: none}\n", "authtest.yaml")
    await require_authorization(nats_url, shared_dev)  # nats.auth: none asks for nothing


async def test_a_connector_publishes_its_own_shard_with_acknowledgement(secured: Secured) -> None:
    stream = internal_stream("tier1")
    async with connect_as(secured, connector_role("tier1")) as connector:
        js = connector.nc.jetstream(timeout=5)
        ack = await js.publish(
            internal_subject("tier1", "kalshi", "trade", "BTCUSD"),
            trade("BTCUSD", 1),
            headers={"Nats-Msg-Id": "connector-own-1"},
        )
        assert ack.stream == stream
        assert (await js.stream_info(stream)).config.name == stream
        assert await connector.violations() == []


async def test_a_connector_cannot_publish_into_another_shard(secured: Secured) -> None:
    before = await stream_state(secured, internal_stream("tier1"))
    foreign = internal_subject("tier1", "kalshi", "trade", "X")
    async with connect_as(secured, connector_role("tier2")) as connector:
        await connector.nc.publish(foreign, trade("X", 1))
        # its own shard still works, and its PubAck comes after the refused publish
        ack = await connector.nc.jetstream(timeout=5).publish(
            internal_subject("tier2", "kalshi", "trade", "KXHIGHNY-24DEC05-B43.5"),
            trade("KXHIGHNY-24DEC05-B43.5", 1),
        )
        assert ack.stream == internal_stream("tier2")
        assert await connector.violations(1) == [denied_publish(foreign)]
        with pytest.raises(nats.errors.TimeoutError):  # nor read another shard's stream
            await connector.nc.jetstream(timeout=DENIED_TIMEOUT).stream_info(
                internal_stream("tier1")
            )
    after = await stream_state(secured, internal_stream("tier1"))
    assert (after.messages, after.last_seq) == (before.messages, before.last_seq)


async def test_a_role_receives_replies_only_under_its_own_inbox_prefix(secured: Secured) -> None:
    async with connect_as(secured, connector_role("tier1"), inbox_prefix="_INBOX") as connector:
        with pytest.raises(nats.errors.TimeoutError):
            await connector.nc.jetstream(timeout=DENIED_TIMEOUT).publish(
                internal_subject("tier1", "kalshi", "trade", "BTCUSD"), trade("BTCUSD", 2)
            )
        (violation,) = await connector.violations(1)
        assert violation.startswith('nats: permissions violation for subscription to "_inbox.')


async def test_an_archiver_consumes_and_acks_its_durable_but_cannot_touch_its_stream(
    secured: Secured,
) -> None:
    stream, durable = internal_stream("tier1"), archiver_consumer("tier1")
    async with connect_as(secured, connector_role("tier1")) as connector:
        js = connector.nc.jetstream(timeout=5)
        for n in range(3):
            await js.publish(
                internal_subject("tier1", "kalshi", "trade", "BTCUSD"), trade("BTCUSD", 10 + n)
            )
    before = await stream_state(secured, stream)
    async with connect_as(secured, archiver_role("tier1")) as archiver:
        js = archiver.nc.jetstream(timeout=5)
        await js.stream_info(stream)
        await js.add_consumer(
            stream, api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.ALL)
        )
        sub = await js.pull_subscribe_bind(durable, stream)
        msgs = await sub.fetch(before.messages, timeout=5)
        assert len(msgs) == before.messages
        await msgs[-1].ack_sync(timeout=5)
        info = await js.consumer_info(stream, durable)
        assert (info.num_ack_pending, info.ack_floor.stream_seq) == (0, before.last_seq)

        denied = archiver.nc.jetstream(timeout=DENIED_TIMEOUT)
        with pytest.raises(nats.errors.TimeoutError):
            await denied.delete_stream(stream)
        with pytest.raises(nats.errors.TimeoutError):
            await denied.purge_stream(stream)
        with pytest.raises(nats.errors.TimeoutError):
            await denied.add_consumer(stream, api.ConsumerConfig(durable_name="other"))
        with pytest.raises(nats.errors.TimeoutError):
            await archiver.nc.jetstream(timeout=DENIED_TIMEOUT).delete_consumer(
                internal_stream("tier2"), archiver_consumer("tier2")
            )
        await archiver.nc.publish(internal_subject("tier1", "kalshi", "trade", "Y"), b"{}")
        assert await archiver.violations(5) == [
            denied_publish(f"$JS.API.STREAM.DELETE.{stream}"),
            denied_publish(f"$JS.API.STREAM.PURGE.{stream}"),
            denied_publish(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.other"),
            denied_publish("$JS.API.CONSUMER.DELETE.ssmd-internal-tier2.archiver-tier2"),
            denied_publish("internal.tier1.kalshi.trade.Y"),
        ]
        # its resync: delete its own consumer and create it again
        assert await js.delete_consumer(stream, durable)
        await js.add_consumer(
            stream, api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.ALL)
        )
    after = await stream_state(secured, stream)
    assert (after.messages, after.last_seq) == (before.messages, before.last_seq)


async def test_an_archiver_cannot_read_another_shards_stream(secured: Secured) -> None:
    stream, durable = internal_stream("tier1"), archiver_consumer("tier1")
    async with connect_as(secured, archiver_role("tier1")) as owner:
        await owner.nc.jetstream(timeout=5).add_consumer(
            stream, api.ConsumerConfig(durable_name=durable, ack_policy=api.AckPolicy.ALL)
        )
    async with connect_as(secured, archiver_role("tier2")) as other:
        js = other.nc.jetstream(timeout=DENIED_TIMEOUT)
        with pytest.raises(nats.errors.TimeoutError):
            await js.consumer_info(stream, durable)
        sub = await js.pull_subscribe_bind(durable, stream)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=DENIED_TIMEOUT)
        assert await other.violations(2) == [
            denied_publish(f"$JS.API.CONSUMER.INFO.{stream}.{durable}"),
            denied_publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"),
        ]


async def test_a_client_reads_md_through_ssmd_client_and_can_change_nothing(
    secured: Secured,
) -> None:
    symbol = "KXHIGHNY-24DEC05-B43.5"
    async with connect_as(secured, connector_role("tier2")) as connector:
        await connector.nc.jetstream(timeout=5).publish(
            internal_subject("tier2", "kalshi", "trade", symbol),
            trade(symbol, 99),
            headers={"Nats-Msg-Id": "client-read-99"},
        )
    wanted = client_subject("kalshi", "trade", symbol)
    async with connect_as(secured, CLIENT_ROLE) as client:
        js = client.nc.jetstream(timeout=5)
        durable = await js.pull_subscribe(
            wanted, durable="reader", stream=CLIENT_STREAM, config=last_only()
        )
        msgs = await durable.fetch(1, timeout=10)
        assert (msgs[0].subject, json.loads(msgs[0].data)["msg"]["n"]) == (wanted, 99)
        await msgs[0].ack_sync(timeout=5)
        ephemeral = await js.subscribe(wanted, stream=CLIENT_STREAM, config=last_only())
        first = await ephemeral.next_msg(timeout=10)
        assert (first.subject, json.loads(first.data)["msg"]["n"]) == (wanted, 99)
        await first.ack()
        assert await client.violations() == []

        await client.nc.publish(wanted, b"forged")
        await client.nc.publish(internal_subject("tier2", "kalshi", "trade", symbol), b"forged")
        denied = client.nc.jetstream(timeout=DENIED_TIMEOUT)
        with pytest.raises(nats.errors.TimeoutError):
            await denied.delete_stream(CLIENT_STREAM)
        with pytest.raises(nats.errors.TimeoutError):
            await denied.purge_stream(CLIENT_STREAM)
        assert await client.violations(4) == [
            denied_publish(wanted),
            denied_publish(internal_subject("tier2", "kalshi", "trade", symbol)),
            denied_publish(f"$JS.API.STREAM.DELETE.{CLIENT_STREAM}"),
            denied_publish(f"$JS.API.STREAM.PURGE.{CLIENT_STREAM}"),
        ]
    state = await stream_state(secured, CLIENT_STREAM)
    assert state.messages >= 1


async def test_a_push_consumer_aimed_at_a_shard_subject_delivers_nothing_there(
    secured: Secured,
) -> None:
    """A push consumer's deliver subject is in the request body, out of the subject
    permissions' reach, and nats-server accepts any. It delivers only where someone listens,
    and no role may subscribe to a shard's subjects: the shard's stream gets nothing."""
    before = await stream_state(secured, internal_stream("tier1"))
    async with connect_as(secured, CLIENT_ROLE) as client:
        js = client.nc.jetstream(timeout=5)
        aimed = await js.add_consumer(
            CLIENT_STREAM,
            api.ConsumerConfig(
                deliver_subject=internal_subject("tier1", "kalshi", "trade", "EVIL"),
                ack_policy=api.AckPolicy.NONE,
            ),
        )
        await client.nc.subscribe(internal_subject("tier1", "kalshi", "trade", "EVIL"))
        (refused,) = await client.violations(1)
        assert refused.startswith('nats: permissions violation for subscription to "internal.')
        info = await js.consumer_info(CLIENT_STREAM, aimed.name)
        assert not info.push_bound  # nobody may listen there: the consumer stays idle
        assert info.delivered.consumer_seq == 0
    after = await stream_state(secured, internal_stream("tier1"))
    assert (after.messages, after.last_seq) == (before.messages, before.last_seq)


async def test_the_admin_creates_updates_and_deletes_streams(secured: Secured) -> None:
    admin = read_seed_file(secured.seed_path(ADMIN_ROLE), ADMIN_ROLE)
    grown = parse_environment(
        ENV + "  tier3: {selector: {tier: 3}, replicas: 1}\n", "authtest.yaml"
    )
    spec = internal_stream_spec(grown, "tier3")
    async with jetstream.connect(secured.server.url, seed=admin) as nc:
        created = await jetstream.apply_stream(nc, spec)
        assert created.action == "created"
        longer = internal_stream_spec(
            parse_environment(
                ENV.replace(
                    "max_age: 1h, max_bytes: 64Mi, dup", "max_age: 2h, max_bytes: 64Mi, dup"
                )
                + "  tier3: {selector: {tier: 3}, replicas: 1}\n",
                "authtest.yaml",
            ),
            "tier3",
        )
        updated = await jetstream.apply_stream(nc, longer)
        assert (updated.action, updated.spec.max_age) == ("updated", 7200.0)
        assert await jetstream.delete_stream(nc, spec.name)
        assert await jetstream.stream_raw_info(nc, spec.name) is None


def test_the_authorization_can_be_included_from_a_sibling_directory(
    secured: Secured, tmp_path: Path
) -> None:
    """The README's Helm values mount the Secret at /etc/ssmd-nats-auth and include it from
    the chart's /etc/nats-config/nats.conf as `../ssmd-nats-auth/authorization.conf`."""
    (tmp_path / "ssmd-nats-auth").mkdir()
    (tmp_path / "ssmd-nats-auth" / "authorization.conf").write_bytes(
        (secured.auth_dir / "authorization.conf").read_bytes()
    )
    (tmp_path / "nats-config").mkdir()
    config = tmp_path / "nats-config" / "nats.conf"
    config.write_text("port: 4222\ninclude ../ssmd-nats-auth/authorization.conf\n")
    checked = subprocess.run(
        [find_binary("nats-server"), "-c", str(config), "-t"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "is valid" in checked.stdout + checked.stderr
