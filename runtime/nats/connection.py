"""The one asyncio NATS connection of the runtime: servers, TLS, credentials, reconnect,
keepalive, read pacing and server errors, around the sans-I/O `Parser`.

Its users (`runtime/nats/publisher.py`, `runtime/nats/consumer.py`) bring only their own
logic: they get every message of a socket read in one call (`on_messages`, synchronously,
from the event loop's read callback: no queue, no task, no wake-up per message), and write
through `write`/`writelines`. Everything below is done once, here:

- servers: `parse_nats_urls` (`ssmd_infra.core.nats_url`, the rule the stack configuration
  validates with), comma-separated, tried in turn;
- TLS: the server sends its INFO in plaintext; the connection is then upgraded with
  `loop.start_tls` when the URL is `tls://` or the server says `tls_required`. A `tls://`
  URL against a server that offers no TLS is refused (it would otherwise be sent in clear).
  Certificates are checked against `tls` (an `ssl.SSLContext`) or `tls_ca_file`, else the
  system's CAs;
- credentials: user:password or a token from the URL, or an NKEY seed file whose key signs
  the server's nonce. A refused credential, a TLS mismatch or a failed certificate check is a
  `NatsRefused` naming the server (credentials never appear): logged, kept in `refusal`,
  raised by `wait_connected`; the connection keeps trying (the server's configuration may be
  fixed while we wait), with the runtime's one backoff (`runtime/backoff.py`);
- keepalive: a PING every `ping_interval`; `max_outstanding_pings` unanswered ones drop the
  connection (then it reconnects); the server's PINGs are answered;
- read pacing (`read_interval` > 0): after a read the socket is not read again before the
  next tick of the grid every paced reader of the process shares (`runtime/pacing.py`);
- server errors: `-ERR 'Permissions Violation for Publish to "subject"'` (and Subscription)
  does not close the connection; it is logged once per subject and counted in
  `stats.permission_violations`. Any other `-ERR` precedes the server closing the
  connection; it becomes `last_error`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nkeys

from runtime.backoff import Backoff
from runtime.nats.protocol import (
    PING,
    PONG,
    Err,
    Info,
    Msg,
    Parser,
    Ping,
    Pong,
    ProtocolError,
    connect,
    sub,
)
from runtime.pacing import next_tick
from runtime.tasks import cancel_all
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.nats_url import ServerAddress, parse_nats_urls

log = logging.getLogger("ssmd.nats")

OnMessages = Callable[[list[Msg]], None]

_PERMISSION = re.compile(r'Permissions Violation for (.+?) (?:to|of) "([^"]*)"')
_AUTH = re.compile(r"authorization|authentication|user authentication", re.IGNORECASE)
# distinct subjects whose permissions violation is logged (the rest are only counted)
MAX_LOGGED_DENIALS = 1024


class NatsRefused(ConnectionError):
    """The server refused this client for a reason waiting alone does not fix (credentials,
    TLS). The message names the server, never the credentials."""


@dataclass(slots=True)
class ConnectionStats:
    """Counters of the connection; the processes export them as metrics."""

    connects: int = 0  # handshakes completed
    reconnects: int = 0  # handshakes completed after the first
    server_errors: int = 0  # -ERR lines received
    permission_violations: int = 0  # -ERR 'Permissions Violation ...' (publish or subscribe)
    protocol_errors: int = 0  # unparsable server output (the connection was dropped)


def load_nkey(path: Path) -> nkeys.KeyPair:
    """The user key whose seed is in `path` (the one line starting with `SU`); a
    `ConfigError` naming the file otherwise. The seed never appears in a message."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"NKEY seed file {path}: cannot read it ({exc.strerror})") from None
    seeds = [line.strip() for line in text.splitlines() if line.strip().startswith(b"SU")]
    if len(seeds) != 1:
        raise ConfigError(
            f"NKEY seed file {path}: expected exactly one user seed (a line starting with "
            f"'SU'), found {len(seeds)}"
        )
    try:
        pair = nkeys.from_seed(bytearray(seeds[0]))
        _ = pair.public_key  # decodes and checks the seed
    except Exception:  # nkeys raises its own bare exception classes
        raise ConfigError(f"NKEY seed file {path}: not a valid NKEY user seed") from None
    return pair


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server against `ca_file` (or the system CAs)."""
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"NATS TLS CA file {ca_file}: {exc}") from None


class _Wire(asyncio.Protocol):
    """One socket to one server: feeds the parser, answers PINGs, tracks PONGs, paces reads.
    Survives `start_tls` (the TLS transport then calls it with decrypted bytes)."""

    def __init__(self, owner: NatsConnection, server: ServerAddress) -> None:
        self._owner = owner
        self.server = server
        self._parser = Parser()
        self._on_messages = owner._on_messages
        self._read_interval = owner._read_interval
        self._loop = asyncio.get_running_loop()
        self._throttle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.info: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.ready = False  # handshake done: messages flow, reads are paced
        self.error: str | None = None  # the -ERR that preceded the server closing us
        self.outstanding_pings = 0  # keepalive PINGs not answered yet
        self._pings = 0  # PINGs written; the server answers them in order
        self._pongs = 0
        self._pong_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport: no isinstance)
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._throttle is not None:
            self._throttle.cancel()
            self._throttle = None
        error = ConnectionError(self.error or (str(exc) if exc else "connection closed"))
        if not self.info.done():
            self.info.set_exception(error)
        for _, future in self._pong_waiters:
            if not future.done():
                future.set_exception(error)
        self._pong_waiters.clear()
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._wire_lost(self)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        try:
            msgs = parser.feed(data)
        except ProtocolError as exc:
            self._owner._protocol_error(self, exc)
            return
        if parser.controls:
            self._controls()
        if msgs:
            self._on_messages(msgs)
        if self._read_interval > 0 and self.ready and self._throttle is None:
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.pause_reading()
                loop = self._loop
                self._throttle = loop.call_at(
                    next_tick(loop.time(), self._read_interval), self._unthrottle
                )

    def _unthrottle(self) -> None:
        self._throttle = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- control operations ---------------------------------------------------------------

    def _controls(self) -> None:
        for op in self._parser.take_controls():
            kind = type(op)
            if kind is Ping:
                self.write(PONG)
            elif kind is Pong:
                self.outstanding_pings = 0
                self._pongs += 1
                waiters = self._pong_waiters
                while waiters and waiters[0][0] <= self._pongs:
                    future = waiters.popleft()[1]
                    if not future.done():
                        future.set_result(None)
            elif kind is Info:
                info = cast(Info, op).info
                if not self.info.done():
                    self.info.set_result(info)
                elif info.get("ldm"):
                    log.warning("%s is entering lame duck mode (it will close soon)", self.server)
            elif kind is Err:
                self._owner._server_error(self, cast(Err, op).message)

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def ping(self) -> asyncio.Future[None]:
        """Send a PING; the future resolves on its own PONG (not an earlier one's)."""
        future: asyncio.Future[None] = self._loop.create_future()
        self._pings += 1
        self._pong_waiters.append((self._pings, future))
        self.write(PING)
        return future

    def keepalive(self) -> bool:
        """A PING nobody waits for; False (and the socket aborted) when too many are
        unanswered already."""
        if self.outstanding_pings >= self._owner._max_outstanding_pings:
            log.warning("%s stopped answering pings; reconnecting", self.server)
            self.abort()
            return False
        self.outstanding_pings += 1
        self._pings += 1
        self.write(PING)
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class NatsConnection:
    """A NATS client connection that stays up. Create it inside the running event loop.

    `on_messages` gets the messages of each socket read; `subscriptions` (subjects, given
    sids 1, 2, …) are subscribed on every connection, in the handshake; `on_connect` runs
    after every handshake (e.g. resend what was in flight), `on_disconnect` when the socket
    is lost (not when `close()` is called).
    """

    def __init__(
        self,
        servers: str,
        *,
        name: str,
        on_messages: OnMessages,
        subscriptions: Sequence[bytes] = (),
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        tls_ca_file: Path | None = None,
        nkey_seed_file: Path | None = None,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
        reconnect_wait_max: float = 2.0,
        ping_interval: float = 5.0,
        max_outstanding_pings: int = 2,
        read_interval: float = 0.0,
    ) -> None:
        self.servers: list[ServerAddress] = parse_nats_urls(servers)
        self.name = name
        self._on_messages = on_messages
        self._subscribe = b"".join(sub(s, sid) for sid, s in enumerate(subscriptions, 1))
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._tls = tls if tls is not None else tls_context(tls_ca_file) if tls_ca_file else None
        self._nkey = load_nkey(nkey_seed_file) if nkey_seed_file is not None else None
        self._connect_timeout = connect_timeout
        self._backoff = Backoff(reconnect_wait, reconnect_wait_max)
        self._ping_interval = ping_interval
        self._max_outstanding_pings = max_outstanding_pings
        self._read_interval = read_interval
        self.stats = ConnectionStats()
        self.max_payload = 1 << 20  # the server's default until its INFO says otherwise
        self.server_info: dict[str, Any] = {}
        self.last_error: str | None = None  # why the last attempt or connection failed
        self.refusal: NatsRefused | None = None  # since the last successful handshake
        self._wire: _Wire | None = None
        self.connected = False  # `_wire is not None`, as a plain attribute: read per publish
        self._changed = asyncio.Event()  # connected, or refused
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._denied: set[tuple[str, str]] = set()  # (operation, subject) already logged
        self._logged_failure: str | None = None

    # -- state ----------------------------------------------------------------------------

    @property
    def server(self) -> ServerAddress | None:
        """The server of the current connection."""
        return self._wire.server if self._wire is not None else None

    async def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected, False after `timeout`; raises the `NatsRefused` of a
        refused attempt (bad credentials, TLS mismatch) rather than waiting it out."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._wire is None:
            if self.refusal is not None:
                raise self.refusal
            self._changed.clear()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
        return True

    # -- writing --------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Write `data` now; False (nothing written) when not connected."""
        wire = self._wire
        if wire is None:
            return False
        wire.write(data)
        return True

    def writelines(self, chunks: list[bytes]) -> bool:
        """Write `chunks` now, in one system call where possible; False when not connected."""
        wire = self._wire
        if wire is None or wire.transport is None or wire.transport.is_closing():
            return False
        wire.transport.writelines(chunks)
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

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin connecting in the background (an outage at start-up is just an outage)."""
        self._tasks.append(asyncio.create_task(self._run(), name=f"nats-connect-{self.name}"))
        self._tasks.append(asyncio.create_task(self._keepalive(), name=f"nats-ping-{self.name}"))

    async def close(self) -> None:
        """Stop reconnecting and close the socket (what was written is sent first)."""
        self._closing = True
        await cancel_all(self._tasks)
        self._tasks.clear()
        wire = self._wire
        self._wire = None
        self.connected = False
        if wire is not None and wire.transport is not None:
            wire.transport.close()

    async def _run(self) -> None:
        attempt = 0
        index = 0
        while not self._closing:
            server = self.servers[index % len(self.servers)]
            index += 1
            try:
                wire = await asyncio.wait_for(self._open(server), self._connect_timeout)
            except NatsRefused as exc:
                self.refusal = exc
                self._failed(str(exc), logging.ERROR)
                self._changed.set()
            except (OSError, TimeoutError, ConnectionError, ProtocolError) as exc:
                self._failed(f"{server}: {exc or type(exc).__name__}", logging.WARNING)
            else:
                attempt = 0
                self._established(wire)
                await wire.closed
                if self._closing:
                    return
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    def _failed(self, error: str, level: int) -> None:
        """Remember why an attempt failed; log each distinct reason once in a row."""
        self.last_error = error
        if error != self._logged_failure:
            self._logged_failure = error
            log.log(level, "cannot connect to NATS: %s", error)

    def _established(self, wire: _Wire) -> None:
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
            log.info("reconnected to %s", wire.server)
        self.refusal = None
        self._logged_failure = None
        self._wire = wire
        self.connected = True
        self._changed.set()
        if self._on_connect is not None:
            self._on_connect()

    async def _open(self, server: ServerAddress) -> _Wire:
        loop = asyncio.get_running_loop()
        transport, wire = await loop.create_connection(
            lambda: _Wire(self, server), server.host, server.port
        )
        try:
            info = await wire.info
            if not info.get("headers", False):
                raise NatsRefused(f"{server}: the server does not support headers (NATS ≥ 2.2)")
            tls = server.tls or bool(info.get("tls_required"))
            if tls:
                wire.transport = await self._start_tls(loop, transport, wire, server, info)
            self.max_payload = int(info.get("max_payload", self.max_payload))
            self.server_info = info
            wire.write(self._connect_line(server, info, tls) + self._subscribe)
            try:
                await wire.ping()
            except ConnectionError:
                error = wire.error or "the server closed the connection during the handshake"
                if _AUTH.search(error):
                    raise NatsRefused(
                        f"{server}: the server refused the credentials "
                        f"({self._credentials_kind(server)}): {error}"
                    ) from None
                raise ConnectionError(error) from None
            wire.ready = True
        except BaseException:
            wire.abort()
            raise
        return wire

    async def _start_tls(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        wire: _Wire,
        server: ServerAddress,
        info: dict[str, Any],
    ) -> asyncio.Transport:
        if server.tls and not (info.get("tls_required") or info.get("tls_available")):
            raise NatsRefused(
                f"{server}: the URL asks for TLS (tls://) but the server does not offer TLS"
            )
        if self._tls is None:
            self._tls = tls_context(None)
        try:
            upgraded = await loop.start_tls(transport, wire, self._tls, server_hostname=server.host)
        except ssl.SSLError as exc:
            raise NatsRefused(f"{server}: TLS handshake failed: {exc}") from None
        if upgraded is None:
            raise ConnectionError(f"{server}: the connection closed during the TLS handshake")
        return upgraded

    def _connect_line(self, server: ServerAddress, info: dict[str, Any], tls: bool) -> bytes:
        nkey = signature = None
        if self._nkey is not None:
            nkey = self._nkey.public_key.decode()
            nonce = info.get("nonce")
            if isinstance(nonce, str):
                signed = self._nkey.sign(nonce.encode())
                signature = base64.urlsafe_b64encode(signed).rstrip(b"=").decode()
        return connect(
            name=self.name,
            user=server.user,
            password=server.password,
            token=server.token,
            nkey=nkey,
            signature=signature,
            tls_required=tls,
        )

    def _credentials_kind(self, server: ServerAddress) -> str:
        """What we presented, for a refusal message (never the secret itself)."""
        if self._nkey is not None:
            return f"NKEY {self._nkey.public_key.decode()}"
        if server.user is not None:
            return f"user {server.user!r} with a password"
        if server.token is not None:
            return "a token"
        return "no credentials"

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            wire = self._wire
            if wire is not None:
                wire.keepalive()

    # -- called by the wire ---------------------------------------------------------------

    def _wire_lost(self, wire: _Wire) -> None:
        if self._wire is not wire:
            return  # a handshake that failed, or a socket already replaced
        self._wire = None
        self.connected = False
        if wire.error is not None:
            self.last_error = f"{wire.server}: {wire.error}"
        if not self._closing:
            log.warning("lost the NATS connection to %s", wire.server)
            if self._on_disconnect is not None:
                self._on_disconnect()

    def _protocol_error(self, wire: _Wire, exc: ProtocolError) -> None:
        self.stats.protocol_errors += 1
        wire.error = f"protocol error: {exc}"
        log.error("%s sent something that is not the NATS protocol: %s", wire.server, exc)
        wire.abort()

    def _server_error(self, wire: _Wire, message: str) -> None:
        self.stats.server_errors += 1
        denied = _PERMISSION.search(message)
        if denied is None:
            wire.error = message  # the server closes the connection after this one
            log.warning("NATS server %s: %s", wire.server, message)
            return
        self.stats.permission_violations += 1
        key = (denied[1], denied[2])
        if key not in self._denied and len(self._denied) < MAX_LOGGED_DENIALS:
            self._denied.add(key)
            log.error(
                "NATS %s denied %s to %s (this client's permissions; counted in "
                "permission_violations, logged once per subject)",
                wire.server,
                denied[1],
                denied[2],
            )
