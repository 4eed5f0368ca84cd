"""The archiver's data path to JetStream: pull requests, deliveries and acks on a raw socket.

Why not nats-py's `fetch`: it awaits each message through a queue with a timeout (≈ 25 µs per
message, ≈ 40k msg/s without acking on this machine); the archiver must beat a naive
fetch-and-ack loop by 2.5×. This module speaks the small part of the NATS client protocol a
pull consumer needs, on its own connection (the JetStream API calls — consumer info, create,
delete — go through nats-py on a second connection, `runtime/archiver.py`):

- `SUB {inbox}.*` once per connection; each pull request is a `PUB
  $JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer} {inbox}.{n}` with `{"batch", "max_bytes",
  "expires"}`. At most one request is open at a time, so at most `batch` messages (and
  `max_bytes` bytes) are ever held: memory is bounded whatever the backlog.
- A delivery is kept as raw pieces (subject, ack reply subject, header block, payload); the
  reply subject `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts
  ns>.<pending>` carries everything the archiver needs to know about it, so nothing else is
  parsed here. `Delivery` is a tuple: one is built per message.
- A status message on the request's inbox (`404 No Messages`, `408 Request Timeout`, `409 …`)
  ends the request; so does the `batch`-th delivery, the connection dropping, or `expires`
  plus a margin passing without either (a lost status).
- `ack(reply)` sends an empty message to a delivery's reply subject; for a consumer with
  `AckPolicy.ALL` that acknowledges every message up to it (the archiver's batched ack).
- The connection is re-established with capped backoff; a request that was open is over.

Supported server URLs: `nats://[user:password@|token@]host:port`, comma-separated (tried in
turn), as for the connector's publisher. TLS is not spoken here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
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

log = logging.getLogger("ssmd.archiver.wire")

# (subject, ack reply subject, header block or b"", payload)
Delivery = tuple[bytes, bytes, bytes, bytes]

_ACK_PREFIX = b"$JS.ACK."
# `HMSG subject sid [reply] hdr_len total_len` / `MSG subject sid [reply] size`
_HMSG = re.compile(rb"HMSG ([^ \r\n]+) \d+ (?:([^ \r\n]+) )?(\d+) (\d+)\r\n")
_MSG = re.compile(rb"MSG ([^ \r\n]+) \d+ (?:([^ \r\n]+) )?(\d+)\r\n")
_STATUS = re.compile(rb"NATS/1\.0 (\d{3})([^\r\n]*)")


@dataclass(slots=True)
class PullStats:
    requests: int = 0
    deliveries: int = 0
    statuses: int = 0
    acks: int = 0
    reconnects: int = 0


class _Wire(asyncio.Protocol):
    """One TCP connection: parses server operations and hands them to the `PullClient`."""

    def __init__(self, owner: PullClient) -> None:
        self._owner = owner
        self._buf = b""  # an incomplete operation left over from the previous read
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.error: str | None = None
        self.outstanding_pings = 0
        self.pings = 0  # PINGs written; the server answers them in order
        self.pongs = 0  # PONGs received
        self.pong_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        error = ConnectionError(self.error or "connection closed")
        if not self.info.done():
            self.info.set_exception(error)
        for _, future in self.pong_waiters:
            if not future.done():
                future.set_exception(error)
        self.pong_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._connection_lost(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def ping(self) -> asyncio.Future[None]:
        """Send a PING; the future resolves on its own PONG (not an earlier one's)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pings += 1
        self.pong_waiters.append((self.pings, future))
        self.write(PING)
        return future

    def keepalive(self) -> None:
        """A PING nobody waits for (the ping loop counts unanswered ones)."""
        self.pings += 1
        self.write(PING)

    def data_received(self, data: bytes) -> None:
        buf = self._buf + data if self._buf else data  # bytes: slices of it are bytes
        pos = 0
        size = len(buf)
        owner = self._owner
        deliveries = owner.received
        inbox = owner._inbox_prefix
        hmsg = _HMSG.match
        got = 0
        while pos < size:
            found = hmsg(buf, pos)
            if found is not None:
                start = found.end()
                total = int(found[4])
                stop = start + total
                if stop + 2 > size:
                    break  # the rest of the message is still on its way
                hdr_end = start + int(found[3])
                reply = found[2]
                if reply is not None and reply.startswith(_ACK_PREFIX):
                    deliveries.append((found[1], reply, buf[start:hdr_end], buf[hdr_end:stop]))
                    got += 1
                elif found[1].startswith(inbox):
                    owner._on_status(found[1], buf[start:hdr_end])
                pos = stop + 2
                continue
            end = buf.find(CRLF, pos)
            if end < 0:
                break
            if buf[pos] == 0x4D:  # MSG: a message stored without headers
                found = _MSG.match(buf, pos)
                if found is None:
                    log.warning("unparsable line from the server: %r", buf[pos:end][:200])
                    pos = end + 2
                    continue
                start = found.end()
                stop = start + int(found[3])
                if stop + 2 > size:
                    break
                reply = found[2]
                if reply is not None and reply.startswith(_ACK_PREFIX):
                    deliveries.append((found[1], reply, b"", buf[start:stop]))
                    got += 1
                pos = stop + 2
                continue
            line = buf[pos:end]
            pos = end + 2
            if line == b"PING":
                self.write(PONG)
            elif line == b"PONG":
                self.outstanding_pings = 0
                self.pongs += 1
                while self.pong_waiters and self.pong_waiters[0][0] <= self.pongs:
                    _, future = self.pong_waiters.pop(0)
                    if not future.done():
                        future.set_result(None)
            elif line.startswith(b"INFO "):
                set_info(self.info, line)
            elif line.startswith(b"-ERR"):
                self.error = error_text(line)
                log.warning("nats server error: %s", self.error)
        self._buf = buf[pos:]
        if got:
            owner._on_deliveries(got)


class PullClient:
    """Pull requests and acks for one durable consumer. Create inside the running loop."""

    def __init__(
        self,
        servers: str,
        stream: str,
        consumer: str,
        *,
        name: str = "ssmd-archiver",
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
        reconnect_wait_max: float = 2.0,
        ping_interval: float = 5.0,
    ) -> None:
        self._servers: list[ServerAddress] = parse_servers(servers)
        self._name = name
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
        self._inbox = f"_INBOX.{os.urandom(8).hex()}"
        self._inbox_prefix = (self._inbox + ".").encode()
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._reconnect_wait_max = reconnect_wait_max
        self._ping_interval = ping_interval
        self.received: list[Delivery] = []  # deliveries not yet taken; bounded by the request
        self.max_payload = 1 << 20
        self.stats = PullStats()
        self.last_error: str | None = None
        self._wire: _Wire | None = None
        self._connected = asyncio.Event()
        self._changed = asyncio.Event()  # a delivery, a status, a request end or a disconnect
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._ever_connected = False
        self._request_id = 0
        self._open_request: bytes | None = None  # the inbox subject of the open request
        self._request_left = 0
        self._request_deadline = 0.0
        self.generation = 0  # bumped on every (re)connection
        self.consumer_gone = False  # a request was answered "no such consumer" (or deleted)

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._wire is not None

    @property
    def request_open(self) -> bool:
        if self._open_request is not None and time.monotonic() > self._request_deadline:
            log.warning(
                "pull request %s ended without a status; assuming it expired", self._open_request
            )
            self._end_request()
        return self._open_request is not None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def wait_changed(self, timeout: float) -> None:
        """Until something arrives or changes, or `timeout`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    def wake(self) -> None:
        """End the current `wait_changed` early (something else needs attention)."""
        self._changed.set()

    def take(self) -> list[Delivery]:
        """Every delivery received so far, in arrival order; the client forgets them."""
        out = self.received
        self.received = []
        return out

    # -- requests and acks --------------------------------------------------------------------

    def request(self, batch: int, max_bytes: int, expires: float) -> bool:
        """Open a pull request for up to `batch` messages / `max_bytes` bytes, waiting at most
        `expires` seconds for them. False (nothing sent) when not connected or one is open."""
        wire = self._wire
        if wire is None or self.request_open:
            return False
        self._request_id += 1
        reply = self._inbox_prefix + str(self._request_id).encode()
        body = json.dumps(
            {"batch": batch, "max_bytes": max_bytes, "expires": int(expires * 1e9)}
        ).encode()
        wire.write(b"PUB %s %s %d\r\n%s\r\n" % (self._next_subject, reply, len(body), body))
        self._open_request = reply
        self._request_left = batch
        self._request_deadline = time.monotonic() + expires + 2.0
        self.stats.requests += 1
        return True

    def ack(self, reply: bytes) -> bool:
        """Acknowledge one delivery (all up to it, for an ack-all consumer). False when not
        connected: the ack is lost and the server redelivers; the caller may ack again."""
        wire = self._wire
        if wire is None:
            return False
        wire.write(b"PUB %s 0\r\n\r\n" % reply)
        self.stats.acks += 1
        return True

    async def flush(self, timeout: float = 2.0) -> bool:
        """PING/PONG round trip: everything written before it has reached the server."""
        wire = self._wire
        if wire is None:
            return False
        try:
            await asyncio.wait_for(wire.ping(), timeout)
        except (TimeoutError, ConnectionError):
            return False
        return True

    def forget_request(self) -> None:
        """The open request is void (its consumer was deleted): allow a new one."""
        self._open_request = None
        self._request_left = 0

    def _end_request(self) -> None:
        self._open_request = None
        self._request_left = 0
        self._changed.set()

    def _on_deliveries(self, count: int) -> None:
        self.stats.deliveries += count
        if self._open_request is not None:
            self._request_left -= count
            if self._request_left <= 0:
                self._open_request = None
        self._changed.set()

    def _on_status(self, subject: bytes, header: bytes) -> None:
        self.stats.statuses += 1
        found = _STATUS.match(header)
        code = int(found[1]) if found else 0
        log.debug("status %r on %r (open %r)", header, subject, self._open_request)
        if code == 100:  # idle heartbeat: not an end
            return
        if subject == self._open_request:
            if code == 503 or (code == 409 and b"Consumer Deleted" in header):
                self.consumer_gone = True  # nothing answers for the consumer any more
            elif code not in (404, 408, 409):
                text = found[2].strip().decode("utf-8", "replace") if found else repr(header)
                log.warning("pull request ended with status %d %s", code, text)
            self._end_request()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting (in the background: an outage is just an outage)."""
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="nats-pull-connect"))
        self._tasks.append(asyncio.create_task(self._ping_loop(), name="nats-pull-ping"))

    async def close(self) -> None:
        self._closing = True
        await cancel_all(self._tasks)
        self._tasks.clear()
        wire = self._wire
        self._wire = None
        if wire is not None and wire.transport is not None:
            wire.transport.close()

    def unsubscribe(self) -> None:
        """Stop receiving deliveries (the server drops our open request)."""
        if self._wire is not None:
            self._wire.write(b"UNSUB 1\r\n")

    def _connection_lost(self, wire: _Wire) -> None:
        if self._wire is wire:
            self._wire = None
            self._connected.clear()
            self._open_request = None
            self._changed.set()
            if not self._closing:
                log.warning("lost the NATS connection (pull consumer)")

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            wire = self._wire
            if wire is None:
                continue
            if wire.outstanding_pings >= 2:
                log.warning("nats server stopped answering pings; reconnecting")
                if wire.transport is not None:
                    wire.transport.abort()
                continue
            wire.outstanding_pings += 1
            wire.keepalive()

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
                log.info("pull consumer reconnected to %s", server)
            self._ever_connected = True
            self.generation += 1
            self._wire = wire
            self._connected.set()
            self._changed.set()
            await wire.closed
            if not self._closing:
                await asyncio.sleep(self._reconnect_wait)

    async def _open(self, server: ServerAddress) -> _Wire:
        loop = asyncio.get_running_loop()
        _transport, wire = await loop.create_connection(
            lambda: _Wire(self), server.host, server.port
        )
        try:
            info = await wire.info
            check_info(info, "the archiver")
            self.max_payload = int(info.get("max_payload", self.max_payload))
            wire.write(connect_and_subscribe(server, self._name, self._inbox))
            await wire.ping()
        except BaseException:
            if wire.transport is not None:
                wire.transport.abort()
            raise
        return wire
