"""The Kalshi REST secmaster source against the simulator's REST API on loopback: the open
events with nested markets page by page, category/series/event from events and series,
retries on 429/5xx and dead servers, signed requests, a bounded series cache, the
foundation's merge with manual symbols, and a connector that picks up a market listed
intraday."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

from runtime.connector.service import Connector
from runtime.connector.settings import ConnectorSettings
from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.rest import (
    KalshiRestError,
    KalshiRestSource,
    LruCache,
    TokenBucket,
    parse_retry_after,
)
from runtime.kalshi.simulator import KalshiSimulator
from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.local.servers import free_port

CATEGORIES = ("crypto", "economics", "climate", "sports", "politics", "financials")
SERIES = [f"KXT{s}" for s in range(6)]
EVENTS_PER_SERIES = 5
MARKETS_PER_EVENT = 8  # 6 × 5 × 8 = 240 open markets
FAST: dict[str, Any] = {"rate": 1000.0, "burst": 100, "backoff_initial": 0.01, "backoff_max": 0.05}


def event_ticker(s: int, e: int) -> str:
    return f"KXT{s}-26JAN{e:02d}"


def populate(sim: KalshiSimulator, event_category: bool = True) -> dict[str, dict[str, str]]:
    """240 open markets in 30 events of 6 series (dotted strikes, like Kalshi's), plus a
    closed one in an open event; returns what each open market's attributes must be. Without
    `event_category` the events carry none (Kalshi's field is deprecated): only the series."""
    expected: dict[str, dict[str, str]] = {}
    for s, series in enumerate(SERIES):
        for e in range(EVENTS_PER_SERIES):
            event = event_ticker(s, e)
            for k in range(MARKETS_PER_EVENT):
                ticker = f"{event}-B{k}.5"
                attrs = {"category": CATEGORIES[s], "series": series}
                sim.add_market(ticker, attrs if event_category else {**attrs, "event_category": ""})
                expected[ticker] = {
                    "category": CATEGORIES[s],
                    "series": series,
                    "event": event,
                    "status": "active",
                    "market_type": "binary",
                }
    sim.add_market("KXT0-26JAN00-CLOSED", {"category": "crypto", "series": "KXT0"})
    sim.set_market_status("KXT0-26JAN00-CLOSED", "closed")  # its event stays open
    return expected


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator({}, rate_per_market=0.0)
    await simulator.start()
    yield simulator
    await simulator.stop()


def source(sim: KalshiSimulator, **options: Any) -> KalshiRestSource:
    return KalshiRestSource(sim.rest_url, **{"page_limit": 25, **FAST, **options})


# -- listing ----------------------------------------------------------------------------------


async def test_every_open_market_is_listed_once_from_the_events_pages_with_its_attributes(
    sim: KalshiSimulator,
) -> None:
    expected = populate(sim)
    rest = source(sim)
    listing = await asyncio.to_thread(rest.symbols)  # as the connector calls it
    assert sorted(t for t, _ in listing) == sorted(expected)  # once each, closed one left out
    assert dict(listing) == expected
    assert rest.stats.pages == 30 // 25 + 1 and rest.stats.events == 30  # pagination happened
    assert rest.stats.series_lookups == 0  # every event carried its category
    assert sim.rest_requests == rest.stats.requests == rest.stats.pages


async def test_the_first_listing_costs_event_pages_not_one_request_per_event(
    sim: KalshiSimulator,
) -> None:
    expected = populate(sim)
    rest = KalshiRestSource(sim.rest_url, **FAST)  # the default page: 200 events
    assert dict(await rest.fetch()) == expected
    assert sim.rest_requests == 1
    sim.add_market("KXNEW-26FEB01-T3", {"category": "crypto", "series": "KXNEW"})
    listing = dict(await rest.fetch())  # a refresh sees a market listed since
    assert listing["KXNEW-26FEB01-T3"]["series"] == "KXNEW"
    assert len(listing) == len(expected) + 1 and sim.rest_requests == 2


async def test_an_event_without_category_takes_its_series_category_once_per_series(
    sim: KalshiSimulator,
) -> None:
    expected = populate(sim, event_category=False)
    rest = source(sim)
    assert dict(await rest.fetch()) == expected
    assert rest.stats.series_lookups == 6
    assert dict(await rest.fetch()) == expected
    assert rest.stats.series_lookups == 6  # cached: series do not change category


def test_an_unknown_listing_status_is_refused_up_front() -> None:
    with pytest.raises(SsmdError, match=r"status must be one of closed, open, settled, unopened"):
        KalshiRestSource("http://127.0.0.1:1/trade-api/v2", status="active")


# -- faults -----------------------------------------------------------------------------------


async def test_429_and_5xx_are_retried_and_the_listing_completes(sim: KalshiSimulator) -> None:
    expected = populate(sim)
    rest = source(sim)
    sim.fail_rest(2, 429)  # carries Retry-After: 0, honoured
    sim.fail_rest(1, 503)
    sim.fail_rest(1, 500)
    assert dict(await rest.fetch()) == expected
    assert rest.stats.retries == 4
    assert sim.rest_requests == rest.stats.pages + 4


async def test_a_request_failing_past_the_retry_budget_is_a_clear_error(
    sim: KalshiSimulator,
) -> None:
    populate(sim)
    rest = source(sim, max_attempts=3)
    sim.fail_rest(10, 502)
    with pytest.raises(KalshiRestError, match=r"GET .*/events failed 3 times.*HTTP 502"):
        await rest.fetch()
    assert sim.rest_requests == 3


async def test_an_unreachable_exchange_is_retried_then_a_clear_error() -> None:
    rest = KalshiRestSource(f"http://127.0.0.1:{free_port()}/trade-api/v2", max_attempts=2, **FAST)
    with pytest.raises(KalshiRestError, match=r"failed 2 times.*ClientConnectorError"):
        await asyncio.to_thread(rest.symbols)
    assert rest.stats.requests == 2 and rest.stats.retries == 1


async def test_a_listing_that_never_ends_is_bounded(sim: KalshiSimulator) -> None:
    populate(sim)
    rest = source(sim, max_pages=3, page_limit=5)
    with pytest.raises(KalshiRestError, match="more than 3 pages"):
        await rest.fetch()
    assert rest.stats.pages == 3


# -- signatures -------------------------------------------------------------------------------


async def test_signed_requests_pass_the_simulators_check_and_a_wrong_key_is_refused_at_once(
    tmp_path: Path,
) -> None:
    private, public = generate_key_pair(tmp_path / "good", bits=1024)
    wrong, _ = generate_key_pair(tmp_path / "wrong", bits=1024)
    sim = KalshiSimulator({}, rate_per_market=0.0, public_key_pem=public.read_bytes())
    await sim.start()
    try:
        expected = populate(sim)
        good = source(sim, signer=KalshiSigner.from_files("key-1", private))
        assert dict(await good.fetch()) == expected
        assert sim.auth_failures == 0
        bad = source(sim, signer=KalshiSigner.from_files("key-1", wrong))
        with pytest.raises(KalshiRestError, match=r"refused the credentials.*HTTP 401"):
            await bad.fetch()
        assert sim.auth_failures == 1  # not retried: waiting cannot fix a key
    finally:
        await sim.stop()


# -- bounds -----------------------------------------------------------------------------------


async def test_the_series_cache_is_bounded_and_a_small_one_costs_lookups_not_attributes(
    sim: KalshiSimulator,
) -> None:
    expected = populate(sim, event_category=False)
    small = source(sim, cache_size=2)
    assert dict(await small.fetch()) == expected
    assert len(small.series) == 2
    assert dict(await small.fetch()) == expected
    assert small.stats.series_lookups == 6 + 4  # the 2 still cached were not asked again
    roomy = source(sim, cache_size=64)
    await roomy.fetch()
    await roomy.fetch()
    assert len(roomy.series) == 6 and roomy.stats.series_lookups == 6


def test_lru_cache_evicts_the_least_recently_used() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_the_token_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    now = [100.0]
    bucket = TokenBucket(rate=4.0, burst=2, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(4)] == [0.0, 0.0, 0.25, 0.5]
    now[0] += 0.5  # the two reserved tokens are now due: nothing left over
    assert bucket.reserve() == 0.25
    now[0] += 10.0  # idle time refills to the burst, no more
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.25]


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = 1_700_000_000.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == 7.0
    assert parse_retry_after(formatdate(now - 7, usegmt=True), now=now) == 0.0


async def test_symbols_refuses_to_block_a_running_event_loop(sim: KalshiSimulator) -> None:
    with pytest.raises(SsmdError, match=r"asyncio\.to_thread"):
        source(sim).symbols()


# -- merge with the environment ---------------------------------------------------------------

MERGE_ENV = """
name: rest-merge
feed: kalshi
secmaster:
  source: kalshi
  defaults: {tier: 2, region: us}
symbols:
  KXT0-26JAN00-B0.5: {tier: 1, category: majors}
  BTCUSD: {tier: 1, category: crypto}
shards:
  one: {selector: {tier: 1}, replicas: 1}
  two: {selector: {tier: 2}, replicas: 1}
"""


async def test_manual_symbols_override_the_exchanges_attributes_and_defaults_fill_the_rest(
    sim: KalshiSimulator,
) -> None:
    expected = populate(sim)
    env = parse_environment(MERGE_ENV, "rest-merge.yaml")
    universe = await asyncio.to_thread(merge_symbols, env, source(sim))
    assert len(universe) == len(expected) + 1
    assert universe["KXT0-26JAN00-B0.5"] == {  # manual wins, the exchange fills, defaults last
        **expected["KXT0-26JAN00-B0.5"],
        "tier": "1",
        "category": "majors",
        "region": "us",
    }
    assert universe["KXT3-26JAN02-B7.5"] == {
        **expected["KXT3-26JAN02-B7.5"],
        "tier": "2",
        "region": "us",
    }
    assert universe["BTCUSD"] == {"tier": "1", "category": "crypto", "region": "us"}


# -- the connector ----------------------------------------------------------------------------


async def test_a_connector_on_a_kalshi_secmaster_subscribes_a_market_listed_intraday(
    sim: KalshiSimulator, nats_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    env = parse_environment(
        f"""
name: rest-{tag}
feed: kalshi
secmaster: {{source: kalshi, defaults: {{tier: 2}}}}
streams:
  internal: {{max_age: 1h, max_bytes: 16Mi}}
shards:
  c{tag}: {{selector: {{category: crypto, tier: 2}}, replicas: 1}}
  o{tag}: {{selector: {{tier: 2}}, replicas: 1}}
""",
        f"rest-{tag}.yaml",
    )
    shard = f"c{tag}"
    await reconcile_streams(nats_url, [internal_stream_spec(env, shard)])
    sim.set_rate(5.0)
    populate(sim)
    crypto = {t for t, m in sim.markets.items() if m.category == "crypto" and m.status == "active"}
    connector = Connector(
        env,
        shard,
        ConnectorSettings(
            nats_url=nats_url,
            kalshi_ws_url=sim.ws_url,
            kalshi_rest_url=sim.rest_url,
            metrics_port=None,
            refresh_interval=0.2,
            client_options={"backoff_initial": 0.05, "backoff_max": 0.2},
        ),
    )
    task = asyncio.create_task(connector.run())
    try:
        await eventually(lambda: sim.subscribed_markets() == crypto, "the crypto markets")
        new = "KXT0-26FEB01-T9.5"
        sim.add_market(new, {"category": "crypto", "series": "KXT0"})
        await eventually(lambda: new in sim.subscribed_markets(), "the new market subscribed")
        await eventually(lambda: sim.sent[("trade", new)] + sim.sent[("ticker", new)] > 0, "flow")
        sim.set_market_status(new, "closed")
        await eventually(lambda: new not in sim.subscribed_markets(), "the closed one dropped")
        assert connector.symbols.secmaster_failures == 0
    finally:
        connector.stop()
        await asyncio.wait_for(task, 20)


async def test_markets_no_shard_selects_are_reported_and_do_not_stop_the_shard(
    sim: KalshiSimulator, nats_url: str
) -> None:
    tag = uuid.uuid4().hex[:6]
    env = parse_environment(
        f"""
name: rest-{tag}
feed: kalshi
secmaster: {{source: kalshi}}
streams:
  internal: {{max_age: 1h, max_bytes: 16Mi}}
shards:
  c{tag}: {{selector: {{category: crypto}}, replicas: 1}}
""",
        f"rest-{tag}.yaml",
    )
    shard = f"c{tag}"
    await reconcile_streams(nats_url, [internal_stream_spec(env, shard)])
    populate(sim)
    active = {t: m for t, m in sim.markets.items() if m.status == "active"}
    crypto = {t for t, m in active.items() if m.category == "crypto"}
    assert crypto and len(crypto) < len(active)
    connector = Connector(
        env,
        shard,
        ConnectorSettings(
            nats_url=nats_url,
            kalshi_ws_url=sim.ws_url,
            kalshi_rest_url=sim.rest_url,
            metrics_port=None,
            refresh_interval=0.2,
            client_options={"backoff_initial": 0.05, "backoff_max": 0.2},
        ),
    )
    task = asyncio.create_task(connector.run())
    try:
        await eventually(lambda: sim.subscribed_markets() == crypto, "the crypto markets")
        assert connector.symbols.unresolved == len(active) - len(crypto)  # the orphans, counted
        assert connector.symbols.secmaster_failures == 0
        assert not task.done()
    finally:
        connector.stop()
        await asyncio.wait_for(task, 20)
