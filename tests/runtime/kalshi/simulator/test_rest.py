"""The simulator's REST API: Kalshi's parameters, filters, pagination and error bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kalshi_wire import get_json

from runtime.kalshi.simulator import KalshiSimulator

MARKETS = {
    "KXHIGHNY-24DEC05-B43.5": {"category": "climate", "close_ts": "1767225600"},
    "FED-25DEC-T4.25": {"category": "economics", "series": "FED", "event": "FED-25DEC"},
    "FED-25DEC-T4.50": {"category": "economics", "series": "FED", "event": "FED-25DEC"},
    "BTCUSD": {"category": "crypto", "close_ts": "1800000000"},
}
# Fields the v2 Market object no longer has (integer cents, deprecated attributes).
RETIRED = {
    "yes_bid",
    "yes_ask",
    "no_bid",
    "no_ask",
    "last_price",
    "previous_yes_bid",
    "previous_yes_ask",
    "previous_price",
    "volume",
    "volume_24h",
    "liquidity",
    "liquidity_dollars",
    "open_interest",
    "notional_value",
    "tick_size",
    "risk_limit_cents",
    "category",
    "response_price_units",
}


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator(MARKETS, synthetic_markets=20)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_markets_are_cursor_paginated_with_an_empty_cursor_on_the_last_page(
    sim: KalshiSimulator,
) -> None:
    seen: list[str] = []
    cursor = ""
    pages = 0
    while True:
        status, body = await get_json(
            sim.rest_url + "/markets",
            status="open",
            limit="7",
            **({"cursor": cursor} if cursor else {}),
        )
        assert status == 200
        pages += 1
        seen += [m["ticker"] for m in body["markets"]]
        cursor = body["cursor"]
        assert isinstance(cursor, str)
        if not cursor:
            break
    assert pages == 4 and len(seen) == 24 == len(set(seen))
    assert set(MARKETS) <= set(seen)


async def test_market_objects_have_the_v2_shape_and_none_of_the_retired_fields(
    sim: KalshiSimulator,
) -> None:
    status, body = await get_json(sim.rest_url + "/markets/FED-25DEC-T4.25")
    assert status == 200
    market = body["market"]
    assert market["event_ticker"] == "FED-25DEC" and market["status"] == "active"
    for key in ("created_time", "updated_time", "open_time", "close_time"):
        assert market[key].endswith("Z")
    for key in ("yes_bid_dollars", "yes_ask_dollars", "last_price_dollars", "no_bid_dollars"):
        assert isinstance(market[key], str) and len(market[key].split(".")[1]) == 4
    for key in ("yes_bid_size_fp", "yes_ask_size_fp", "volume_fp", "open_interest_fp"):
        assert isinstance(market[key], str) and market[key].endswith(".00")
    assert market["settlement_bounds_type"] == "default"
    assert not RETIRED & set(market)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"tickers": "BTCUSD,FED-25DEC-T4.50,NOPE"}, ["BTCUSD", "FED-25DEC-T4.50"]),
        ({"event_ticker": "FED-25DEC"}, ["FED-25DEC-T4.25", "FED-25DEC-T4.50"]),
        ({"series_ticker": "FED", "status": "open"}, ["FED-25DEC-T4.25", "FED-25DEC-T4.50"]),
        ({"max_close_ts": "1767225600"}, ["KXHIGHNY-24DEC05-B43.5"]),
        ({"min_close_ts": "1800000001", "tickers": "BTCUSD,FED-25DEC-T4.25"}, ["FED-25DEC-T4.25"]),
        ({"status": "closed"}, []),
    ],
)
async def test_market_filters_select_what_they_name(
    sim: KalshiSimulator, params: dict[str, str], expected: list[str]
) -> None:
    status, body = await get_json(sim.rest_url + "/markets", limit="1000", **params)
    assert status == 200
    assert sorted(m["ticker"] for m in body["markets"]) == expected


@pytest.mark.parametrize(
    ("path", "params", "parameter"),
    [
        ("/markets", {"limit": "0"}, "limit"),
        ("/markets", {"limit": "1001"}, "limit"),
        ("/markets", {"limit": "ten"}, "limit"),
        ("/markets", {"status": "bogus"}, "status"),
        ("/markets", {"status": "active"}, "status"),  # a market status, not a filter value
        ("/markets", {"cursor": "%%%"}, "cursor"),
        ("/markets", {"min_close_ts": "soon"}, "min_close_ts"),
        ("/markets", {"min_close_ts": "1", "status": "open"}, "status"),
        ("/events", {"limit": "201"}, "limit"),
        ("/events", {"status": "paused"}, "status"),
        ("/events", {"with_nested_markets": "yes"}, "with_nested_markets"),
    ],
)
async def test_a_bad_parameter_is_a_400_in_kalshis_error_shape_naming_it(
    sim: KalshiSimulator, path: str, params: dict[str, str], parameter: str
) -> None:
    status, body = await get_json(sim.rest_url + path, **params)
    assert status == 400
    assert body["error"]["code"] == "invalid_parameters"
    assert body["error"]["details"] == parameter and parameter in body["error"]["message"]


async def test_absent_objects_are_404_in_kalshis_error_shape(sim: KalshiSimulator) -> None:
    for path in ("/markets/NOPE", "/events/NOPE", "/series/NOPE"):
        status, body = await get_json(sim.rest_url + path)
        assert status == 404
        assert body["error"]["code"] == "not_found" and "NOPE" in body["error"]["message"]


async def test_events_page_with_nested_markets_and_series_carry_the_category(
    sim: KalshiSimulator,
) -> None:
    events: list[dict[str, Any]] = []
    cursor = ""
    while True:
        status, body = await get_json(
            sim.rest_url + "/events",
            status="open",
            with_nested_markets="true",
            limit="2",
            **({"cursor": cursor} if cursor else {}),
        )
        assert status == 200
        events += body["events"]
        cursor = body["cursor"]
        if not cursor:
            break
    fed = next(e for e in events if e["event_ticker"] == "FED-25DEC")
    assert fed["series_ticker"] == "FED"
    assert [m["ticker"] for m in fed["markets"]] == ["FED-25DEC-T4.25", "FED-25DEC-T4.50"]
    nested = sum(len(e["markets"]) for e in events)
    assert nested == len(sim.markets)
    _, plain = await get_json(sim.rest_url + "/events", limit="200")
    assert all("markets" not in e for e in plain["events"])
    status, series = await get_json(sim.rest_url + "/series/FED")
    assert status == 200 and series["series"]["category"] == "economics"
    status, event = await get_json(sim.rest_url + "/events/FED-25DEC")
    assert status == 200 and [m["ticker"] for m in event["markets"]] == [
        "FED-25DEC-T4.25",
        "FED-25DEC-T4.50",
    ]


async def test_a_closed_market_leaves_the_open_listing(sim: KalshiSimulator) -> None:
    sim.set_market_status("BTCUSD", "closed")
    _, body = await get_json(sim.rest_url + "/markets", status="open", limit="100")
    assert "BTCUSD" not in {m["ticker"] for m in body["markets"]}
    _, body = await get_json(sim.rest_url + "/markets", status="closed", limit="100")
    assert [m["ticker"] for m in body["markets"]] == ["BTCUSD"]
    assert body["markets"][0]["status"] == "closed"
