"""A WebSocket client connection on a raw asyncio `Protocol`, driving websockets' sans-I/O core.

Why not `websockets.asyncio`: its `recv()` hands over one message per call, through a queue
and a future, so every frame of a paced feed costs a task wake-up on top of the socket read
(its receive alone measured 11–22 µs per message at 10k msg/s here, depending on the
machine's load; see docs/BENCHMARKS.md, "Connector"). Here the
event loop calls `data_received` with whatever the socket had; websockets'
`ClientProtocol` (the same frame parser, handshake and closing logic the asyncio client
uses) turns it into frames, and every complete message of that read is handed to
`on_messages` at once, synchronously: no queue, no task, no wake-up per frame.

What this layer does and does not do:

- handshake: the request built by `ClientProtocol.connect()` plus the caller's headers
  (e.g. signed Kalshi headers); `opened` resolves with the response, or fails with
  websockets' `InvalidHandshake` (`InvalidStatus` carries the HTTP status);
- frames: text and binary messages (fragmented ones reassembled, bounded by `max_size`),
  pings answered and the closing handshake done by `ClientProtocol`; no compression
  extension is offered;
- flow control: `pause_reading()` / `resume_reading()` stop and restart reading the
  socket, so TCP pushes back on the server; nothing is queued here beyond one read;
- paced reading (`read_interval` > 0): after a read, the socket is not read again before
  the next multiple of `read_interval` on the loop's clock, so a busy feed is read in a few
  large reads rather than many small ones. On this kind of machine each wake-up of the
  process costs as much CPU as parsing several frames, so this is the main saving at a paced
  rate; it adds at most `read_interval` of latency, and none to the first message after
  the socket was idle for an interval. The grid (`runtime/pacing.py`) is shared with the NATS connection's
  acknowledgement reads, so both sockets are served in the same wake-up;
- liveness: `activity` is set on every read, for the owner's staleness check; `ping()`
  sends a ping (any frame the server sends back counts as activity);
- closing: `close()` sends a close frame and aborts the socket if the server has not closed
  it within `close_timeout`; `closed` resolves once the socket is gone.
"""

from __future__ import annotations

import asyncio
import os
import ssl as ssl_module
from collections.abc import Callable, Mapping
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidMessage
from websockets.frames import BINARY, CONT, TEXT, CloseCode, Frame
from websockets.http11 import USER_AGENT, Response
from websockets.protocol import CLOSED, OPEN
from websockets.uri import WebSocketURI

from runtime.pacing import next_tick

OnMessages = Callable[[list[bytes]], None]


