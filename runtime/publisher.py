"""Acknowledged, pipelined publishing into JetStream: no silent loss, and still fast.

Why not `nats-py` publish: a core publish into a stream has no back-pressure (above ~350k
msg/s the server dropped messages and only logged it), and nats-py's request/ack machinery
costs ~4 µs per acknowledgement on top of ~3.5 µs per publish with a header — more than the
whole naive connector. This module speaks the small part of the NATS client protocol a
publisher needs, on its own connection:

- every message is an `HPUB` with a `Nats-Msg-Id` header and a reply subject
  `{inbox}.{n}` on one wildcard inbox subscription, so each stream acknowledgement (PubAck)
  is matched to its message by `n` without parsing JSON;
- at most `max_inflight` messages are unacknowledged at once (a bounded window: memory is
  bounded, and a full window is the back-pressure signal the connector's buffer acts on);
- writes are coalesced and flushed on a short timer (~1 ms) rather than per message —
  at paced rates per-message socket writes and wake-ups dominate the cost; a caller that
  publishes in batches (`publish_many(..., flush=True)`) writes each batch at once instead
  (no timer, no extra wake-up);
- with `read_interval` > 0 acknowledgements are read at most once per interval, on a grid of
  multiples of it on the loop's clock (the connector's WebSocket reader uses the same grid),
  so a paced stream of acks costs one read per interval rather than one wake-up per ack
  burst; acks are never urgent, only the window's room waits for them;
- a message not acknowledged within `ack_timeout`, or refused by the server, is sent again
  with the same `Nats-Msg-Id` (the stream's duplicate window makes a resend harmless) up to
  `max_attempts` times, then given up and counted;
- the connection is re-established with capped backoff when it drops; every message still
  in the window is resent. Nothing waits on the caller's side except for window room.

Supported server URLs: `nats://[user:password@|token@]host:port`, comma-separated for
several servers (tried in turn). TLS is not spoken by this publisher.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

from runtime.natswire import (
    CRLF,
    PING,
    PONG,
    check_info,
    connect_and_subscribe,
    error_text,
    parse_servers,
    set_info,
)
from runtime.tasks import cancel_all
from ssmd_infra.core.nats_url import ServerAddress

log = logging.getLogger("ssmd.publisher")


@dataclass(slots=True)
class PublishStats:
    """Counters of the publisher; the connector exports them as metrics."""

    submitted: int = 0  # messages handed to `publish`
    acked: int = 0  # acknowledged by the stream (stored, or recognised as a duplicate)
    duplicates: int = 0  # acknowledgements that said "duplicate" (replica overlap, resends)
    failures: int = 0  # refusals and ack timeouts (each one triggers a resend)
    resent: int = 0  # messages sent again (after a failure or a reconnect)
    given_up: int = 0  # messages dropped after `max_attempts` failures
    reconnects: int = 0  # connections established after the first


# An unacknowledged message: (subject, payload, msg_id, attempts). A tuple, not an object:
# one is built per message and the cost shows at 100k+ msg/s.
_Pending = tuple[bytes, bytes, bytes, int]


class _Wire(asyncio.Protocol):
    """One TCP connection: parses server operations and hands them to the publisher."""

    def __init__(self, owner: JetStreamPublisher, read_interval: float = 0.0) -> None:
        self._owner = owner
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._read_interval = read_interval
        self._throttle: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.pong: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: str | None = None
        self.outstanding_pings = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a TCP transport (uvloop's does not subclass asyncio.Transport, so no isinstance)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        if not self.info.done():
            self.info.set_exception(ConnectionError(self.error or "connection closed"))
        if not self.pong.done():
            self.pong.set_exception(ConnectionError(self.error or "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._connection_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        size = len(buf)
        acks: list[tuple[int, bytes]] = []
        owner = self._owner
        plain_match = owner._plain_ack.match
        settle = owner._inflight.pop
        settled = 0
        ack_match = owner._ack_line.match
        # Fast path: the buffer starts with a run of plain acks (often it is nothing else, but
        # for a partial one at the end). One C-level split finds them all: the parts alternate
        # gap, id, gap, id, ..., rest; every gap before the last id must be empty, so the
        # matches are contiguous from the start and each one begins at an operation boundary.
        parts = owner._plain_split(buf)
        if len(parts) > 1 and not any(parts[0:-1:2]):
            for ident in parts[1::2]:
                if settle(int(ident), None) is not None:
                    settled += 1
            pos = size - len(parts[-1])
        while pos < size:
            found = plain_match(buf, pos)
            if found is not None:  # by far the most common: "stored", nothing else to know
                if settle(int(found[1]), None) is not None:
                    settled += 1
                pos = found.end()
                continue
            found = ack_match(buf, pos)
            if found is not None:  # any other PubAck on our inbox (duplicate, error)
                start = found.end()
                stop = start + int(found[2])
                if stop + 2 > size:
                    break  # wait for the rest of the payload
                acks.append((int(found[1]), bytes(buf[start:stop])))
                pos = stop + 2
                continue
            end = buf.find(CRLF, pos)
            if end < 0:
                break
            first = buf[pos]
            if first == 0x4D or first == 0x48:  # MSG / HMSG
                header = bytes(buf[pos:end]).split(b" ")
                total = int(header[-1])
                start = end + 2
                if start + total + 2 > size:
                    break
                if first == 0x48:  # HMSG subject sid [reply] hdr_len total_len
                    hdr_len = int(header[-2])
                    status = bytes(buf[start : start + hdr_len])
                    if not status.startswith(b"NATS/1.0\r\n"):  # "NATS/1.0 503": no stream
                        body = status.split(CRLF, 1)[0]
                    else:
                        body = bytes(buf[start + hdr_len : start + total])
                else:
                    body = bytes(buf[start : start + total])
                ident = self._owner._ident_of(header[1])
                if ident is not None:
                    acks.append((ident, body))
                pos = start + total + 2
                continue
            line = bytes(buf[pos:end])
            pos = end + 2
            if line == b"PING":
                self.write(PONG)
            elif line == b"PONG":
                self.outstanding_pings = 0
                if not self.pong.done():
                    self.pong.set_result(None)
            elif line.startswith(b"INFO "):
                set_info(self.info, line)
            elif line.startswith(b"-ERR"):
                self.error = error_text(line)
                log.warning("nats server error: %s", self.error)
        del buf[:pos]
        if acks or settled:
            owner._on_acks(acks, settled)
        if self._read_interval > 0 and self._throttle is None:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                loop = self._loop
                self._throttle = loop.call_at(
                    _next_tick(loop.time(), self._read_interval), self._unthrottle
                )

    def _unthrottle(self) -> None:
        self._throttle = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()


def _next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now` (the grid paced readers share)."""
    return (math.floor(now / interval + 1e-6) + 1) * interval


