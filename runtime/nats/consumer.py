"""The archiver's data path from JetStream: pull requests, deliveries and acks.

Why not nats-py's `fetch`: it awaits each message through a queue with a timeout (≈ 25 µs per
message, ≈ 40k msg/s without acking on this machine); the archiver must beat a naive
fetch-and-ack loop by 2.5×. This module is the pull consumer's own logic on the runtime's one
NATS connection (`runtime/nats/connection.py`: servers, TLS, credentials, reconnect,
keepalive); the JetStream API calls — consumer info, create, delete — go through nats-py on a
second connection (`runtime/archiver/service.py`):

- `SUB {inbox}.*` on every connection; each pull request is a `PUB
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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

from runtime.nats.connection import NatsConnection
from runtime.nats.protocol import Msg, pub, status_of, unsub
from ssmd_infra.core.subjects import INBOX_PREFIX

log = logging.getLogger("ssmd.archiver.wire")

# (subject, ack reply subject, header block or b"", payload)
Delivery = tuple[bytes, bytes, bytes, bytes]

_ACK_PREFIX = b"$JS.ACK."
_SID = 1  # the inbox subscription, the only one


@dataclass(slots=True)
class PullStats:
    requests: int = 0
    deliveries: int = 0
    statuses: int = 0
    acks: int = 0
    reconnects: int = 0


class PullClient:
    """Pull requests and acks for one durable consumer. Create inside the running loop.
    `tls`, `tls_ca_file` and `nkey_seed_file` are the connection's; replies come back under
    `inbox_prefix` (a role's own under NATS authorization: `runtime/nats/credentials.py`)."""

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
        tls: ssl.SSLContext | None = None,
        tls_ca_file: Path | None = None,
        nkey_seed_file: Path | None = None,
        inbox_prefix: str = INBOX_PREFIX,
    ) -> None:
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}".encode()
        inbox = f"{inbox_prefix}.{os.urandom(8).hex()}"
        self._inbox_prefix = (inbox + ".").encode()
        self.connection = NatsConnection(
            servers,
            name=name,
            on_messages=self._on_messages,
            subscriptions=[inbox.encode() + b".*"],
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
            tls=tls,
            tls_ca_file=tls_ca_file,
            nkey_seed_file=nkey_seed_file,
            connect_timeout=connect_timeout,
            reconnect_wait=reconnect_wait,
            reconnect_wait_max=reconnect_wait_max,
            ping_interval=ping_interval,
        )
        self.received: list[Delivery] = []  # deliveries not yet taken; bounded by the request
        self.stats = PullStats()
        self._changed = asyncio.Event()  # a delivery, a status, a request end or a disconnect
        self._request_id = 0
        self._open_request: bytes | None = None  # the inbox subject of the open request
        self._request_left = 0
        self._request_deadline = 0.0
        self.generation = 0  # bumped on every (re)connection
        self.consumer_gone = False  # a request was answered "no such consumer" (or deleted)

    # -- state --------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.connection.connected

    @property
    def max_payload(self) -> int:
        return self.connection.max_payload

    @property
    def last_error(self) -> str | None:
        return self.connection.last_error

    @property
    def request_open(self) -> bool:
        if self._open_request is not None and time.monotonic() > self._request_deadline:
            log.warning(
                "pull request %s ended without a status; assuming it expired", self._open_request
            )
            self._end_request()
        return self._open_request is not None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected, False on timeout; raises `NatsRefused` for refused
        credentials or a TLS mismatch (see `NatsConnection.wait_connected`)."""
        return await self.connection.wait_connected(timeout)

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
        if not self.connection.connected or self.request_open:
            return False
        self._request_id += 1
        reply = self._inbox_prefix + str(self._request_id).encode()
        body = json.dumps(
            {"batch": batch, "max_bytes": max_bytes, "expires": int(expires * 1e9)}
        ).encode()
        self.connection.write(pub(self._next_subject, body, reply))
        self._open_request = reply
        self._request_left = batch
        self._request_deadline = time.monotonic() + expires + 2.0
        self.stats.requests += 1
        return True

    def ack(self, reply: bytes) -> bool:
        """Acknowledge one delivery (all up to it, for an ack-all consumer). False when not
        connected: the ack is lost and the server redelivers; the caller may ack again."""
        if not self.connection.write(pub(reply, b"")):
            return False
        self.stats.acks += 1
        return True

    async def flush(self, timeout: float = 2.0) -> bool:
        """PING/PONG round trip: everything written before it has reached the server."""
        return await self.connection.flush(timeout)

    def forget_request(self) -> None:
        """The open request is void (its consumer was deleted): allow a new one."""
        self._open_request = None
        self._request_left = 0

    def _end_request(self) -> None:
        self._open_request = None
        self._request_left = 0
        self._changed.set()

    # -- what the server sends ----------------------------------------------------------------

    def _on_messages(self, msgs: list[Msg]) -> None:
        """One socket read's messages: deliveries (their reply is a `$JS.ACK.` subject) are
        kept; a message on our inbox is a status that ends (or not) the open request."""
        deliveries = self.received
        subjects, _sids, replies, headers, payloads = zip(*msgs, strict=True)
        if None not in replies and all(map(bytes.startswith, replies, repeat(_ACK_PREFIX))):
            deliveries.extend(zip(subjects, replies, headers, payloads, strict=True))
            got = len(msgs)  # the common read: deliveries only, kept in C-level passes
        else:
            got = self._sort_out(msgs)
        if got:
            self.stats.deliveries += got
            if self._open_request is not None:
                self._request_left -= got
                if self._request_left <= 0:
                    self._open_request = None
            self._changed.set()

    def _sort_out(self, msgs: list[Msg]) -> int:
        """Deliveries kept, statuses on our inbox acted on, one message at a time."""
        deliveries = self.received
        inbox = self._inbox_prefix
        got = 0
        for subject, _sid, reply, headers, payload in msgs:
            if reply is not None and reply.startswith(_ACK_PREFIX):
                deliveries.append((subject, reply, headers, payload))
                got += 1
            elif subject.startswith(inbox):
                self._on_status(subject, headers)
        return got

    def _on_status(self, subject: bytes, headers: bytes) -> None:
        self.stats.statuses += 1
        status = status_of(headers)
        code, text = status if status is not None else (0, repr(headers))
        log.debug("status %r on %r (open %r)", headers, subject, self._open_request)
        if code == 100:  # idle heartbeat: not an end
            return
        if subject == self._open_request:
            if code == 503 or (code == 409 and "Consumer Deleted" in text):
                self.consumer_gone = True  # nothing answers for the consumer any more
            elif code not in (404, 408, 409):
                log.warning("pull request ended with status %d %s", code, text)
            self._end_request()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting (in the background: an outage is just an outage)."""
        await self.connection.start()

    async def close(self) -> None:
        await self.connection.close()

    def unsubscribe(self) -> None:
        """Stop receiving deliveries (the server drops our open request)."""
        self.connection.write(unsub(_SID))

    def _on_connect(self) -> None:
        self.stats.reconnects = self.connection.stats.reconnects
        self.generation += 1
        self._changed.set()

    def _on_disconnect(self) -> None:
        self._open_request = None
        self._changed.set()
        log.warning("pull consumer: lost the NATS connection")
