"""The connector end to end against the Kalshi simulator, a real nats-server and a real
redis-server: what the exchange sent is in the shard's stream once, under the right subject,
whatever happens to the WebSocket, NATS, Redis or the replica set."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually, running

from runtime.connector.command import signer_from_environment
from runtime.connector.service import Connector
from runtime.connector.settings import ConnectorSettings
from runtime.kalshi.auth import generate_key_pair
from runtime.kalshi.protocol import parse_origin_id
from runtime.kalshi.simulator import KalshiSimulator
from runtime.membership import split
from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core import redis_keys
from ssmd_infra.core.environment import Environment, Shard, parse_environment
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.shard_catalog import render_catalog
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.core.subjects import internal_stream, parse_internal_subject
from ssmd_infra.local.servers import free_port, start_nats, start_redis

REPO = Path(__file__).resolve().parents[3]

TIER1 = ["BTCUSD", "ETHUSD", "SOLUSD", "INXD-25-B4000", "INXD-25-B4012.5", "NASDAQ100-25-B20000"]
TIER2 = ["KXHIGHNY-24DEC05-B43.5", "KXHIGHNY-24DEC05-B44.5", "FED-25DEC-T4.25", "PRES-2028-DEM"]


def env_text(
    tag: str, *, refresh: str = "5m", capacity: int = 10000, policy: str = "drop_oldest"
) -> str:
    """Two shards with per-test names (streams are per shard), one dotted ticker in each."""
    symbols = "\n".join(
        [*(f"  {s}: {{tier: 1}}" for s in TIER1), *(f"  {s}: {{tier: 2}}" for s in TIER2)]
    )
    return f"""
name: test-{tag}
feed: kalshi
secmaster: {{refresh_interval: {refresh}}}
nats: {{auth: none}}  # the shared test server is anonymous; roles: test_nats_roles.py
symbols:
{symbols}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 2m}}
shards:
  a{tag}:
    selector: {{tier: 1}}
    replicas: 2
    buffer: {{capacity: {capacity}, drop_policy: {policy}}}
  b{tag}:
    selector: {{tier: 2}}
    replicas: 1
"""


class Setup:
    """One test's environment, its shard stream, and the simulated exchange."""

    def __init__(self, env: Environment, shard: str, nats_url: str, sim: KalshiSimulator) -> None:
        self.env = env
        self.shard = shard
        self.nats_url = nats_url
        self.sim = sim

    def connector(self, symbol_source: Any = None, **options: Any) -> Connector:
        defaults: dict[str, Any] = {
            "nats_url": self.nats_url,
            "kalshi_ws_url": self.sim.ws_url,
            "metrics_port": 0,
            "client_options": {"backoff_initial": 0.05, "backoff_max": 0.2},
        }
        defaults.update(options)
        return Connector(
            self.env, self.shard, ConnectorSettings(**defaults), symbol_source=symbol_source
        )

    def sent(self) -> int:
        return sum(self.sim.sent.values())

    async def stored(self) -> int:
        nc = await nats.connect(self.nats_url)
        try:
            info = await nc.jetstream().stream_info(internal_stream(self.shard))
            return int(info.state.messages)
        finally:
            await nc.close()

    async def messages(self) -> list[tuple[str, str]]:
        """(subject, Nats-Msg-Id) of every message in the shard stream."""
        nc = await nats.connect(self.nats_url)
        js: JetStreamContext = nc.jetstream()
        try:
            last = (await js.stream_info(internal_stream(self.shard))).state.last_seq
            out = []
            for seq in range(1, last + 1):
                msg = await js.get_msg(internal_stream(self.shard), seq)
                assert msg.subject is not None and msg.headers is not None
                out.append((msg.subject, msg.headers["Nats-Msg-Id"]))
            return out
        finally:
            await nc.close()

    async def quiesce(self, *connectors: Connector) -> None:
        """Stop the exchange generating; wait until the connectors have read everything on the
        wire (nothing new for a while) and every frame is acknowledged."""
        self.sim.set_rate(0)
        last = -1
        while True:
            await eventually(
                lambda: all(c.publisher.inflight == 0 and len(c.buffer) == 0 for c in connectors),
                "connectors drained",
            )
            seen = sum(c.received for c in connectors)
            if seen == last:
                return
            last = seen
            await asyncio.sleep(0.2)


