"""What a connector replica tells the world: Prometheus `/metrics` and Redis keys.

Prometheus families are built at scrape time from plain counters (nothing on the hot path).
Redis gets, every heartbeat: this member's metrics, the shard's aggregate (rate, CPU,
memory), the replica count, the shard's symbols and per-symbol rates — every key with a TTL,
so a dead process ages out. Redis being down degrades reports, never the data path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from runtime.health import ShardMetrics
from runtime.nats.credentials import permission_errors_metric
from runtime.procstats import ProcStats
from ssmd_infra.core import redis_keys
from ssmd_infra.core.nats_auth import connector_role

if TYPE_CHECKING:
    from runtime.connector.service import Connector

RATE_WINDOW_SECONDS = 10.0  # ssmd_connector_message_rate and per-symbol rates average over this


class RateWindow:
    """Messages per second over the last `window` seconds, from periodic samples of a total."""

    def __init__(self, window: float = RATE_WINDOW_SECONDS, tick: float = 1.0) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=int(window / tick) + 1)

    def add(self, now: float, total: int) -> None:
        self._samples.append((now, total))

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return round(sum(items) / len(items), 2) if items else 0.0


class RedisReporter:
    """Writes one replica's reports into the shard's Redis keys (`ssmd_infra.core.redis_keys`)."""

    def __init__(self, client: aioredis.Redis, connector: Connector) -> None:
        self._redis = client
        self._c = connector
        self._procstats = ProcStats()
        self._symbol_snapshots: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=max(2, int(RATE_WINDOW_SECONDS / connector.settings.heartbeat) + 1)
        )
        self._symbols_written: frozenset[str] | None = None
        self._symbols_at = 0.0

    def symbol_rates(self) -> dict[str, float]:
        """msg/s per symbol this replica subscribes, over the last few heartbeats."""
        c = self._c
        now = time.monotonic()
        current = dict(c.forwarder.symbol_counts)
        self._symbol_snapshots.append((now, current))
        then, old = self._symbol_snapshots[0]
        elapsed = now - then
        if elapsed <= 0:
            return {s: 0.0 for s in c.subscribed}
        return {s: round((current.get(s, 0) - old.get(s, 0)) / elapsed, 3) for s in c.subscribed}

    async def report(self, final: bool = False) -> None:
        """Symbols, replicas, metrics and per-symbol rates; every key has a TTL. `final`: this
        replica stops, its own metrics go at once (shared keys age out by TTL)."""
        c = self._c
        if not final and not c.membership.healthy:
            return
        env, shard, member = c.env.name, c.shard, c.member
        member_ttl = max(1, int(c.settings.member_ttl))
        own_key = redis_keys.member_metrics_key(env, shard, member)
        if final:
            await self._redis.delete(own_key)
            return
        cpu_pct, mem_pct = self._procstats.sample()
        mine: dict[Any, Any] = {
            redis_keys.METRIC_MSG_RATE: round(c.message_rate, 3),
            redis_keys.METRIC_CPU_PCT: cpu_pct,
            redis_keys.METRIC_MEM_PCT: mem_pct,
        }
        members = c.membership.members
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(own_key, mapping=mine)
            pipe.expire(own_key, member_ttl)
            for other in members:
                if other != member:
                    pipe.hgetall(redis_keys.member_metrics_key(env, shard, other))
            answers = await pipe.execute()
        live = [mine]
        for answer in answers[2:]:
            if answer:
                live.append({_text(k): float(v) for k, v in answer.items()})
        aggregate: dict[Any, Any] = {
            redis_keys.METRIC_MSG_RATE: round(
                sum(m.get(redis_keys.METRIC_MSG_RATE, 0.0) for m in live), 3
            ),
            redis_keys.METRIC_CPU_PCT: _mean(m.get(redis_keys.METRIC_CPU_PCT, 0.0) for m in live),
            redis_keys.METRIC_MEM_PCT: _mean(m.get(redis_keys.METRIC_MEM_PCT, 0.0) for m in live),
        }
        shard_symbols = c.symbols.current
        symbols_key = redis_keys.symbols_key(env, shard)
        rates_key = redis_keys.symbol_rates_key(env, shard)
        now = time.monotonic()
        async with self._redis.pipeline(transaction=True) as pipe:
            metrics_key = redis_keys.metrics_key(env, shard)
            pipe.hset(metrics_key, mapping=aggregate)
            pipe.expire(metrics_key, member_ttl)
            pipe.set(redis_keys.replicas_key(env, shard), len(members), ex=member_ttl)
            rewrite = (
                self._symbols_written != shard_symbols
                or now - self._symbols_at > redis_keys.KEY_TTL_SECONDS / 2
            )
            if rewrite:
                pipe.delete(symbols_key)
                if shard_symbols:
                    pipe.sadd(symbols_key, *sorted(shard_symbols))
            pipe.expire(symbols_key, redis_keys.KEY_TTL_SECONDS)
            rates: dict[Any, Any] = dict(self.symbol_rates())
            if rates:
                pipe.hset(rates_key, mapping=rates)
            pipe.expire(rates_key, redis_keys.KEY_TTL_SECONDS)
            await pipe.execute()
        if rewrite:
            self._symbols_written = shard_symbols
            self._symbols_at = now
            # bounded by the shard's symbols: fields of symbols that left the shard go
            fields = await self._redis.hkeys(rates_key)
            stale = [f for f in fields if _text(f) not in shard_symbols]
            if stale:
                await self._redis.hdel(rates_key, *stale)


class ConnectorCollector(Collector):
    """Exports the connector's plain counters at scrape time (nothing on the hot path)."""

    def __init__(self, connector: Connector) -> None:
        self._c = connector

    def collect(self) -> Iterator[Metric]:
        c = self._c
        fwd = c.forwarder
        stats = c.client.stats if c.client is not None else None
        pub = c.publisher.stats

        metrics = ShardMetrics(c.shard)
        gauge, counter = metrics.gauge, metrics.counter

        yield gauge(
            "ssmd_connector_message_rate",
            "Messages per second received from the exchange (recent window); the HPA's "
            "per-pod metric",
            c.message_rate,
        )
        yield counter("ssmd_connector_messages", "Frames received from the exchange", fwd.received)
        yield counter(
            "ssmd_connector_published", "Frames acknowledged by the shard stream", pub.acked
        )
        yield counter(
            "ssmd_connector_duplicates",
            "Publishes the shard stream answered as duplicates (a Nats-Msg-Id it already "
            "held: a trade another replica stored, or a resend)",
            pub.duplicates,
        )
        yield counter(
            "ssmd_connector_handoff_frames",
            "Non-trade frames received for a symbol another replica may hold at the same "
            "time (a handoff): each may be stored twice, under two epochs",
            fwd.handoff_frames,
        )
        dropped = CounterMetricFamily(
            "ssmd_connector_dropped", "Frames dropped, by reason", labels=["shard", "reason"]
        )
        dropped.add_metric([c.shard, "buffer_full"], c.buffer.dropped)
        dropped.add_metric([c.shard, "publish_failed"], pub.given_up)
        dropped.add_metric([c.shard, "rejected"], fwd.rejected)
        yield dropped
        yield counter(
            "ssmd_connector_sequence_gaps",
            "Sequence gaps on exchange subscriptions",
            stats.gaps if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_gap_records",
            "Gap records (ssmd_gap) forwarded to the stream for sequence gaps",
            fwd.gap_records,
        )
        yield counter(
            "ssmd_connector_reconnects",
            "Exchange WebSocket reconnections",
            stats.reconnects if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_malformed",
            "Malformed exchange frames skipped",
            stats.malformed if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_unknown_messages",
            "Exchange messages of a type the connector does not capture, skipped",
            stats.unknown if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_book_resnapshots",
            "Order book subscriptions renewed after a sequence gap (for a fresh snapshot)",
            stats.resnapshots if stats is not None else 0,
        )
        yield counter(
            "ssmd_connector_publish_failures",
            "Publishes refused or unacknowledged in time (each is resent)",
            pub.failures,
        )
        yield counter("ssmd_connector_nats_reconnects", "NATS reconnections", pub.reconnects)
        yield permission_errors_metric(
            c.shard, connector_role(c.shard), c.publisher.connection.stats.permission_violations
        )
        yield counter(
            "ssmd_connector_secmaster_failures",
            "Failed symbol refreshes",
            c.symbols.secmaster_failures,
        )
        yield gauge(
            "ssmd_connector_unresolved_symbols",
            "Live secmaster symbols that are orphans or overlaps (captured by no shard)",
            c.symbols.unresolved,
        )
        yield gauge("ssmd_connector_buffer_depth", "Frames waiting in the buffer", len(c.buffer))
        yield gauge(
            "ssmd_connector_publish_inflight",
            "Frames awaiting the stream's ack",
            c.publisher.inflight,
        )
        yield gauge(
            "ssmd_connector_subscribed_symbols",
            "Symbols this replica subscribes",
            len(c.subscribed),
        )
        yield gauge(
            "ssmd_connector_shard_symbols", "Symbols resolved to the shard", len(c.symbols.current)
        )
        yield gauge(
            "ssmd_connector_replicas",
            "Live replicas of the shard as last seen",
            len(c.membership.members),
        )
