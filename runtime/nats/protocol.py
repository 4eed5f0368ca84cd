"""The NATS client protocol, sans I/O: bytes in → parsed operations out, and the serializers.

No sockets, no event loop, no clock: `Parser.feed(data)` takes whatever a socket read
returned and answers the complete messages in it, in order; the control operations of the
same bytes (INFO, PING, PONG, +OK, -ERR) are queued in `Parser.controls`, also in order.
What to do about them (answer a PING, upgrade to TLS, authenticate, reconnect) is the
connection's business (`runtime/nats/connection.py`); parsing is testable byte by byte and
benchmarkable without a server.

Speed matters: the connector's publisher reads one acknowledgement per published message
(100k+ msg/s backlogged) and the archiver parses every stored message. So:
- a message is a plain tuple `(subject, sid, reply, headers, payload)` of `bytes` slices
  (`reply` None when absent, `headers` b"" for MSG), built once, never an object;
- a read with no leftover is parsed in place (no copy); an operation cut by the read
  boundary is kept as chunks and joined once, when enough bytes for it have arrived (a
  1 MiB payload arriving in 64 KiB reads is copied once, not sixteen times);
- a read of nothing but MSGs (the publisher's acknowledgements) is parsed as a run, with a
  few C-level splits over the whole read (`Parser._run`); otherwise a MSG line is split at
  its spaces and an HMSG line matched by one compiled regex, one operation at a time.

Bounds: a control line longer than `max_control_line` or a message larger than
`max_message` is a `ProtocolError` (the connection is dropped and re-established), so a
corrupt or hostile stream cannot grow the buffer without limit.

Serializers build CONNECT, PUB/HPUB, SUB/UNSUB and PING/PONG. The publisher's hot path
uses `hpub_msg_id_template`, a %-format template of an HPUB with a `Nats-Msg-Id` header,
filled with one `%` per message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any

CRLF = b"\r\n"
PING = b"PING\r\n"
PONG = b"PONG\r\n"
HEADER_VERSION = b"NATS/1.0"

# The NATS server's own defaults are 4 KiB of control line and 1 MiB (up to 64 MiB) of
# payload; INFO lines of large clusters are longer than 4 KiB, so allow more.
MAX_CONTROL_LINE = 64 * 1024
MAX_MESSAGE = 64 * 1024 * 1024

# A read at least this long that starts with MSG is tried as a run (`Parser._run`): its
# fixed cost pays off from about eight messages on (PubAcks are ≈ 70 bytes).
RUN_MIN_BYTES = 640

# (subject, sid, reply or None, header block or b"", payload)
Msg = tuple[bytes, bytes, bytes | None, bytes, bytes]

_TOKEN = rb"[^ \t\r\n]+"
# `HMSG <subject> <sid> [reply] <header size> <total size>`
_HMSG = re.compile(rb"HMSG (%s) (%s) (?:(%s) )?(\d+) (\d+)\r\n" % (_TOKEN, _TOKEN, _TOKEN))
_STATUS = re.compile(rb"NATS/1\.0 (\d{3})[ \t]*([^\r\n]*)")
_FORBIDDEN_IN_SUBJECT = re.compile(rb"[ \t\r\n]")


class ProtocolError(Exception):
    """The server sent something that is not the NATS protocol (or exceeds a bound)."""


@dataclass(frozen=True, slots=True)
class Info:
    """`INFO {json}`: the server's description (the first one opens every connection)."""

    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Err:
    """`-ERR 'message'`: most errors are followed by the server closing the connection;
    a permissions violation is not."""

    message: str


@dataclass(frozen=True, slots=True)
class Ping:
    """`PING`: the server checks we are alive; answer `PONG`."""


@dataclass(frozen=True, slots=True)
class Pong:
    """`PONG`: the answer to our oldest unanswered `PING`."""


@dataclass(frozen=True, slots=True)
class Ok:
    """`+OK`: only sent in verbose mode, which this client does not ask for."""


PING_OP = Ping()
PONG_OP = Pong()
OK_OP = Ok()

Control = Info | Err | Ping | Pong | Ok