async def make_setup(
    nats_url: str, tag: str | None = None, *, rate: float = 50.0, **env_options: Any
) -> tuple[Setup, KalshiSimulator]:
    tag = tag or uuid.uuid4().hex[:6]
    env = parse_environment(env_text(tag, **env_options), f"test-{tag}.yaml")
    shard = f"a{tag}"
    await reconcile_streams(nats_url, [internal_stream_spec(env, shard)])
    markets = {s: {"category": "test"} for s in TIER1 + TIER2}
    sim = KalshiSimulator(markets, rate_per_market=rate, record=True, tick=0.002)
    await sim.start()
    return Setup(env, shard, nats_url, sim), sim


@pytest.fixture
async def setup(nats_url: str) -> AsyncIterator[Setup]:
    built, sim = await make_setup(nats_url)
    yield built
    await sim.stop()


async def scrape(connector: Connector) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(f"http://127.0.0.1:{connector.port}/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name
            if "reason" in sample.labels:
                key += f"{{{sample.labels['reason']}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


# -- forwarding -------------------------------------------------------------------------------


async def test_frames_reach_the_shard_stream_once_with_msg_ids_and_encoded_subjects(
    setup: Setup, redis_url: str
) -> None:
    connector = setup.connector(redis_url=redis_url, heartbeat=0.2)
    async with running(connector):
        await eventually(lambda: setup.sent() >= 200, "traffic")
        await eventually(lambda: connector.message_rate > 0, "a message rate")
        await setup.quiesce(connector)
        messages = await setup.messages()
        metrics = await scrape(connector)
        redis = connector._redis
        assert redis is not None
        await asyncio.sleep(0.3)  # one more heartbeat writes the reports
        symbols = await redis.smembers(redis_keys.symbols_key(setup.env.name, setup.shard))
        replicas = await redis.get(redis_keys.replicas_key(setup.env.name, setup.shard))
        shard_metrics = await redis.hgetall(redis_keys.metrics_key(setup.env.name, setup.shard))
        rates = await redis.hgetall(redis_keys.symbol_rates_key(setup.env.name, setup.shard))
        ttl = await redis.ttl(redis_keys.metrics_key(setup.env.name, setup.shard))
    # every frame the exchange generated (for the shard's markets: only those were subscribed)
    # is stored, once
    assert len(messages) == setup.sent()
    ids = [msg_id for _, msg_id in messages]
    assert len(set(ids)) == len(ids)
    trades = {i for i in ids if i.startswith("trade:")}
    assert trades == setup.sim.sent_ids  # a trade is its trade_id
    # every other frame is its origin: one connection epoch, and per sid seq 1, 2, 3, ...
    origins = [parse_origin_id(i) for i in ids if i not in trades]
    assert origins and None not in origins
    assert len({o[0] for o in origins if o is not None}) == 1
    by_sid: dict[int | None, list[int | None]] = {}
    for origin in origins:
        assert origin is not None
        by_sid.setdefault(origin[1], []).append(origin[2])
    for seqs in by_sid.values():
        assert sorted(s for s in seqs if s is not None) == list(range(1, len(seqs) + 1))
    parsed = [parse_internal_subject(subject) for subject, _ in messages]
    assert {p[0] for p in parsed} == {setup.shard}
    assert {p[1] for p in parsed} == {"kalshi"}
    assert {p[2] for p in parsed} <= {"trade", "ticker"}
    assert {p[3] for p in parsed} == set(TIER1)
    stored_counts: dict[tuple[str, str], int] = {}
    for _, _, msg_type, symbol in parsed:
        stored_counts[(msg_type, symbol)] = stored_counts.get((msg_type, symbol), 0) + 1
    assert stored_counts == dict(setup.sim.sent)
    # the dotted ticker is one encoded subject token
    subjects = {s for s, _ in messages}
    assert f"internal.{setup.shard}.kalshi.trade.INXD-25-B4012%2E5" in subjects
    assert f"internal.{setup.shard}.kalshi.ticker.INXD-25-B4012%2E5" in subjects
    # metrics
    assert metrics["ssmd_connector_messages_total"] == setup.sent()
    assert metrics["ssmd_connector_published_total"] == setup.sent()
    assert metrics["ssmd_connector_message_rate"] > 0
    assert metrics["ssmd_connector_dropped_total{buffer_full}"] == 0
    assert metrics["ssmd_connector_subscribed_symbols"] == len(TIER1)
    for name in (
        "ssmd_connector_sequence_gaps_total",
        "ssmd_connector_reconnects_total",
        "ssmd_connector_malformed_total",
        "ssmd_connector_buffer_depth",
        "ssmd_connector_publish_failures_total",
    ):
        assert metrics[name] == 0, name
    # redis reports
    assert {s.decode() for s in symbols} == set(TIER1)
    assert replicas == b"1"
    assert set(shard_metrics) == {b"msg_rate", b"cpu_pct", b"mem_pct"}
    assert 0 < ttl <= redis_keys.MEMBER_TTL_SECONDS
    assert {f.decode() for f in rates} == set(TIER1)


# -- exchange faults --------------------------------------------------------------------------


async def test_a_dropped_websocket_reconnects_resubscribes_and_counts_the_gap(
    setup: Setup,
) -> None:
    connector = setup.connector()
    async with running(connector):
        await eventually(lambda: setup.sent() >= 100, "traffic")
        setup.sim.skip_sequence(3)
        await eventually(
            lambda: connector.client is not None and connector.client.stats.gaps > 0, "gap counted"
        )
        setup.sim.drop_connections()
        before = setup.sent()
        await eventually(
            lambda: connector.client is not None and connector.client.stats.reconnects == 1,
            "reconnected",
        )
        await eventually(lambda: setup.sent() >= before + 100, "traffic after the reconnect")
        assert setup.sim.subscribed_markets() == set(TIER1)
        await setup.quiesce(connector)
        stored = await setup.stored()
        metrics = await scrape(connector)
    # every frame, plus a gap record per subscription the exchange skipped seqs on
    gap_records = connector.forwarder.gap_records
    assert 1 <= gap_records <= len(connector.channels)
    assert stored == setup.sent() + gap_records
    assert metrics["ssmd_connector_reconnects_total"] == 1
    assert metrics["ssmd_connector_sequence_gaps_total"] >= 1
    assert metrics["ssmd_connector_gap_records_total"] == gap_records


async def test_malformed_frames_are_counted_and_skipped(setup: Setup) -> None:
    connector = setup.connector()
    async with running(connector):
        await eventually(lambda: setup.sent() >= 50, "traffic")
        setup.sim.send_malformed(4)
        await eventually(
            lambda: connector.client is not None and connector.client.stats.malformed == 4,
            "malformed counted",
        )
        before = setup.sent()
        await eventually(lambda: setup.sent() >= before + 50, "traffic continues")
        await setup.quiesce(connector)
        stored = await setup.stored()
        metrics = await scrape(connector)
    assert stored == setup.sent()
    assert metrics["ssmd_connector_malformed_total"] == 4


# -- NATS and Redis faults --------------------------------------------------------------------


@pytest.mark.servers
async def test_a_nats_restart_keeps_the_connector_running_with_drops_counted_and_memory_bounded(
    tmp_path: Path,
) -> None:
    import psutil

    server = start_nats(tmp_path / "nats")
    built, sim = await make_setup(server.url, rate=200.0, capacity=300)
    try:
        connector = built.connector(max_inflight=200, ack_timeout=1.0)
        async with running(connector) as task:
            await eventually(lambda: built.sent() >= 300, "traffic")
            rss_before = psutil.Process().memory_info().rss
            server.kill()
            await eventually(lambda: not connector.publisher.connected, "NATS gone")
            await eventually(lambda: connector.buffer.dropped > 0, "buffer overflows")
            assert len(connector.buffer) <= 300 and connector.publisher.inflight <= 200
            server.restart()
            await eventually(lambda: connector.publisher.connected, "NATS back", timeout=20)
            flowing = connector.publisher.stats.acked
            await eventually(
                lambda: connector.publisher.stats.acked > flowing + 200, "publishing resumed"
            )
            assert not task.done()
            await built.quiesce(connector)
            stored = await built.stored()
            metrics = await scrape(connector)
            rss_after = psutil.Process().memory_info().rss
        dropped = metrics["ssmd_connector_dropped_total{buffer_full}"]
        assert dropped == connector.buffer.dropped > 0
        assert metrics["ssmd_connector_dropped_total{publish_failed}"] == 0
        # every frame received is either stored (once) or counted as dropped
        assert connector.received == built.sent()
        assert stored + dropped == built.sent()
        assert connector.publisher.stats.reconnects == 1
        assert rss_after - rss_before < 64 * 2**20
    finally:
        await sim.stop()
        server.stop()


@pytest.mark.servers
async def test_with_the_block_policy_a_nats_outage_holds_the_socket_and_loses_nothing(
    tmp_path: Path,
) -> None:
    server = start_nats(tmp_path / "nats")
    built, sim = await make_setup(server.url, rate=200.0, capacity=100, policy="block")
    try:
        connector = built.connector(max_inflight=50, ack_timeout=1.0)
        async with running(connector) as task:
            await eventually(lambda: built.sent() >= 300, "traffic")
            server.kill()
            await eventually(lambda: len(connector.buffer) == 100, "buffer full: reader waits")
            received = connector.received
            await asyncio.sleep(0.3)
            assert connector.received <= received + 1, "a full buffer must stop the reader"
            server.restart()
            await eventually(lambda: connector.publisher.connected, "NATS back", timeout=20)
            await built.quiesce(connector)
            assert not task.done()
            stored = await built.stored()
        assert connector.buffer.dropped == 0
        assert connector.received == built.sent()
        assert stored == built.sent()
    finally:
        await sim.stop()
        server.stop()


async def test_with_redis_down_data_keeps_flowing(setup: Setup, tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "redis")
    connector = setup.connector(redis_url=redis.url, heartbeat=0.2)
    try:
        async with running(connector):
            await eventually(lambda: connector.membership.healthy, "redis seen")
            redis.kill()
            await eventually(lambda: not connector.membership.healthy, "redis outage noticed")
            before = setup.sent()
            await eventually(lambda: setup.sent() >= before + 200, "traffic during the outage")
            assert connector.subscribed == frozenset(TIER1)
            await setup.quiesce(connector)
            stored = await setup.stored()
        assert stored == setup.sent()
    finally:
        redis.stop()


async def test_without_any_redis_a_single_replica_serves_the_whole_shard(setup: Setup) -> None:
    connector = setup.connector(redis_url=f"redis://127.0.0.1:{free_port()}", heartbeat=0.2)
    async with running(connector):
        await eventually(lambda: setup.sent() >= 100, "traffic")
        assert connector.subscribed == frozenset(TIER1)
        await setup.quiesce(connector)
        assert await setup.stored() == setup.sent()


# -- replicas ---------------------------------------------------------------------------------


async def test_a_second_replica_takes_about_half_and_nothing_is_lost_or_stored_twice(
    setup: Setup, redis_url: str
) -> None:
    options = {"redis_url": redis_url, "heartbeat": 0.3, "member_ttl": 3.0}
    first = setup.connector(member="replica-1", **options)
    second = setup.connector(member="replica-2", **options)
    async with running(first):
        await eventually(lambda: setup.sent() >= 200, "traffic to one replica")
        async with running(second):
            await eventually(
                lambda: (
                    first.subscribed
                    and second.subscribed
                    and not first.subscribed & second.subscribed
                ),
                "split settled",
            )
            await eventually(lambda: setup.sent() >= 800, "traffic to both")
            assert first.subscribed | second.subscribed == frozenset(TIER1)
            assert 1 <= len(second.subscribed) <= 5
            await setup.quiesce(first, second)
            messages = await setup.messages()
    assert_handoff_lost_nothing(setup, messages, first, second)


def assert_handoff_lost_nothing(
    setup: Setup, messages: list[tuple[str, str]], *replicas: Connector
) -> None:
    """Every trade stored once, every frame stored at least once, and the copies explained:
    the stream answered the second copy of each trade "duplicate"; the second copy of a
    snapshot (ticker) frame has its own origin, was stored, and is among the handoff frames
    the replicas counted."""
    ids = [msg_id for _, msg_id in messages]
    assert len(ids) == len(set(ids)), "one id stored twice"
    trades = [i for i in ids if i.startswith("trade:")]
    assert len(trades) == len(set(trades)), "a trade was stored twice"
    assert set(trades) == setup.sim.sent_ids, "a trade was lost"
    stored: dict[tuple[str, str], int] = {}
    for subject, _ in messages:
        _, _, msg_type, symbol = parse_internal_subject(subject)
        stored[(msg_type, symbol)] = stored.get((msg_type, symbol), 0) + 1
    for key, sent in setup.sim.sent.items():  # nothing lost; only snapshot frames twice
        assert stored.get(key, 0) >= sent if key[0] == "ticker" else stored.get(key, 0) == sent
    received = sum(r.received for r in replicas)
    assert received > setup.sent(), "the handoff overlapped"
    duplicates = sum(r.publisher.stats.duplicates for r in replicas)
    assert duplicates == received - len(messages) > 0
    ticker_copies = len(messages) - setup.sent()
    assert 0 <= ticker_copies <= sum(r.forwarder.handoff_frames for r in replicas)


async def test_under_load_a_replica_joining_then_leaving_loses_nothing(
    nats_url: str, redis_url: str
) -> None:
    built, sim = await make_setup(nats_url, rate=300.0)  # 1800 msg/s over the shard
    try:
        options = {"redis_url": redis_url, "heartbeat": 0.3, "member_ttl": 3.0}
        first = built.connector(member="replica-1", **options)
        second = built.connector(member="replica-2", **options)
        async with running(first):
            await eventually(lambda: built.sent() >= 2000, "traffic to one replica")
            async with running(second):
                await eventually(
                    lambda: (
                        first.subscribed
                        and second.subscribed
                        and not first.subscribed & second.subscribed
                    ),
                    "split settled",
                )
                await eventually(lambda: built.sent() >= 8000, "traffic to both")
            # the second left cleanly (deregistered, kept streaming two heartbeats)
            await eventually(lambda: first.subscribed == frozenset(TIER1), "all back on one")
            await eventually(lambda: built.sent() >= 12000, "traffic after the leave")
            await built.quiesce(first, second)
            messages = await built.messages()
        assert_handoff_lost_nothing(built, messages, first, second)
    finally:
        await sim.stop()


async def test_a_dead_replicas_symbols_move_to_the_survivor_within_the_member_ttl(
    setup: Setup, redis_url: str, tmp_path: Path
) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text(env_text(setup.env.name.removeprefix("test-")))
    # a peer name that takes some of the shard's six symbols (HRW could give it none)
    peer = next(
        name
        for name in (f"peer-{i}" for i in range(100))
        if all(split(TIER1, ["survivor", name]).values())
    )
    survivor = setup.connector(redis_url=redis_url, heartbeat=0.3, member="survivor")
    async with running(survivor):
        proc = await spawn_connector(
            env_file, setup, redis_url, extra_args=["--member", peer], log=tmp_path / "peer.log"
        )
        try:
            # a process start-up (imports, connections) can be slow on a loaded machine
            await eventually(
                lambda: peer in survivor.membership.members,
                "the peer joins",
                timeout=60,
            )
            await eventually(lambda: len(survivor.subscribed) < len(TIER1), "the shard is split")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            killed_at = time.monotonic()
            await eventually(
                lambda: survivor.subscribed == frozenset(TIER1),
                "the survivor owns every symbol",
                timeout=30,
            )
            took = time.monotonic() - killed_at
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        await eventually(lambda: setup.sim.subscribed_markets() == set(TIER1), "subscribed")
    # its last heartbeat ages out within the member TTL; one heartbeat period of slack
    assert took <= redis_keys.MEMBER_TTL_SECONDS + redis_keys.HEARTBEAT_SECONDS


# -- symbols ----------------------------------------------------------------------------------


class Markets:
    """A secmaster whose listing the test changes (as the exchange lists and closes markets)."""

    def __init__(self, items: Mapping[str, Mapping[str, object]]) -> None:
        self.items = dict(items)
        self.fail = False

    def symbols(self) -> Iterator[tuple[str, Mapping[str, object]]]:
        if self.fail:
            raise ConnectionError("secmaster unavailable")
        yield from self.items.items()


async def test_new_markets_are_subscribed_intraday_and_closed_ones_dropped(setup: Setup) -> None:
    markets = Markets({})
    connector = setup.connector(symbol_source=markets, refresh_interval=0.1)
    new = "INXD-25-B4200"
    setup.sim.add_market(new, {"category": "test"})
    async with running(connector):
        await eventually(lambda: setup.sim.subscribed_markets() == set(TIER1), "initial")
        markets.items[new] = {"tier": "1"}
        await eventually(lambda: new in setup.sim.subscribed_markets(), "new market subscribed")
        await eventually(
            lambda: setup.sim.sent[("trade", new)] + setup.sim.sent[("ticker", new)] > 0,
            "new market flowing",
        )
        markets.fail = True  # an outage keeps the last good set
        failures = connector.symbols.secmaster_failures
        await eventually(
            lambda: connector.symbols.secmaster_failures > failures + 2, "refresh failing"
        )
        assert new in connector.subscribed
        markets.fail = False
        del markets.items[new]
        await eventually(lambda: new not in setup.sim.subscribed_markets(), "closed one dropped")
        await setup.quiesce(connector)
        assert await setup.stored() == setup.sent()


async def test_with_its_own_shard_only_the_catalog_decides_carve_outs_and_is_reread(
    setup: Setup, tmp_path: Path
) -> None:
    """In Kubernetes the pod's environment holds its own shard; the mounted shard catalog
    (edited in place when another shard changes) takes carved-out markets away, and a new
    catalog applies at the next refresh without a restart."""
    own = setup.env.model_copy(update={"shards": {setup.shard: setup.env.shard(setup.shard)}})
    carve = Shard(name="btc", selector={"tier": "1", "symbol": "BTC*"}, replicas=1)
    carved = setup.env.model_copy(update={"shards": {**setup.env.shards, "btc": carve}})
    catalog = tmp_path / "shards.json"
    catalog.write_text(render_catalog(carved))
    live = Markets({s: {"tier": "1"} for s in TIER1})
    pod = Setup(own, setup.shard, setup.nats_url, setup.sim)
    connector = pod.connector(symbol_source=live, refresh_interval=0.1, shards_file=catalog)
    async with running(connector):
        rest = set(TIER1) - {"BTCUSD"}
        await eventually(lambda: setup.sim.subscribed_markets() == rest, "carve-out left out")
        catalog.write_text(render_catalog(setup.env))  # the carve-out is gone again
        await eventually(lambda: setup.sim.subscribed_markets() == set(TIER1), "catalog re-read")
    assert connector.symbols.unresolved == 0


# -- the command ------------------------------------------------------------------------------


async def spawn_connector(
    env_file: Path,
    setup: Setup,
    redis_url: str | None,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    log: Path | None = None,
) -> asyncio.subprocess.Process:
    """`ssmd run connector` as a process; its output goes to `log` (a pipe nobody reads
    could fill up and stall it) or, without one, to pipes for `communicate()`."""
    args = [
        sys.executable,
        "-m",
        "ssmd_infra",
        "run",
        "connector",
        str(env_file),
        setup.shard,
        "--nats-url",
        setup.nats_url,
        "--kalshi-ws-url",
        setup.sim.ws_url,
        "--kalshi-rest-url",
        setup.sim.rest_url,
        "--metrics-port",
        str(free_port()),
    ]
    if redis_url:
        args += ["--redis-url", redis_url]
    args += extra_args or []
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
    env.update(extra_env or {})
    if log is not None:
        with log.open("ab") as out:
            return await asyncio.create_subprocess_exec(
                *args, cwd=REPO, env=env, stdout=out, stderr=out
            )
    return await asyncio.create_subprocess_exec(
        *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def test_bad_credentials_exit_non_zero_with_a_clear_message(
    nats_url: str, tmp_path: Path
) -> None:
    _, trusted_public = generate_key_pair(tmp_path / "trusted")
    wrong_private, _ = generate_key_pair(tmp_path / "wrong")
    tag = uuid.uuid4().hex[:6]
    env = parse_environment(env_text(tag), "x.yaml")
    sim = KalshiSimulator({s: {} for s in TIER1}, public_key_pem=trusted_public.read_bytes())
    await sim.start()
    try:
        env_file = tmp_path / "env.yaml"
        env_file.write_text(env_text(tag))
        built = Setup(env, f"a{tag}", nats_url, sim)
        proc = await spawn_connector(
            env_file,
            built,
            None,
            {"KALSHI_API_KEY_ID": "key-123", "KALSHI_PRIVATE_KEY_PATH": str(wrong_private)},
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await sim.stop()
    assert proc.returncode == 1
    text = stderr.decode()
    assert "error:" in text and "Kalshi refused the credentials" in text and "key-123" in text


async def test_sigterm_stops_cleanly_after_draining(setup: Setup, tmp_path: Path) -> None:
    env_file = tmp_path / "env.yaml"
    env_file.write_text(env_text(setup.env.name.removeprefix("test-")))
    log = tmp_path / "connector.log"
    proc = await spawn_connector(env_file, setup, None, log=log)
    try:
        await eventually(lambda: setup.sent() >= 200, "traffic", timeout=30)
    finally:
        setup.sim.set_rate(0)
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert await setup.stored() == setup.sent()


def test_half_set_credentials_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", "key-1")
    monkeypatch.delenv("KALSHI_PRIVATE_KEY_PATH", raising=False)
    with pytest.raises(ConfigError, match="KALSHI_PRIVATE_KEY_PATH is missing"):
        signer_from_environment()
    monkeypatch.delenv("KALSHI_API_KEY_ID")
    assert signer_from_environment() is None


def test_an_unreadable_private_key_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KALSHI_API_KEY_ID", "key-1")
    monkeypatch.setenv("KALSHI_PRIVATE_KEY_PATH", str(tmp_path / "missing.pem"))
    with pytest.raises(SsmdError, match=r"cannot read Kalshi private key .*missing\.pem"):
        signer_from_environment()


async def test_frames_that_cannot_be_published_safely_are_rejected_and_counted(
    nats_url: str,
) -> None:
    from runtime.kalshi.protocol import Frame

    env = parse_environment(env_text("rej"), "rej.yaml")
    settings = ConnectorSettings(
        nats_url=nats_url, kalshi_ws_url="ws://127.0.0.1:1", metrics_port=None
    )
    connector = Connector(env, "arej", settings)
    on_frames = connector.forwarder.on_frames
    on_frames([Frame(b"{}", "trade.x", "BTCUSD", "t-1")])  # type with a dot
    on_frames([Frame(b"{}", "trade", "BTC\r\nUSD", "t-2")])  # control characters
    on_frames([Frame(b"{}", "trade", "BTCUSD", "t-3\r\nX: y")])  # header injection
    on_frames([Frame(b"{}", "trade", "KXHIGHNY-24DEC05-B43.5", "t-4")])
    assert connector.forwarder.rejected == 3
    assert connector.publisher.stats.submitted == 1
    assert connector.received == 4
