"""What one connector replica is told: the `ssmd run connector` options, as one value."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.buffer import DropPolicy
from runtime.nats.credentials import NatsCredentials
from ssmd_infra.core import redis_keys

# The exchange socket and the acks from NATS are read at most once per READ_INTERVAL, on the
# same clock grid, and each batch is flushed to NATS at once: one wake-up per interval on a
# busy feed instead of one per socket read (see runtime/kalshi/transport.py and the
# "Connector" section of docs/BENCHMARKS.md). It bounds the latency this adds to a message
# (none on a quiet feed); `--read-interval 0` reads as data arrives.
READ_INTERVAL = 0.004


def default_member_id() -> str:
    """Pod name (the hostname in Kubernetes) and pid: unique per replica, readable in Redis."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """Endpoints, limits and timings of one replica; None means "the environment's value"
    (buffer, drop policy, refresh interval) or "off" (Redis, metrics)."""

    nats_url: str
    kalshi_ws_url: str
    kalshi_rest_url: str | None = None
    redis_url: str | None = None
    metrics_port: int | None = 9100
    member: str | None = None  # this replica's name among the shard's members
    channels: tuple[str, ...] | None = None  # None: the shard's `channels` (environment)
    buffer_capacity: int | None = None
    drop_policy: DropPolicy | None = None
    refresh_interval: float | None = None  # seconds between secmaster refreshes
    heartbeat: float = redis_keys.HEARTBEAT_SECONDS
    member_ttl: float = redis_keys.MEMBER_TTL_SECONDS
    drain_timeout: float = 10.0  # at stop: for the buffer, and again for the acks
    max_inflight: int = 8192  # the publisher's window
    ack_timeout: float = 2.0
    read_interval: float = READ_INTERVAL
    client_options: Mapping[str, Any] = field(default_factory=dict)  # KalshiWsClient tuning
    # the shard catalog (`ssmd_infra.core.shard_catalog`: every shard and pin), re-read at
    # every refresh, when the environment file holds this shard only (Kubernetes)
    shards_file: Path | None = None
    # the seed file and inbox prefix of role connector-{shard}; None: anonymous (nats.auth: none)
    nats_credentials: NatsCredentials | None = None
