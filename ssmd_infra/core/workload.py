"""The runtime workloads of a shard: their names and the command line they run.

Built once, here, and used by both backends: the Kubernetes manifests put `args` into the
containers and `env`'s names into `secretKeyRef`s (`ssmd_infra.pulumi.manifests`), the local
supervisor starts the same command as a child process with `env` set
(`ssmd_infra.local.supervisor`). A flag added to the runtime is therefore added in one place,
and the two backends cannot drift apart.

The command is `python -m runtime connector|archiver ENV_FILE SHARD [options]`: the runtime
package's own entry point (`runtime/__main__.py`), which imports neither the CLI nor Pulumi;
`args` is everything after `python -m runtime`. The NATS and Redis URLs are never arguments:
they may carry passwords, and arguments show in `ps`, in manifests and in `kubectl get -o yaml`.
They travel in the environment (`NATS_URL`, `REDIS_URL`, read by the runtime's options), which
in Kubernetes comes from a Secret. Likewise the process's NATS seed: only the *path* of its
role's seed file travels, as `NATS_NKEY_SEED` (a mounted Secret in Kubernetes, a file of the
supervisor's auth directory locally); each workload gets its own role's file and no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE

# StatefulSet pods get a `controller-revision-hash` label of `{name}-{hash}` (≤ 63 chars).
STATEFULSET_NAME_LIMIT = 52
RUNTIME_MODULE = "runtime"
NATS_URL_VARIABLE = "NATS_URL"
REDIS_URL_VARIABLE = "REDIS_URL"
SHARDS_FILE_VARIABLE = "SSMD_SHARDS_FILE"


def connector_name(shard: str) -> str:
    return f"ssmd-connector-{shard}"


def archiver_name(shard: str) -> str:
    return f"ssmd-archiver-{shard}"


ARCHIVE_VOLUME = "archive"


def archive_claim_name(shard: str) -> str:
    """The archiver's volume claim, as its StatefulSet names it (`{template}-{set}-{ordinal}`,
    one replica): the Pulumi program declares it under that name to resize it in place."""
    return f"{ARCHIVE_VOLUME}-{archiver_name(shard)}-0"


@dataclass(frozen=True)
class Endpoints:
    """Where a shard's processes find the shared servers."""

    nats_url: str
    redis_url: str | None = None

    def variables(self) -> dict[str, str]:
        """The environment variables that carry them to the runtime."""
        out = {NATS_URL_VARIABLE: self.nats_url}
        if self.redis_url:
            out[REDIS_URL_VARIABLE] = self.redis_url
        return out


@dataclass(frozen=True)
class WorkloadSpec:
    """One runtime process: its role, the arguments after `python -m runtime`, its environment."""

    role: str  # connector | archiver
    shard: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def command(self, python: str) -> list[str]:
        """The full command line with the interpreter `python`."""
        return [python, "-m", RUNTIME_MODULE, *self.args]


def _common(role: str, env_file: str, shard: str, port: int) -> list[str]:
    return [role, env_file, shard, "--metrics-port", str(port)]


def _variables(endpoints: Endpoints, nkey_seed_file: str | None) -> dict[str, str]:
    out = endpoints.variables()
    if nkey_seed_file is not None:
        out[NKEY_SEED_VARIABLE] = nkey_seed_file
    return out


def connector_workload(
    env_file: str,
    shard: str,
    endpoints: Endpoints,
    *,
    metrics_port: int,
    kalshi_ws_url: str,
    kalshi_rest_url: str,
    nkey_seed_file: str | None = None,
) -> WorkloadSpec:
    """`python -m runtime connector`: one replica of the shard's connector; `nkey_seed_file`
    is the path of role `connector-{shard}`'s seed (None: no NATS authentication)."""
    args = [
        *_common("connector", env_file, shard, metrics_port),
        "--kalshi-ws-url",
        kalshi_ws_url,
        "--kalshi-rest-url",
        kalshi_rest_url,
    ]
    return WorkloadSpec("connector", shard, args, _variables(endpoints, nkey_seed_file))


def archiver_workload(
    env_file: str,
    shard: str,
    endpoints: Endpoints,
    *,
    metrics_port: int,
    data_dir: str,
    nkey_seed_file: str | None = None,
) -> WorkloadSpec:
    """`python -m runtime archiver`: the shard's archiver, writing under `data_dir`;
    `nkey_seed_file` is the path of role `archiver-{shard}`'s seed (None: no authentication)."""
    args = [*_common("archiver", env_file, shard, metrics_port), "--data-dir", data_dir]
    return WorkloadSpec("archiver", shard, args, _variables(endpoints, nkey_seed_file))
