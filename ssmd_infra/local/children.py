"""The runtime processes of the local pipeline (`python -m runtime connector|archiver|simulator`).

A `Child` is one supervised process (`ssmd_infra.local.restarts` brings it back when it
crashes) with a metrics port. Its last scraped counters are carried over its restarts, so a
total (drops, duplicates, reconnects) does not fall back to zero when a process is replaced.
"""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ssmd_infra.core.workload import RUNTIME_MODULE
from ssmd_infra.local import processes
from ssmd_infra.local.restarts import PIDS_KEPT, Restarts


@dataclass(frozen=True)
class ChildSpec:
    """A runtime process to run: `python -m runtime ARGS` with an extra environment."""

    kind: str  # connector | archiver | simulator
    shard: str  # "-" for the simulator
    args: tuple[str, ...]
    metrics_port: int
    env: tuple[tuple[str, str], ...] = ()
    restart_args: tuple[str, ...] | None = None  # when a restart must run differently


class Child:
    """A runtime process started by the pipeline, and its incarnations."""

    def __init__(self, spec: ChildSpec, log: Path, base_env: Mapping[str, str]) -> None:
        self.spec = spec
        self.log = log
        self._env = {**base_env, **dict(spec.env)}
        self.proc: subprocess.Popen[bytes] = self._spawn(spec.args)
        # the latest incarnations, for the state file
        self.pids: deque[int] = deque([self.proc.pid], maxlen=PIDS_KEPT)
        self.restarts = Restarts()
        self.metrics: dict[str, float] = {}  # last scrape of the running incarnation
        self.carried: dict[str, float] = {}  # counters of the incarnations before it

    def _spawn(self, args: tuple[str, ...]) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", RUNTIME_MODULE, *args]
        return processes.spawn(argv, self.log, self._env)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def shard(self) -> str:
        return self.spec.shard

    @property
    def metrics_port(self) -> int:
        return self.spec.metrics_port

    @property
    def label(self) -> str:
        return self.kind if self.shard == "-" else f"{self.kind} {self.shard}"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll()

    def respawn(self) -> None:
        processes.kill_now(self.proc)  # anything left in the old group goes with it
        for name, value in self.metrics.items():
            self.carried[name] = self.carried.get(name, 0.0) + value
        self.metrics = {}
        self.proc = self._spawn(self.spec.restart_args or self.spec.args)
        self.pids.append(self.proc.pid)

    def counter(self, name: str) -> float:
        """A counter over every incarnation (as last scraped)."""
        return self.carried.get(name, 0.0) + self.metrics.get(name, 0.0)

    async def stop(self, timeout: float) -> int:
        """SIGTERM (the runtime drains on it), SIGKILL after `timeout` seconds."""
        return await processes.stop_gracefully(self.proc, timeout)

    def kill(self) -> int:
        return processes.kill_now(self.proc)
