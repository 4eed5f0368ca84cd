"""Every fault switch of the simulator does what it says, as a method and over HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from kalshi_wire import get_json, next_of, recv, send
from waiting import eventually
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.protocol import KalshiProtocol
from runtime.kalshi.simulator import KalshiSimulator

MARKETS = {"BTCUSD": {"category": "crypto"}, "ETHUSD": {"category": "crypto"}}
TRADES = {"channels": ["trade"], "market_tickers": ["BTCUSD"]}
WS_PATH = "/trade-api/ws/v2"


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator(MARKETS, rate_per_market=200.0, seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_skip_sequence_and_junk_frames_reach_every_connection(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(ws, id=1, cmd="subscribe", params=TRADES)
        await next_of(ws, "subscribed")
        first = await next_of(ws, "trade")
        sim.pause()
        sim.skip_sequence(5)
        sim.send_malformed(2)
        junk: list[bytes] = []
        last = first["seq"]
        while len(junk) < 2:  # trades already in flight may precede the junk
            frame = await asyncio.wait_for(ws.recv(decode=False), 10)
            if b'"trade_id"' in frame:
                last = json.loads(frame)["seq"]
            else:
                junk.append(frame)
        proto = KalshiProtocol(["trade"])
        for frame in junk:
            proto.receive(frame)
        assert proto.stats.malformed == 2
        sim.resume()
        while True:
            message = await recv(ws)
            if message.get("seq", 0) > last + 1:
                break
            last = message["seq"]
        assert message["seq"] == last + 6


async def test_drop_connections_aborts_the_socket(sim: KalshiSimulator) -> None:
    async with connect(sim.ws_url) as ws:
        await send(ws, id=1, cmd="subscribe", params=TRADES)
        await next_of(ws, "subscribed")
        sim.drop_connections()
        with pytest.raises(Exception) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert "ConnectionClosed" in type(closed.value).__name__
    assert sim.subscribed_markets() == set() and sim.stats()["connections"] == 0


async def test_identical_tickers_repeat_the_payload_byte_for_byte_under_new_seqs(
    sim: KalshiSimulator,
) -> None:
    async with connect(sim.ws_url) as ws:
        await send(
            ws, id=1, cmd="subscribe", params={"channels": ["ticker"], "market_ticker": "BTCUSD"}
        )
        await next_of(ws, "subscribed")
        await next_of(ws, "ticker")
        sim.identical_tickers(True)
        frames = [await asyncio.wait_for(ws.recv(decode=False), 10) for _ in range(40)]
        sim.identical_tickers(False)
    bodies = [json.loads(f)["msg"] for f in frames]
    seqs = [json.loads(f)["seq"] for f in frames]
    assert seqs == list(range(seqs[0], seqs[0] + 40))
    # a few may have been generated before the switch; after it, one payload repeats
    raw = [f[f.index(b'"msg":') :] for f in frames[-20:]]
    assert len(set(raw)) == 1 and all(body == bodies[-1] for body in bodies[-20:])


async def test_a_slow_consumer_is_dropped_while_a_reading_one_keeps_its_feed() -> None:
    simulator = KalshiSimulator(MARKETS, rate_per_market=2_000.0, tick=0.002)
    await simulator.start()
    try:
        simulator.slow_consumer(16_384)
        sock = socket.socket()  # a small receive window: the backlog reaches the server soon
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", simulator.port))
        async with (
            connect(simulator.ws_url, sock=sock, max_queue=1, close_timeout=0.5) as slow,
            connect(simulator.ws_url, max_queue=None) as fast,
        ):
            await send(slow, id=1, cmd="subscribe", params=TRADES)
            await send(fast, id=1, cmd="subscribe", params=TRADES)
            await eventually(lambda: simulator.stats()["slow_consumer_drops"] == 1, timeout=60)
            received = 0
            while received < 100:  # the reader is still served after the drop
                await asyncio.wait_for(fast.recv(), 10)
                received += 1
            assert simulator.stats()["slow_consumer_drops"] == 1
        assert simulator.stats()["connections"] == 0
    finally:
        await simulator.stop()


async def test_a_rest_429_carries_retry_after_and_the_next_request_succeeds(
    sim: KalshiSimulator,
) -> None:
    sim.fail_rest(2, 429)
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            async with http.get(sim.rest_url + "/markets") as response:
                assert response.status == 429 and response.headers["Retry-After"] == "0"
                assert (await response.json())["error"]["code"] == "too_many_requests"
        async with http.get(sim.rest_url + "/markets") as response:
            assert response.status == 200


async def test_an_auth_key_change_refuses_the_old_key_and_accepts_the_new(tmp_path: Path) -> None:
    old_private, old_public = generate_key_pair(tmp_path / "old")
    new_private, new_public = generate_key_pair(tmp_path / "new")
    simulator = KalshiSimulator(MARKETS, public_key_pem=old_public.read_bytes())
    await simulator.start()
    try:
        base = f"http://127.0.0.1:{simulator.port}/_sim"
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/auth_key", data=b"not a key") as response:
                assert response.status == 400
            async with http.post(base + "/auth_key", data=new_public.read_bytes()) as response:
                assert response.status == 200
        old = KalshiSigner.from_files("k", old_private).headers("GET", WS_PATH)
        with pytest.raises(InvalidStatus) as refused:
            await connect(simulator.ws_url, additional_headers=old)
        assert refused.value.response.status_code == 401
        new = KalshiSigner.from_files("k", new_private).headers("GET", WS_PATH)
        async with connect(simulator.ws_url, additional_headers=new):
            pass
    finally:
        await simulator.stop()


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
        assert (await http.post(base + "/rest_fail?status=200")).status == 400
        assert (await http.post(base + "/identical_tickers?on=1")).status == 200
        assert sim.faults.identical_tickers
        assert (await http.post(base + "/slow_consumer?max_bytes=1000")).status == 200
        assert sim.faults.slow_consumer_bytes == 1000
        assert (await http.post(base + "/market_status?ticker=NOPE")).status == 404
        assert (await http.post(base + "/add_market?ticker=X-1-2&status=bogus")).status == 400
        stats = await (await http.get(base + "/stats")).json()
    assert stats["markets"] == 2 and stats["rate_per_market"] == 3
