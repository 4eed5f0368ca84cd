"""Live figures of an environment's shards, read from Redis for reports.

The runtime writes them (see `redis_keys`); reports only read. Redis is for reports, so
a Redis that is down, slow or not configured degrades a report to "unknown" (`None`,
shown as `-`) within a short timeout and never fails the command.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlparse

from ssmd_infra.core import local_state, redis_keys
from ssmd_infra.core.environment import Shard
from ssmd_infra.core.errors import SsmdError

REDIS_URL_VARIABLE = "SSMD_REDIS_URL"
TIMEOUT_SECONDS = 0.5


@dataclass(frozen=True)
class ShardLive:
    """What the running replicas of one shard report; `None` where nothing is reported."""

    replicas: int | None = None
    msg_rate: float | None = None
    cpu_pct: float | None = None
    mem_pct: float | None = None
    symbol_rates: dict[str, float] = field(default_factory=dict)


def redis_url_for(env_name: str, explicit: str | None = None) -> str | None:
    """`--redis-url`, else `$SSMD_REDIS_URL`, else the Redis of a running `ssmd local up`."""
    if explicit:
        return explicit
    configured = os.environ.get(REDIS_URL_VARIABLE)
    if configured:
        return configured
    try:
        state = local_state.load(local_state.state_path(env_name))
    except SsmdError:  # none, or unreadable: a report degrades to "unknown", never fails
        return None
    return state.redis_url or None


def check_redis_url(url: str) -> None:
    """A malformed URL is the user's mistake (exit 1), unlike a Redis that is down."""
    scheme = urlparse(url).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise SsmdError(
            f"bad Redis URL {url!r}: expected redis://HOST:PORT/DB (or rediss://, unix://)"
        )


def _number(raw: object) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ValueError:
        return None


def read_live(
    env_name: str,
    shards: Iterable[str],
    url: str | None,
    *,
    symbol_rates: bool = False,
    timeout: float = TIMEOUT_SECONDS,
) -> dict[str, ShardLive] | None:
    """Figures of every shard in `shards`, or None when there is no Redis to ask.

    One round trip (a pipeline); connecting and reading are bounded by `timeout`.
    """
    if not url:
        return None
    check_redis_url(url)
    import redis  # imported when used: most commands never ask Redis

    names = list(shards)
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
    )
    try:
        pipe = client.pipeline(transaction=False)
        for shard in names:
            pipe.hgetall(redis_keys.metrics_key(env_name, shard))
            pipe.get(redis_keys.replicas_key(env_name, shard))
            if symbol_rates:
                pipe.hgetall(redis_keys.symbol_rates_key(env_name, shard))
        answers = pipe.execute()
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()
    step = 3 if symbol_rates else 2
    out: dict[str, ShardLive] = {}
    for i, shard in enumerate(names):
        metrics = {_text(k): v for k, v in (answers[i * step] or {}).items()}
        replicas = _number(answers[i * step + 1])
        rates: dict[str, float] = {}
        if symbol_rates:
            for symbol, value in (answers[i * step + 2] or {}).items():
                number = _number(value)
                if number is not None:
                    rates[_text(symbol)] = number
        out[shard] = ShardLive(
            replicas=int(replicas) if replicas is not None else None,
            msg_rate=_number(metrics.get(redis_keys.METRIC_MSG_RATE)),
            cpu_pct=_number(metrics.get(redis_keys.METRIC_CPU_PCT)),
            mem_pct=_number(metrics.get(redis_keys.METRIC_MEM_PCT)),
            symbol_rates=rates,
        )
    return out


def _text(raw: object) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


def shard_status(shard: Shard, live: ShardLive | None, reachable: bool) -> str:
    """One word and why: running, down, degraded, saturated or unknown."""
    if not reachable or live is None:
        return "unknown: no live figures (Redis not configured or unreachable)"
    replicas = live.replicas or 0
    if replicas == 0:
        return "down: no live replicas"
    if replicas < shard.min_replicas:
        return f"degraded: {replicas} live replicas, fewer than min_replicas {shard.min_replicas}"
    per_pod = (live.msg_rate or 0.0) / replicas
    busy = (live.cpu_pct or 0.0) >= shard.autoscaling.cpu_utilization or (
        per_pod >= shard.autoscaling.message_rate
    )
    if replicas >= shard.replicas and busy:
        return "saturated: at max replicas and above the autoscaling target (see `ssmd shard plan`)"
    return "running"
