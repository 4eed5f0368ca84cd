"""The archive line: one JSON object per stream message, built by the archiver and read back
by recovery and by `ssmd archive verify`. Keys in this order (`seq` always first)::

    {"seq":1234,"received_ns":1733407387123456789,"id":"mbq1x2e0a1b2c3d4e.3.7","type":"ticker",
     "symbol":"KXHIGHNY-24DEC05-B43.5","epoch":"mbq1x2e0a1b2c3d4e","sid":3,"exchange_seq":7,
     "frame":{"type":"ticker","sid":3,"seq":7,"msg":{…}}}

- `seq`: the message's sequence in the shard stream `ssmd-internal-{shard}` (unique per
  shard: a line seen twice with one `seq` is an at-least-once duplicate);
- `received_ns`: when the stream stored the message (Unix ns; ≈ the connector's receipt);
  it also picks the day directory (UTC);
- `id`: the `Nats-Msg-Id` header (`runtime.kalshi.protocol.message_id`: a trade's
  `trade:{trade_id}`, any other frame's origin `{epoch}.{sid}.{seq}`), or null; `type` and
  `symbol`: from the subject `internal.{shard}.{feed}.{type}.{symbol}`, the symbol decoded
  (`KXHIGHNY-24DEC05-B43%2E5` → `KXHIGHNY-24DEC05-B43.5`);
- `epoch`: the connector connection the frame arrived on, from an origin id (or a gap
  record's id); null for a trade, whose id is its `trade_id` so that replicas deduplicate it
  (a trade's epoch is not carried by the stream); `sid` and `exchange_seq`: the frame's own
  `sid` and `seq` as the exchange sent them (null when absent);
- `frame`: the raw Kalshi frame, verbatim (it is JSON). A payload that is not valid JSON is
  kept as a string under `frame_text` instead; one with a line break inside is re-encoded
  compactly. A subject that does not parse goes to type directory `_invalid` with
  `"subject"` and `"symbol":null`.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from runtime.kalshi.protocol import GAP_ID_PREFIX, TRADE_ID_PREFIX

log = logging.getLogger("ssmd.archiver.files")

_READ_CHUNK = 64 << 10  # compressed bytes per read: bounds the output of one inflate call
_SEQ_PREFIX = b'{"seq":'
_TRADE = TRADE_ID_PREFIX.encode()
_GAP = GAP_ID_PREFIX.encode()
_RAW = msgspec.json.Decoder(msgspec.Raw)  # validates JSON without building objects


class _FrameOrigin(msgspec.Struct):
    sid: int | None = None
    seq: int | None = None


_decode_origin = msgspec.json.Decoder(_FrameOrigin).decode


def line_seq(line: bytes) -> int | None:
    """The stream sequence of an archive line (it comes first), or None."""
    if not line.startswith(_SEQ_PREFIX):
        return None
    end = line.find(b",", 7)
    try:
        return int(line[7:end])
    except ValueError:
        return None


def epoch_json(msg_id: bytes | None) -> bytes:
    """The JSON of the epoch in an origin or gap id (`{epoch}.{sid}.{n}`), else `null`. The id
    is already known to be JSON-safe ASCII (the archiver's header match)."""
    if msg_id is None or msg_id.startswith(_TRADE):
        return b"null"
    if msg_id.startswith(_GAP):
        msg_id = msg_id[len(_GAP) :]
    parts = msg_id.split(b".")
    if len(parts) != 3 or not parts[0].isalnum():
        return b"null"
    return b'"' + parts[0] + b'"'


def frame_part(payload: bytes) -> tuple[bytes, bool]:
    """`,"sid":…,"exchange_seq":…,"frame":<raw>` for a JSON payload (True), or
    `,"sid":null,"exchange_seq":null,"frame_text":"…"` otherwise (False)."""
    try:
        if not payload.isascii():
            payload.decode("utf-8")
        try:
            origin = _decode_origin(payload)
        except msgspec.ValidationError:  # JSON, not a Kalshi envelope: no origin
            _RAW.decode(payload)
            origin = _FrameOrigin()
    except (UnicodeDecodeError, msgspec.DecodeError):
        text = json.dumps(payload.decode("utf-8", "replace")).encode()
        return b',"sid":null,"exchange_seq":null,"frame_text":' + text, False
    if b"\n" in payload or b"\r" in payload:  # legal JSON whitespace, but not in JSONL
        payload = msgspec.json.encode(msgspec.json.decode(payload))
    sid = b"null" if origin.sid is None else b"%d" % origin.sid
    seq = b"null" if origin.seq is None else b"%d" % origin.seq
    return b',"sid":%b,"exchange_seq":%b,"frame":%b' % (sid, seq, payload), True


class ArchiveLine(msgspec.Struct):
    """The fields of a line an audit needs (the frame itself is skipped)."""

    seq: int
    id: str | None = None
    type: str | None = None
    symbol: str | None = None
    epoch: str | None = None
    sid: int | None = None
    exchange_seq: int | None = None


class GapBody(msgspec.Struct):
    """The `msg` of a `ssmd_gap` record (`runtime.kalshi.protocol.gap_record`)."""

    epoch: str
    sid: int
    to: int
    from_: int = msgspec.field(name="from")
    channel: str = ""  # the subscription's message type


class _GapFrame(msgspec.Struct):
    msg: GapBody


class _GapLine(msgspec.Struct):
    frame: _GapFrame


decode_line = msgspec.json.Decoder(ArchiveLine).decode
_decode_gap_line = msgspec.json.Decoder(_GapLine).decode


def gap_of(line: bytes) -> GapBody:
    """The recorded gap of a `ssmd_gap` line (raises `msgspec.DecodeError` if it is not one)."""
    return _decode_gap_line(line).frame.msg


@dataclass
class ScanResult:
    good_end: int  # offset just past the last complete member
    size: int  # the file's size
    lines: int = 0  # lines in the complete members
    corrupt: str | None = None  # why reading stopped before the end, if it did


def scan_members(path: Path, offset: int, on_member: Callable[[list[bytes]], None]) -> ScanResult:
    """Walk the complete gzip members of an archive file from `offset`; `on_member(lines)`
    gets the lines of each complete member (without their newlines), and only of complete
    ones. Stops at the first torn or corrupt member (`good_end` says where). Memory: one
    read chunk, its output, and the lines of one member (one archiver batch)."""
    size = path.stat().st_size
    result = ScanResult(good_end=offset, size=size)
    with open(path, "rb") as handle:
        handle.seek(offset)
        member_start = offset
        inflater = zlib.decompressobj(31)
        used = 0  # compressed bytes of the current member consumed so far
        partial = b""  # the current member's unfinished last line
        member: list[bytes] = []
        data = b""
        while True:
            if not data:
                data = handle.read(_READ_CHUNK)
                if not data:
                    break  # end of file: a member not finished here is torn
            try:
                out = inflater.decompress(data)
            except zlib.error as exc:
                log.warning("%s: corrupt gzip member at offset %d (%s)", path, member_start, exc)
                result.corrupt = f"corrupt gzip member at offset {member_start}: {exc}"
                return result
            if out:
                lines = (partial + out).split(b"\n")
                partial = lines.pop()
                member.extend(lines)
            if not inflater.eof:
                used += len(data)
                data = b""
                continue
            rest = inflater.unused_data
            used += len(data) - len(rest)
            if partial:  # a last line without its newline (not ours, but a line)
                member.append(partial)
            on_member(member)
            result.lines += len(member)
            member_start += used
            result.good_end = member_start
            used, partial, member = 0, b"", []
            inflater = zlib.decompressobj(31)
            data = rest
    if result.good_end < size and result.corrupt is None:
        result.corrupt = f"torn gzip member at offset {result.good_end} ({size} bytes)"
    return result
