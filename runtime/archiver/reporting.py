"""What the archiver tells the world: Prometheus `/metrics` and a Redis hash
`{env}:shard:{shard}:archiver` (messages, bytes, files, lag, …) with a TTL. Redis being down
changes nothing but the report."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from runtime.health import ShardMetrics
from runtime.nats.credentials import permission_errors_metric
from runtime.procstats import ProcStats
from ssmd_infra.core import redis_keys
from ssmd_infra.core.nats_auth import archiver_role

if TYPE_CHECKING:
    from runtime.archiver.service import Archiver


async def report_redis(client: aioredis.Redis, archiver: Archiver, procstats: ProcStats) -> None:
    """The archiver's figures into `{env}:shard:{shard}:archiver`, with a TTL."""
    a = archiver
    key = redis_keys.archiver_key(a.env.name, a.shard)
    cpu_pct, mem_pct = procstats.sample()
    mapping: dict[Any, Any] = {
        "messages": a.stats.archived,
        "bytes": a.writer.bytes_written,
        "files": a.writer.files_finalized,
        "lag": a.stats.lag,
        "acked_seq": a.stats.acked_seq,
        redis_keys.METRIC_CPU_PCT: cpu_pct,
        redis_keys.METRIC_MEM_PCT: mem_pct,
        "updated": round(time.time(), 3),
    }
    async with client.pipeline(transaction=False) as pipe:
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, redis_keys.KEY_TTL_SECONDS)
        await pipe.execute()


class ArchiverCollector(Collector):
    """Exports the archiver's counters at scrape time."""

    def __init__(self, archiver: Archiver) -> None:
        self._a = archiver

    def collect(self) -> Iterator[Metric]:
        a = self._a
        stats = a.stats

        metrics = ShardMetrics(a.shard)
        gauge, counter = metrics.gauge, metrics.counter

        yield counter(
            "ssmd_archiver_messages", "Lines archived (written and fsynced)", stats.archived
        )
        yield counter(
            "ssmd_archiver_bytes",
            "Compressed bytes written to archive files",
            a.writer.bytes_written,
        )
        yield counter(
            "ssmd_archiver_files", "Archive files finalized (renamed)", a.writer.files_finalized
        )
        yield gauge("ssmd_archiver_open_files", "Archive files being written", a.writer.open_files)
        yield gauge(
            "ssmd_archiver_lag",
            "Messages in the shard stream not yet delivered (num_pending)",
            stats.lag,
        )
        yield gauge(
            "ssmd_archiver_acked_sequence", "Stream sequence of the last ack", stats.acked_seq
        )
        yield counter("ssmd_archiver_batches", "Batches written, synced and acked", stats.batches)
        yield counter(
            "ssmd_archiver_deliveries", "Messages delivered by the stream", stats.deliveries
        )
        yield counter(
            "ssmd_archiver_redelivered", "Messages delivered more than once", stats.redelivered
        )
        yield counter(
            "ssmd_archiver_invalid",
            "Messages with a bad subject or a non-JSON payload",
            stats.invalid,
        )
        yield counter(
            "ssmd_archiver_resyncs",
            "Consumer resyncs after deliveries this process missed",
            stats.resyncs,
        )
        yield counter(
            "ssmd_archiver_nats_reconnects",
            "Data connection reconnections",
            a.pull.stats.reconnects,
        )
        yield permission_errors_metric(
            a.shard,
            archiver_role(a.shard),
            a.pull.connection.stats.permission_violations + a.control_denials.count,
        )
