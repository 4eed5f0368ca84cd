"""A shard's connector captures the Kalshi channels its environment lists (`channels`), order
books included: snapshots and deltas land in the shard stream under their own types, a book
sequence gap brings fresh snapshots, and a private channel without the Kalshi key is refused
before anything starts. Against the simulator and a real nats-server."""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path

import nats
import pytest
from waiting import eventually, running

from runtime.connector.service import Connector
from runtime.connector.settings import ConnectorSettings
from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.protocol import GAP_TYPE
from runtime.kalshi.simulator import KalshiSimulator
from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.core.subjects import internal_stream, parse_internal_subject

BOOKS = ["KXHIGHNY-24DEC05-B43.5", "BTCUSD"]


def environment(shard: str, channels: str) -> Environment:
    symbols = "\n".join(f"  {s}: {{tier: 1}}" for s in BOOKS)
    return parse_environment(
        f"""
name: test-{shard}
feed: kalshi
symbols:
{symbols}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 2m}}
shards:
  {shard}:
    selector: {{tier: 1}}
    replicas: 1
    channels: {channels}
""",
        f"test-{shard}.yaml",
    )


async def stored_types(nats_url: str, shard: str) -> Counter[tuple[str, str]]:
    """(type, symbol) → messages in the shard stream."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        last = (await js.stream_info(internal_stream(shard))).state.last_seq
        out: Counter[tuple[str, str]] = Counter()
        for seq in range(1, last + 1):
            subject = (await js.get_msg(internal_stream(shard), seq)).subject
            assert subject is not None
            _, _, msg_type, symbol = parse_internal_subject(subject)
            out[(msg_type, symbol)] += 1
        return out
    finally:
        await nc.close()


async def test_a_shard_captures_its_channels_and_renews_a_book_after_a_gap(
    nats_url: str, tmp_path: Path
) -> None:
    shard = f"c{uuid.uuid4().hex[:6]}"
    env = environment(shard, "[trade, orderbook_delta]")
    await reconcile_streams(nats_url, [internal_stream_spec(env, shard)])
    private, public = generate_key_pair(tmp_path)
    sim = KalshiSimulator(
        {s: {} for s in BOOKS}, rate_per_market=50.0, public_key_pem=public.read_bytes()
    )
    await sim.start()
    try:
        settings = ConnectorSettings(
            nats_url=nats_url,
            kalshi_ws_url=sim.ws_url,
            metrics_port=0,
            client_options={"backoff_initial": 0.05, "backoff_max": 0.2},
        )
        connector = Connector(
            env, shard, settings, signer=KalshiSigner.from_files("key-1", private)
        )
        async with running(connector):
            await eventually(
                lambda: all(sim.sent[("orderbook_delta", s)] >= 5 for s in BOOKS), "book traffic"
            )
            sim.skip_sequence(2)
            await eventually(
                lambda: all(sim.sent[("orderbook_snapshot", s)] == 2 for s in BOOKS),
                "fresh snapshots after the gap",
            )
            sim.pause()
            await eventually(
                lambda: connector.publisher.inflight == 0 and len(connector.buffer) == 0,
                "drained",
            )
            client = connector.client
            assert client is not None and client.stats.resnapshots == 1
        stored = await stored_types(nats_url, shard)
    finally:
        await sim.stop()
    # the gap itself is on record too (`ssmd archive verify` tells it from a loss)
    assert {t for t, _ in stored} == {"trade", "orderbook_snapshot", "orderbook_delta", GAP_TYPE}
    for symbol in BOOKS:  # both snapshots of each book are stored
        assert stored[("orderbook_snapshot", symbol)] == 2
        assert stored[("orderbook_delta", symbol)] >= 5


def test_a_private_channel_without_the_kalshi_key_is_refused_before_starting() -> None:
    env = environment("priv", "[trade, ticker, orderbook_delta]")
    with pytest.raises(
        ConfigError, match=r"shard 'priv' captures orderbook_delta.*KALSHI_API_KEY_ID"
    ):
        Connector(
            env,
            "priv",
            ConnectorSettings(nats_url="nats://127.0.0.1:1", kalshi_ws_url="ws://127.0.0.1:1/"),
        )
