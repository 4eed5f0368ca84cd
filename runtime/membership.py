"""Which replica of a shard subscribes which symbols: rendezvous hashing over live members.

Replicas of one shard split its symbols without talking to each other. Each replica
heartbeats into a Redis sorted set (member → last heartbeat, unix seconds); the live members
are those heard from within `MEMBER_TTL_SECONDS`. A symbol belongs to the member with the
highest hash of (member, symbol) — rendezvous (HRW) hashing — so every replica computes the
same split from the same member list, and a join or a leave moves only the symbols that must
move (about 1/n of them).

Handoff without a gap: a joining member first reads the members without registering
(`peek`), subscribes its share, and registers only once those subscriptions are live; the
old owner notices the join at its next heartbeat and still keeps the symbols for one more
heartbeat period (`grace`). The two overlap, and JetStream's `Nats-Msg-Id` deduplication
absorbs the overlap. A member leaving cleanly deregisters first and keeps streaming for two
heartbeat periods, so survivors take over before it lets go. A member that dies ages out
after the member TTL and survivors take its symbols.

Redis down: the last known membership stands (if it was never known, this member owns
everything). The data path never waits on Redis.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ssmd_infra.core import redis_keys

log = logging.getLogger("ssmd.membership")


def rendezvous_score(member: str, symbol: str) -> int:
    """A stable 64-bit weight of (member, symbol), identical in every process and version."""
    digest = hashlib.blake2b(f"{member}\x00{symbol}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(symbol: str, members: Iterable[str]) -> str:
    """The member with the highest weight for `symbol` (ties, never seen, go to the larger name)."""
    best: tuple[int, str] | None = None
    for member in members:
        key = (rendezvous_score(member, symbol), member)
        if best is None or key > best:
            best = key
    if best is None:
        raise ValueError("no members to own a symbol")
    return best[1]


def split(symbols: Iterable[str], members: Iterable[str]) -> dict[str, set[str]]:
    """member → the symbols it owns; every symbol lands with exactly one member."""
    listed = sorted(set(members))
    out: dict[str, set[str]] = {m: set() for m in listed}
    for symbol in symbols:
        out[owner_of(symbol, listed)].add(symbol)
    return out


def redis_client(url: str) -> aioredis.Redis:
    """A client that fails fast: membership and reports must never stall on a dead Redis."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class Membership:
    """This replica's view of its shard's live members, and the symbols it should subscribe."""

    def __init__(
        self,
        client: aioredis.Redis | None,
        env: str,
        shard: str,
        member: str,
        *,
        heartbeat: float = redis_keys.HEARTBEAT_SECONDS,
        member_ttl: float = redis_keys.MEMBER_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._key = redis_keys.members_key(env, shard)
        self.member = member
        self.heartbeat_seconds = heartbeat
        self.member_ttl = member_ttl
        self._clock = clock
        self._members: tuple[str, ...] = (member,)
        self.known = False  # True once Redis has answered at least once
        self.healthy = False  # whether the last heartbeat reached Redis
        self.failures = 0
        self._owned: set[str] = set()
        self._split_for: tuple[tuple[str, ...], frozenset[str]] | None = None
        self._releasing: dict[str, float] = {}  # symbol → keep until (clock); ≤ shard symbols

    @property
    def members(self) -> tuple[str, ...]:
        """The live members as last seen (always including this one)."""
        return self._members

    async def peek(self) -> bool:
        """Read the live members without registering (this member counted in).

        A joining replica peeks, subscribes its share and only then registers: the current
        owners keep those symbols until they see it, so the handoff overlaps.
        """
        return await self._exchange(register=False)

    async def heartbeat(self) -> bool:
        """Register this member and read the live ones; False (last view kept) when Redis fails."""
        return await self._exchange(register=True)

    async def _exchange(self, *, register: bool) -> bool:
        if self._client is None:
            return False
        now = self._clock()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                if register:
                    pipe.zadd(self._key, {self.member: now})
                pipe.zremrangebyscore(self._key, "-inf", now - self.member_ttl)
                pipe.zrangebyscore(self._key, now - self.member_ttl, "+inf")
                if register:
                    pipe.expire(self._key, max(1, int(self.member_ttl * 3)))
                result = await pipe.execute()
        except (aioredis.RedisError, OSError) as exc:
            self.failures += 1
            if self.healthy or not self.known:
                log.warning(
                    "redis unreachable (%s); keeping the last known membership %s",
                    exc,
                    list(self._members),
                )
            self.healthy = False
            return False
        listed = result[2] if register else result[1]
        live = {m.decode() if isinstance(m, bytes) else str(m) for m in listed}
        live.add(self.member)
        members = tuple(sorted(live))
        if members != self._members:
            log.info("shard members now %s", list(members))
        self._members = members
        self.known = True
        self.healthy = True
        return True

    async def leave(self) -> None:
        """Deregister (best effort) so the survivors take over at their next heartbeat."""
        if self._client is None:
            return
        with contextlib.suppress(aioredis.RedisError, OSError):
            await self._client.zrem(self._key, self.member)

    def others(self) -> tuple[str, ...]:
        return tuple(m for m in self._members if m != self.member)

    def desired(self, symbols: Iterable[str]) -> set[str]:
        """The symbols to subscribe now: owned ones, plus recently released ones in grace.

        Symbols no longer in the shard at all (closed or moved markets) go at once: no other
        member of this shard will pick them up, so there is nothing to hand over.
        """
        now = self._clock()
        shard_symbols = frozenset(symbols)
        members = self._members
        if self._split_for == (members, shard_symbols):
            owned = self._owned  # nothing changed: skip hashing every symbol again
        elif len(members) == 1:
            owned = set(shard_symbols)
        else:
            owned = {s for s in shard_symbols if owner_of(s, members) == self.member}
        self._split_for = (members, shard_symbols)
        for symbol in self._owned - owned:
            if symbol in shard_symbols:
                self._releasing[symbol] = now + self.heartbeat_seconds
        for symbol in list(self._releasing):
            if symbol in owned or symbol not in shard_symbols or self._releasing[symbol] <= now:
                del self._releasing[symbol]
        self._owned = owned
        return owned | set(self._releasing)

    @property
    def owned(self) -> set[str]:
        """What this member owns outright (without symbols held in grace)."""
        return set(self._owned)
