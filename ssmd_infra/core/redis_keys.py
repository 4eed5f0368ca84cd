"""Redis key names: the contract between the runtime (writer) and reports (reader).

The keys, all with TTLs so a dead process ages out:

- `{env}:shard:{shard}:symbols`            set of the shard's resolved symbols
- `{env}:shard:{shard}:replicas`           number of live connector replicas
- `{env}:shard:{shard}:metrics`            hash: msg_rate, cpu_pct, mem_pct (shard total/avg)
- `{env}:shard:{shard}:metrics:{member}`   hash: the same, one connector replica
- `{env}:shard:{shard}:members`            sorted set: member id → last heartbeat (unix s)
- `{env}:shard:{shard}:symbol_rates`       hash: symbol → msg/s (input to `ssmd shard plan`)
- `{env}:shard:{shard}:archiver`           hash: messages, bytes, files, lag

Redis is for reports and replica membership only; the data path never waits on it.
"""

from __future__ import annotations

HEARTBEAT_SECONDS = 2.0
MEMBER_TTL_SECONDS = 10.0
KEY_TTL_SECONDS = 60

METRIC_MSG_RATE = "msg_rate"
METRIC_CPU_PCT = "cpu_pct"
METRIC_MEM_PCT = "mem_pct"


def _base(env: str, shard: str) -> str:
    return f"{env}:shard:{shard}"


def symbols_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:symbols"


def replicas_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:replicas"


def metrics_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:metrics"


def member_metrics_key(env: str, shard: str, member: str) -> str:
    return f"{_base(env, shard)}:metrics:{member}"


def members_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:members"


def symbol_rates_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:symbol_rates"


def archiver_key(env: str, shard: str) -> str:
    return f"{_base(env, shard)}:archiver"
