"""What the local pipeline measures: the children's /metrics, the streams, the archive.

Every call here has a timeout (a dead server or a hung child must never stall the
supervisor) and degrades to "unknown" instead of failing: figures are for the operator, the
data path never depends on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ssmd_infra.adapters.jetstream import connect, stream_raw_info
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.nkey_seeds import RoleSeed
from ssmd_infra.core.resolution import Layout
from ssmd_infra.core.subjects import internal_stream
from ssmd_infra.local.children import Child

HTTP_TIMEOUT = 1.0
NATS_TIMEOUT = 1.0

# the runtime's metric names (samples: counters end in `_total`)
CONNECTOR_RATE = "ssmd_connector_message_rate"
CONNECTOR_RECEIVED = "ssmd_connector_messages_total"
CONNECTOR_DROPPED = "ssmd_connector_dropped_total"
CONNECTOR_GAPS = "ssmd_connector_sequence_gaps_total"
CONNECTOR_DUPLICATES = "ssmd_connector_duplicates_total"  # server-answered duplicates
CONNECTOR_RECONNECTS = "ssmd_connector_reconnects_total"  # to the exchange
CONNECTOR_NATS_RECONNECTS = "ssmd_connector_nats_reconnects_total"
CONNECTOR_SHARD_SYMBOLS = "ssmd_connector_shard_symbols"  # resolved, secmaster included
ARCHIVER_ARCHIVED = "ssmd_archiver_messages_total"


@dataclass
class ShardFigures:
    """One shard, summed over its processes (counters over every incarnation)."""

    shard: str
    symbols: int  # resolved: the connectors' own count once they report, else the layout's
    replicas: int = 0  # connectors running
    msg_rate: float = 0.0
    published: int = 0  # messages in the shard's internal stream
    forwarded: int = 0  # frames the connectors received from the exchange
    drops: int = 0
    gaps: int = 0
    duplicates: int = 0
    reconnects: int = 0
    nats_reconnects: int = 0
    restarts: int = 0  # of its connectors and archiver
    archived: int = 0


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float] | None:
    """Sample name → value (summed over labels) from `/metrics`; None when it does not answer."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            text = await response.text()
    except (TimeoutError, aiohttp.ClientError):
        return None
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


async def scrape_children(children: Iterable[Child]) -> None:
    """Refresh `metrics` of every live connector and archiver that answers."""
    targets = [c for c in children if c.kind in ("connector", "archiver") and c.alive]
    if not targets:
        return
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        scraped = await asyncio.gather(*(scrape(http, c.metrics_port) for c in targets))
    for child, metrics in zip(targets, scraped, strict=True):
        if metrics is not None:
            child.metrics = metrics


async def stream_counts(
    nats_url: str,
    names: Iterable[str],
    timeout: float = NATS_TIMEOUT,
    *,
    seed: RoleSeed | None = None,
) -> dict[str, int]:
    """Messages held per stream, read as `seed`'s role (the admin's under authorization);
    streams that do not exist (or a NATS that does not answer within `timeout` to connect)
    are left out."""
    counts: dict[str, int] = {}
    with contextlib.suppress(SsmdError, OSError, TimeoutError):
        async with connect(nats_url, timeout=timeout, seed=seed) as nc:
            for name in names:
                info = await stream_raw_info(nc, name)
                if info is not None:
                    counts[name] = int(info.get("state", {}).get("messages", 0))
    return counts


def shard_figures(
    shards: Iterable[str], layout: Layout, children: Iterable[Child], counts: dict[str, int]
) -> dict[str, ShardFigures]:
    """Per-shard figures from the children's last scrapes and the streams' counts."""
    out = {name: ShardFigures(name, len(layout.symbols_of(name))) for name in shards}
    resolved: dict[str, int] = {}
    for child in children:
        fig = out.get(child.shard)
        if fig is None:
            continue
        fig.restarts += child.restarts.count
        if child.kind == "connector":
            if child.alive:
                fig.replicas += 1
                fig.msg_rate += child.metrics.get(CONNECTOR_RATE, 0.0)
            if CONNECTOR_SHARD_SYMBOLS in child.metrics:  # every replica resolves the shard
                symbols = int(child.metrics[CONNECTOR_SHARD_SYMBOLS])
                resolved[child.shard] = max(resolved.get(child.shard, 0), symbols)
            fig.forwarded += int(child.counter(CONNECTOR_RECEIVED))
            fig.drops += int(child.counter(CONNECTOR_DROPPED))
            fig.gaps += int(child.counter(CONNECTOR_GAPS))
            fig.duplicates += int(child.counter(CONNECTOR_DUPLICATES))
            fig.reconnects += int(child.counter(CONNECTOR_RECONNECTS))
            fig.nats_reconnects += int(child.counter(CONNECTOR_NATS_RECONNECTS))
        elif child.kind == "archiver":
            fig.archived += int(child.counter(ARCHIVER_ARCHIVED))
    for name, fig in out.items():
        fig.published = counts.get(internal_stream(name), 0)
        if name in resolved:
            fig.symbols = resolved[name]
    return out


def archive_counts(data_dir: Path, feed: str) -> dict[str, int]:
    """Lines in the final archive files per shard: proves the archive is readable."""
    counts: dict[str, int] = {}
    root = data_dir / feed
    if not root.is_dir():
        return counts
    for path in root.glob("*/*/*/*.jsonl.gz"):
        shard = path.parent.parent.name
        with gzip.open(path, "rb") as handle:
            counts[shard] = counts.get(shard, 0) + sum(1 for _ in handle)
    return counts
