"""A Kalshi exchange on loopback: WebSocket v2 and the REST market list, with faults.

Used by tests, benchmarks and local mode. One aiohttp server answers both
`ws://{host}:{port}/trade-api/ws/v2` and `http://{host}:{port}/trade-api/v2/...`.

Generation is paced on a timer: every `tick` seconds the messages that are due at
`rate_per_market` per subscribed market are produced, round-robin over the subscribed
markets (so the work is proportional to messages, not to markets). Each market event is
built and serialised ONCE and fanned out to every subscription on that market, spliced
into an envelope carrying that subscription's own `sid`/`seq`: two connector replicas see
byte-identical `msg` objects (a trade's `trade_id` is what deduplicates it across them).
Markets nobody subscribes to generate nothing.

Faults, as methods and over HTTP (`POST /_sim/...`) for a simulator in another process:
drop every connection, skip sequence numbers, send malformed frames, repeat `ticker` payloads
byte for byte (`identical_tickers`, method only), refuse auth, make the
next REST requests fail with a status (429/5xx), change the rate, pause/resume.

Sends await the socket, so a slow client slows generation (back-pressure) rather than
growing a buffer here; every per-market structure is bounded by the number of markets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ssmd_infra.core.errors import SsmdError

from .auth import load_public_key, verify_headers
from .protocol import MAX_TICKERS_PER_SUBSCRIPTION, TRADE_ID_PREFIX

log = logging.getLogger(__name__)

WS_PATH = "/trade-api/ws/v2"
REST_PREFIX = "/trade-api/v2"
CHANNELS = ("trade", "ticker")  # channels that generate data
ACCEPTED_CHANNELS = frozenset({*CHANNELS, "orderbook_delta", "market_lifecycle_v2", "fill"})
MAX_PAGE = 1000
MAX_SKEW_S = 60.0
# Catch-up after a stalled loop is capped so a pause never turns into a burst.
MAX_CATCH_UP_S = 0.1
JUNK_FRAMES = (
    b"{not json",
    b'{"type":"trade","sid":1}',
    b'{"type":"trade","msg":{"count":1}}',
    b"[]",
    b'{"type":"ticker","msg":"oops"}',
)

_encode = msgspec.json.encode


class _Command(msgspec.Struct):
    cmd: str
    id: int | None = None
    params: dict[str, Any] = {}


_decode_command = msgspec.json.Decoder(_Command).decode


@dataclass(slots=True)
class Market:
    """One simulated market and its moving state."""

    ticker: str
    event_ticker: str
    series_ticker: str
    category: str
    status: str = "active"
    price: int = 50
    volume: int = 0
    open_interest: int = 0
    market_id: str = ""
    last_ticker: bytes = b""  # the last `ticker` payload (for the repeat fault)

    def __post_init__(self) -> None:
        self.market_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kalshi-sim:{self.ticker}"))


@dataclass(eq=False, slots=True)
class _Sub:
    conn: _Conn
    sid: int
    channel: str
    tickers: set[str]
    seq: int = 0


@dataclass(eq=False, slots=True)
class _Conn:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    subs: dict[int, _Sub] = field(default_factory=dict)
    next_sid: int = 1
    closed: bool = False


def _dollars(cents: int) -> str:
    return f"{cents / 100:.4f}"


def event_of(ticker: str) -> str:
    """Kalshi's convention: the event is the ticker without its last `-` part."""
    parts = ticker.split("-")
    return "-".join(parts[:-1]) if len(parts) >= 3 else ticker


def series_of(ticker: str) -> str:
    return ticker.split("-", 1)[0]