class JetStreamPublisher:
    """Publishes to JetStream streams with acknowledgement, a bounded window and resends.

    Create it inside the running event loop it will be used on.
    """

    def __init__(
        self,
        servers: str,
        *,
        name: str = "ssmd-connector",
        max_inflight: int = 8192,
        ack_timeout: float = 2.0,
        max_attempts: int = 10,
        flush_interval: float = 0.001,
        flush_bytes: int = 256 * 1024,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
        reconnect_wait_max: float = 2.0,
        ping_interval: float = 5.0,
        read_interval: float = 0.0,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self._servers = parse_servers(servers)
        self._name = name
        self._max_inflight = max_inflight
        self._ack_timeout = ack_timeout
        self._max_attempts = max_attempts
        self._flush_interval = flush_interval
        self._flush_bytes = flush_bytes
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._reconnect_wait_max = reconnect_wait_max
        self._ping_interval = ping_interval
        self._read_interval = read_interval
        self._inbox = f"_INBOX.{os.urandom(8).hex()}"
        self._reply_prefix = (self._inbox + ".").encode()
        # HPUB {subject} {inbox}.{id} {hdr_len} {total}\r\n{header with Nats-Msg-Id}{payload}
        self._hpub = (
            b"HPUB %s "
            + self._reply_prefix.replace(b"%", b"%%")
            + b"%d %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n%s\r\n"
        )
        # the whole of a plain PubAck (`{"stream":…,"seq":…}`), matched in one go
        self._plain_ack = re.compile(
            rb"MSG "
            + re.escape(self._reply_prefix)
            + rb'(\d+) \d+ \d+\r\n\{"stream":"[^"\r\n]*","seq":\d+\}\r\n'
        )
        self._plain_split = self._plain_ack.split
        # `MSG {inbox}.{id} {sid} {size}`: any other reply to us
        self._ack_line = re.compile(
            rb"MSG " + re.escape(self._reply_prefix) + rb"(\d+) \d+ (\d+)\r\n"
        )
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[int, _Pending] = {}
        self._max_payload = 1 << 20  # the server's default until its INFO says otherwise
        self._next_id = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._wire: _Wire | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._connected = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ever_connected = False
        self.last_error: str | None = None
        self.stats = PublishStats()

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._wire is not None

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def room(self) -> int:
        """How many more messages `publish` accepts before the window is full."""
        return self._max_inflight - len(self._inflight)

    @property
    def max_inflight(self) -> int:
        return self._max_inflight

    async def wait_for_room(self) -> None:
        await self._room.wait()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting (in the background: a NATS outage at start-up is just an outage)."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="nats-connect"))
        self._tasks.append(asyncio.create_task(self._timer_loop(), name="nats-timers"))

    async def drain(self, timeout: float) -> bool:
        """Flush and wait until every message is acknowledged or given up; False on timeout."""
        self._flush()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._closing = True
        await cancel_all(self._tasks)
        self._tasks.clear()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        wire = self._wire
        if wire is not None and wire.transport is not None:
            self._flush()
            wire.transport.close()
        self._wire = None

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, subject: bytes, payload: bytes, msg_id: bytes) -> None:
        """Queue one message for acknowledged delivery. Callers check `room` first.

        Publishing past a full window is allowed (it never loses the message) but defeats
        the memory bound; the connector only publishes when there is room.
        """
        if len(payload) + len(msg_id) + 27 > self._max_payload:  # 27: the header's fixed part
            self._refuse_oversized(payload, msg_id)
            return
        ident = self._next_id
        self._next_id = ident + 1
        inflight = self._inflight
        inflight[ident] = (subject, payload, msg_id, 1)
        self.stats.submitted += 1
        depth = len(inflight)
        if depth == 1:
            self._idle.clear()
        if depth >= self._max_inflight:
            self._room.clear()
        if self._wire is not None:
            hdr_len = len(msg_id) + 27  # b"NATS/1.0\r\nNats-Msg-Id: " + msg_id + b"\r\n\r\n"
            data = self._hpub % (subject, ident, hdr_len, hdr_len + len(payload), msg_id, payload)
            self._out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= self._flush_bytes:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_later(self._flush_interval, self._flush)

    def publish_many(self, items: list[tuple[bytes, bytes, bytes]], flush: bool = False) -> None:
        """`publish` for a batch of (subject, payload, msg_id), in order, with the same
        guarantees and less overhead per message (the connector publishes one socket read at
        a time). Callers check `room` first and pass at most that many. `flush`: write the
        batch now rather than on the flush timer."""
        inflight = self._inflight
        ident = self._next_id
        limit = self._max_payload - 27  # 27: the header's fixed part
        connected = self._wire is not None
        hpub = self._hpub
        out = self._out
        size = 0
        count = 0
        for subject, payload, msg_id in items:
            if len(payload) + len(msg_id) > limit:
                self._refuse_oversized(payload, msg_id)
                continue
            inflight[ident] = (subject, payload, msg_id, 1)
            if connected:
                hdr_len = len(msg_id) + 27
                data = hpub % (subject, ident, hdr_len, hdr_len + len(payload), msg_id, payload)
                out.append(data)
                size += len(data)
            ident += 1
            count += 1
        if not count:
            return
        self._next_id = ident
        self.stats.submitted += count
        self._idle.clear()
        if len(inflight) >= self._max_inflight:
            self._room.clear()
        if connected:
            self._out_bytes += size
            if flush or self._out_bytes >= self._flush_bytes:
                self._flush()
            elif self._flush_handle is None:
                self._flush_handle = self._loop.call_later(self._flush_interval, self._flush)

    def _refuse_oversized(self, payload: bytes, msg_id: bytes) -> None:
        """The server would answer -ERR and close the connection: refuse here, counted."""
        self.stats.given_up += 1
        log.error(
            "message %s of %d bytes exceeds the server's max_payload %d; dropped",
            msg_id.decode(),
            len(payload),
            self._max_payload,
        )

    def _send(self, ident: int, pending: _Pending) -> None:
        subject, payload, msg_id, _attempts = pending
        hdr_len = len(msg_id) + 27
        self._write(self._hpub % (subject, ident, hdr_len, hdr_len + len(payload), msg_id, payload))

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        if self._out_bytes >= self._flush_bytes:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self._flush_interval, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._out:
            return
        wire = self._wire
        if wire is not None and wire.transport is not None and not wire.transport.is_closing():
            wire.transport.writelines(self._out)
        # when disconnected the window still holds every message: they are resent on reconnect
        self._out = []
        self._out_bytes = 0

    # -- acknowledgements --------------------------------------------------------------------

    def _ident_of(self, subject: bytes) -> int | None:
        prefix = self._reply_prefix
        if not subject.startswith(prefix):
            return None
        try:
            return int(subject[len(prefix) :])
        except ValueError:
            return None

    def _on_acks(self, acks: list[tuple[int, bytes]], settled: int = 0) -> None:
        """Settle acknowledged messages (`settled` plain ones were already removed from the
        window by the parser); a refusal (`error` in the PubAck, or a 503 status when no
        stream listens) is resent after `ack_timeout`, like a lost acknowledgement."""
        inflight = self._inflight
        stats = self.stats
        stats.acked += settled
        for ident, body in acks:
            pending = inflight.pop(ident, None)
            if pending is None:
                continue  # a late ack for a message already resent under a new id
            if b'"error"' in body or not body.startswith(b"{"):
                stats.failures += 1
                why = body.decode("utf-8", "replace")
                if self.last_error != why:
                    log.warning("publish refused by the server (will resend): %s", why)
                self.last_error = why
                new = self._next_id
                self._next_id = new + 1
                inflight[new] = pending  # re-keyed, not sent: the timer resends it
                continue
            stats.acked += 1
            if b'"duplicate"' in body:
                stats.duplicates += 1
        if len(inflight) < self._max_inflight:
            self._room.set()
        if not inflight:
            self._idle.set()

    # -- timers: ack timeouts and keepalive ----------------------------------------------------

    async def _timer_loop(self) -> None:
        """Every tick, remember which id was next: ids below the mark taken `ack_timeout` ago
        were sent before then, so no message needs its own timestamp."""
        tick = min(0.25, self._ack_timeout / 4)
        marks: deque[tuple[float, int]] = deque()
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._wire is None:
                marks.clear()  # nothing is timing out while nothing can be sent
                continue
            marks.append((now, self._next_id))
            boundary = -1
            while marks and marks[0][0] <= now - self._ack_timeout:
                boundary = marks.popleft()[1]
            if boundary >= 0:
                self._expire(boundary)
            if now - last_ping >= self._ping_interval:
                last_ping = now
                self._ping()

    def _ping(self) -> None:
        wire = self._wire
        if wire is None:
            return
        if wire.outstanding_pings >= 2:
            log.warning("nats server stopped answering pings; reconnecting")
            if wire.transport is not None:
                wire.transport.abort()
            return
        wire.outstanding_pings += 1
        self._write(PING)

    def _expire(self, boundary: int) -> None:
        """Resend (or give up on) every message sent under an id below `boundary`."""
        expired: list[int] = []
        for ident in self._inflight:
            if ident >= boundary:
                break  # ids are inserted in increasing order
            expired.append(ident)
        for ident in expired:
            subject, payload, msg_id, attempts = self._inflight.pop(ident)
            if attempts >= self._max_attempts:
                self.stats.given_up += 1
                log.error("giving up on message %s after %d attempts", msg_id.decode(), attempts)
                continue
            self.stats.failures += 1
            self._resend((subject, payload, msg_id, attempts + 1))
        if expired:
            if len(self._inflight) < self._max_inflight:
                self._room.set()
            if not self._inflight:
                self._idle.set()

    def _resend(self, pending: _Pending) -> None:
        ident = self._next_id
        self._next_id = ident + 1
        self._inflight[ident] = pending
        self.stats.resent += 1
        if self._wire is not None:
            self._send(ident, pending)

    # -- connection ---------------------------------------------------------------------------

    def _connection_lost(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None
            self._connected.clear()
            if not self._closing:
                log.warning(
                    "lost the NATS connection; %d messages await resending", len(self._inflight)
                )

    async def _connect_loop(self) -> None:
        wait = self._reconnect_wait
        index = 0
        while not self._closing:
            server = self._servers[index % len(self._servers)]
            index += 1
            try:
                wire = await asyncio.wait_for(self._open(server), self._connect_timeout)
            except (OSError, TimeoutError, ConnectionError) as exc:
                self.last_error = f"{server}: {exc}"
                await asyncio.sleep(wait)
                wait = min(wait * 2, self._reconnect_wait_max)
                continue
            wait = self._reconnect_wait
            if self._ever_connected:
                self.stats.reconnects += 1
                log.info("reconnected to %s", server)
            self._ever_connected = True
            self._wire = wire
            self._connected.set()
            self._resend_all()
            await wire.closed
            if not self._closing:
                await asyncio.sleep(self._reconnect_wait)

    async def _open(self, server: ServerAddress) -> _Wire:
        loop = asyncio.get_running_loop()
        _transport, wire = await loop.create_connection(
            lambda: _Wire(self, self._read_interval), server.host, server.port
        )
        try:
            info = await wire.info
            check_info(info, "this publisher")
            self._max_payload = int(info.get("max_payload", self._max_payload))
            wire.write(connect_and_subscribe(server, self._name, self._inbox) + PING)
            await wire.pong
        except BaseException:
            if wire.transport is not None:
                wire.transport.abort()
            raise
        return wire

    def _resend_all(self) -> None:
        """After (re)connecting, send every unacknowledged message again under new ids."""
        if not self._inflight:
            return
        pending = list(self._inflight.values())
        self._inflight.clear()
        for item in pending:
            self._resend(item)
        self._flush()
