"""Kalshi WebSocket v2, sans-I/O: commands out, frames in, subscription state in between.

No sockets and no asyncio here (the `websockets` library's design): the transport feeds
received frames to `KalshiProtocol.receive` and sends whatever `data_to_send()` returns.
That keeps the protocol unit-testable and benchmarkable without a network.

Subscriptions are kept in *groups* of at most `max_tickers` markets (Kalshi allows 256
tickers per subscription). A group is subscribed with one `subscribe` command for all
channels; Kalshi answers one `subscribed` per channel, each with its own `sid`. Adding or
removing markets uses `update_subscription` on each of the group's sids; an emptied group
is `unsubscribe`d. Changes that touch a group still waiting for its acks are deferred and
applied when the acks arrive, so the state never depends on reply timing.

Each data frame becomes a `Frame` carrying the exact bytes received, where it came from
(connection epoch, `sid`, `seq`) and a `msg_id` for `Nats-Msg-Id` deduplication that never
merges two distinct exchange messages (see `message_id`). Malformed frames are counted and
skipped, and so are well-formed messages of a type we do not capture (logged once per type);
nothing raises out of `receive`.

Order books (`orderbook_delta`): a subscription's frames are one `orderbook_snapshot` per
market, then deltas, numbered by one `seq`. A gap on such a subscription means the book can
no longer be rebuilt, so the protocol replaces that subscription (unsubscribe + subscribe
the group's markets on `orderbook_delta` alone): the new one starts with fresh snapshots.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

log = logging.getLogger(__name__)

MAX_TICKERS_PER_SUBSCRIPTION = 256
CONTROL_TYPES = frozenset({"subscribed", "ok", "unsubscribed", "error"})
# Market-data message types of the channels a connector captures; any other type is new to
# us: counted and skipped (logged once per type, at most this many types logged).
DATA_TYPES = frozenset({"trade", "ticker", "orderbook_snapshot", "orderbook_delta"})
BOOK_CHANNEL = "orderbook_delta"  # its frames: one snapshot per market, then deltas, one seq
MAX_UNKNOWN_TYPES_LOGGED = 64


@dataclass(frozen=True, slots=True)
class Frame:
    """One market-data message as received, ready to forward."""

    raw: bytes  # the exact frame as received (UTF-8 bytes), forwarded unchanged to NATS
    msg_type: str  # "trade", "ticker", "orderbook_delta", ...
    ticker: str  # market_ticker
    msg_id: str  # `message_id`: one id per exchange message, never shared by two
    epoch: str = ""  # the connection it arrived on (`new_epoch`)
    sid: int | None = None  # the exchange subscription
    seq: int | None = None  # the exchange's sequence number on that subscription
    gap_from: int | None = None  # seqs gap_from..seq-1 of this sid never arrived (a gap)


@dataclass(frozen=True, slots=True)
class Subscribed:
    """A subscription on one channel is live (`sid` assigned)."""

    cmd_id: int
    channel: str
    sid: int


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """An `ok` (update_subscription) or `unsubscribed` reply."""

    cmd_id: int | None
    kind: str
    sid: int | None


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """The exchange refused a command (or reported a connection-level error)."""

    cmd_id: int | None
    code: int | None
    message: str
    command: str | None  # what we had sent with that id, when known


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be understood; counted and skipped."""

    reason: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """A well-formed message of a type we do not capture (Kalshi added one): counted, skipped."""

    msg_type: str


Event = Frame | Subscribed | Acknowledged | ErrorReply | Malformed | Unknown


@dataclass(slots=True)
class ProtocolStats:
    """Counters the protocol keeps; the transport extends them (see `client.ClientStats`)."""

    frames: int = 0
    malformed: int = 0
    gaps: int = 0  # sequence gaps seen (events)
    gap_messages: int = 0  # messages missing across those gaps
    errors: int = 0  # `error` replies
    unknown: int = 0  # messages of a type we do not capture, skipped
    resnapshots: int = 0  # order book subscriptions renewed after a gap (for a new snapshot)


class _Envelope(msgspec.Struct):
    type: str
    id: int | None = None
    sid: int | None = None
    seq: int | None = None
    msg: msgspec.Raw = msgspec.Raw(b"")  # empty when absent