class KalshiSimulator:
    """The simulated exchange; `await start()`, use `ws_url`/`rest_url`, `await stop()`."""

    def __init__(
        self,
        markets: Mapping[str, Mapping[str, str]],
        *,
        rate_per_market: float = 10.0,
        public_key_pem: bytes | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        synthetic_markets: int = 0,
        record: bool = False,
        record_limit: int = 1_000_000,
        tick: float = 0.005,
    ) -> None:
        if rate_per_market < 0:
            raise SsmdError(f"simulator rate must be >= 0 msg/s per market, got {rate_per_market}")
        if synthetic_markets < 0:
            raise SsmdError(f"synthetic market count must be >= 0, got {synthetic_markets}")
        self._public_key = load_public_key(public_key_pem) if public_key_pem else None
        self.host = host
        self.port = port
        self.rate_per_market = float(rate_per_market)
        self.tick = tick
        self.record = record
        self.record_limit = record_limit
        self._rng = random.Random(seed)
        self.markets: dict[str, Market] = {}
        for ticker, attrs in markets.items():
            self.add_market(ticker, attrs)
        for i in range(synthetic_markets):
            series = f"KXSYN{i // 100:03d}"
            event = f"{series}-25DEC31"
            self.add_market(
                f"{event}-B{i % 100}.5",
                {
                    "category": ("crypto", "economics", "climate", "sports")[i % 4],
                    "series": series,
                    "event": event,
                },
            )
        self.sent: Counter[tuple[str, str]] = Counter()
        self.sent_ids: set[str] = set()  # the `Nats-Msg-Id` of each trade sent (`record`)
        self.frames_out = 0
        self.auth_failures = 0
        self.rest_requests = 0
        self._conns: set[_Conn] = set()
        self._index: dict[str, dict[str, set[_Sub]]] = {}
        self._active: list[str] = []
        self._active_dirty = False
        self._rr = 0
        self._credit = 0.0
        self._paused = False
        self._refuse_auth = False
        self._rest_failures: list[int] = []
        self._identical_tickers = False
        self._runner: web.AppRunner | None = None
        self._generator: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}{REST_PREFIX}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self._ws_handler)
        app.router.add_get(REST_PREFIX + "/markets", self._rest_markets)
        app.router.add_get(REST_PREFIX + "/markets/{ticker}", self._rest_market)
        app.router.add_get(REST_PREFIX + "/events/{event_ticker}", self._rest_event)
        app.router.add_get(REST_PREFIX + "/series/{series_ticker}", self._rest_series)
        for name, handler in {
            "drop": self._ctl_drop,
            "skip": self._ctl_skip,
            "junk": self._ctl_junk,
            "refuse_auth": self._ctl_refuse_auth,
            "rate": self._ctl_rate,
            "pause": self._ctl_pause,
            "resume": self._ctl_resume,
            "rest_fail": self._ctl_rest_fail,
            "market_status": self._ctl_market_status,
            "add_market": self._ctl_add_market,
        }.items():
            app.router.add_post(f"/_sim/{name}", handler)
        app.router.add_get("/_sim/stats", self._ctl_stats)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        self._generator = asyncio.create_task(self._generate(), name="kalshi-sim-generator")

    async def stop(self) -> None:
        if self._generator is not None:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
            self._generator = None
        for conn in list(self._conns):
            self._forget(conn)
            with contextlib.suppress(Exception):
                await conn.ws.close()
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- markets ----------------------------------------------------------------------------

    def add_market(self, ticker: str, attrs: Mapping[str, object] | None = None) -> None:
        """A market (or a change of its attributes); `event`, `series`, `category` are used."""
        attrs = attrs or {}
        event = str(attrs.get("event") or event_of(ticker))
        self.markets[ticker] = Market(
            ticker=ticker,
            event_ticker=event,
            series_ticker=str(attrs.get("series") or series_of(event)),
            category=str(attrs.get("category") or "Unknown"),
            status=str(attrs.get("status") or "active"),
            price=self._rng.randint(5, 95),
        )

    def set_market_status(self, ticker: str, status: str) -> None:
        """E.g. `closed`: the market leaves the `status=open` listing and stops trading."""
        if ticker not in self.markets:
            raise SsmdError(f"unknown market {ticker!r}")
        self.markets[ticker].status = status
        self._active_dirty = True

    # -- faults and controls ----------------------------------------------------------------

    def drop_connections(self) -> None:
        """Abort every WebSocket connection (no close frame), like a network failure."""
        for conn in list(self._conns):
            self._forget(conn)
            if isinstance(conn.transport, asyncio.Transport):
                conn.transport.abort()

    def skip_sequence(self, n: int = 1) -> None:
        """The next message on every subscription jumps `n` sequence numbers."""
        for conn in self._conns:
            for sub in conn.subs.values():
                sub.seq += n

    def send_malformed(self, n: int = 1) -> None:
        """Send `n` malformed frames on every connection."""
        frames = [JUNK_FRAMES[i % len(JUNK_FRAMES)] for i in range(n)]
        for conn in list(self._conns):
            self._spawn(self._send_all(conn, frames))

    def identical_tickers(self, on: bool = True) -> None:
        """While on, every `ticker` message repeats its market's previous `ticker` payload
        byte for byte (each under its own `seq`): Kalshi does this when a price moves A→B→A
        within one second (`ts` has whole seconds). Each is a distinct message."""
        self._identical_tickers = on

    def refuse_auth(self, on: bool = True) -> None:
        """While on, every WebSocket upgrade and REST request is answered 401."""
        self._refuse_auth = on

    def fail_rest(self, n: int = 1, status: int = 429) -> None:
        """The next `n` REST requests are answered with `status` (429 carries Retry-After)."""
        self._rest_failures.extend([status] * n)

    def set_rate(self, per_market: float) -> None:
        if per_market < 0:
            raise SsmdError(f"rate must be >= 0, got {per_market}")
        self.rate_per_market = float(per_market)

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def subscribed_markets(self) -> set[str]:
        return {t for t, by_channel in self._index.items() if any(by_channel.values())}

    def stats(self) -> dict[str, Any]:
        by_type: Counter[str] = Counter()
        by_market: Counter[str] = Counter()
        for (msg_type, ticker), count in self.sent.items():
            by_type[msg_type] += count
            by_market[ticker] += count
        return {
            "connections": len(self._conns),
            "subscriptions": sum(len(c.subs) for c in self._conns),
            "subscribed_markets": len(self.subscribed_markets()),
            "markets": len(self.markets),
            "rate_per_market": self.rate_per_market,
            "paused": self._paused,
            "generated": sum(by_type.values()),
            "frames_out": self.frames_out,
            "sent_by_type": dict(by_type),
            "sent_by_market": dict(by_market),
            "auth_failures": self.auth_failures,
            "rest_requests": self.rest_requests,
        }

    # -- WebSocket --------------------------------------------------------------------------

    def _authorized(self, request: web.Request, path: str) -> bool:
        if self._refuse_auth:
            return False
        if self._public_key is None:
            return True
        return verify_headers(self._public_key, request.headers, request.method, path, MAX_SKEW_S)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request, WS_PATH):
            self.auth_failures += 1
            return web.json_response(
                {"error": {"code": "authentication_error", "message": "invalid signature"}},
                status=401,
            )
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        conn = _Conn(ws, request.transport)
        self._conns.add(conn)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_command(conn, message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._reply_error(conn, None, 1, "Unable to process message")
        finally:
            self._forget(conn)
        return ws

    def _forget(self, conn: _Conn) -> None:
        conn.closed = True
        self._conns.discard(conn)
        for sub in conn.subs.values():
            self._unindex(sub, sub.tickers)
        conn.subs.clear()

    def _index_sub(self, sub: _Sub, tickers: set[str]) -> None:
        for ticker in tickers:
            self._index.setdefault(ticker, {}).setdefault(sub.channel, set()).add(sub)
        self._active_dirty = True

    def _unindex(self, sub: _Sub, tickers: set[str]) -> None:
        for ticker in tickers:
            by_channel = self._index.get(ticker)
            if by_channel is None:
                continue
            subs = by_channel.get(sub.channel)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del by_channel[sub.channel]
            if not by_channel:
                del self._index[ticker]
        self._active_dirty = True

    async def _send(self, conn: _Conn, frame: bytes) -> None:
        if conn.closed:
            return
        try:
            await conn.ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            self._forget(conn)

    async def _send_all(self, conn: _Conn, frames: list[bytes]) -> None:
        for frame in frames:
            await self._send(conn, frame)

    async def _reply(self, conn: _Conn, obj: dict[str, Any]) -> None:
        await self._send(conn, _encode(obj))

    async def _reply_error(self, conn: _Conn, cmd_id: int | None, code: int, text: str) -> None:
        reply: dict[str, Any] = {"type": "error", "msg": {"code": code, "msg": text}}
        if cmd_id is not None:
            reply["id"] = cmd_id
        await self._reply(conn, reply)

    async def _on_command(self, conn: _Conn, data: str) -> None:
        try:
            cmd = _decode_command(data)
        except msgspec.DecodeError:
            await self._reply_error(conn, None, 1, "Unable to process message")
            return
        params = cmd.params
        if cmd.cmd == "subscribe":
            await self._subscribe(conn, cmd.id, params)
        elif cmd.cmd == "update_subscription":
            await self._update(conn, cmd.id, params)
        elif cmd.cmd == "unsubscribe":
            sids = params.get("sids")
            if not isinstance(sids, list) or not all(isinstance(s, int) for s in sids):
                await self._reply_error(conn, cmd.id, 2, "Params required")
                return
            for sid in sids:
                sub = conn.subs.pop(sid, None)
                if sub is None:
                    await self._reply_error(conn, cmd.id, 13, f"Subscription {sid} not found")
                    continue
                self._unindex(sub, sub.tickers)
                await self._reply(conn, {"id": cmd.id, "sid": sid, "type": "unsubscribed"})
        else:
            await self._reply_error(conn, cmd.id, 5, f"Unknown command {cmd.cmd!r}")

    async def _subscribe(self, conn: _Conn, cmd_id: int | None, params: dict[str, Any]) -> None:
        channels = params.get("channels")
        tickers = params.get("market_tickers")
        if not isinstance(channels, list) or not channels or not isinstance(tickers, list):
            await self._reply_error(conn, cmd_id, 2, "Params required: channels, market_tickers")
            return
        unknown = [c for c in channels if c not in ACCEPTED_CHANNELS]
        if unknown:
            await self._reply_error(conn, cmd_id, 7, f"Unknown channel name {unknown[0]!r}")
            return
        if len(tickers) > MAX_TICKERS_PER_SUBSCRIPTION:
            await self._reply_error(conn, cmd_id, 9, "Too many market tickers")
            return
        for channel in channels:
            sub = _Sub(conn, conn.next_sid, channel, {str(t) for t in tickers})
            conn.next_sid += 1
            conn.subs[sub.sid] = sub
            self._index_sub(sub, sub.tickers)
            await self._reply(
                conn,
                {"id": cmd_id, "type": "subscribed", "msg": {"channel": channel, "sid": sub.sid}},
            )

    async def _update(self, conn: _Conn, cmd_id: int | None, params: dict[str, Any]) -> None:
        sids = params.get("sids", [params["sid"]] if "sid" in params else None)
        tickers = params.get("market_tickers")
        action = params.get("action")
        if (
            not isinstance(sids, list)
            or len(sids) != 1
            or not isinstance(tickers, list)
            or action not in ("add_markets", "delete_markets")
        ):
            await self._reply_error(
                conn, cmd_id, 2, "Params required: one sid, market_tickers, action"
            )
            return
        sub = conn.subs.get(sids[0])
        if sub is None:
            await self._reply_error(conn, cmd_id, 13, f"Subscription {sids[0]} not found")
            return
        change = {str(t) for t in tickers}
        if action == "add_markets":
            if len(sub.tickers | change) > MAX_TICKERS_PER_SUBSCRIPTION:
                await self._reply_error(conn, cmd_id, 9, "Too many market tickers")
                return
            sub.tickers |= change
            self._index_sub(sub, change)
        else:
            sub.tickers -= change
            self._unindex(sub, change)
        await self._reply(
            conn,
            {
                "id": cmd_id,
                "sid": sub.sid,
                "type": "ok",
                "msg": {"market_tickers": sorted(sub.tickers)},
            },
        )

    # -- generation -------------------------------------------------------------------------

    def _active_markets(self) -> list[str]:
        if self._active_dirty:
            self._active = sorted(
                t
                for t, by_channel in self._index.items()
                if by_channel and (m := self.markets.get(t)) is not None and m.status == "active"
            )
            self._active_dirty = False
        return self._active

    async def _generate(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            elapsed, last = min(now - last, MAX_CATCH_UP_S), now
            active = self._active_markets()
            if self._paused or self.rate_per_market <= 0 or not active:
                self._credit = 0.0
                continue
            self._credit += elapsed * self.rate_per_market * len(active)
            due = int(self._credit)
            self._credit -= due
            for _ in range(due):
                active = self._active_markets()
                if not active:
                    break
                ticker = active[self._rr % len(active)]
                self._rr += 1
                await self._emit(ticker)

    def _trade(self, market: Market, ts: int) -> tuple[bytes, str]:
        rng = self._rng
        market.price = min(99, max(1, market.price + rng.choice((-2, -1, 0, 0, 1, 2))))
        count = rng.randint(1, 500)
        market.volume += count
        trade_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        yes = market.price
        body = {
            "trade_id": trade_id,
            "market_ticker": market.ticker,
            "yes_price": yes,
            "no_price": 100 - yes,
            "yes_price_dollars": _dollars(yes),
            "no_price_dollars": _dollars(100 - yes),
            "count": count,
            "count_fp": f"{count}.00",
            "taker_side": rng.choice(("yes", "no")),
            "ts": ts,
        }
        return _encode(body), trade_id

    def _ticker(self, market: Market, ts: int) -> bytes:
        rng = self._rng
        market.price = min(99, max(1, market.price + rng.choice((-1, 0, 0, 1))))
        market.open_interest = max(0, market.open_interest + rng.randint(-20, 40))
        market.volume += rng.randint(1, 50)  # volume only grows: no two updates are identical
        bid = max(1, market.price - rng.randint(0, 2))
        ask = min(99, market.price + rng.randint(1, 2))
        body = {
            "market_ticker": market.ticker,
            "market_id": market.market_id,
            "price": market.price,
            "yes_bid": bid,
            "yes_ask": ask,
            "price_dollars": _dollars(market.price),
            "yes_bid_dollars": _dollars(bid),
            "yes_ask_dollars": _dollars(ask),
            "volume": market.volume,
            "volume_fp": f"{market.volume}.00",
            "open_interest": market.open_interest,
            "open_interest_fp": f"{market.open_interest}.00",
            "dollar_volume": market.volume * market.price // 100,
            "dollar_open_interest": market.open_interest * market.price // 100,
            "ts": ts,
        }
        return _encode(body)

    async def _emit(self, ticker: str) -> None:
        by_channel = self._index.get(ticker)
        market = self.markets.get(ticker)
        if not by_channel or market is None:
            return
        channels = [c for c in CHANNELS if by_channel.get(c)]
        if not channels:
            return
        msg_type = channels[0] if len(channels) == 1 else self._rng.choice(channels)
        ts = int(time.time())
        trade_id: str | None = None
        if msg_type == "trade":
            body, trade_id = self._trade(market, ts)
        elif self._identical_tickers and market.last_ticker:
            body = market.last_ticker
        else:
            body = market.last_ticker = self._ticker(market, ts)
        self.sent[(msg_type, ticker)] += 1
        if self.record and trade_id is not None and len(self.sent_ids) < self.record_limit:
            self.sent_ids.add(TRADE_ID_PREFIX + trade_id)
        head = b'{"type":"' + msg_type.encode() + b'","sid":'
        tail = b',"msg":' + body + b"}"
        for sub in tuple(by_channel[msg_type]):
            sub.seq += 1
            self.frames_out += 1
            await self._send(sub.conn, head + b'%d,"seq":%d' % (sub.sid, sub.seq) + tail)

    # -- REST -------------------------------------------------------------------------------

    def _rest_gate(self, request: web.Request) -> web.Response | None:
        """Faults and auth for REST. Market data is public on Kalshi: a request is only
        checked when it carries a signature."""
        self.rest_requests += 1
        if self._rest_failures:
            status = self._rest_failures.pop(0)
            headers = {"Retry-After": "0"} if status == 429 else None
            return web.json_response(
                {"error": {"code": "simulated", "message": f"HTTP {status}"}},
                status=status,
                headers=headers,
            )
        signed = any(k.lower() == "kalshi-access-signature" for k in request.headers)
        if self._refuse_auth or (signed and not self._authorized(request, request.path)):
            self.auth_failures += 1
            return web.json_response(
                {"error": {"code": "authentication_error", "message": "invalid signature"}},
                status=401,
            )
        return None

    def _market_json(self, m: Market) -> dict[str, Any]:
        yes_bid, yes_ask = max(1, m.price - 1), min(99, m.price + 1)
        open_time = "2025-01-01T00:00:00Z"
        close_time = "2026-12-31T23:59:59Z"
        return {
            "ticker": m.ticker,
            "event_ticker": m.event_ticker,
            "market_type": "binary",
            "title": f"Will {m.ticker} resolve yes?",
            "subtitle": "",
            "yes_sub_title": "Yes",
            "no_sub_title": "No",
            "open_time": open_time,
            "close_time": close_time,
            "expected_expiration_time": close_time,
            "expiration_time": close_time,
            "latest_expiration_time": close_time,
            "settlement_timer_seconds": 300,
            "status": m.status,
            "response_price_units": "usd_cent",
            "notional_value": 100,
            "notional_value_dollars": "1.0000",
            "tick_size": 1,
            "yes_bid": yes_bid,
            "yes_bid_dollars": _dollars(yes_bid),
            "yes_ask": yes_ask,
            "yes_ask_dollars": _dollars(yes_ask),
            "no_bid": 100 - yes_ask,
            "no_bid_dollars": _dollars(100 - yes_ask),
            "no_ask": 100 - yes_bid,
            "no_ask_dollars": _dollars(100 - yes_bid),
            "last_price": m.price,
            "last_price_dollars": _dollars(m.price),
            "previous_yes_bid": yes_bid,
            "previous_yes_bid_dollars": _dollars(yes_bid),
            "previous_yes_ask": yes_ask,
            "previous_yes_ask_dollars": _dollars(yes_ask),
            "previous_price": m.price,
            "previous_price_dollars": _dollars(m.price),
            "volume": m.volume,
            "volume_fp": f"{m.volume}.00",
            "volume_24h": m.volume,
            "volume_24h_fp": f"{m.volume}.00",
            "liquidity": 100_000,
            "liquidity_dollars": "1000.0000",
            "open_interest": m.open_interest,
            "open_interest_fp": f"{m.open_interest}.00",
            "result": "",
            "can_close_early": True,
            "expiration_value": "",
            "category": m.category,
            "risk_limit_cents": 0,
            "rules_primary": f"Resolves yes if {m.ticker} settles yes.",
            "rules_secondary": "",
            "strike_type": "custom",
            "custom_strike": {},
            "price_level_structure": "linear_cent",
            "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}],
        }

    @staticmethod
    def _open_filter(status: str | None) -> Callable[[Market], bool]:
        if status in (None, ""):
            return lambda m: True
        wanted = {"open": {"active", "open"}, "unopened": {"initialized", "unopened"}}.get(
            status, {status}
        )
        return lambda m: m.status in wanted

    async def _rest_markets(self, request: web.Request) -> web.Response:
        if (refused := self._rest_gate(request)) is not None:
            return refused
        query = request.query
        try:
            limit = int(query.get("limit", "100"))
            offset = (
                int(base64.urlsafe_b64decode(query["cursor"]).decode())
                if query.get("cursor")
                else 0
            )
        except (ValueError, UnicodeDecodeError):
            return web.json_response(
                {"error": {"code": "invalid_parameters", "message": "bad limit or cursor"}},
                status=400,
            )
        if not 1 <= limit <= MAX_PAGE:
            return web.json_response(
                {
                    "error": {
                        "code": "invalid_parameters",
                        "message": f"limit must be 1..{MAX_PAGE}",
                    }
                },
                status=400,
            )
        keep = self._open_filter(query.get("status"))
        event = query.get("event_ticker")
        series = query.get("series_ticker")
        selected = [
            m
            for _, m in sorted(self.markets.items())
            if keep(m)
            and (event is None or m.event_ticker == event)
            and (series is None or m.series_ticker == series)
        ]
        page = selected[offset : offset + limit]
        more = offset + limit < len(selected)
        cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else ""
        return web.json_response(
            {"markets": [self._market_json(m) for m in page], "cursor": cursor}
        )

    async def _rest_market(self, request: web.Request) -> web.Response:
        if (refused := self._rest_gate(request)) is not None:
            return refused
        market = self.markets.get(request.match_info["ticker"])
        if market is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "not found"}}, status=404
            )
        return web.json_response({"market": self._market_json(market)})

    async def _rest_event(self, request: web.Request) -> web.Response:
        if (refused := self._rest_gate(request)) is not None:
            return refused
        event_ticker = request.match_info["event_ticker"]
        markets = [m for _, m in sorted(self.markets.items()) if m.event_ticker == event_ticker]
        if not markets:
            return web.json_response(
                {"error": {"code": "not_found", "message": "not found"}}, status=404
            )
        first = markets[0]
        event = {
            "event_ticker": event_ticker,
            "series_ticker": first.series_ticker,
            "title": f"{event_ticker}",
            "sub_title": "",
            "collateral_return_type": "",
            "mutually_exclusive": False,
            "category": first.category,
            "strike_period": "",
            "available_on_brokers": False,
            "product_metadata": {},
        }
        return web.json_response(
            {"event": event, "markets": [self._market_json(m) for m in markets]}
        )

    async def _rest_series(self, request: web.Request) -> web.Response:
        if (refused := self._rest_gate(request)) is not None:
            return refused
        series_ticker = request.match_info["series_ticker"]
        market = next((m for m in self.markets.values() if m.series_ticker == series_ticker), None)
        if market is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "not found"}}, status=404
            )
        return web.json_response(
            {
                "series": {
                    "ticker": series_ticker,
                    "frequency": "daily",
                    "title": series_ticker,
                    "category": market.category,
                    "tags": [],
                    "settlement_sources": [],
                    "contract_url": "",
                    "contract_terms_url": "",
                    "fee_type": "quadratic",
                    "fee_multiplier": 1,
                    "additional_prohibitions": [],
                    "product_metadata": {},
                }
            }
        )

    # -- control over HTTP ------------------------------------------------------------------

    @staticmethod
    def _number(
        request: web.Request,
        name: str,
        default: str,
        kind: type[float] | type[int],
    ) -> float:
        raw = request.query.get(name, default)
        try:
            value = kind(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=f"{name} must be a number, got {raw!r}\n") from None
        if value < 0:
            raise web.HTTPBadRequest(text=f"{name} must be >= 0, got {raw!r}\n")
        return value

    async def _ctl_drop(self, _request: web.Request) -> web.Response:
        self.drop_connections()
        return web.json_response({"ok": True})

    async def _ctl_skip(self, request: web.Request) -> web.Response:
        self.skip_sequence(int(self._number(request, "n", "1", int)))
        return web.json_response({"ok": True})

    async def _ctl_junk(self, request: web.Request) -> web.Response:
        self.send_malformed(int(self._number(request, "n", "1", int)))
        return web.json_response({"ok": True})

    async def _ctl_refuse_auth(self, request: web.Request) -> web.Response:
        self.refuse_auth(request.query.get("on", "1") not in ("0", "false", "off"))
        return web.json_response({"ok": True})

    async def _ctl_rate(self, request: web.Request) -> web.Response:
        self.set_rate(self._number(request, "per_market", "10", float))
        return web.json_response({"ok": True})

    async def _ctl_pause(self, _request: web.Request) -> web.Response:
        self.pause()
        return web.json_response({"ok": True})

    async def _ctl_resume(self, _request: web.Request) -> web.Response:
        self.resume()
        return web.json_response({"ok": True})

    async def _ctl_rest_fail(self, request: web.Request) -> web.Response:
        status = int(self._number(request, "status", "429", int))
        if not 400 <= status <= 599:
            raise web.HTTPBadRequest(text=f"status must be 400..599, got {status}\n")
        self.fail_rest(int(self._number(request, "n", "1", int)), status)
        return web.json_response({"ok": True})

    async def _ctl_market_status(self, request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        try:
            self.set_market_status(ticker, request.query.get("status", "closed"))
        except SsmdError as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None
        return web.json_response({"ok": True})

    async def _ctl_add_market(self, request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        if not ticker:
            raise web.HTTPBadRequest(text="ticker is required\n")
        attrs = {k: v for k, v in request.query.items() if k != "ticker"}
        self.add_market(ticker, attrs)
        return web.json_response({"ok": True})

    async def _ctl_stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats())
