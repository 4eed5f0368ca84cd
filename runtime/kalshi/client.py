"""The asyncio transport for Kalshi WebSocket v2: connect, subscribe, read, reconnect.

All protocol state lives in `KalshiProtocol` (sans-I/O); this module only moves bytes and
time. The per-frame path is: `recv(decode=False)` → `protocol.receive` → `await on_frame`,
nothing else, because it runs for every message the shard carries. Awaiting `on_frame`
means a full downstream buffer with the `block` policy stops reading: websockets then
stops reading the socket once its bounded queue (`max_queue` frames) is full, and TCP
pushes back on the exchange. Nothing here buffers without a bound.

One connection carries all of a client's subscriptions (each at most 256 markets), which
is what Kalshi allows and keeps per-message cost lowest; a shard that needs more socket
throughput than one connection gives runs more connector replicas, each with its own
client over its share of the markets.

Liveness uses websockets' keepalive: a ping every `ping_interval` seconds, and a
connection whose pong does not arrive within `stale_after - ping_interval` seconds is
closed as stale. Any disconnect is followed by a reconnect with exponential backoff and
jitter and a resubscription of every desired market, in-process; only bad
credentials (HTTP 401/403 on the upgrade) end `run()`, with `KalshiAuthError`.
Compression is not negotiated: per-message deflate costs CPU on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ssmd_infra.errors import SsmdError

from .auth import KalshiSigner
from .protocol import (
    MAX_TICKERS_PER_SUBSCRIPTION,
    ErrorReply,
    Frame,
    KalshiProtocol,
    Malformed,
    ProtocolStats,
)

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 4 << 20
QUEUE_FRAMES = 64  # frames websockets holds before it stops reading the socket


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


class KalshiWsClient:
    """One Kalshi WebSocket connection that stays up and subscribed to the desired markets."""

    def __init__(
        self,
        url: str,
        signer: KalshiSigner | None,
        channels: Sequence[str],
        on_frame: Callable[[Frame], Awaitable[None]],
        *,
        ping_interval: float = 10.0,
        stale_after: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_tickers_per_subscription: int = MAX_TICKERS_PER_SUBSCRIPTION,
    ) -> None:
        if stale_after <= ping_interval:
            raise ValueError("stale_after must be longer than ping_interval")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        self.url = url
        self._path = urlsplit(url).path or "/"
        self._signer = signer
        self._on_frame = on_frame
        self.ping_interval = ping_interval
        self.stale_after = stale_after
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stats = ClientStats()
        self._proto = KalshiProtocol(
            channels, max_tickers=max_tickers_per_subscription, stats=self.stats
        )
        self._ws: ClientConnection | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    @property
    def protocol(self) -> KalshiProtocol:
        return self._proto

    @property
    def subscribed(self) -> frozenset[str]:
        return self._proto.subscribed

    async def set_markets(self, tickers: Iterable[str]) -> None:
        """Make `tickers` the subscribed set; safe before, during and between connections."""
        self._proto.set_markets(tickers)
        await self._flush()

    def stop(self) -> None:
        """Ask `run()` to return; closes the connection."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            task = asyncio.get_running_loop().create_task(ws.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def run(self) -> None:
        """Stay connected until `stop()`; raises `KalshiAuthError` on refused credentials."""
        self._stopping = False
        self._wake.clear()
        attempt = 0
        while not self._stopping:
            try:
                ws = await self._connect()
            except KalshiAuthError:
                raise
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                self.stats.connect_failures += 1
                log.warning("cannot connect to %s: %s", self.url, exc)
                await self._backoff(attempt)
                attempt += 1
                continue
            if self.stats.connects:
                self.stats.reconnects += 1
            self.stats.connects += 1
            received = await self._session(ws)
            if self._stopping:
                break
            attempt = 0 if received else attempt + 1
            await self._backoff(attempt)

    # -- internals --------------------------------------------------------------------------

    async def _connect(self) -> ClientConnection:
        headers = self._signer.headers("GET", self._path) if self._signer is not None else {}
        try:
            return await connect(
                self.url,
                additional_headers=headers,
                compression=None,
                ping_interval=self.ping_interval,
                ping_timeout=self.stale_after - self.ping_interval,
                open_timeout=max(self.stale_after, 10.0),
                close_timeout=2.0,
                max_size=MAX_FRAME_BYTES,
                max_queue=QUEUE_FRAMES,
                proxy=None,
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
        """Exponential backoff, jittered over its upper half; returns early on `stop()`."""
        ceiling = min(self.backoff_max, self.backoff_initial * (2 ** min(attempt, 30)))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _flush(self) -> None:
        commands = self._proto.data_to_send()
        self.stats.subscribed = self._proto.subscribed_count
        ws = self._ws
        if ws is None:
            return  # not connected: the next connection resubscribes from the desired set
        for command in commands:
            try:
                await ws.send(command, text=True)
            except ConnectionClosed:
                return  # the reader sees the close and reconnects

    async def _session(self, ws: ClientConnection) -> bool:
        """Read until the connection ends; True when anything was received."""
        proto = self._proto
        proto.connection_made()
        self._ws = ws
        self.stats.connected = True
        log.info("connected to %s; subscribing %d markets", self.url, len(proto.desired))
        received = False
        receive = proto.receive
        on_frame = self._on_frame
        try:
            await self._flush()
            recv = ws.recv
            while True:
                data = await recv(decode=False)
                received = True
                event = receive(data)
                if type(event) is Frame:
                    await on_frame(event)
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
                await self._flush()
        except ConnectionClosed as exc:
            if not self._stopping:
                log.warning("connection to %s lost: %s", self.url, exc)
        finally:
            self._ws = None
            self.stats.connected = False
            self.stats.subscribed = 0
            if not self._stopping:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 2.0)
        return received
