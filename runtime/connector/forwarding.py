"""The hot path: exchange frames into the shard's stream, through a bounded buffer.

Each frame's exact bytes go to `internal.{shard}.{feed}.{type}.{symbol}` with `Nats-Msg-Id` =
the frame's `msg_id` (`runtime.kalshi.protocol.message_id`), acknowledged by the stream.
While the publisher's window has room, frames are published straight from the socket reader
(no queue hop, no task switch); otherwise they wait in the bounded buffer, whose drop policy
decides what happens when it is full. Drops are counted.

A sequence gap the exchange left is forwarded too, as a `ssmd_gap` record just before the
frame that revealed it (`protocol.gap_record`), so the archive itself says which holes were
the exchange's.
"""

from __future__ import annotations

import asyncio
import logging
import re

from runtime.buffer import FrameBuffer
from runtime.kalshi.protocol import Frame, gap_record
from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.core.subjects import internal_subject

log = logging.getLogger("ssmd.connector")

_SAFE_TYPE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a message type becomes one subject token

# (subject, raw frame, msg id) — what waits in the buffer
Item = tuple[bytes, bytes, bytes]


class Forwarder:
    """Takes the frames of each socket read, publishes or buffers them; counts what it saw."""

    def __init__(
        self, shard: str, feed: str, buffer: FrameBuffer[Item], publisher: JetStreamPublisher
    ) -> None:
        self.shard = shard
        self.feed = feed
        self.buffer = buffer
        self.publisher = publisher
        self.received = 0  # frames taken from the exchange
        self.rejected = 0  # frames whose type/ticker/id cannot be published safely
        self.gap_records = 0  # `ssmd_gap` records forwarded
        # Symbols another replica may hold at the same time (joining before registration,
        # or released and still in grace). Their non-trade frames may be stored by both
        # replicas, each under its own epoch: counted here, never dropped.
        self.handoff: frozenset[str] = frozenset()
        self.handoff_frames = 0
        self.symbol_counts: dict[str, int] = {}  # frames per symbol (bounded, see `resize`)
        self._symbol_count_bound = 1024
        self._subjects: dict[tuple[str, str], bytes] = {}
        self._subject_bound = 4096

    def resize(self, symbols: frozenset[str]) -> None:
        """The shard's symbols changed: bound the per-symbol caches by them (strays too)."""
        self._symbol_count_bound = 2 * len(symbols) + 64
        self._subject_bound = 8 * len(symbols) + 1024
        for stale in [s for s in self.symbol_counts if s not in symbols]:
            del self.symbol_counts[stale]

    def on_frames(self, frames: list[Frame]) -> int:
        """Called by the WebSocket client with the market-data frames of one socket read, in
        arrival order; returns how many it took. Under `block` it stops at a full buffer (the
        client then stops reading the socket and offers the rest after `wait_ready`); under
        the drop policies it takes them all and the buffer's policy decides what is kept.
        While the publisher's window has room and nothing is buffered, frames go straight to
        the publisher, as one batch and one socket write; the rest go to the buffer, in order
        (the drain task runs only after this returns, so the batch goes out first)."""
        publisher = self.publisher
        buffer = self.buffer
        block = buffer.policy == "block"
        subjects = self._subjects
        counts = self.symbol_counts
        handoff = self.handoff
        room = publisher.room if not len(buffer) else 0
        direct: list[Item] = []
        taken = 0
        for frame in frames:
            if block and buffer.full and not buffer.closed:
                break
            taken += 1
            if frame.gap_from is not None:  # rare: the gap's record goes just before it
                room = self._forward_gap(frame, direct, room)
            ticker = frame.ticker
            subject = subjects.get((frame.msg_type, ticker))
            if subject is None:
                subject = self._subject(frame.msg_type, ticker)
                if subject is None:
                    continue
            msg_id = frame.msg_id
            if "\r" in msg_id or "\n" in msg_id:  # would break the header block: never forward
                self.rejected += 1
                continue
            if room > 0:
                direct.append((subject, frame.raw, msg_id.encode()))
                room -= 1
            else:
                buffer.offer((subject, frame.raw, msg_id.encode()))
            if ticker in counts:
                counts[ticker] += 1
            elif len(counts) < self._symbol_count_bound:
                counts[ticker] = 1
            if handoff and ticker in handoff and frame.msg_type != "trade":
                self.handoff_frames += 1
        self.received += taken
        if direct:  # one write per read, in this wake-up: no flush timer
            publisher.publish_many(direct, flush=True)
        return taken

    def _forward_gap(self, frame: Frame, direct: list[Item], room: int) -> int:
        """Queue the `ssmd_gap` record of the gap `frame` revealed (in `direct` while the
        window has `room`, else in the buffer); returns the room left."""
        gap = gap_record(frame)
        if gap is None:
            return room
        subject = self._subjects.get((gap.msg_type, gap.ticker)) or self._subject(
            gap.msg_type, gap.ticker
        )
        if subject is None:
            return room
        self.gap_records += 1
        item = (subject, gap.raw, gap.msg_id.encode())
        if room > 0:
            direct.append(item)
            return room - 1
        self.buffer.offer(item)
        return room

    async def wait_ready(self) -> None:
        """Until `on_frames` takes frames again (room in the buffer, or the buffer closed)."""
        await self.buffer.wait_not_full()

    def _subject(self, msg_type: str, ticker: str) -> bytes | None:
        """The subject of a (type, ticker) not seen before, or None (counted) when the exchange
        sent a type that cannot be a subject token or a ticker with control characters."""
        if not _SAFE_TYPE.match(msg_type) or any(ord(c) < 32 for c in ticker):
            self.rejected += 1
            if self.rejected <= 10:
                log.warning("rejected a frame with type %r, ticker %r", msg_type, ticker)
            return None
        if len(self._subjects) >= self._subject_bound:
            self._subjects.clear()  # bounded: types × symbols of the shard, plus strays
        subject = internal_subject(self.shard, self.feed, msg_type, ticker).encode()
        self._subjects[(msg_type, ticker)] = subject
        return subject

    async def drain_buffer(self) -> None:
        """Move buffered frames to the publisher whenever its window has room (a task)."""
        buffer, publisher = self.buffer, self.publisher
        while await buffer.wait_not_empty():
            room = publisher.room
            if room <= 0:
                await publisher.wait_for_room()
                continue
            for subject, raw, msg_id in buffer.take(min(room, 1024)):
                publisher.publish(subject, raw, msg_id)
            await asyncio.sleep(0)
