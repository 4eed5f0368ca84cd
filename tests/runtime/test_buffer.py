"""The connector's bounded buffer: capacity holds, each drop policy does what it says, and
every drop is counted."""

from __future__ import annotations

import asyncio

import pytest

from runtime.buffer import FrameBuffer


def test_drop_oldest_keeps_the_newest_items_and_counts_the_evicted() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(3, "drop_oldest")
    for i in range(5):
        assert buffer.offer(i)
    assert len(buffer) == 3
    assert buffer.dropped == 2
    assert buffer.take(10) == [2, 3, 4]


def test_drop_newest_keeps_the_first_items_and_refuses_the_rest() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(3, "drop_newest")
    accepted = [buffer.offer(i) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert buffer.dropped == 2
    assert buffer.take(10) == [0, 1, 2]


async def test_block_makes_the_producer_wait_until_the_consumer_takes() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(2, "block")
    await buffer.put(0)
    await buffer.put(1)
    third = asyncio.create_task(buffer.put(2))
    await asyncio.sleep(0.01)
    assert not third.done(), "a full blocking buffer must hold the producer back"
    assert buffer.take(1) == [0]
    await asyncio.wait_for(third, 1.0)
    assert buffer.take(10) == [1, 2]
    assert buffer.dropped == 0


async def test_block_releases_a_waiting_producer_on_close_and_counts_its_item() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(1, "block")
    await buffer.put(0)
    waiting = asyncio.create_task(buffer.put(1))
    await asyncio.sleep(0.01)
    buffer.close()
    await asyncio.wait_for(waiting, 1.0)
    assert buffer.dropped == 1
    assert buffer.take(10) == [0]


async def test_wait_not_empty_wakes_on_an_item_and_reports_closed_when_drained() -> None:
    buffer: FrameBuffer[str] = FrameBuffer(4)
    waiter = asyncio.create_task(buffer.wait_not_empty())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    buffer.offer("a")
    assert await asyncio.wait_for(waiter, 1.0) is True
    buffer.close()
    assert await buffer.wait_not_empty() is True  # closed, but an item is still queued
    assert buffer.take(5) == ["a"]
    assert await buffer.wait_not_empty() is False


def test_take_returns_items_in_order_up_to_the_limit_and_tracks_the_high_water_mark() -> None:
    buffer: FrameBuffer[int] = FrameBuffer(10, "drop_newest")
    for i in range(7):
        buffer.offer(i)
    assert buffer.take(3) == [0, 1, 2]
    assert buffer.take(0) == []
    assert len(buffer) == 4
    assert buffer.high_water == 7


def test_memory_is_bounded_whatever_the_number_of_offers() -> None:
    buffer: FrameBuffer[bytes] = FrameBuffer(100, "drop_oldest")
    for i in range(100_000):
        buffer.offer(b"%d" % i)
    assert len(buffer) == 100
    assert buffer.dropped == 100_000 - 100
    assert buffer.take(1) == [b"99900"]


@pytest.mark.parametrize(
    ("capacity", "policy", "message"),
    [
        (0, "drop_oldest", "capacity must be at least 1"),
        (5, "drop_random", "unknown drop policy 'drop_random'"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(
    capacity: int, policy: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FrameBuffer(capacity, policy)  # type: ignore[arg-type]
