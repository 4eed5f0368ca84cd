"""The Kalshi WebSocket client on its raw-protocol transport, against the simulator (and a
few tiny servers for what the simulator cannot do): signed upgrade, refused credentials,
subscriptions of at most N markets, batched hand-over, back-pressure that stops reading the
socket, reconnection with resubscription, sequence gaps, staleness, fragmented messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from runtime.kalshi.auth import KalshiSigner, generate_key_pair
from runtime.kalshi.client import KalshiAuthError, KalshiWsClient
from runtime.kalshi.protocol import Frame
from runtime.kalshi.simulator import KalshiSimulator
from ssmd_infra.core.errors import ConfigError

MARKETS = [f"KXTEST-25DEC31-B{i}.5" for i in range(5)]
FAST: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.2}


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.01)


class Sink:
    """Collects frames; can be made 'full' to exercise back-pressure."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.batches = 0
        self.capacity: int | None = None  # None: take everything
        self.ready = asyncio.Event()
        self.ready.set()

    def on_frames(self, frames: list[Frame]) -> int:
        self.batches += 1
        take = len(frames)
        if self.capacity is not None:
            take = max(0, min(take, self.capacity - len(self.frames)))
        self.frames.extend(frames[:take])
        if take < len(frames):
            self.ready.clear()
        return take

    async def wait_ready(self) -> None:
        await self.ready.wait()

    def release(self) -> None:
        self.capacity = None
        self.ready.set()


@pytest.fixture
async def sim() -> AsyncIterator[KalshiSimulator]:
    simulator = KalshiSimulator({m: {} for m in MARKETS}, rate_per_market=100.0, seed=3)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def running(client: KalshiWsClient) -> asyncio.Task[None]:
    await client.set_markets(MARKETS)
    return asyncio.create_task(client.run())


async def finish(client: KalshiWsClient, task: asyncio.Task[None]) -> None:
    client.stop()
    await asyncio.wait_for(task, 10)


def client_for(url: str, sink: Sink, **options: Any) -> KalshiWsClient:
    return KalshiWsClient(
        url,
        None,
        ["trade", "ticker"],
        sink.on_frames,
        wait_ready=sink.wait_ready,
        **{**FAST, **options},
    )


