"""The state file of a running `ssmd local up`: `.ssmd/local/{env}.json`.

The local pipeline writes it when its servers are up and after every day roll, and removes it
when it stops. Other commands read it to find that pipeline: the day roll on the local target
(which process to SIGHUP, and the outcome of the roll it asked for) and the reports (which
Redis holds the live figures). Writer and readers share this one model, so a field renamed on
one side is an error naming the file on the other, not a silently missing value.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from ssmd_infra.core.errors import SsmdError

STATE_DIR = Path(".ssmd") / "local"  # relative: the directory `ssmd local up` runs in


class LocalStateMissing(SsmdError):
    """No state file: no local pipeline of that environment runs from this directory."""


class ExchangeState(BaseModel):
    """The exchange the connectors read (the simulator or Kalshi)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    rest_url: str
    ws_url: str


class ChildState(BaseModel):
    """One supervised runtime process; every pid is a process group."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    kind: str  # connector | archiver | simulator
    shard: str  # "-" for the simulator
    pid: int  # the running incarnation
    pids: list[int]  # the latest incarnations (bounded)
    metrics_port: int
    restarts: int
    last_exit: int | None
    log: str


class ServerState(BaseModel):
    """One server the pipeline started (nats-server, redis-server)."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    name: str
    pid: int
    pids: list[int]
    port: int
    restarts: int
    last_exit: int | None


class LocalState(BaseModel):
    """Where the local pipeline of one environment is, and which day roll it is on."""

    # built on first use: most commands import this module and never read a state file
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)

    pid: int  # the `ssmd local up` process: the target of the day roll's SIGHUP
    env: str
    env_file: str  # absolute path of the environment YAML it runs
    nats_url: str
    redis_url: str
    data_dir: str  # absolute path of the archive directory
    # absolute path of the NATS seeds (`ssmd_infra.local.credentials`); None: no authorization
    nats_auth_dir: str | None = None
    generation: int  # day rolls completed
    rolled_at: float  # Unix time of this write
    shards: list[str]
    roll_attempts: int  # day rolls asked for (SIGHUPs handled), refused ones included
    roll_error: str | None  # why the last roll was refused; None when it succeeded
    roll_actions: list[str]  # what the last roll did to the streams
    # what runs now, for operators and the fault tests
    exchange: ExchangeState | None = None
    children: list[ChildState] = []
    servers: list[ServerState] = []

    def dump(self) -> bytes:
        """The file's content (written by `ssmd_infra.adapters.files.write_local_state`)."""
        return self.model_dump_json(indent=2).encode()


def state_path(env_name: str) -> Path:
    """`.ssmd/local/{env}.json`, relative to the working directory."""
    return STATE_DIR / f"{env_name}.json"


def load(path: Path) -> LocalState:
    """The state recorded in `path`.

    `LocalStateMissing` when there is no such file; an `SsmdError` naming the file when it
    cannot be read or is not a state file.
    """
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise LocalStateMissing(f"no local pipeline state {path}") from None
    except OSError as exc:
        raise SsmdError(f"cannot read the local pipeline state {path}: {exc.strerror}") from None
    try:
        return LocalState.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(file)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise SsmdError(f"{path} is not a local pipeline state file: {problems}") from None
