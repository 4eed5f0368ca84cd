"""The simulator's WebSocket v2 server holds to Kalshi's contract: subscribe forms, error
codes, public/private channels, payload fields, orderbook snapshot+delta with seq, fan-out."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from kalshi_wire import next_of, recv, send
from waiting import eventually
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.protocol import KalshiProtocol
from runtime.kalshi.simulator import KalshiSimulator

DOTTED = "KXHIGHNY-24DEC05-B43.5"
MARKETS = {
    DOTTED: {"category": "climate"},
    "FED-25DEC-T4.25": {"category": "economics", "series": "FED", "event": "FED-25DEC"},
    "BTCUSD": {"category": "crypto"},
}
WS_PATH = "/trade-api/ws/v2"


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator(MARKETS, rate_per_market=200.0, record=True, seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


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


async def test_trade_and_ticker_carry_kalshis_current_fields_as_dollar_and_fp_strings(
    sim: KalshiSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws,
            id=1,
            cmd="subscribe",
            params={"channels": ["trade", "ticker"], "market_ticker": "BTCUSD"},
        )
        trade = (await next_of(ws, "trade"))["msg"]
        ticker = (await next_of(ws, "ticker"))["msg"]
    assert set(trade) == {
        "trade_id",
        "market_ticker",
        "yes_price_dollars",
        "no_price_dollars",
        "count_fp",
        "taker_side",
        "ts",
        "ts_ms",
    }
    assert Decimal(trade["yes_price_dollars"]) + Decimal(trade["no_price_dollars"]) == 1
    assert trade["count_fp"].endswith(".00") and int(Decimal(trade["count_fp"])) >= 1
    assert trade["taker_side"] in ("yes", "no") and trade["ts"] == trade["ts_ms"] // 1000
    assert set(ticker) == {
        "market_ticker",
        "market_id",
        "price_dollars",
        "yes_bid_dollars",
        "yes_ask_dollars",
        "yes_bid_size_fp",
        "yes_ask_size_fp",
        "last_trade_size_fp",
        "volume_fp",
        "open_interest_fp",
        "dollar_volume",
        "dollar_open_interest",
        "ts",
        "ts_ms",
    }
    assert Decimal(ticker["yes_bid_dollars"]) < Decimal(ticker["yes_ask_dollars"])


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


async def test_a_subscribe_without_tickers_streams_every_market(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(ws, id=1, cmd="subscribe", params={"channels": ["ticker"]})
        assert (await recv(ws))["msg"] == {"channel": "ticker", "sid": 1}
        seen: set[str] = set()
        while seen != set(MARKETS):
            seen.add((await next_of(ws, "ticker"))["msg"]["market_ticker"])
        assert sim.subscribed_markets() == set(MARKETS)
        sim.add_market("NEWMKT-26JAN-B1")  # a market listed later is streamed too
        while (await next_of(ws, "ticker"))["msg"]["market_ticker"] != "NEWMKT-26JAN-B1":
            pass


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
            params={"sid": 1, "market_ticker": "BTCUSD", "action": "delete_markets"},
        )
        assert (await next_of(ws, "ok"))["msg"]["market_tickers"] == [DOTTED]
        assert sim.subscribed_markets() == {DOTTED}
        await send(ws, id=4, cmd="unsubscribe", params={"sids": [1]})
        assert await next_of(ws, "unsubscribed") == {"id": 4, "sid": 1, "type": "unsubscribed"}
        assert sim.subscribed_markets() == set()


SUBSCRIBE_TRADE = {"channels": ["trade"], "market_tickers": ["BTCUSD"]}


@pytest.mark.parametrize(
    ("command", "code"),
    [
        ({"id": 1, "cmd": "subscribe"}, 2),  # params required
        ({"id": 1, "cmd": "subscribe", "params": {"market_tickers": ["A"]}}, 3),
        ({"id": 1, "cmd": "subscribe", "params": {"channels": []}}, 3),
        ({"id": 1, "cmd": "unsubscribe", "params": {}}, 4),  # sids required
        ({"id": 1, "cmd": "dance", "params": {}}, 5),  # unknown command
        ({"id": 1, "cmd": ["subscribe"], "params": {}}, 5),  # not even a name
        ({"id": 1, "params": {}}, 5),
        ({"id": 1, "cmd": "unsubscribe", "params": {"sids": [42]}}, 7),  # unknown sid
        (
            {
                "id": 1,
                "cmd": "update_subscription",
                "params": {"sids": [42], "market_tickers": ["A"], "action": "add_markets"},
            },
            7,
        ),
        ({"id": 1, "cmd": "subscribe", "params": {"channels": ["nope"]}}, 8),  # unknown channel
        ({"id": 1, "cmd": "subscribe", "params": {"channels": ["trade"], "market_tickers": 5}}, 11),
        (
            {
                "id": 1,
                "cmd": "update_subscription",
                "params": {"sids": [1, 2], "market_tickers": ["A"], "action": "add_markets"},
            },
            12,
        ),
        (
            {
                "id": 1,
                "cmd": "update_subscription",
                "params": {"sids": [1], "market_tickers": ["A"], "action": "replace"},
            },
            13,
        ),
        (
            {
                "id": 1,
                "cmd": "subscribe",
                "params": {"channels": ["trade"], "market_tickers": [f"M{i}" for i in range(257)]},
            },
            26,  # more than 256 markets in one subscription
        ),
    ],
)
async def test_bad_commands_get_kalshis_error_codes_and_the_connection_stays_usable(
    sim: KalshiSimulator, command: dict[str, Any], code: int
) -> None:
    async with connect(sim.ws_url) as ws:
        await ws.send(json.dumps(command))
        reply = await recv(ws)
        assert reply["type"] == "error" and reply["id"] == 1 and reply["msg"]["code"] == code
        assert reply["msg"]["msg"]
        for malformed in (
            "{nonsense",
            json.dumps({"cmd": "subscribe", "params": {}}),
            json.dumps({"id": "1", "cmd": "subscribe", "params": {}}),
            "[1]",
            "null",
        ):
            await ws.send(malformed)  # not JSON, no id, not an object: code 1, no id
            reply = await recv(ws)
            assert reply["type"] == "error" and reply["msg"]["code"] == 1 and "id" not in reply
        await ws.send(b"\x00binary")
        assert (await recv(ws))["msg"]["code"] == 1
        await send(ws, id=9, cmd="subscribe", params=SUBSCRIBE_TRADE)  # still served
        assert (await next_of(ws, "subscribed"))["id"] == 9
    assert sim.stats()["command_errors"][str(code)] >= 1


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-(2**40), 2**40)
    if kind == 2:
        return rng.random()
    if kind == 3:
        return rng.choice(["", "trade", "ticker", "orderbook_delta", "BTCUSD", "add_markets"])
    if kind == 4:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(8)))
    if kind == 5:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["id", "cmd", "params", "channels", "market_ticker", "market_tickers", "sids"]
    keys += ["sid", "action", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


async def test_random_commands_get_answers_and_never_close_the_connection(
    sim: KalshiSimulator,
) -> None:
    rng = random.Random(7)
    sim.pause()
    async with connect(sim.ws_url, max_queue=None) as ws:
        for i in range(400):
            command = _random_json(rng)
            if isinstance(command, dict) and rng.random() < 0.7:  # mostly command-shaped
                command = {
                    "id": i,
                    "cmd": rng.choice(["subscribe", "update_subscription", "unsubscribe", "x"]),
                    "params": command,
                }
            await ws.send(json.dumps(command))
        await send(ws, id=10_000, cmd="subscribe", params=SUBSCRIBE_TRADE)
        while (reply := await recv(ws)).get("id") != 10_000:
            assert reply["type"] in (
                "error",
                "subscribed",
                "ok",
                "unsubscribed",
                "orderbook_snapshot",
            )
        assert reply["type"] == "subscribed"
    assert sum(sim.stats()["command_errors"].values()) > 300


async def test_unsigned_connections_get_public_channels_and_private_ones_need_auth(
    tmp_path: Path,
) -> None:
    private, public = generate_key_pair(tmp_path / "right")
    other_private, _ = generate_key_pair(tmp_path / "wrong")
    simulator = KalshiSimulator(MARKETS, public_key_pem=public.read_bytes())
    await simulator.start()
    try:
        async with connect(simulator.ws_url) as anonymous:
            await send(anonymous, id=1, cmd="subscribe", params=SUBSCRIBE_TRADE)
            assert (await recv(anonymous))["type"] == "subscribed"
            await send(
                anonymous,
                id=2,
                cmd="subscribe",
                params={"channels": ["orderbook_delta"], "market_tickers": ["BTCUSD"]},
            )
            refused = await next_of(anonymous, "error")
            assert refused["id"] == 2 and refused["msg"]["code"] == 9
        wrong = KalshiSigner.from_files("k", other_private).headers("GET", WS_PATH)
        with pytest.raises(InvalidStatus) as bad_signature:
            await connect(simulator.ws_url, additional_headers=wrong)
        assert bad_signature.value.response.status_code == 401
        good = KalshiSigner.from_files("k", private).headers("GET", WS_PATH)
        async with connect(simulator.ws_url, additional_headers=good) as signed:
            await send(
                signed,
                id=1,
                cmd="subscribe",
                params={"channels": ["orderbook_delta"], "market_tickers": ["BTCUSD"]},
            )
            assert (await recv(signed))["type"] == "subscribed"
            assert (await recv(signed))["type"] == "orderbook_snapshot"
        simulator.refuse_auth(True)
        with pytest.raises(InvalidStatus):
            await connect(
                simulator.ws_url,
                additional_headers=KalshiSigner.from_files("k", private).headers("GET", WS_PATH),
            )
        assert simulator.auth_failures == 2
    finally:
        await simulator.stop()


def _apply(book: dict[str, dict[Decimal, Decimal]], message: dict[str, Any]) -> None:
    msg = message["msg"]
    if message["type"] == "orderbook_snapshot":
        for side in ("yes", "no"):
            book[side] = {Decimal(p): Decimal(n) for p, n in msg[f"{side}_dollars_fp"]}
        return
    level = book[msg["side"]]
    price = Decimal(msg["price_dollars"])
    level[price] = level.get(price, Decimal(0)) + Decimal(msg["delta_fp"])
    if level[price] == 0:
        del level[price]


async def test_an_orderbook_is_rebuilt_from_its_snapshot_and_deltas_in_seq_order(
    sim: KalshiSimulator,
) -> None:
    books: dict[str, dict[str, dict[Decimal, Decimal]]] = {}
    async with connect(sim.ws_url) as ws:
        await send(
            ws,
            id=1,
            cmd="subscribe",
            params={"channels": ["orderbook_delta"], "market_tickers": ["BTCUSD"]},
        )
        assert (await recv(ws))["msg"] == {"channel": "orderbook_delta", "sid": 1}
        snapshot = await recv(ws)
        assert snapshot["type"] == "orderbook_snapshot" and snapshot["seq"] == 1
        _apply(books.setdefault("BTCUSD", {}), snapshot)
        await send(
            ws,
            id=2,
            cmd="update_subscription",
            params={"sids": [1], "market_tickers": [DOTTED], "action": "add_markets"},
        )
        seq = 1
        while sim.sent[("orderbook_delta", "BTCUSD")] < 30 or DOTTED not in books:
            message = await recv(ws)
            if message["type"] == "ok":
                continue
            assert message["seq"] == seq + 1 and message["sid"] == 1
            seq = message["seq"]
            _apply(books.setdefault(message["msg"]["market_ticker"], {}), message)
        sim.pause()
        while seq < sim.stats()["frames_out"]:  # the frames already on their way
            message = await recv(ws)
            seq = message["seq"]
            _apply(books[message["msg"]["market_ticker"]], message)
    for ticker, book in books.items():
        market = sim.markets[ticker]
        assert book["yes"] == {Decimal(p) / 100: Decimal(n) for p, n in market.yes_book.items()}
        assert book["no"] == {Decimal(p) / 100: Decimal(n) for p, n in market.no_book.items()}


async def test_sent_ids_are_bounded_by_record_limit() -> None:
    simulator = KalshiSimulator(MARKETS, rate_per_market=500, record=True, record_limit=10)
    await simulator.start()
    try:
        # max_queue=None: the client keeps reading, so closing never waits on a full queue
        async with connect(simulator.ws_url, max_queue=None) as ws:
            await send(
                ws,
                id=1,
                cmd="subscribe",
                params={"channels": ["trade", "ticker"], "market_tickers": list(MARKETS)},
            )
            await eventually(lambda: simulator.stats()["generated"] > 30)
            simulator.pause()
        assert simulator.stats()["generated"] > 30
        assert len(simulator.sent_ids) == 10
    finally:
        await simulator.stop()


async def test_many_connections_closing_at_once_leave_no_subscription_behind(
    sim: KalshiSimulator,
) -> None:
    async def one() -> None:
        async with connect(sim.ws_url) as ws:
            await send(ws, id=1, cmd="subscribe", params=SUBSCRIBE_TRADE)
            await next_of(ws, "trade")

    await asyncio.gather(*(one() for _ in range(5)))
    await eventually(lambda: sim.stats()["connections"] == 0)
    assert sim.subscribed_markets() == set()