class Parser:
    """Incremental parser of the server-to-client operations of one connection."""

    def __init__(
        self, *, max_control_line: int = MAX_CONTROL_LINE, max_message: int = MAX_MESSAGE
    ) -> None:
        self.max_control_line = max_control_line
        self.max_message = max_message
        self.controls: list[Control] = []  # control operations since the caller last took them
        self._chunks: list[bytes] = []  # an incomplete operation, as received
        self._held = 0  # bytes in `_chunks`
        self._need = 0  # bytes the incomplete operation needs at least, from its start
        self._rest = b""  # what follows the run of messages `_run` parsed

    def take_controls(self) -> list[Control]:
        """The control operations parsed so far, in order; the parser forgets them."""
        out = self.controls
        self.controls = []
        return out

    def feed(self, data: bytes) -> list[Msg]:
        """Parse `data` (the next bytes of the stream); the complete messages, in order."""
        if self._chunks:
            self._chunks.append(data)
            self._held += len(data)
            if self._held < self._need:
                return []
            buf = b"".join(self._chunks)
            self._chunks = []
        else:
            buf = data
        size = len(buf)
        pos = 0
        msgs = self._run(buf) if size >= RUN_MIN_BYTES else None
        if msgs:
            pos = size - len(self._rest)
        else:
            msgs = []
        match_hmsg = _HMSG.match
        find = buf.find
        max_message = self.max_message
        while pos < size:
            first = buf[pos]
            if first == 0x4D:  # M: MSG subject sid [reply] size
                end = find(CRLF, pos)
                if end < 0:
                    self._incomplete_line(buf, pos)  # raises past the line bound
                    break
                args = buf[pos:end].split(b" ")
                count = len(args)
                if count == 4 and args[0] == b"MSG":
                    _, subject, sid, length = args
                    reply = None
                elif count == 5 and args[0] == b"MSG":
                    _, subject, sid, reply, length = args
                else:
                    raise ProtocolError(f"malformed MSG line {_line(buf, pos)!r}")
                if not length.isdigit() or b"" in args:
                    raise ProtocolError(f"malformed MSG line {_line(buf, pos)!r}")
                total = int(length)
                start = end + 2
                stop = start + total
                if stop + 2 > size:
                    if total > max_message:
                        raise ProtocolError(f"a message of {total} bytes exceeds {max_message}")
                    self._need = stop + 2 - pos
                    break
                msgs.append((subject, sid, reply, b"", buf[start:stop]))
                pos = stop + 2
            elif first == 0x48:  # H: HMSG
                found = match_hmsg(buf, pos)
                if found is None:
                    if self._incomplete_line(buf, pos):
                        break
                    raise ProtocolError(f"malformed HMSG line {_line(buf, pos)!r}")
                subject, sid, reply, hdr_length, length = found.groups()
                total = int(length)
                hdr_len = int(hdr_length)
                if hdr_len > total:
                    raise ProtocolError(f"HMSG header size {hdr_len} exceeds its total {total}")
                start = found.end()
                stop = start + total
                if stop + 2 > size:
                    if total > max_message:
                        raise ProtocolError(f"a message of {total} bytes exceeds {max_message}")
                    self._need = stop + 2 - pos
                    break
                msgs.append(
                    (subject, sid, reply, buf[start : start + hdr_len], buf[start + hdr_len : stop])
                )
                pos = stop + 2
            else:
                end = buf.find(CRLF, pos)
                if end < 0:
                    if not self._incomplete_line(buf, pos):
                        raise ProtocolError(f"malformed operation {_line(buf, pos)!r}")
                    break
                self._control(buf[pos:end])
                pos = end + 2
        if pos < size:
            rest = buf[pos:]
            self._chunks = [rest]
            self._held = len(rest)
        return msgs

    def _run(self, buf: bytes) -> list[Msg] | None:
        """The messages of `buf` when it is nothing but MSGs without CR/LF in their payloads
        (PubAcks, JSON) and all with or all without a reply subject — the publisher's
        acknowledgements — parsed with a few C-level splits instead of one step per message;
        `_rest` is the incomplete operation after them. None when the shape differs (the
        caller then parses operation by operation).

        Sound because splitting at CRLF can only cut a payload short: the first payload that
        holds a CRLF is shorter than its declared size, and the sizes are checked."""
        if not buf.startswith(b"MSG "):
            return None
        parts = buf.split(CRLF)
        rest = parts.pop()
        if len(parts) % 2:  # a complete line whose payload is still arriving
            rest = parts.pop() + CRLF + rest
        if not parts:
            return None
        lines = parts[0::2]
        payloads = parts[1::2]
        spaces = set(map(bytes.count, lines, repeat(b" ")))
        if spaces == {3}:  # MSG subject sid size
            stride = 4
        elif spaces == {4}:  # MSG subject sid reply size
            stride = 5
        else:
            return None
        tokens = b" ".join(lines).split(b" ")
        if tokens[0::stride].count(b"MSG") != len(lines) or b"" in tokens:
            return None
        try:
            if list(map(int, tokens[stride - 1 :: stride])) != list(map(len, payloads)):
                return None
        except ValueError:
            return None
        self._rest = rest
        replies = tokens[3::5] if stride == 5 else repeat(None)
        return list(zip(tokens[1::stride], tokens[2::stride], replies, repeat(b""), payloads))

    def _incomplete_line(self, buf: bytes, pos: int) -> bool:
        """True when the operation at `pos` has no line end yet (wait for more bytes, within
        the control line bound); False when the line is complete (and did not parse)."""
        if buf.find(CRLF, pos) >= 0:
            return False
        if len(buf) - pos > self.max_control_line:
            raise ProtocolError(f"a control line longer than {self.max_control_line} bytes")
        self._need = len(buf) - pos + 1
        return True

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            self.controls.append(PING_OP)
        elif line == b"PONG":
            self.controls.append(PONG_OP)
        elif line == b"+OK":
            self.controls.append(OK_OP)
        elif line.startswith(b"-ERR"):
            self.controls.append(Err(line[4:].strip(b" '").decode("utf-8", "replace")))
        elif line.startswith(b"INFO "):
            try:
                info = json.loads(line[5:])
            except ValueError:
                raise ProtocolError(f"malformed INFO {line[:200]!r}") from None
            if not isinstance(info, dict):
                raise ProtocolError(f"malformed INFO {line[:200]!r}")
            self.controls.append(Info(info))
        else:
            raise ProtocolError(f"unknown operation {line[:200]!r}")