class WsConnection(asyncio.Protocol):
    """One client WebSocket connection; create it with `open_connection`."""

    def __init__(
        self,
        ws: ClientProtocol,
        on_messages: OnMessages,
        *,
        close_timeout: float = 2.0,
        read_interval: float = 0.0,
    ) -> None:
        self._ws = ws
        self._on_messages = on_messages
        self._close_timeout = close_timeout
        self._read_interval = read_interval
        self._throttle: asyncio.TimerHandle | None = None  # paced reading: until the next tick
        self._reading = True
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[Response] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.activity = False  # set on every read; the owner clears it when it looks
        self.paused = False
        self.messages = 0  # complete messages handed over
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = TEXT
        self._abort_handle: asyncio.TimerHandle | None = None
        self.lost_reason: Exception | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport: no isinstance)
        self.transport = cast(asyncio.Transport, transport)
        self._send_pending()  # the handshake request

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        events = ws.events_received()
        if ws.writes:  # pongs, the echo of a close frame, EOF
            self._send_pending()
        self.activity = True
        messages: list[bytes] = []
        for event in events:
            if type(event) is not Frame:
                self._handshake(event)
                continue
            opcode = event.opcode
            if opcode is TEXT or opcode is BINARY:
                if event.fin:
                    messages.append(bytes(event.data))
                else:
                    self._fragments = [bytes(event.data)]
            elif opcode is CONT and self._fragments is not None:
                self._fragments.append(bytes(event.data))
                if event.fin:
                    messages.append(b"".join(self._fragments))
                    self._fragments = None
            # PING (answered by the protocol), PONG (activity) and CLOSE need nothing here
        if not self.opened.done() and ws.handshake_exc is not None:
            self._fail_open(ws.handshake_exc)
        if ws.close_expected():
            self._schedule_abort()
        if messages:
            self.messages += len(messages)
            self._on_messages(messages)
        if self._read_interval > 0 and self._throttle is None:
            loop = self._loop
            self._throttle = loop.call_at(
                next_tick(loop.time(), self._read_interval), self._unthrottle
            )
            self._apply_reading()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._send_pending()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.receive_eof()  # idempotent: the protocol's state becomes CLOSED
        self.lost_reason = exc
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        if not self.opened.done():
            self._fail_open(
                self._ws.handshake_exc
                or InvalidMessage("connection closed during the opening handshake")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    # -- commands ---------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._ws.state is OPEN

    def send_text(self, data: bytes) -> bool:
        """Send one text message (UTF-8 bytes); False when the connection is not open."""
        if self._ws.state is not OPEN:
            return False
        self._ws.send_text(data)
        self._send_pending()
        return True

    def ping(self) -> None:
        if self._ws.state is OPEN:
            self._ws.send_ping(os.urandom(4))
            self._send_pending()

    def pause_reading(self) -> None:
        """Stop reading the socket until `resume_reading()` (the downstream is full)."""
        self.paused = True
        self._apply_reading()

    def resume_reading(self) -> None:
        self.paused = False
        self._apply_reading()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake; the socket is aborted after `close_timeout`."""
        ws = self._ws
        if ws.state is OPEN:
            ws.send_close(code, reason)
            self._send_pending()
            self._schedule_abort()
        else:
            self.abort()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (e.g. stale): send a close frame and stop waiting for it."""
        if self._ws.state is OPEN:
            self._ws.fail(code, reason)
            self._send_pending()
        self._schedule_abort()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def describe_close(self) -> str:
        """Why the connection ended, for logs."""
        ws = self._ws
        if ws.state is not CLOSED:
            return "open"
        if ws.close_rcvd is not None:
            return f"close frame {ws.close_rcvd.code} {ws.close_rcvd.reason!r}".rstrip()
        if ws.parser_exc is not None:
            return f"{type(ws.parser_exc).__name__}: {ws.parser_exc}"
        if self.lost_reason is not None:
            return f"{type(self.lost_reason).__name__}: {self.lost_reason}"
        return "the server closed the connection without a close frame"

    # -- internals --------------------------------------------------------------------------

    def _unthrottle(self) -> None:
        self._throttle = None
        self._apply_reading()

    def _apply_reading(self) -> None:
        """Read the socket unless paused by the downstream or waiting for the next tick."""
        reading = not self.paused and self._throttle is None
        transport = self.transport
        if reading == self._reading or transport is None or transport.is_closing():
            return
        self._reading = reading
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def _send_pending(self) -> None:
        transport = self.transport
        for data in self._ws.data_to_send():
            if transport is None or transport.is_closing():
                continue
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):  # uvloop raises RuntimeError when closing
                    transport.close()
            else:
                transport.close()

    def _handshake(self, event: object) -> None:
        if isinstance(event, Response) and not self.opened.done():
            if self._ws.handshake_exc is not None:
                self._fail_open(self._ws.handshake_exc)
            else:
                self.opened.set_result(event)

    def _fail_open(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: no "never retrieved" warning if unawaited
        self.abort()

    def _schedule_abort(self) -> None:
        if self._abort_handle is None and not self.closed.done():
            self._abort_handle = self._loop.call_later(self._close_timeout, self.abort)


async def open_connection(
    uri: WebSocketURI,
    on_messages: OnMessages,
    *,
    headers: Mapping[str, str] | None = None,
    max_size: int = 4 << 20,
    open_timeout: float = 10.0,
    close_timeout: float = 2.0,
    read_interval: float = 0.0,
    ssl: ssl_module.SSLContext | None = None,
) -> WsConnection:
    """Connect, perform the opening handshake, and return the open connection.

    Raises `OSError` (TCP/TLS), `TimeoutError`, or websockets' `InvalidHandshake`
    (`InvalidStatus` for a refused upgrade, e.g. HTTP 401).
    """
    ws = ClientProtocol(uri, max_size=max_size)  # no extensions: no compression
    request = ws.connect()
    if headers:
        request.headers.update(headers)
    request.headers.setdefault("User-Agent", USER_AGENT)
    ws.send_request(request)
    loop = asyncio.get_running_loop()
    if uri.secure and ssl is None:
        ssl = ssl_module.create_default_context()
    conn: WsConnection | None = None
    try:
        async with asyncio.timeout(open_timeout):
            _transport, conn = await loop.create_connection(
                lambda: WsConnection(
                    ws, on_messages, close_timeout=close_timeout, read_interval=read_interval
                ),
                uri.host,
                uri.port,
                ssl=ssl,
                server_hostname=uri.host if ssl is not None else None,
            )
            await conn.opened
    except BaseException:
        if conn is not None:
            conn.abort()
        raise
    return conn
