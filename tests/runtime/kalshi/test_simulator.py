"""The Kalshi simulator speaks WebSocket v2 and REST like Kalshi, fans each event out once,
checks signatures, and injects the faults the connector's tests need."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from waiting import eventually
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.protocol import KalshiProtocol
from runtime.kalshi.simulator import KalshiSimulator

REPO = Path(__file__).resolve().parents[3]
DOTTED = "KXHIGHNY-24DEC05-B43.5"
MARKETS = {
    DOTTED: {"category": "climate"},
    "FED-25DEC-T4.25": {"category": "economics", "series": "FED", "event": "FED-25DEC"},
    "BTCUSD": {"category": "crypto"},
}


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator(MARKETS, rate_per_market=200.0, record=True, seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def send(ws: ClientConnection, **command: Any) -> None:
    await ws.send(json.dumps(command))


async def recv(ws: ClientConnection) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 10))
    return data


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    while True:
        message = await recv(ws)
        if message["type"] == kind:
            return message


async def test_subscribe_acks_each_channel_with_its_own_sid_and_numbers_from_one(
    sim: KalshiSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws,
            id=1,
            cmd="subscribe",
            params={"channels": ["trade", "ticker"], "market_tickers": [DOTTED]},
        )
        acks = [await recv(ws), await recv(ws)]
        assert acks == [
            {"id": 1, "type": "subscribed", "msg": {"channel": "trade", "sid": 1}},
            {"id": 1, "type": "subscribed", "msg": {"channel": "ticker", "sid": 2}},
        ]
        seqs: dict[int, list[int]] = {1: [], 2: []}
        while min(len(v) for v in seqs.values()) < 5:
            message = await recv(ws)
            assert message["msg"]["market_ticker"] == DOTTED
            assert message["type"] == {1: "trade", 2: "ticker"}[message["sid"]]
            seqs[message["sid"]].append(message["seq"])
        for numbers in seqs.values():
            assert numbers == list(range(1, len(numbers) + 1))
    assert {ticker for _, ticker in sim.sent} == {DOTTED}  # nothing for unsubscribed markets


async def test_trade_and_ticker_messages_carry_kalshi_fields(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws,
            id=1,
            cmd="subscribe",
            params={"channels": ["trade", "ticker"], "market_tickers": ["BTCUSD"]},
        )
        trade = (await next_of(ws, "trade"))["msg"]
        ticker = (await next_of(ws, "ticker"))["msg"]
    assert set(trade) == {
        "trade_id",
        "market_ticker",
        "yes_price",
        "no_price",
        "yes_price_dollars",
        "no_price_dollars",
        "count",
        "count_fp",
        "taker_side",
        "ts",
    }
    assert trade["yes_price"] + trade["no_price"] == 100
    assert trade["yes_price_dollars"] == f"{trade['yes_price'] / 100:.4f}"
    assert trade["taker_side"] in ("yes", "no") and isinstance(trade["ts"], int)
    assert {
        "market_ticker",
        "price",
        "yes_bid",
        "yes_ask",
        "price_dollars",
        "volume",
        "open_interest",
        "ts",
    } <= set(ticker)
    assert ticker["yes_bid"] <= ticker["price"] < ticker["yes_ask"]


async def test_one_event_is_fanned_out_byte_identical_to_every_subscriber(
    sim: KalshiSimulator,
) -> None:
    sim.pause()
    async with connect(sim.ws_url) as a, connect(sim.ws_url) as b:
        await send(
            a,
            id=1,
            cmd="subscribe",
            params={"channels": ["trade"], "market_tickers": [DOTTED, "BTCUSD"]},
        )
        await send(
            b, id=5, cmd="subscribe", params={"channels": ["ticker"], "market_tickers": ["BTCUSD"]}
        )
        await send(
            b, id=6, cmd="subscribe", params={"channels": ["trade"], "market_tickers": [DOTTED]}
        )
        assert (await recv(a))["msg"]["sid"] == 1
        assert [(await recv(b))["msg"]["sid"] for _ in range(2)] == [1, 2]
        sim.resume()
        await eventually(lambda: sim.sent[("trade", DOTTED)] >= 20)
        sim.pause()
        total = sim.sent[("trade", DOTTED)]
        raw_a = [
            await a.recv(decode=False)
            for _ in range(sum(sim.sent[k] for k in sim.sent if k[0] == "trade"))
        ]
        raw_b = [
            await b.recv(decode=False)
            for _ in range(sim.sent[("ticker", "BTCUSD")] + sim.sent[("trade", DOTTED)])
        ]
    proto = KalshiProtocol(["trade", "ticker"])
    dotted_a = [proto.receive(r) for r in raw_a if DOTTED.encode() in r]
    dotted_b = [proto.receive(r) for r in raw_b if DOTTED.encode() in r]
    assert len(dotted_a) == len(dotted_b) == total
    # same messages, same order, same dedup ids, each connection numbering its own sid
    assert [f.msg_id for f in dotted_a] == [f.msg_id for f in dotted_b]  # type: ignore[union-attr]
    assert [json.loads(r)["msg"] for r in raw_a if DOTTED.encode() in r] == [
        json.loads(r)["msg"] for r in raw_b if DOTTED.encode() in r
    ]
    assert {json.loads(r)["sid"] for r in raw_b if DOTTED.encode() in r} == {2}
    assert sim.stats()["frames_out"] > sim.stats()["generated"]  # one event, many frames
    assert {f.msg_id for f in dotted_a} <= sim.sent_ids  # type: ignore[union-attr]


async def test_update_subscription_and_unsubscribe_change_what_is_generated(
    sim: KalshiSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws, id=1, cmd="subscribe", params={"channels": ["trade"], "market_tickers": ["BTCUSD"]}
        )
        await next_of(ws, "subscribed")
        await send(
            ws,
            id=2,
            cmd="update_subscription",
            params={"sids": [1], "market_tickers": [DOTTED], "action": "add_markets"},
        )
        ok = await next_of(ws, "ok")
        assert ok == {
            "id": 2,
            "sid": 1,
            "type": "ok",
            "msg": {"market_tickers": ["BTCUSD", DOTTED]},
        }
        assert sim.subscribed_markets() == {"BTCUSD", DOTTED}
        await send(
            ws,
            id=3,
            cmd="update_subscription",
            params={"sids": [1], "market_tickers": ["BTCUSD"], "action": "delete_markets"},
        )
        assert (await next_of(ws, "ok"))["msg"]["market_tickers"] == [DOTTED]
        assert sim.subscribed_markets() == {DOTTED}
        await send(ws, id=4, cmd="unsubscribe", params={"sids": [1]})
        assert await next_of(ws, "unsubscribed") == {"id": 4, "sid": 1, "type": "unsubscribed"}
        assert sim.subscribed_markets() == set()


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (
            {
                "id": 1,
                "cmd": "subscribe",
                "params": {"channels": ["trade"], "market_tickers": [f"M{i}" for i in range(257)]},
            },
            9,
        ),
        (
            {
                "id": 1,
                "cmd": "subscribe",
                "params": {"channels": ["nope"], "market_tickers": ["A"]},
            },
            7,
        ),
        ({"id": 1, "cmd": "subscribe", "params": {}}, 2),
        (
            {
                "id": 1,
                "cmd": "update_subscription",
                "params": {"sids": [42], "market_tickers": ["A"], "action": "add_markets"},
            },
            13,
        ),
        ({"id": 1, "cmd": "unsubscribe", "params": {"sids": [42]}}, 13),
        ({"id": 1, "cmd": "dance"}, 5),
    ],
)
async def test_bad_commands_get_error_replies(
    sim: KalshiSimulator, command: dict[str, Any], code: int
) -> None:
    async with connect(sim.ws_url) as ws:
        await ws.send(json.dumps(command))
        reply = await recv(ws)
        assert reply["type"] == "error" and reply["id"] == 1 and reply["msg"]["code"] == code
        await ws.send("{nonsense")
        assert (await recv(ws))["msg"]["code"] == 1


async def test_signature_is_checked_against_the_configured_public_key(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "right")
    other_private, _ = generate_key_pair(tmp_path / "wrong")
    simulator = KalshiSimulator(MARKETS, public_key_pem=public.read_bytes())
    await simulator.start()
    try:
        path = "/trade-api/ws/v2"
        for headers in ({}, KalshiSigner.from_files("k", other_private).headers("GET", path)):
            with pytest.raises(InvalidStatus) as refused:
                await connect(simulator.ws_url, additional_headers=headers)
            assert refused.value.response.status_code == 401
        good = KalshiSigner.from_files("k", private).headers("GET", path)
        async with connect(simulator.ws_url, additional_headers=good):
            pass
        simulator.refuse_auth(True)
        with pytest.raises(InvalidStatus):
            await connect(
                simulator.ws_url,
                additional_headers=KalshiSigner.from_files("k", private).headers("GET", path),
            )
        assert simulator.auth_failures == 3
    finally:
        await simulator.stop()


async def test_skip_sequence_and_junk_frames_reach_every_connection(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws, id=1, cmd="subscribe", params={"channels": ["trade"], "market_tickers": ["BTCUSD"]}
        )
        await next_of(ws, "subscribed")
        first = await next_of(ws, "trade")
        sim.pause()
        sim.skip_sequence(5)
        sim.send_malformed(2)
        junk: list[bytes] = []
        while len(junk) < 2:  # trades already in flight may precede the junk
            frame = await asyncio.wait_for(ws.recv(decode=False), 10)
            if b'"trade_id"' not in frame:
                junk.append(frame)
        proto = KalshiProtocol(["trade"])
        for frame in junk:
            proto.receive(frame)
        assert proto.stats.malformed == 2
        sim.resume()
        last = first["seq"]
        while True:
            message = await recv(ws)
            if message.get("seq", 0) > last + 1:
                break
            last = message["seq"]
        assert message["seq"] == last + 6


async def test_drop_connections_aborts_the_socket(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws, id=1, cmd="subscribe", params={"channels": ["trade"], "market_tickers": ["BTCUSD"]}
        )
        await next_of(ws, "subscribed")
        sim.drop_connections()
        with pytest.raises(Exception) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert "ConnectionClosed" in type(closed.value).__name__
    assert sim.subscribed_markets() == set() and sim.stats()["connections"] == 0


async def test_sent_ids_are_bounded_by_record_limit() -> None:
    simulator = KalshiSimulator(MARKETS, rate_per_market=500, record=True, record_limit=10)
    await simulator.start()
    try:
        async with connect(simulator.ws_url) as ws:
            await send(
                ws,
                id=1,
                cmd="subscribe",
                params={"channels": ["trade", "ticker"], "market_tickers": list(MARKETS)},
            )
            await eventually(lambda: simulator.stats()["generated"] > 30)
        assert len(simulator.sent_ids) == 10
    finally:
        await simulator.stop()


# -- REST ---------------------------------------------------------------------------------


async def get_json(url: str, **params: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url, params=params) as response:
        return response.status, await response.json()


async def test_markets_are_cursor_paginated_with_an_empty_cursor_on_the_last_page() -> None:
    simulator = KalshiSimulator(MARKETS, synthetic_markets=20)
    await simulator.start()
    try:
        seen: list[str] = []
        cursor = ""
        pages = 0
        while True:
            status, body = await get_json(
                simulator.rest_url + "/markets",
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
        assert pages == 4 and len(seen) == 23 == len(set(seen))
        assert set(MARKETS) <= set(seen)
        status, bad = await get_json(simulator.rest_url + "/markets", limit="5000")
        assert status == 400 and "limit" in bad["error"]["message"]
    finally:
        await simulator.stop()


async def test_market_json_has_the_sdk_shape_with_dollar_strings(sim: KalshiSimulator) -> None:
    status, body = await get_json(sim.rest_url + "/markets", limit="100")
    assert status == 200
    market = next(m for m in body["markets"] if m["ticker"] == "FED-25DEC-T4.25")
    assert len(market) >= 40
    assert market["event_ticker"] == "FED-25DEC" and market["status"] == "active"
    for key in ("yes_bid_dollars", "yes_ask_dollars", "last_price_dollars", "liquidity_dollars"):
        assert isinstance(market[key], str) and "." in market[key]
    status, event = await get_json(sim.rest_url + "/events/FED-25DEC")
    assert status == 200
    assert event["event"]["series_ticker"] == "FED" and event["event"]["category"] == "economics"
    assert [m["ticker"] for m in event["markets"]] == ["FED-25DEC-T4.25"]
    status, _ = await get_json(sim.rest_url + "/events/NOPE")
    assert status == 404


async def test_a_closed_market_leaves_the_open_listing(sim: KalshiSimulator) -> None:
    sim.set_market_status("BTCUSD", "closed")
    _, body = await get_json(sim.rest_url + "/markets", status="open", limit="100")
    assert "BTCUSD" not in {m["ticker"] for m in body["markets"]}
    _, body = await get_json(sim.rest_url + "/markets", status="closed", limit="100")
    assert [m["ticker"] for m in body["markets"]] == ["BTCUSD"]


async def test_http_control_paths_drive_the_faults(sim: KalshiSimulator) -> None:
    base = f"http://127.0.0.1:{sim.port}/_sim"
    async with aiohttp.ClientSession() as http:
        assert (await http.post(base + "/rate?per_market=3")).status == 200
        assert sim.rate_per_market == 3
        assert (await http.post(base + "/rate?per_market=fast")).status == 400
        assert (await http.post(base + "/refuse_auth?on=1")).status == 200
        status, _ = await get_json(sim.rest_url + "/markets")
        assert status == 401
        assert (await http.post(base + "/refuse_auth?on=0")).status == 200
        assert (await http.post(base + "/rest_fail?n=2&status=503")).status == 200
        assert [(await get_json(sim.rest_url + "/markets"))[0] for _ in range(3)] == [503, 503, 200]
        assert (await http.post(base + "/market_status?ticker=NOPE")).status == 404
        stats = await (await http.get(base + "/stats")).json()
    assert stats["markets"] == 3 and stats["rate_per_market"] == 3


def test_cli_serves_the_env_symbols_until_sigterm(tmp_path: Path) -> None:
    _, public = generate_key_pair(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "simulator",
            "kalshi-dev",
            "--synthetic",
            "5",
            "--public-key",
            str(public),
            "--rate",
            "1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(4)]
        assert lines[0].startswith("kalshi simulator: 25 markets")
        assert lines[1].startswith("ws_url: ws://127.0.0.1:") and lines[1].rstrip().endswith(
            "/trade-api/ws/v2"
        )
        rest_url = lines[2].split(": ", 1)[1].strip()
        status, body = asyncio.run(get_json(rest_url + "/markets", limit="1000"))
        assert status == 200
        assert "KXHIGHNY-24DEC05-B43.5" in {m["ticker"] for m in body["markets"]}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_an_unreadable_public_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "simulator",
            "kalshi-dev",
            "--public-key",
            str(tmp_path / "absent.pem"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot read --public-key" in result.stderr and "absent.pem" in result.stderr


async def test_repeated_tickers_are_byte_identical_payloads_under_new_seqs(
    sim: KalshiSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws, id=1, cmd="subscribe", params={"channels": ["ticker"], "market_tickers": ["BTCUSD"]}
        )
        await next_of(ws, "subscribed")
        before = [await next_of(ws, "ticker") for _ in range(3)]
        sim.identical_tickers(True)  # from now on: the market's last payload, again and again
        during = [await next_of(ws, "ticker") for _ in range(20)]
        sim.identical_tickers(False)
    bodies = [json.dumps(m["msg"], sort_keys=True) for m in before + during]
    assert len(set(bodies[:3])) == 3  # normally no two updates are identical
    assert len(set(bodies[-10:])) == 1  # while on: one payload ...
    seqs = [m["seq"] for m in during[-10:]]
    assert seqs == list(range(seqs[0], seqs[0] + 10))  # ... each under its own seq
