"""The simulator's WebSocket v2 server: commands, subscriptions, and paced generation.

Commands follow Kalshi's contract (`runtime/kalshi/contract.py` holds the codes):
`subscribe` (`channels`, and `market_ticker` or `market_tickers`; no tickers means every
market), `update_subscription` (one sid, `add_markets`/`delete_markets`), `unsubscribe`
(`sids`). A bad command gets an `error` frame with Kalshi's code and message and the
connection stays open: non-JSON or a command without an integer `id` → 1, no `params` → 2,
no `channels` → 3, no `sids` → 4, unknown `cmd` → 5, unknown sid → 7, unknown channel → 8,
a private channel on a connection that did not sign its upgrade → 9, a malformed value →
11, not exactly one sid in an update → 12, an unknown update action → 13, more than 256
markets in one subscription → 26.

Generation is paced on a timer: every `tick` seconds the messages that are due at
`rate_per_market` per subscribed market are produced, round-robin over the subscribed
markets (work proportional to messages, not to markets). Each market event is built and
serialised ONCE and fanned out to every subscription on that market and channel, spliced
into an envelope carrying that subscription's own `sid`/`seq`: two connector replicas see
byte-identical `msg` objects. An `orderbook_delta` subscription first gets one
`orderbook_snapshot` per market, then deltas, all numbered by the subscription's `seq`, so a
book can be rebuilt (and a gap detected) from its frames alone.

Sends await the socket, so a slow client slows generation (back-pressure) rather than
growing a buffer here — unless the slow-consumer fault is on, which drops such a client.
Every per-market structure is bounded by the number of markets.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from ..contract import PRIVATE_CHANNELS, PUBLIC_CHANNELS, WsError
from ..protocol import MAX_TICKERS_PER_SUBSCRIPTION, TRADE_ID_PREFIX
from .faults import Faults
from .markets import Market, MarketBook

log = logging.getLogger(__name__)

DATA_CHANNELS = ("trade", "ticker", "orderbook_delta")  # channels that generate data
# Catch-up after a stalled loop is capped so a pause never turns into a burst.
MAX_CATCH_UP_S = 0.1
SLOW_CONSUMER_SNDBUF = 8192

_encode = msgspec.json.encode


class _BadCommand(Exception):
    def __init__(self, code: WsError, detail: str = "") -> None:
        super().__init__(code.text + (f": {detail}" if detail else ""))
        self.code = code


@dataclass(eq=False, slots=True)
class Sub:
    conn: Conn
    sid: int
    channel: str
    tickers: set[str]  # empty with `every_market`
    every_market: bool = False
    seq: int = 0


@dataclass(eq=False, slots=True)
class Conn:
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None
    authenticated: bool
    subs: dict[int, Sub] = field(default_factory=dict)
    next_sid: int = 1
    closed: bool = False


def _tickers(params: dict[str, Any]) -> list[str] | None:
    """`market_ticker` and/or `market_tickers`; None when neither is given."""
    one = params.get("market_ticker")
    many = params.get("market_tickers")
    if one is None and many is None:
        return None
    out: list[str] = []
    if one is not None:
        if not isinstance(one, str) or not one:
            raise _BadCommand(WsError.INVALID_PARAMETER, "market_ticker must be a ticker")
        out.append(one)
    if many is not None:
        if not isinstance(many, list) or not all(isinstance(t, str) and t for t in many):
            raise _BadCommand(WsError.INVALID_PARAMETER, "market_tickers must be a list of tickers")
        out.extend(many)
    return list(dict.fromkeys(out))


class WsServer:
    """Connections, subscriptions and the generator of one simulator."""

    def __init__(
        self,
        book: MarketBook,
        faults: Faults,
        *,
        rate_per_market: float,
        tick: float,
        record: bool,
        record_limit: int,
        authorize: Callable[[web.Request], bool | None],
    ) -> None:
        self.book = book
        self.faults = faults
        self.rate_per_market = rate_per_market
        self.tick = tick
        self.record = record
        self.record_limit = record_limit
        self._authorize = authorize  # True: signed and valid; False: refused; None: unsigned
        self.sent: Counter[tuple[str, str]] = Counter()
        self.sent_ids: set[str] = set()  # the `Nats-Msg-Id` of each trade sent (`record`)
        self.frames_out = 0
        self.auth_failures = 0
        self.slow_consumer_drops = 0
        self.command_errors: Counter[int] = Counter()
        self.paused = False
        self.conns: set[Conn] = set()
        self._index: dict[str, dict[str, set[Sub]]] = {}  # ticker → channel → subs
        self._every: dict[str, set[Sub]] = {}  # channel → subscriptions to every market
        self._active: list[str] = []
        self._active_dirty = False
        self._rr = 0
        self._credit = 0.0

    # -- connections ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        verdict = self._authorize(request)
        if verdict is False:
            self.auth_failures += 1
            return web.json_response(
                {"error": {"code": "authentication_error", "message": "invalid signature"}},
                status=401,
            )
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        await ws.prepare(request)
        if self.faults.slow_consumer_bytes and request.transport is not None:
            # a small kernel send buffer: a client's backlog shows in our own buffer soon
            sock = request.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SLOW_CONSUMER_SNDBUF)
        conn = Conn(ws, request.transport, authenticated=verdict is True)
        self.conns.add(conn)
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._on_command(conn, message.data)
                elif message.type == WSMsgType.BINARY:
                    await self._error(conn, None, WsError.UNABLE_TO_PROCESS)
        finally:
            self.forget(conn)
        return ws

    def forget(self, conn: Conn) -> None:
        conn.closed = True
        self.conns.discard(conn)
        for sub in conn.subs.values():
            self._unindex(sub, sub.tickers)
        conn.subs.clear()

    def abort(self, conn: Conn) -> None:
        self.forget(conn)
        if isinstance(conn.transport, asyncio.Transport):
            conn.transport.abort()

    async def send(self, conn: Conn, frame: bytes) -> None:
        if conn.closed:
            return
        limit = self.faults.slow_consumer_bytes
        transport = conn.transport
        if (
            limit
            and isinstance(transport, asyncio.WriteTransport)
            and transport.get_write_buffer_size() > limit
        ):
            self.slow_consumer_drops += 1
            log.warning("dropping a slow consumer (more than %d bytes unsent)", limit)
            self.abort(conn)
            return
        try:
            await conn.ws.send_frame(frame, WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            self.forget(conn)

    async def _reply(self, conn: Conn, obj: dict[str, Any]) -> None:
        await self.send(conn, _encode(obj))

    async def _error(self, conn: Conn, cmd_id: int | None, code: WsError, text: str = "") -> None:
        self.command_errors[int(code)] += 1
        reply: dict[str, Any] = {
            "type": "error",
            "msg": {"code": int(code), "msg": text or code.text},
        }
        if cmd_id is not None:
            reply["id"] = cmd_id
        await self._reply(conn, reply)

    # -- commands ---------------------------------------------------------------------------

    async def _on_command(self, conn: Conn, data: str) -> None:
        try:
            command = msgspec.json.decode(data)
        except msgspec.DecodeError:
            await self._error(conn, None, WsError.UNABLE_TO_PROCESS)
            return
        cmd_id = command.get("id") if isinstance(command, dict) else None
        if not isinstance(command, dict) or not isinstance(cmd_id, int) or isinstance(cmd_id, bool):
            await self._error(conn, None, WsError.UNABLE_TO_PROCESS, "command needs an integer id")
            return
        cmd = command.get("cmd")
        handler = {
            "subscribe": self._subscribe,
            "update_subscription": self._update,
            "unsubscribe": self._unsubscribe,
        }.get(cmd if isinstance(cmd, str) else "")
        if handler is None:
            await self._error(conn, cmd_id, WsError.UNKNOWN_COMMAND)
            return
        params = command.get("params")
        if not isinstance(params, dict):
            await self._error(conn, cmd_id, WsError.PARAMS_REQUIRED)
            return
        try:
            await handler(conn, cmd_id, params)
        except _BadCommand as bad:
            await self._error(conn, cmd_id, bad.code, str(bad))

    async def _subscribe(self, conn: Conn, cmd_id: int, params: dict[str, Any]) -> None:
        channels = params.get("channels")
        if not isinstance(channels, list) or not channels:
            raise _BadCommand(WsError.CHANNELS_REQUIRED)
        if not all(isinstance(c, str) for c in channels):
            raise _BadCommand(WsError.INVALID_PARAMETER, "channels must be channel names")
        for channel in channels:
            if channel not in PUBLIC_CHANNELS and channel not in PRIVATE_CHANNELS:
                raise _BadCommand(WsError.UNKNOWN_CHANNEL, repr(channel))
            if channel in PRIVATE_CHANNELS and not conn.authenticated:
                raise _BadCommand(WsError.AUTH_REQUIRED, f"channel {channel!r}")
        tickers = _tickers(params)
        if tickers is not None and len(tickers) > MAX_TICKERS_PER_SUBSCRIPTION:
            raise _BadCommand(
                WsError.MARKET_LIMIT_EXCEEDED,
                f"{len(tickers)} markets, at most {MAX_TICKERS_PER_SUBSCRIPTION}",
            )
        for channel in dict.fromkeys(channels):
            sub = Sub(conn, conn.next_sid, channel, set(tickers or ()), every_market=not tickers)
            conn.next_sid += 1
            conn.subs[sub.sid] = sub
            self._index_sub(sub, sub.tickers)
            await self._reply(
                conn,
                {"id": cmd_id, "type": "subscribed", "msg": {"channel": channel, "sid": sub.sid}},
            )
            if channel == "orderbook_delta":
                await self._snapshots(sub, tickers if tickers else sorted(self.book.markets))

    async def _update(self, conn: Conn, cmd_id: int, params: dict[str, Any]) -> None:
        sids = params.get("sids", [params["sid"]] if "sid" in params else None)
        if not isinstance(sids, list) or len(sids) != 1 or not isinstance(sids[0], int):
            raise _BadCommand(WsError.ONE_SID_REQUIRED)
        action = params.get("action")
        if action not in ("add_markets", "delete_markets"):
            raise _BadCommand(WsError.UNSUPPORTED_ACTION, repr(action))
        sub = conn.subs.get(sids[0])
        if sub is None:
            raise _BadCommand(WsError.UNKNOWN_SID, str(sids[0]))
        tickers = _tickers(params)
        if not tickers:
            raise _BadCommand(WsError.PARAMS_REQUIRED, "market_tickers")
        if sub.every_market:
            raise _BadCommand(WsError.INVALID_PARAMETER, "the subscription covers every market")
        change = set(tickers)
        if action == "add_markets":
            added = change - sub.tickers
            if len(sub.tickers) + len(added) > MAX_TICKERS_PER_SUBSCRIPTION:
                raise _BadCommand(
                    WsError.MARKET_LIMIT_EXCEEDED, f"at most {MAX_TICKERS_PER_SUBSCRIPTION}"
                )
            sub.tickers |= added
            self._index_sub(sub, added)
        else:
            added = set()
            gone = change & sub.tickers
            sub.tickers -= gone
            self._unindex(sub, gone)
        await self._reply(
            conn,
            {
                "id": cmd_id,
                "sid": sub.sid,
                "type": "ok",
                "msg": {"market_tickers": sorted(sub.tickers)},
            },
        )
        if sub.channel == "orderbook_delta" and added:
            await self._snapshots(sub, [t for t in tickers if t in added])

    async def _unsubscribe(self, conn: Conn, cmd_id: int, params: dict[str, Any]) -> None:
        sids = params.get("sids")
        if not isinstance(sids, list) or not sids or not all(isinstance(s, int) for s in sids):
            raise _BadCommand(WsError.SIDS_REQUIRED)
        for sid in sids:
            sub = conn.subs.pop(sid, None)
            if sub is None:
                await self._error(
                    conn, cmd_id, WsError.UNKNOWN_SID, f"{WsError.UNKNOWN_SID.text}: {sid}"
                )
                continue
            self._unindex(sub, sub.tickers)
            await self._reply(conn, {"id": cmd_id, "sid": sid, "type": "unsubscribed"})

    async def _snapshots(self, sub: Sub, tickers: list[str]) -> None:
        for ticker in tickers:
            market = self.book.markets.get(ticker)
            if market is None or sub.conn.closed:
                continue
            body = self.book.book_snapshot(market)
            self.sent[("orderbook_snapshot", ticker)] += 1
            self._record("orderbook_snapshot", ticker, body, None)
            sub.seq += 1
            self.frames_out += 1
            await self.send(
                sub.conn,
                b'{"type":"orderbook_snapshot","sid":%d,"seq":%d,"msg":%s}'
                % (sub.sid, sub.seq, body),
            )

    # -- the subscription index -------------------------------------------------------------

    def _index_sub(self, sub: Sub, tickers: set[str]) -> None:
        if sub.every_market:
            self._every.setdefault(sub.channel, set()).add(sub)
        for ticker in tickers:
            self._index.setdefault(ticker, {}).setdefault(sub.channel, set()).add(sub)
        self._active_dirty = True

    def _unindex(self, sub: Sub, tickers: set[str]) -> None:
        if sub.every_market:
            subs = self._every.get(sub.channel)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._every[sub.channel]
        for ticker in tickers:
            by_channel = self._index.get(ticker)
            if by_channel is None:
                continue
            channel_subs = by_channel.get(sub.channel)
            if channel_subs is not None:
                channel_subs.discard(sub)
                if not channel_subs:
                    del by_channel[sub.channel]
            if not by_channel:
                del self._index[ticker]
        self._active_dirty = True

    def subscribed_markets(self) -> set[str]:
        if any(self._every.values()):
            return set(self.book.markets)
        return {t for t, by_channel in self._index.items() if any(by_channel.values())}

    def mark_dirty(self) -> None:
        self._active_dirty = True

    def _active_markets(self) -> list[str]:
        if self._active_dirty:
            markets = self.book.markets
            candidates = markets if any(self._every.values()) else self._index
            self._active = sorted(
                t for t in candidates if (m := markets.get(t)) is not None and m.status == "active"
            )
            self._active_dirty = False
        return self._active

    # -- faults -----------------------------------------------------------------------------

    def skip_sequence(self, n: int) -> None:
        for conn in self.conns:
            for sub in conn.subs.values():
                sub.seq += n

    # -- generation -------------------------------------------------------------------------

    async def generate(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            elapsed, last = min(now - last, MAX_CATCH_UP_S), now
            active = self._active_markets()
            if self.paused or self.rate_per_market <= 0 or not active:
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

    def _subscribers(self, ticker: str, channel: str) -> tuple[Sub, ...]:
        by_channel = self._index.get(ticker)
        named = by_channel.get(channel, ()) if by_channel else ()
        every = self._every.get(channel, ())
        if not every:
            return tuple(named)
        return (*named, *(s for s in every if s not in named))

    def _record(self, msg_type: str, ticker: str, body: bytes, trade_id: str | None) -> None:
        """Record the `Nats-Msg-Id` of each trade sent (`record`): a trade's id is the same on
        every connection; every other frame's id names the connection it came on."""
        if self.record and trade_id is not None and len(self.sent_ids) < self.record_limit:
            self.sent_ids.add(TRADE_ID_PREFIX + trade_id)

    async def _emit(self, ticker: str) -> None:
        market = self.book.markets.get(ticker)
        if market is None:
            return
        channels = [c for c in DATA_CHANNELS if self._subscribers(ticker, c)]
        if not channels:
            return
        channel = channels[0] if len(channels) == 1 else self.book.rng.choice(channels)
        body, trade_id = self._body(channel, market)
        self.sent[(channel, ticker)] += 1
        self._record(channel, ticker, body, trade_id)
        head = b'{"type":"' + channel.encode() + b'","sid":'
        tail = b',"msg":' + body + b"}"
        for sub in self._subscribers(ticker, channel):
            sub.seq += 1
            self.frames_out += 1
            await self.send(sub.conn, head + b'%d,"seq":%d' % (sub.sid, sub.seq) + tail)

    def _body(self, channel: str, market: Market) -> tuple[bytes, str | None]:
        now = time.time()
        if channel == "trade":
            return self.book.trade(market, now)
        if channel == "ticker":
            return self.book.ticker(market, now, identical=self.faults.identical_tickers), None
        return self.book.book_delta(market, now), None
