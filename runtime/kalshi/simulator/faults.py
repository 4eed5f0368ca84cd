"""The simulator's fault switches, and the `/_sim/*` HTTP control paths that flip them.

A switch is state the WebSocket and REST sides consult; the control paths let a test or the
local supervisor drive a simulator running in another process:

- `POST /_sim/drop`: abort every WebSocket connection (no close frame);
- `POST /_sim/skip?n=N`: the next message of every subscription jumps N seqs (a gap);
- `POST /_sim/junk?n=N`: N malformed frames on every connection;
- `POST /_sim/identical_tickers?on=1`: ticker messages repeat their previous payload byte
  for byte (under new seqs);
- `POST /_sim/slow_consumer?max_bytes=N`: drop a connection whose unsent bytes exceed N
  (0: off, a slow client slows generation instead);
- `POST /_sim/rest_fail?n=N&status=S`: the next N REST requests answer S (429 carries
  Retry-After);
- `POST /_sim/refuse_auth?on=1`: every WebSocket upgrade and REST request answers 401;
- `POST /_sim/auth_key` (PEM body): trust another public key from now on (a key rotation);
- `POST /_sim/rate?per_market=R`, `/_sim/pause`, `/_sim/resume`: generation;
- `POST /_sim/market_status?ticker=T&status=S`, `/_sim/add_market?ticker=T&...`: markets;
- `GET /_sim/stats`: counters.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from ssmd_infra.core.errors import SsmdError

if TYPE_CHECKING:
    from .exchange import KalshiSimulator

MAX_PENDING_REST_FAILURES = 100_000
JUNK_FRAMES = (
    b"{not json",
    b'{"type":"trade","sid":1}',
    b'{"type":"trade","msg":{"count_fp":"1.00"}}',
    b"[]",
    b'{"type":"ticker","msg":"oops"}',
)


@dataclass(slots=True)
class Faults:
    """The switches; all off by default."""

    refuse_auth: bool = False
    identical_tickers: bool = False
    slow_consumer_bytes: int = 0  # 0: a slow client slows generation (back-pressure)
    rest_failures: deque[int] = field(default_factory=deque)

    def fail_rest(self, n: int, status: int) -> None:
        if not 400 <= status <= 599:
            raise SsmdError(f"a REST failure status must be 400..599, got {status}")
        if n < 0 or len(self.rest_failures) + n > MAX_PENDING_REST_FAILURES:
            raise SsmdError(
                f"at most {MAX_PENDING_REST_FAILURES} REST failures may be pending, asked {n}"
            )
        self.rest_failures.extend([status] * n)

    def next_rest_failure(self) -> int | None:
        return self.rest_failures.popleft() if self.rest_failures else None


def _number(request: web.Request, name: str, default: str, kind: type[float] | type[int]) -> float:
    raw = request.query.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number, got {raw!r}\n") from None
    if value < 0:
        raise web.HTTPBadRequest(text=f"{name} must be >= 0, got {raw!r}\n")
    return value


def _ok() -> web.Response:
    return web.json_response({"ok": True})


def _on(request: web.Request) -> bool:
    return request.query.get("on", "1") not in ("0", "false", "off")


def control_routes(sim: KalshiSimulator) -> list[web.RouteDef]:
    """The `/_sim/*` routes of `sim`."""

    async def drop(_request: web.Request) -> web.Response:
        sim.drop_connections()
        return _ok()

    async def skip(request: web.Request) -> web.Response:
        sim.skip_sequence(int(_number(request, "n", "1", int)))
        return _ok()

    async def junk(request: web.Request) -> web.Response:
        sim.send_malformed(int(_number(request, "n", "1", int)))
        return _ok()

    async def identical(request: web.Request) -> web.Response:
        sim.identical_tickers(_on(request))
        return _ok()

    async def slow_consumer(request: web.Request) -> web.Response:
        sim.slow_consumer(int(_number(request, "max_bytes", "65536", int)))
        return _ok()

    async def refuse_auth(request: web.Request) -> web.Response:
        sim.refuse_auth(_on(request))
        return _ok()

    async def auth_key(request: web.Request) -> web.Response:
        try:
            sim.change_auth_key(await request.read())
        except SsmdError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        return _ok()

    async def rate(request: web.Request) -> web.Response:
        sim.set_rate(_number(request, "per_market", "10", float))
        return _ok()

    async def pause(_request: web.Request) -> web.Response:
        sim.pause()
        return _ok()

    async def resume(_request: web.Request) -> web.Response:
        sim.resume()
        return _ok()

    async def rest_fail(request: web.Request) -> web.Response:
        try:
            sim.fail_rest(
                int(_number(request, "n", "1", int)),
                int(_number(request, "status", "429", int)),
            )
        except SsmdError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        return _ok()

    async def market_status(request: web.Request) -> web.Response:
        try:
            sim.set_market_status(
                request.query.get("ticker", ""), request.query.get("status", "closed")
            )
        except SsmdError as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None
        return _ok()

    async def add_market(request: web.Request) -> web.Response:
        ticker = request.query.get("ticker", "")
        if not ticker:
            raise web.HTTPBadRequest(text="ticker is required\n")
        try:
            sim.add_market(ticker, {k: v for k, v in request.query.items() if k != "ticker"})
        except SsmdError as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        return _ok()

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(sim.stats())

    posts = {
        "drop": drop,
        "skip": skip,
        "junk": junk,
        "identical_tickers": identical,
        "slow_consumer": slow_consumer,
        "refuse_auth": refuse_auth,
        "auth_key": auth_key,
        "rate": rate,
        "pause": pause,
        "resume": resume,
        "rest_fail": rest_fail,
        "market_status": market_status,
        "add_market": add_market,
    }
    return [web.post(f"/_sim/{name}", handler) for name, handler in posts.items()] + [
        web.get("/_sim/stats", stats)
    ]
