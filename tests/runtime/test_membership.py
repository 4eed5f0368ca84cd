"""Replica membership: rendezvous hashing splits a shard's symbols deterministically and
moves few on a change; members heartbeat into a real Redis, age out after the TTL, hand
symbols over with an overlap, and keep working when Redis is down."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from runtime.membership import Membership, owner_of, redis_client, rendezvous_score, split
from ssmd_infra.core import redis_keys
from ssmd_infra.local.servers import free_port, start_redis

SYMBOLS = [f"SYM-{i}" for i in range(1000)] + ["KXHIGHNY-24DEC05-B43.5"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_every_symbol_has_exactly_one_owner_and_the_split_is_roughly_even() -> None:
    parts = split(SYMBOLS, ["a", "b", "c"])
    assert sorted(s for part in parts.values() for s in part) == sorted(SYMBOLS)
    for part in parts.values():
        assert 250 < len(part) < 420  # ~1/3 of 1001 each


def test_ownership_does_not_depend_on_member_order_or_process() -> None:
    assert owner_of("BTCUSD", ["a", "b", "c"]) == owner_of("BTCUSD", ["c", "a", "b"])
    # fixed expectations: the hash (blake2b, not Python's salted `hash`) is the same in
    # every process, so replicas agree without talking
    assert rendezvous_score("pod-0", "BTCUSD") == 450009941297841356
    assert owner_of("BTCUSD", ["pod-0", "pod-1"]) == "pod-1"
    assert owner_of("ETHUSD", ["pod-0", "pod-1"]) == "pod-0"
    assert split(["BTCUSD"], ["solo"]) == {"solo": {"BTCUSD"}}


def test_a_join_moves_only_the_symbols_the_new_member_takes() -> None:
    before = split(SYMBOLS, ["a", "b"])
    after = split(SYMBOLS, ["a", "b", "c"])
    assert after["a"] <= before["a"] and after["b"] <= before["b"]
    assert 250 < len(after["c"]) < 420


@pytest.fixture
def shard() -> str:
    return f"s{uuid.uuid4().hex[:8]}"


async def test_members_see_each_other_and_split_the_shard(redis_url: str, shard: str) -> None:
    clock = Clock()
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a", clock=clock)
    b = Membership(client, "env", shard, "b", clock=clock)
    assert await a.heartbeat() and await b.heartbeat()
    await a.heartbeat()
    assert a.members == b.members == ("a", "b")
    mine_a, mine_b = a.desired(SYMBOLS), b.desired(SYMBOLS)
    assert mine_a | mine_b == set(SYMBOLS) and not mine_a & mine_b
    ttl = await client.ttl(redis_keys.members_key("env", shard))
    assert ttl > 0, "the members key must age out when every replica is gone"
    await client.aclose()


async def test_the_old_owner_keeps_a_symbol_one_heartbeat_after_a_join(
    redis_url: str, shard: str
) -> None:
    clock = Clock()
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a", heartbeat=2.0, clock=clock)
    await a.heartbeat()
    assert a.desired(SYMBOLS) == set(SYMBOLS)  # alone: everything
    b = Membership(client, "env", shard, "b", heartbeat=2.0, clock=clock)
    await b.heartbeat()
    taken = b.desired(SYMBOLS)  # the newcomer subscribes its share at once
    assert 0 < len(taken) < len(SYMBOLS)
    clock.now += 2.0
    await a.heartbeat()
    assert a.desired(SYMBOLS) == set(SYMBOLS), "handed-over symbols stay during the grace"
    assert a.owned == set(SYMBOLS) - taken
    clock.now += 2.0
    await a.heartbeat()
    assert a.desired(SYMBOLS) == set(SYMBOLS) - taken
    await client.aclose()


async def test_a_member_that_stops_heartbeating_ages_out_and_its_symbols_move(
    redis_url: str, shard: str
) -> None:
    clock = Clock()
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a", member_ttl=10.0, clock=clock)
    b = Membership(client, "env", shard, "b", member_ttl=10.0, clock=clock)
    await a.heartbeat()
    await b.heartbeat()
    await a.heartbeat()
    assert a.desired(SYMBOLS) != set(SYMBOLS)
    clock.now += 9.0  # b is silent, but not yet past the TTL
    await a.heartbeat()
    assert a.members == ("a", "b")
    clock.now += 2.0
    await a.heartbeat()
    assert a.members == ("a",)
    assert a.desired(SYMBOLS) == set(SYMBOLS)
    await client.aclose()


async def test_a_member_that_leaves_is_gone_at_the_next_heartbeat(
    redis_url: str, shard: str
) -> None:
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a")
    b = Membership(client, "env", shard, "b")
    await a.heartbeat()
    await b.heartbeat()
    await b.leave()
    await a.heartbeat()
    assert a.members == ("a",)
    await client.aclose()


async def test_symbols_that_leave_the_shard_are_dropped_at_once(redis_url: str, shard: str) -> None:
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a")
    await a.heartbeat()
    assert a.desired(["X", "Y"]) == {"X", "Y"}
    assert a.desired(["X"]) == {"X"}
    await client.aclose()


async def test_without_redis_a_member_owns_everything(shard: str) -> None:
    client = redis_client(f"redis://127.0.0.1:{free_port()}")  # nothing listens here
    a = Membership(client, "env", shard, "a")
    assert await a.heartbeat() is False
    assert not a.known and not a.healthy and a.failures == 1
    assert a.desired(SYMBOLS) == set(SYMBOLS)
    await client.aclose()


@pytest.mark.servers
async def test_when_redis_goes_down_the_last_membership_stands(tmp_path: Path, shard: str) -> None:
    server = start_redis(tmp_path / "redis")
    client = redis_client(server.url)
    try:
        a = Membership(client, "env", shard, "a")
        b = Membership(client, "env", shard, "b")
        await a.heartbeat()
        await b.heartbeat()
        await a.heartbeat()
        share = a.desired(SYMBOLS)
        server.kill()
        assert await a.heartbeat() is False
        assert a.members == ("a", "b") and a.known and not a.healthy
        assert a.desired(SYMBOLS) == share
    finally:
        await client.aclose()
        server.stop()


async def test_peeking_reads_the_members_without_registering(redis_url: str, shard: str) -> None:
    client = redis_client(redis_url)
    a = Membership(client, "env", shard, "a")
    b = Membership(client, "env", shard, "b")
    await a.heartbeat()
    assert await b.peek()
    assert b.members == ("a", "b")  # b counts itself in to compute its share...
    await a.heartbeat()
    assert a.members == ("a",)  # ...but nobody else sees it until it registers
    assert a.desired(SYMBOLS) == set(SYMBOLS)
    await b.heartbeat()
    await a.heartbeat()
    assert a.members == ("a", "b")
    await client.aclose()