class _Body(msgspec.Struct):
    market_ticker: str = ""
    trade_id: str | None = None


class _Control(msgspec.Struct):
    channel: str | None = None
    sid: int | None = None
    code: int | None = None
    msg: str | None = None


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_decode_body = msgspec.json.Decoder(_Body).decode
_decode_control = msgspec.json.Decoder(_Control).decode
_encode = msgspec.json.Encoder().encode


@dataclass(slots=True)
class _Group:
    gid: int
    tickers: set[str]
    sids: dict[str, int] = field(default_factory=dict)  # channel -> sid
    subscribe_id: int | None = None  # outstanding subscribe command

    def active(self, channels: int) -> bool:
        return self.subscribe_id is None and len(self.sids) == channels


@dataclass(slots=True)
class _Pending:
    kind: str  # subscribe | resnapshot | add | delete | unsubscribe
    group: _Group | None
    tickers: tuple[str, ...] = ()
    acks_left: int = 1


TRADE_ID_PREFIX = "trade:"
EPOCH_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def new_epoch() -> str:
    """A connection epoch, unique across connections, replicas and process restarts: the
    wall clock in microseconds (base 36) and 40 random bits. Two connections would need the
    same microsecond *and* the same random draw to collide (1 in 2^40), so a connector that
    is killed and restarted within the stream's duplicate window never reuses an id."""
    micros, digits = time.time_ns() // 1000, []
    while micros:
        micros, digit = divmod(micros, 36)
        digits.append(EPOCH_ALPHABET[digit])
    return "".join(reversed(digits)) + os.urandom(5).hex()


def message_id(
    msg_type: str, epoch: str, sid: int | None, position: int | str, trade_id: str | None = None
) -> str:
    """The `Nats-Msg-Id` of one exchange message: equal ids are the same exchange message.

    - A trade is its `trade_id` (`trade:{trade_id}`): the exchange numbers trades globally, so
      two replicas holding a market during a handoff, or a connection that sees a trade
      again, store it once.
    - Every other frame is identified by its origin, `{epoch}.{sid}.{seq}`: the connection
      (epoch: unique across restarts, `new_epoch`), the exchange subscription and the
      exchange's sequence number on it. Content is deliberately not part of it: Kalshi's
      `ticker` carries `ts` in whole seconds, so a price moving A→B→A within one second sends
      byte-identical payloads that are three messages. A resend of the same frame (the
      publisher retrying after a timeout or a NATS reconnect) keeps its id and is stored once.
      Two replicas (or a connection before and after a reconnect) never share an epoch, so a
      snapshot-type frame received by both during a handoff is stored twice: a counted
      duplicate, never a loss.
    - A frame without `seq` gets `{epoch}.{sid}.n{counter}` (`position` = `n{counter}`), the
      counter being the frame's arrival number on its connection (`KalshiProtocol` counts
      them): distinct frames of one connection have distinct counters and no two
      connections share an epoch, so two messages never merge; the id is assigned once, on
      arrival, and travels with the frame, so a resend of that frame by the publisher within
      the connection's lifetime is still deduplicated. (`n` keeps these apart from
      sequenced ids.)
    """
    if msg_type == "trade" and trade_id:
        return TRADE_ID_PREFIX + trade_id
    return f"{epoch}.{'-' if sid is None else sid}.{position}"


def parse_origin_id(msg_id: str) -> tuple[str, int | None, int | None] | None:
    """(epoch, sid, seq) of an origin id made by `message_id`; seq None for a counter id;
    None for a trade id or anything else."""
    parts = msg_id.split(".")
    if len(parts) != 3 or not parts[0] or msg_id.startswith(TRADE_ID_PREFIX):
        return None
    epoch, sid_text, seq_text = parts
    try:
        sid = None if sid_text == "-" else int(sid_text)
        seq = None if seq_text.startswith("n") else int(seq_text)
        if seq is None:
            int(seq_text[1:])
    except ValueError:
        return None
    return epoch, sid, seq


