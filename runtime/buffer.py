"""The fixed-capacity buffer between the exchange socket and NATS.

The exchange does not wait for us: when NATS is slow or away, frames must go somewhere, and
"somewhere" must be bounded or a long outage becomes an out-of-memory kill. The buffer holds
at most `capacity` items and applies the shard's drop policy when full:

- `drop_oldest`: evict the oldest item (fresh market data is worth more than stale);
- `drop_newest`: refuse the incoming item (keep what is already queued, in order);
- `block`: the producer waits for room. The producer is the WebSocket reader: it stops at a
  full buffer, stops reading the socket (TCP pushes back on the exchange) and goes on once
  `wait_not_full` returns. Never a crash.

Every dropped item is counted: drops are reported, never hidden.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
DropPolicy = Literal["drop_oldest", "drop_newest", "block"]
POLICIES: tuple[DropPolicy, ...] = ("drop_oldest", "drop_newest", "block")


class FrameBuffer(Generic[T]):
    """A bounded FIFO with a drop policy; single event loop, any number of producers."""

    def __init__(self, capacity: int, policy: DropPolicy = "drop_oldest") -> None:
        if capacity < 1:
            raise ValueError(f"buffer capacity must be at least 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(
                f"unknown drop policy {policy!r}; expected one of {', '.join(POLICIES)}"
            )
        self._items: deque[T] = deque()
        self._capacity = capacity
        self._policy: DropPolicy = policy
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._closed = False
        self.dropped = 0
        self.high_water = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def policy(self) -> DropPolicy:
        return self._policy

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def full(self) -> bool:
        """At capacity: under `block` a producer must wait (unless the buffer is closed)."""
        return len(self._items) >= self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: T) -> bool:
        """Add without waiting, applying a drop policy when full; False when `item` was refused.

        Under `block` a full buffer refuses (and counts) the item: callers that may wait use
        `put`, which only drops once the buffer is closed.
        """
        items = self._items
        if self._closed:
            self.dropped += 1
            return False
        if len(items) >= self._capacity:
            if self._policy == "drop_oldest":
                items.popleft()
                self.dropped += 1
            else:
                self.dropped += 1
                return False
        items.append(item)
        if len(items) > self.high_water:
            self.high_water = len(items)
        self._not_empty.set()
        return True

    async def put(self, item: T) -> None:
        """Add `item`; under `block` wait for room (back-pressure), otherwise as `offer`."""
        if self._policy == "block":
            await self.wait_not_full()
        self.offer(item)

    async def wait_not_full(self) -> None:
        """Wait until there is room or the buffer is closed (a producer that stopped at a full
        buffer, like the WebSocket reader under `block`, waits here before offering again)."""
        while len(self._items) >= self._capacity and not self._closed:
            self._not_full.clear()
            await self._not_full.wait()

    def take(self, limit: int) -> list[T]:
        """Remove and return up to `limit` items, oldest first, without waiting."""
        items = self._items
        count = min(limit, len(items))
        if count <= 0:
            return []
        out = [items.popleft() for _ in range(count)]
        if not items:
            self._not_empty.clear()
        self._not_full.set()
        return out

    async def wait_not_empty(self) -> bool:
        """Wait until an item is queued; False once the buffer is closed and empty."""
        while not self._items:
            if self._closed:
                return False
            await self._not_empty.wait()
        return True

    def close(self) -> None:
        """Refuse further items (counted as drops); queued items can still be taken."""
        self._closed = True
        self._not_empty.set()
        self._not_full.set()
