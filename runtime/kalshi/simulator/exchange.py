"""`KalshiSimulator`: the simulated exchange — markets, WebSocket, REST and faults on one port.

One aiohttp server answers `ws://{host}:{port}/trade-api/ws/v2`,
`http://{host}:{port}/trade-api/v2/...` and the `/_sim/*` control paths. Used by tests,
benchmarks and local mode (`ssmd run simulator`).

Authentication as on Kalshi: with a public key configured, a connection or request that
carries a signature must verify (else 401); one without a signature is served as
unauthenticated (public channels and market data only). Without a public key every
connection counts as authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Coroutine, Mapping
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from ssmd_infra.core.errors import SsmdError

from ..auth import load_public_key, verify_headers
from ..contract import REST_PREFIX, WS_PATH
from .faults import JUNK_FRAMES, Faults, control_routes
from .markets import Market, MarketBook
from .rest import SIGNATURE_HEADER, RestApi
from .ws import WsServer

MAX_SKEW_S = 60.0


class KalshiSimulator:
    """The simulated exchange; `await start()`, use `ws_url`/`rest_url`, `await stop()`."""

    def __init__(
        self,
        markets: Mapping[str, Mapping[str, object]],
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
        self._public_key: rsa.RSAPublicKey | None = (
            load_public_key(public_key_pem) if public_key_pem else None
        )
        self.host = host
        self.port = port
        self.faults = Faults()
        self.book = MarketBook(seed)
        for ticker, attrs in markets.items():
            self.book.add(ticker, attrs)
        self.book.add_synthetic(synthetic_markets)
        self.ws = WsServer(
            self.book,
            self.faults,
            rate_per_market=float(rate_per_market),
            tick=tick,
            record=record,
            record_limit=record_limit,
            authorize=lambda request: self._authorize(request, WS_PATH),
        )
        self.rest = RestApi(
            self.book, self.faults, lambda request: self._authorize(request, request.path)
        )
        self._runner: web.AppRunner | None = None
        self._generator: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- what tests and benchmarks read -----------------------------------------------------

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.port}{REST_PREFIX}"

    @property
    def markets(self) -> dict[str, Market]:
        return self.book.markets

    @property
    def rate_per_market(self) -> float:
        return self.ws.rate_per_market

    @property
    def sent(self) -> Counter[tuple[str, str]]:
        """Messages generated per (type, market); a snapshot counts once per subscription."""
        return self.ws.sent

    @property
    def sent_ids(self) -> set[str]:
        return self.ws.sent_ids

    @property
    def frames_out(self) -> int:
        return self.ws.frames_out

    @property
    def auth_failures(self) -> int:
        return self.ws.auth_failures + self.rest.auth_failures

    @property
    def rest_requests(self) -> int:
        return self.rest.requests

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(WS_PATH, self.ws.handle)
        app.router.add_routes(self.rest.routes())
        app.router.add_routes(control_routes(self))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and isinstance(server, asyncio.Server) and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        self._generator = asyncio.create_task(self.ws.generate(), name="kalshi-sim-generator")

    async def stop(self) -> None:
        if self._generator is not None:
            self._generator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._generator
            self._generator = None
        for conn in list(self.ws.conns):
            self.ws.forget(conn)
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

    def _authorize(self, request: web.Request, path: str) -> bool | None:
        """True: signed and verified (or no key configured); False: refused; None: unsigned."""
        if self.faults.refuse_auth:
            return False
        if self._public_key is None:
            return True
        if SIGNATURE_HEADER not in {k.lower() for k in request.headers}:
            return None
        return verify_headers(self._public_key, request.headers, request.method, path, MAX_SKEW_S)

    # -- markets ----------------------------------------------------------------------------

    def add_market(self, ticker: str, attrs: Mapping[str, object] | None = None) -> None:
        """A market (or a change of its attributes); see `MarketBook.add`."""
        self.book.add(ticker, attrs)
        self.ws.mark_dirty()

    def set_market_status(self, ticker: str, status: str) -> None:
        """E.g. `closed`: the market leaves the `status=open` listing and stops trading."""
        self.book.set_status(ticker, status, time.time())
        self.ws.mark_dirty()

    def subscribed_markets(self) -> set[str]:
        return self.ws.subscribed_markets()

    # -- faults and controls ----------------------------------------------------------------

    def drop_connections(self) -> None:
        """Abort every WebSocket connection (no close frame), like a network failure."""
        for conn in list(self.ws.conns):
            self.ws.abort(conn)

    def skip_sequence(self, n: int = 1) -> None:
        """The next message on every subscription jumps `n` sequence numbers."""
        self.ws.skip_sequence(n)

    def send_malformed(self, n: int = 1) -> None:
        """Send `n` malformed frames on every connection."""
        frames = [JUNK_FRAMES[i % len(JUNK_FRAMES)] for i in range(n)]

        async def send_all(conn: Any) -> None:
            for frame in frames:
                await self.ws.send(conn, frame)

        for conn in list(self.ws.conns):
            self._spawn(send_all(conn))

    def identical_tickers(self, on: bool = True) -> None:
        """While on, each ticker message repeats the market's previous payload byte for byte
        (under a new `seq`): distinct exchange messages with identical payloads."""
        self.faults.identical_tickers = on

    def slow_consumer(self, max_bytes: int) -> None:
        """Drop a connection whose unsent bytes exceed `max_bytes` (0: back-pressure instead)."""
        if max_bytes < 0:
            raise SsmdError(f"max_bytes must be >= 0, got {max_bytes}")
        self.faults.slow_consumer_bytes = max_bytes

    def refuse_auth(self, on: bool = True) -> None:
        """While on, every WebSocket upgrade and REST request is answered 401."""
        self.faults.refuse_auth = on

    def change_auth_key(self, public_key_pem: bytes) -> None:
        """Trust only this public key from now on (an API key rotation on the exchange side):
        connections signed with the old key are refused at their next upgrade."""
        self._public_key = load_public_key(public_key_pem)

    def fail_rest(self, n: int = 1, status: int = 429) -> None:
        """The next `n` REST requests are answered with `status` (429 carries Retry-After)."""
        self.faults.fail_rest(n, status)

    def set_rate(self, per_market: float) -> None:
        if per_market < 0:
            raise SsmdError(f"rate must be >= 0, got {per_market}")
        self.ws.rate_per_market = float(per_market)

    def pause(self) -> None:
        self.ws.paused = True

    def resume(self) -> None:
        self.ws.paused = False

    def stats(self) -> dict[str, Any]:
        by_type: Counter[str] = Counter()
        by_market: Counter[str] = Counter()
        for (msg_type, ticker), count in self.ws.sent.items():
            by_type[msg_type] += count
            by_market[ticker] += count
        return {
            "connections": len(self.ws.conns),
            "subscriptions": sum(len(c.subs) for c in self.ws.conns),
            "subscribed_markets": len(self.subscribed_markets()),
            "markets": len(self.book.markets),
            "rate_per_market": self.ws.rate_per_market,
            "paused": self.ws.paused,
            "generated": sum(by_type.values()),
            "frames_out": self.ws.frames_out,
            "sent_by_type": dict(by_type),
            "sent_by_market": dict(by_market),
            "auth_failures": self.auth_failures,
            "rest_requests": self.rest.requests,
            "command_errors": {str(k): v for k, v in sorted(self.ws.command_errors.items())},
            "slow_consumer_drops": self.ws.slow_consumer_drops,
        }