def _line(buf: bytes, pos: int) -> bytes:
    """The operation line at `pos`, cut short for an error message."""
    end = buf.find(CRLF, pos)
    return buf[pos : end if 0 <= end < pos + 200 else pos + 200]


def status_of(headers: bytes) -> tuple[int, str] | None:
    """The status of a header block (`NATS/1.0 503`, `NATS/1.0 404 No Messages`): a reply
    the server made instead of a message; None for an ordinary header block."""
    found = _STATUS.match(headers)
    if found is None:
        return None
    return int(found[1]), found[2].strip().decode("utf-8", "replace")


# -- serializers ------------------------------------------------------------------------------


def _checked(subject: bytes) -> bytes:
    if not subject or _FORBIDDEN_IN_SUBJECT.search(subject):
        raise ValueError(f"invalid NATS subject {subject!r}")
    return subject


def connect(
    *,
    name: str,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    nkey: str | None = None,
    signature: str | None = None,
    tls_required: bool = False,
) -> bytes:
    """`CONNECT {options}`: headers and no-responders on, not verbose, with whichever
    credentials are given (a user's password, a token, an NKEY and its signature of the
    server's nonce)."""
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "no_responders": True,
        "protocol": 1,
        "lang": "python-ssmd",
        "version": "1",
        "name": name,
        "tls_required": tls_required,
    }
    if user is not None:
        options["user"] = user
        options["pass"] = password or ""
    if token is not None:
        options["auth_token"] = token
    if nkey is not None:
        options["nkey"] = nkey
        if signature is not None:
            options["sig"] = signature
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def pub(subject: bytes, payload: bytes, reply: bytes | None = None) -> bytes:
    """`PUB subject [reply] size` and the payload."""
    if reply is None:
        head = b"PUB %s %d\r\n" % (_checked(subject), len(payload))
    else:
        head = b"PUB %s %s %d\r\n" % (_checked(subject), _checked(reply), len(payload))
    return head + payload + CRLF


def header_block(headers: Mapping[str, str]) -> bytes:
    """A `NATS/1.0` header block with `headers` (names and values must not hold CR/LF)."""
    lines = [HEADER_VERSION]
    for key, value in headers.items():
        if any(c in key for c in ":\r\n") or any(c in value for c in "\r\n"):
            raise ValueError(f"invalid NATS header {key!r}: {value!r}")
        lines.append(f"{key}: {value}".encode())
    return CRLF.join(lines) + CRLF + CRLF


def hpub(subject: bytes, headers: bytes, payload: bytes, reply: bytes | None = None) -> bytes:
    """`HPUB subject [reply] header_size total_size`, the header block (`header_block`)
    and the payload."""
    total = len(headers) + len(payload)
    if reply is None:
        head = b"HPUB %s %d %d\r\n" % (_checked(subject), len(headers), total)
    else:
        head = b"HPUB %s %s %d %d\r\n" % (_checked(subject), _checked(reply), len(headers), total)
    return head + headers + payload + CRLF


# `NATS/1.0\r\nNats-Msg-Id: ` + msg id + `\r\n\r\n`: the header block's size is the id's + 27
MSG_ID_HEADER_OVERHEAD = 27


def hpub_msg_id_template(reply_prefix: bytes) -> bytes:
    """A %-template of `HPUB subject {reply_prefix}{n}` with a `Nats-Msg-Id` header, for
    the publisher's hot path: `template % (subject, n, hdr_len, hdr_len + len(payload),
    msg_id, payload)` with `hdr_len = len(msg_id) + MSG_ID_HEADER_OVERHEAD`. Unchecked for
    speed: subjects come from `ssmd_infra.core.subjects`, ids from the connector."""
    return (
        b"HPUB %s "
        + _checked(reply_prefix).replace(b"%", b"%%")
        + b"%d %d %d\r\nNATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n%s\r\n"
    )


def sub(subject: bytes, sid: int, queue: bytes | None = None) -> bytes:
    """`SUB subject [queue] sid`."""
    if queue is None:
        return b"SUB %s %d\r\n" % (_checked(subject), sid)
    return b"SUB %s %s %d\r\n" % (_checked(subject), _checked(queue), sid)


def unsub(sid: int, max_msgs: int | None = None) -> bytes:
    """`UNSUB sid [max_msgs]`."""
    if max_msgs is None:
        return b"UNSUB %d\r\n" % sid
    return b"UNSUB %d %d\r\n" % (sid, max_msgs)
