"""The asyncio side of Kalshi WebSocket v2: connect, subscribe, read, reconnect.

All Kalshi protocol state lives in `KalshiProtocol` (sans-I/O) and all WebSocket framing in
websockets' sans-I/O `ClientProtocol`, driven from a raw asyncio protocol
(`transport.WsConnection`); this module only moves bytes and time. The per-read path is:
the event loop's `data_received` → websockets parses every frame of the read →
`protocol.receive` per message → one synchronous `on_frames(frames)` call with all the
market-data frames of that read. No queue, no task wake-up per frame: at a paced 10k msg/s
the wake-ups of a `recv()`-per-message client cost more than everything else together.
With `read_interval` > 0 the socket is read at most once per interval (see
`transport.py`), so a busy feed arrives in a few large batches.

Back-pressure: `on_frames` returns how many frames it took. Fewer than it was given means
the downstream is full (the connector's `block` policy): the client holds the rest (at
most one socket read), stops reading the socket (`pause_reading`, so TCP pushes back on the
exchange), awaits `wait_ready()`, hands the held frames over again, and resumes reading
once all are taken. Nothing here buffers without a bound.

One connection carries all of a client's subscriptions (each at most 256 markets), which
is what Kalshi allows and keeps per-message cost lowest; a shard that needs more socket
throughput than one connection gives runs more connector replicas, each with its own
client over its share of the markets.

Liveness: a ping every `ping_interval` seconds; a connection on which nothing at all (data,
pong) has arrived for `stale_after` seconds while we were reading is failed as stale (a
paused reader does not count against it). Any disconnect is followed by a reconnect with
exponential backoff and jitter and a resubscription of every desired market, in-process;
only bad credentials (HTTP 401/403 on the upgrade) end `run()`, with `KalshiAuthError`.
Compression is not negotiated: per-message deflate costs CPU on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import CloseCode
from websockets.uri import WebSocketURI, parse_uri

from runtime.backoff import Backoff
from ssmd_infra.core.errors import ConfigError, SsmdError

from .auth import KalshiSigner
from .protocol import (
    MAX_TICKERS_PER_SUBSCRIPTION,
    ErrorReply,
    Frame,
    KalshiProtocol,
    Malformed,
    ProtocolStats,
)
from .transport import WsConnection, open_connection

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4 << 20

# Hands over the market-data frames of one socket read, in arrival order; returns how many it
# took (fewer: the downstream is full, the rest are offered again after `wait_ready`).
OnFrames = Callable[[list[Frame]], int]


class KalshiAuthError(SsmdError):
    """Kalshi refused our credentials; retrying cannot help, so the process must exit."""


@dataclass(slots=True)
class ClientStats(ProtocolStats):
    """What the connector exports: protocol counters plus connection state."""

    reconnects: int = 0  # successful connections after the first
    connects: int = 0
    connect_failures: int = 0
    subscribed: int = 0  # markets acknowledged on every channel
    connected: bool = False
    stale: int = 0  # connections failed because nothing arrived for `stale_after`
    paused: int = 0  # times reading stopped because the downstream was full
    discarded: int = 0  # held frames never taken because the client stopped


async def _soon() -> None:
    await asyncio.sleep(0.01)


class KalshiWsClient:
    """One Kalshi WebSocket connection that stays up and subscribed to the desired markets."""

    def __init__(
        self,
        url: str,
        signer: KalshiSigner | None,
        channels: Sequence[str],
        on_frames: OnFrames,
        *,
        wait_ready: Callable[[], Awaitable[object]] = _soon,
        ping_interval: float = 10.0,
        stale_after: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_tickers_per_subscription: int = MAX_TICKERS_PER_SUBSCRIPTION,
        close_timeout: float = 2.0,
        read_interval: float = 0.0,
    ) -> None:
        if stale_after <= ping_interval:
            raise ValueError("stale_after must be longer than ping_interval")
        try:
            self._uri: WebSocketURI = parse_uri(url)
        except InvalidURI as exc:
            raise ConfigError(f"Kalshi WebSocket URL {url!r}: {exc}") from None
        self.url = url
        self._path = self._uri.path or "/"
        self._signer = signer
        self._on_frames = on_frames
        self._wait_ready = wait_ready
        self.ping_interval = ping_interval
        self.stale_after = stale_after
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.close_timeout = close_timeout
        self.read_interval = read_interval
        self.stats = ClientStats()
        self._proto = KalshiProtocol(
            channels, max_tickers=max_tickers_per_subscription, stats=self.stats
        )
        self._conn: WsConnection | None = None
        self._held: list[Frame] = []  # frames the downstream has not taken yet (≤ one read)
        self._resumer: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    @property
    def protocol(self) -> KalshiProtocol:
        return self._proto

    @property
    def subscribed(self) -> frozenset[str]:
        return self._proto.subscribed

    @property
    def held(self) -> int:
        """Frames read from the socket and waiting for the downstream (reading is paused)."""
        return len(self._held)

    async def set_markets(self, tickers: Iterable[str]) -> None:
        """Make `tickers` the subscribed set; safe before, during and between connections."""
        self._proto.set_markets(tickers)
        self._send_commands()

    def stop(self) -> None:
        """Ask `run()` to return; closes the connection."""
        self._stopping = True
        self._wake.set()
        conn = self._conn
        if conn is not None:
            conn.close()
            if self._held:  # not reading (back-pressure): the close reply would never be seen
                conn.abort()

    async def run(self) -> None:
        """Stay connected until `stop()`; raises `KalshiAuthError` on refused credentials."""
        self._stopping = False
        self._wake.clear()
        attempt = 0
        while not self._stopping:
            try:
                conn = await self._connect()
            except KalshiAuthError:
                raise
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.stats.connect_failures += 1
                log.warning("cannot connect to %s: %s", self.url, exc or type(exc).__name__)
                await self._backoff(attempt)
                attempt += 1
                continue
            if self.stats.connects:
                self.stats.reconnects += 1
            self.stats.connects += 1
            received = await self._session(conn)
            if self._stopping:
                break
            attempt = 0 if received else attempt + 1
            await self._backoff(attempt)

    # -- the per-read path --------------------------------------------------------------------

    def _on_messages(self, messages: list[bytes]) -> None:
        """Every complete message of one socket read, in order (called by the transport)."""
        receive = self._proto.receive
        frames: list[Frame] = []
        for data in messages:
            event = receive(data)
            if type(event) is Frame:
                frames.append(event)
                continue
            if type(event) is ErrorReply:
                log.warning(
                    "Kalshi error reply to %s (id %s): code %s %s",
                    event.command,
                    event.cmd_id,
                    event.code,
                    event.message,
                )
            elif type(event) is Malformed:
                log.warning("skipped a malformed frame: %s", event.reason)
            # Unknown: counted and logged once per type by the protocol
            self._send_commands()  # replies can produce commands (deferred changes, cleanups)
        if self._proto.has_commands:  # a book gap asked for a new snapshot
            self._send_commands()
        if not frames:
            return
        if self._held:  # reading is paused; a read that raced the pause keeps its place
            self._held.extend(frames)
            return
        taken = self._on_frames(frames)
        if taken < len(frames):
            self._hold(frames[taken:] if taken else frames)

    def _hold(self, rest: list[Frame]) -> None:
        """The downstream is full: keep `rest`, stop reading, resume once it is all taken."""
        self._held = rest
        self.stats.paused += 1
        conn = self._conn
        if conn is not None:
            conn.pause_reading()
        if self._resumer is None or self._resumer.done():
            self._resumer = asyncio.get_running_loop().create_task(
                self._resume_when_ready(), name="kalshi-ws-resume"
            )

    async def _resume_when_ready(self) -> None:
        while self._held:
            await self._wait_ready()
            held = self._held
            taken = self._on_frames(held)
            self._held = held[taken:] if taken else held
        conn = self._conn
        if conn is not None:
            conn.resume_reading()

    # -- internals ----------------------------------------------------------------------------

    async def _connect(self) -> WsConnection:
        # A fresh connection: forget server-side ids, queue the full resubscription. Done
        # before the handshake so a frame arriving with the handshake response already meets
        # the new state; the commands are sent once the connection is open.
        self._proto.connection_made()
        self.stats.subscribed = 0
        headers = self._signer.headers("GET", self._path) if self._signer is not None else {}
        try:
            return await open_connection(
                self._uri,
                self._on_messages,
                headers=headers,
                max_size=MAX_FRAME_BYTES,
                open_timeout=max(self.stale_after, 10.0),
                close_timeout=self.close_timeout,
                read_interval=self.read_interval,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                who = self._signer.key_id if self._signer is not None else "(no key)"
                raise KalshiAuthError(
                    f"Kalshi refused the credentials of API key {who} at {self.url} "
                    f"(HTTP {status}): check KALSHI_API_KEY_ID and KALSHI_PRIVATE_KEY_PATH"
                ) from None
            raise

    async def _backoff(self, attempt: int) -> None:
        """The runtime's backoff (`runtime/backoff.py`); returns early on `stop()`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.backoff.delay(attempt))

    def _send_commands(self) -> None:
        conn = self._conn
        if conn is None:
            # not open: the commands stay queued; a new connection starts from the desired set
            return
        self.stats.subscribed = self._proto.subscribed_count
        for command in self._proto.data_to_send():
            if not conn.send_text(command):
                return  # closing: the next connection resubscribes from the desired set

    async def _keepalive(self, conn: WsConnection) -> None:
        """Ping every `ping_interval`; fail the connection when nothing arrived for
        `stale_after` seconds of reading (time spent paused by back-pressure is not counted)."""
        tick = min(self.ping_interval, self.stale_after - self.ping_interval) / 2
        now = time.monotonic()
        last_activity = last_ping = now
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if conn.activity or conn.paused:
                conn.activity = False
                last_activity = now
            elif now - last_activity >= self.stale_after:
                self.stats.stale += 1
                log.warning(
                    "nothing received from %s for %.0fs; reconnecting", self.url, self.stale_after
                )
                conn.fail(CloseCode.INTERNAL_ERROR, "keepalive timeout")
                return
            if now - last_ping >= self.ping_interval:
                last_ping = now
                conn.ping()

    async def _session(self, conn: WsConnection) -> bool:
        """Serve one open connection until it ends; True when anything was received."""
        proto = self._proto
        self._conn = conn
        self.stats.connected = True
        log.info("connected to %s; subscribing %d markets", self.url, len(proto.desired))
        keepalive = asyncio.get_running_loop().create_task(
            self._keepalive(conn), name="kalshi-ws-keepalive"
        )
        if self._held:  # frames that came with the handshake response and did not fit
            conn.pause_reading()
        try:
            self._send_commands()
            if self._stopping:  # stop() came during the handshake
                conn.close()
            await conn.closed
            if not self._stopping:
                log.warning("connection to %s lost: %s", self.url, conn.describe_close())
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            self._conn = None
            self.stats.connected = False
            self.stats.subscribed = 0
            conn.abort()
            await self._settle_held()
        return conn.messages > 0

    async def _settle_held(self) -> None:
        """After a disconnect, frames already read are still handed over, in order, before
        anything from the next connection; on `stop()` they are discarded (counted)."""
        resumer = self._resumer
        if resumer is None or resumer.done():
            return
        if not self._stopping:
            woken = asyncio.get_running_loop().create_task(self._wake.wait())
            await asyncio.wait((resumer, woken), return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if resumer.done():
                return
        resumer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await resumer
        if self._held:
            self.stats.discarded += len(self._held)
            log.warning("stopping with %d received frames not handed over", len(self._held))
            self._held = []
