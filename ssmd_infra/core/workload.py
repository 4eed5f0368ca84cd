"""The runtime workloads of a shard: their names and the command line they run.

Built once, here, and used by both backends: the Kubernetes manifests put `args` and `env`
into the containers (`ssmd_infra.pulumi.manifests`), the local supervisor starts the same
command as a child process (`ssmd_infra.local.supervisor`). A flag added to the runtime is
therefore added in one place, and the two backends cannot drift apart.

The command is `ssmd run connector|archiver ENV_FILE SHARD [options]` — the entry point of
the runtime image; `args` is everything after `ssmd`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# StatefulSet pods get a `controller-revision-hash` label of `{name}-{hash}` (≤ 63 chars).
STATEFULSET_NAME_LIMIT = 52


def connector_name(shard: str) -> str:
    return f"ssmd-connector-{shard}"


def archiver_name(shard: str) -> str:
    return f"ssmd-archiver-{shard}"


@dataclass(frozen=True)
class Endpoints:
    """Where a shard's processes find the shared servers."""

    nats_url: str
    redis_url: str | None = None


@dataclass(frozen=True)
class WorkloadSpec:
    """One runtime process: its role, the arguments after `ssmd`, its extra environment."""

    role: str  # connector | archiver
    shard: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _common(role: str, env_file: str, shard: str, endpoints: Endpoints, port: int) -> list[str]:
    args = ["run", role, env_file, shard, "--nats-url", endpoints.nats_url]
    if endpoints.redis_url:
        args += ["--redis-url", endpoints.redis_url]
    return [*args, "--metrics-port", str(port)]


def connector_workload(
    env_file: str,
    shard: str,
    endpoints: Endpoints,
    *,
    metrics_port: int,
    kalshi_ws_url: str,
    kalshi_rest_url: str,
) -> WorkloadSpec:
    """`ssmd run connector`: one replica of the shard's connector."""
    args = [
        *_common("connector", env_file, shard, endpoints, metrics_port),
        "--kalshi-ws-url",
        kalshi_ws_url,
        "--kalshi-rest-url",
        kalshi_rest_url,
    ]
    return WorkloadSpec("connector", shard, args)


def archiver_workload(
    env_file: str, shard: str, endpoints: Endpoints, *, metrics_port: int, data_dir: str
) -> WorkloadSpec:
    """`ssmd run archiver`: the shard's archiver, writing under `data_dir`."""
    args = [*_common("archiver", env_file, shard, endpoints, metrics_port), "--data-dir", data_dir]
    return WorkloadSpec("archiver", shard, args)