class KalshiProtocol:
    """Subscription state and frame parsing for one WebSocket connection."""

    def __init__(
        self,
        channels: Sequence[str],
        *,
        max_tickers: int = MAX_TICKERS_PER_SUBSCRIPTION,
        stats: ProtocolStats | None = None,
    ) -> None:
        if not channels:
            raise ValueError("at least one channel is needed")
        if not 1 <= max_tickers <= MAX_TICKERS_PER_SUBSCRIPTION:
            raise ValueError(f"max_tickers must be 1..{MAX_TICKERS_PER_SUBSCRIPTION}")
        self.channels = tuple(dict.fromkeys(channels))
        self.max_tickers = max_tickers
        self.stats = stats if stats is not None else ProtocolStats()
        self._desired: set[str] = set()
        self._groups: dict[int, _Group] = {}
        self._sid_group: dict[int, _Group] = {}
        self._last_seq: dict[int, int] = {}
        self._pending: dict[int, _Pending] = {}
        self._outbox: list[bytes] = []
        self._next_id = 1
        self._next_gid = 1
        self._deferred = False
        self._unknown_logged: set[str] = set()
        self.epoch = new_epoch()  # replaced by every `connection_made`
        self._unsequenced = 0  # frames without `seq` on this connection (their id counter)

    # -- state the transport and tests look at -------------------------------------------

    @property
    def desired(self) -> frozenset[str]:
        return frozenset(self._desired)

    @property
    def subscribed(self) -> frozenset[str]:
        """Markets whose subscriptions are acknowledged on every channel."""
        n = len(self.channels)
        out: set[str] = set()
        for group in self._groups.values():
            if group.active(n):
                out |= group.tickers
        return frozenset(out)

    @property
    def subscribed_count(self) -> int:
        n = len(self.channels)
        return sum(len(g.tickers) for g in self._groups.values() if g.active(n))

    @property
    def sids(self) -> frozenset[int]:
        return frozenset(self._sid_group)

    @property
    def pending_commands(self) -> int:
        return len(self._pending)

    def groups(self) -> list[frozenset[str]]:
        """The markets of each subscription group (for tests and reports)."""
        return [frozenset(g.tickers) for g in self._groups.values()]

    @property
    def has_commands(self) -> bool:
        """Commands are waiting for `data_to_send()`."""
        return bool(self._outbox)

    def data_to_send(self) -> list[bytes]:
        """Commands produced since the last call, in order; the caller must send them all."""
        out, self._outbox = self._outbox, []
        return out

    # -- connection lifecycle ---------------------------------------------------------------

    def connection_made(self, epoch: str | None = None) -> None:
        """A fresh connection: a new epoch (`new_epoch` unless given), forget every
        server-side id, subscribe everything again."""
        self.epoch = epoch if epoch is not None else new_epoch()
        self._unsequenced = 0
        self._groups.clear()
        self._sid_group.clear()
        self._last_seq.clear()
        self._pending.clear()
        self._outbox.clear()
        self._deferred = False
        self._reconcile()

    def set_markets(self, tickers: Iterable[str]) -> None:
        """Make `tickers` the desired set; queue the commands that get there."""
        self._desired = set(tickers)
        self._reconcile()

    # -- commands ---------------------------------------------------------------------------

    def _command(self, cmd: str, params: dict[str, object], pending: _Pending) -> int:
        cmd_id = self._next_id
        self._next_id += 1
        self._pending[cmd_id] = pending
        self._outbox.append(_encode({"id": cmd_id, "cmd": cmd, "params": params}))
        return cmd_id

    def _reconcile(self) -> None:
        n = len(self.channels)
        self._deferred = False
        covered: set[str] = set()
        for group in list(self._groups.values()):
            gone = group.tickers - self._desired
            if gone and not group.active(n):
                self._deferred = True  # apply once its subscribe is acknowledged
            elif gone == group.tickers and gone:
                self._drop_group(group)
                continue
            elif gone:
                group.tickers -= gone
                self._update(group, "delete_markets", sorted(gone))
            covered |= group.tickers
        missing = sorted(self._desired - covered)
        if not missing:
            return
        for group in sorted(self._groups.values(), key=lambda g: g.gid):
            room = self.max_tickers - len(group.tickers)
            if room <= 0 or not group.active(n):
                continue
            chunk, missing = missing[:room], missing[room:]
            group.tickers.update(chunk)
            self._update(group, "add_markets", chunk)
            if not missing:
                return
        for start in range(0, len(missing), self.max_tickers):
            chunk = missing[start : start + self.max_tickers]
            group = _Group(self._next_gid, set(chunk))
            self._next_gid += 1
            self._groups[group.gid] = group
            group.subscribe_id = self._command(
                "subscribe",
                {"channels": list(self.channels), "market_tickers": chunk},
                _Pending("subscribe", group, tuple(chunk), acks_left=n),
            )

    def _update(self, group: _Group, action: str, tickers: list[str]) -> None:
        kind = "add" if action == "add_markets" else "delete"
        for sid in group.sids.values():
            self._command(
                "update_subscription",
                {"sids": [sid], "market_tickers": tickers, "action": action},
                _Pending(kind, group, tuple(tickers)),
            )

    def _drop_group(self, group: _Group) -> None:
        del self._groups[group.gid]
        sids = sorted(group.sids.values())
        for sid in sids:
            self._sid_group.pop(sid, None)
            self._last_seq.pop(sid, None)
        if sids:
            self._command("unsubscribe", {"sids": sids}, _Pending("unsubscribe", None))

    # -- frames in --------------------------------------------------------------------------

    def receive(self, data: bytes | str) -> Event:
        """Parse one received frame; update state; return what it was."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            env = _decode_envelope(data)
        except msgspec.DecodeError as exc:
            return self._malformed(f"not a Kalshi message: {exc}")
        msg_type = env.type
        if msg_type in CONTROL_TYPES:
            return self._control(env)
        if msg_type not in DATA_TYPES:
            return self._unknown(msg_type)
        msg = env.msg
        if not msg:
            return self._malformed(f"{msg_type!r} message without 'msg'")
        try:
            body = _decode_body(msg)
        except msgspec.DecodeError as exc:
            return self._malformed(f"{msg_type!r} message with a bad 'msg': {exc}")
        ticker = body.market_ticker
        if not ticker or not msg_type:
            return self._malformed(f"{msg_type!r} message without market_ticker")
        seq, sid = env.seq, env.sid
        gap_from: int | None = None
        if seq is not None and sid is not None:
            last = self._last_seq.get(sid)
            if last is not None:
                if seq != last + 1:
                    self._gap(sid, last + 1, seq)
                    if seq > last + 1:
                        gap_from = last + 1
                self._last_seq[sid] = seq
        self.stats.frames += 1
        if seq is not None:
            position: int | str = seq
        else:
            self._unsequenced += 1
            position = f"n{self._unsequenced}"
        msg_id = message_id(msg_type, self.epoch, sid, position, body.trade_id)
        return Frame(data, msg_type, ticker, msg_id, self.epoch, sid, seq, gap_from)

    def _malformed(self, reason: str) -> Malformed:
        self.stats.malformed += 1
        return Malformed(reason)

    def _unknown(self, msg_type: str) -> Unknown:
        self.stats.unknown += 1
        logged = self._unknown_logged
        if msg_type not in logged and len(logged) < MAX_UNKNOWN_TYPES_LOGGED:
            logged.add(msg_type)
            log.warning("unknown Kalshi message type %r: counted and skipped", msg_type[:64])
        return Unknown(msg_type)

    def _gap(self, sid: int, expected: int, got: int) -> None:
        self.stats.gaps += 1
        missing = got - expected
        if missing > 0:
            self.stats.gap_messages += missing
        log.warning("sequence gap on sid %d: expected seq %d, got %d", sid, expected, got)
        group = self._sid_group.get(sid)
        if group is not None and group.sids.get(BOOK_CHANNEL) == sid:
            self._resnapshot(group, sid)

    def _resnapshot(self, group: _Group, sid: int) -> None:
        """A book with a gap cannot be rebuilt: replace its subscription, whose first frames
        are fresh snapshots. The group is inactive (changes deferred) until it is acked."""
        self.stats.resnapshots += 1
        del group.sids[BOOK_CHANNEL]
        self._sid_group.pop(sid, None)
        self._last_seq.pop(sid, None)
        self._command("unsubscribe", {"sids": [sid]}, _Pending("unsubscribe", None))
        tickers = sorted(group.tickers)
        group.subscribe_id = self._command(
            "subscribe",
            {"channels": [BOOK_CHANNEL], "market_tickers": tickers},
            _Pending("resnapshot", group, tuple(tickers)),
        )

    def _control(self, env: _Envelope) -> Event:
        try:
            body = _decode_control(env.msg) if env.msg else _Control()
        except msgspec.DecodeError as exc:
            return self._malformed(f"{env.type!r} reply with a bad 'msg': {exc}")
        cmd_id = env.id
        pending = self._pending.get(cmd_id) if cmd_id is not None else None
        if env.type == "error":
            self.stats.errors += 1
            command = self._fail(cmd_id, pending)
            return ErrorReply(cmd_id, body.code, body.msg or "", command)
        if env.type == "subscribed":
            sid = body.sid if body.sid is not None else env.sid
            if sid is None or body.channel is None:
                return self._malformed("'subscribed' reply without sid or channel")
            if cmd_id is None or pending is None or pending.group is None:
                # A subscription nothing accounts for (its command failed meanwhile): let go.
                self._command("unsubscribe", {"sids": [sid]}, _Pending("unsubscribe", None))
                return Subscribed(cmd_id or 0, body.channel, sid)
            group = pending.group
            group.sids[body.channel] = sid
            self._sid_group[sid] = group
            self._last_seq[sid] = 0  # Kalshi numbers each subscription's messages from 1
            pending.acks_left -= 1
            if pending.acks_left <= 0:
                del self._pending[cmd_id]
                group.subscribe_id = None
                if self._deferred:
                    self._reconcile()
            return Subscribed(cmd_id, body.channel, sid)
        # ok / unsubscribed
        if cmd_id is not None and pending is not None:
            pending.acks_left -= 1
            if pending.acks_left <= 0:
                del self._pending[cmd_id]
        return Acknowledged(cmd_id, env.type, env.sid)

    def _fail(self, cmd_id: int | None, pending: _Pending | None) -> str | None:
        """Undo what a refused command assumed; the markets are retried on the next change."""
        if pending is None or cmd_id is None:
            return None
        del self._pending[cmd_id]
        group = pending.group
        if pending.kind in ("subscribe", "resnapshot") and group is not None:
            self._groups.pop(group.gid, None)
            sids = sorted(group.sids.values())
            for sid in sids:  # channels that did get through must not leak
                self._sid_group.pop(sid, None)
                self._last_seq.pop(sid, None)
            if sids:
                self._command("unsubscribe", {"sids": sids}, _Pending("unsubscribe", None))
        elif pending.kind == "add" and group is not None:
            group.tickers.difference_update(pending.tickers)
        return pending.kind


GAP_TYPE = "ssmd_gap"
GAP_ID_PREFIX = "gap:"
_encode_gap = msgspec.json.Encoder().encode


def gap_record(frame: Frame) -> Frame | None:
    """The record of the sequence gap `frame` revealed (None when it revealed none), forwarded
    and archived like a message so that an audit of the archive (`ssmd archive verify`) can
    tell a hole the exchange left (recorded here, when it happened) from one we made.

    Its frame: `{"type":"ssmd_gap","sid":S,"msg":{"market_ticker":T,"epoch":E,"sid":S,
    "channel":C,"from":F,"to":L}}` — exchange seqs F..L of (epoch E, sid S) never arrived; C
    is the subscription's message type and T the market of the frame that came after them (a
    subscription spans many markets, so the missing ones may be of any of its markets). Its
    id is unique per gap: `gap:{E}.{S}.{F}`."""
    if frame.gap_from is None or frame.seq is None:
        return None
    body = {
        "market_ticker": frame.ticker,
        "epoch": frame.epoch,
        "sid": frame.sid,
        "channel": frame.msg_type,
        "from": frame.gap_from,
        "to": frame.seq - 1,
    }
    raw = _encode_gap({"type": GAP_TYPE, "sid": frame.sid, "msg": body})
    msg_id = f"{GAP_ID_PREFIX}{frame.epoch}.{frame.sid}.{frame.gap_from}"
    return Frame(raw, GAP_TYPE, frame.ticker, msg_id, frame.epoch, frame.sid, None)