async def test_signed_upgrade_subscribes_and_hands_over_frames_in_batches(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    simulator = KalshiSimulator(
        {m: {} for m in MARKETS}, rate_per_market=200.0, public_key_pem=public.read_bytes()
    )
    await simulator.start()
    sink = Sink()
    client = KalshiWsClient(
        simulator.ws_url,
        KalshiSigner.from_files("key-1", private),
        ["trade", "ticker"],
        sink.on_frames,
        wait_ready=sink.wait_ready,
        read_interval=0.005,
        **FAST,
    )
    try:
        task = await running(client)
        await until(lambda: client.subscribed == frozenset(MARKETS), "subscribed")
        await until(lambda: len(sink.frames) >= 500, "frames")
        assert client.stats.connected and simulator.auth_failures == 0
        assert simulator.subscribed_markets() == set(MARKETS)
        assert sink.batches < len(sink.frames) / 2, "a paced read hands over many frames at once"
        assert {f.msg_type for f in sink.frames} == {"trade", "ticker"}
        assert {f.ticker for f in sink.frames} == set(MARKETS)
        assert client.stats.gaps == 0 and client.stats.malformed == 0
        await finish(client, task)
        assert not client.stats.connected
    finally:
        await simulator.stop()


async def test_refused_credentials_end_run_with_kalshi_auth_error(tmp_path: Path) -> None:
    _, trusted = generate_key_pair(tmp_path / "trusted")
    wrong, _ = generate_key_pair(tmp_path / "wrong")
    simulator = KalshiSimulator({m: {} for m in MARKETS}, public_key_pem=trusted.read_bytes())
    await simulator.start()
    sink = Sink()
    client = KalshiWsClient(
        simulator.ws_url,
        KalshiSigner.from_files("key-9", wrong),
        ["trade"],
        sink.on_frames,
        **FAST,
    )
    try:
        with pytest.raises(KalshiAuthError, match=r"key-9 .*HTTP 401"):
            await asyncio.wait_for(client.run(), 10)
    finally:
        await simulator.stop()


async def test_subscriptions_hold_at_most_the_ticker_limit(sim: KalshiSimulator) -> None:
    sink = Sink()
    client = client_for(sim.ws_url, sink, max_tickers_per_subscription=2)
    task = await running(client)
    await until(lambda: client.subscribed == frozenset(MARKETS), "subscribed")
    groups = client.protocol.groups()
    assert len(groups) == 3 and all(len(g) <= 2 for g in groups)
    assert sim.subscribed_markets() == set(MARKETS)
    await finish(client, task)


async def test_a_dropped_connection_reconnects_resubscribes_and_counts_the_gap(
    sim: KalshiSimulator,
) -> None:
    sink = Sink()
    client = client_for(sim.ws_url, sink)
    task = await running(client)
    await until(lambda: len(sink.frames) >= 50, "traffic")
    sim.skip_sequence(3)
    await until(lambda: client.stats.gaps > 0, "gap counted")
    sim.drop_connections()
    await until(lambda: client.stats.reconnects == 1, "reconnected")
    await until(lambda: client.subscribed == frozenset(MARKETS), "resubscribed")
    before = len(sink.frames)
    await until(lambda: len(sink.frames) >= before + 50, "traffic after the reconnect")
    assert sim.subscribed_markets() == set(MARKETS)
    await finish(client, task)


async def test_a_full_downstream_stops_reading_until_ready_and_loses_nothing(
    sim: KalshiSimulator,
) -> None:
    sink = Sink()
    sink.capacity = 30
    client = client_for(sim.ws_url, sink, ping_interval=0.1, stale_after=0.3)
    task = await running(client)
    await until(lambda: len(sink.frames) == 30, "downstream full")
    await until(lambda: client.held > 0, "frames held")
    held, batches = client.held, sink.batches
    await asyncio.sleep(0.6)  # longer than stale_after: a paused reader is not stale
    assert len(sink.frames) == 30
    assert client.held == held, "reading stopped: nothing more is taken off the socket"
    assert sink.batches <= batches + 1
    assert client.stats.paused >= 1 and client.stats.stale == 0
    assert client.stats.reconnects == 0
    sink.release()
    await until(lambda: client.held == 0 and len(sink.frames) >= 30 + held + 50, "resumed")
    # in order and complete: each subscription's sequence has no hole across the pause
    assert client.stats.gaps == 0
    await finish(client, task)


async def test_stop_while_frames_are_held_discards_and_counts_them(sim: KalshiSimulator) -> None:
    sink = Sink()
    sink.capacity = 10
    client = client_for(sim.ws_url, sink)
    task = await running(client)
    await until(lambda: client.held > 0, "frames held")
    held = client.held
    await finish(client, task)
    assert client.stats.discarded == held and client.held == 0


async def test_a_silent_connection_is_failed_as_stale_and_replaced() -> None:
    """A server that accepts, acknowledges, then goes silent (its pongs suppressed)."""
    connections: list[ServerConnection] = []
    silent = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        connections.append(ws)
        async for message in ws:
            cmd = json.loads(message)
            if cmd.get("cmd") == "subscribe":
                for sid, channel in enumerate(cmd["params"]["channels"], 1):
                    reply = {"type": "subscribed", "id": cmd["id"], "sid": sid}
                    await ws.send(json.dumps({**reply, "msg": {"channel": channel, "sid": sid}}))
                if len(connections) == 1:
                    silent.set()
                    ws.transport.pause_reading()  # pings are never read, so never answered

    async with serve(handler, "127.0.0.1", 0, ping_interval=None, close_timeout=0.5) as server:
        port = server.sockets[0].getsockname()[1]
        sink = Sink()
        client = client_for(f"ws://127.0.0.1:{port}/", sink, ping_interval=0.1, stale_after=0.4)
        task = await running(client)
        await asyncio.wait_for(silent.wait(), 10)
        await until(lambda: client.stats.stale == 1, "stale connection failed")
        await until(lambda: client.stats.reconnects == 1 and len(connections) == 2, "replaced")
        await until(lambda: client.subscribed == frozenset(MARKETS), "resubscribed")
        await finish(client, task)


async def test_fragmented_messages_are_reassembled() -> None:
    trade = {
        "type": "trade",
        "sid": 1,
        "seq": 1,
        "msg": {"trade_id": "t-1", "market_ticker": MARKETS[0], "yes_price": 50},
    }
    text = json.dumps(trade)

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            cmd = json.loads(message)
            if cmd.get("cmd") == "subscribe":
                reply = {"type": "subscribed", "id": cmd["id"], "sid": 1}
                await ws.send(json.dumps({**reply, "msg": {"channel": "trade", "sid": 1}}))
                await ws.send([text[:10], text[10:40], text[40:]])  # three fragments

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        sink = Sink()
        client = KalshiWsClient(f"ws://127.0.0.1:{port}/", None, ["trade"], sink.on_frames, **FAST)
        task = await running(client)
        await until(lambda: len(sink.frames) == 1, "the message")
        assert sink.frames[0].raw == text.encode() and sink.frames[0].msg_id == "trade:t-1"
        await finish(client, task)


async def test_an_unreachable_exchange_is_retried_with_backoff_until_stopped() -> None:
    from ssmd_infra.local.servers import free_port

    sink = Sink()
    client = client_for(f"ws://127.0.0.1:{free_port()}/", sink)
    task = asyncio.create_task(client.run())
    await until(lambda: client.stats.connect_failures >= 3, "retries")
    client.stop()
    await asyncio.wait_for(task, 2)
    assert client.stats.connects == 0


async def test_backoff_is_exponential_and_jittered_over_its_upper_half(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = Sink()
    client = client_for("ws://127.0.0.1:1/", sink, backoff_initial=1.0, backoff_max=8.0)
    delays: list[float] = []

    async def fake_wait_for(awaitable: Awaitable[Any], timeout: float) -> None:
        delays.append(timeout)
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise TimeoutError

    monkeypatch.setattr(asyncio, "wait_for", fake_wait_for)
    for attempt in range(6):
        await client._backoff(attempt)
    ceilings = [1, 2, 4, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))


def test_a_bad_url_is_a_configuration_error() -> None:
    sink = Sink()
    with pytest.raises(ConfigError, match="Kalshi WebSocket URL"):
        KalshiWsClient("http://example.com/ws", None, ["trade"], sink.on_frames)


async def test_the_transport_speaks_tls_for_wss_urls(tmp_path: Path) -> None:
    import ssl

    from tls_certs import make_tls_files
    from websockets.uri import parse_uri

    from runtime.kalshi.transport import open_connection

    tls = make_tls_files(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    client_ctx = ssl.create_default_context(cafile=str(tls.ca))

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async with serve(echo, "localhost", 0, ssl=server_ctx) as server:
        port = server.sockets[0].getsockname()[1]
        received: list[bytes] = []
        conn = await open_connection(
            parse_uri(f"wss://localhost:{port}/trade-api/ws/v2"),
            received.extend,
            headers={"KALSHI-ACCESS-KEY": "k"},
            ssl=client_ctx,
            read_interval=0.002,
        )
        assert conn.send_text(b'{"id":1}')
        await until(lambda: received == [b'{"id":1}'], "the echo over TLS")
        conn.close()
        await asyncio.wait_for(conn.closed, 5)


async def test_a_book_gap_brings_a_fresh_snapshot_and_the_books_rebuild_exactly(
    sim: KalshiSimulator,
) -> None:
    sink = Sink()
    client = KalshiWsClient(sim.ws_url, None, ["trade", "orderbook_delta"], sink.on_frames, **FAST)
    task = await running(client)
    await until(lambda: client.subscribed == frozenset(MARKETS), "subscribed")
    await until(lambda: sim.sent[("orderbook_delta", MARKETS[0])] >= 10, "book traffic")
    sim.skip_sequence(3)  # every subscription, the book's included, jumps
    await until(lambda: client.stats.resnapshots == 1, "book subscription renewed")
    await until(lambda: client.subscribed == frozenset(MARKETS), "renewal acknowledged")
    await until(lambda: sim.sent[("orderbook_snapshot", MARKETS[0])] == 2, "fresh snapshots")
    sim.pause()
    await until(lambda: len(sink.frames) == sim.stats()["frames_out"], "every frame handed over")
    books: dict[str, dict[str, dict[str, str]]] = {}
    book_sid: dict[str, int] = {}  # the subscription a market's book is rebuilt from
    for frame in sink.frames:
        message = json.loads(frame.raw)
        msg = message["msg"]
        ticker = msg["market_ticker"]
        if message["type"] == "orderbook_snapshot":
            book_sid[ticker] = message["sid"]
            books[ticker] = {s: dict(msg[f"{s}_dollars_fp"]) for s in ("yes", "no")}
        elif message["type"] == "orderbook_delta" and message["sid"] == book_sid.get(ticker):
            side = books[ticker][msg["side"]]
            count = float(side.get(msg["price_dollars"], "0")) + float(msg["delta_fp"])
            if count:
                side[msg["price_dollars"]] = f"{count:.2f}"
            else:
                side.pop(msg["price_dollars"], None)
    assert set(books) == set(MARKETS)
    for ticker, rebuilt in books.items():
        market = sim.markets[ticker]
        assert rebuilt["yes"] == {f"{p / 100:.4f}": f"{n}.00" for p, n in market.yes_book.items()}
        assert rebuilt["no"] == {f"{p / 100:.4f}": f"{n}.00" for p, n in market.no_book.items()}
    await finish(client, task)
