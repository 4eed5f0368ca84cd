"""CPU and memory use of this process as a percentage of what it may use.

`ssmd shard list` shows per-shard CPU % and memory % from Redis; the numbers only mean
something relative to the pod's limits (a 500m connector at 0.45 cores is at 90 %, not 22 %
of a 2-core node). Limits come from the cgroup (v2 `cpu.max`/`memory.max`, or v1
`cpu.cfs_quota_us`/`memory.limit_in_bytes`); without a limit, the machine's cores and RAM.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

_NO_LIMIT = 1 << 60  # cgroup v1 reports "unlimited" as a huge number


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cpu_limit_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float:
    """Cores this process may use: the cgroup quota, else the CPUs it may run on."""
    v2 = _read(cgroup_root / "cpu.max")
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            return max(int(quota) / int(period), 0.001)
    quota_v1 = _read(cgroup_root / "cpu" / "cpu.cfs_quota_us")
    period_v1 = _read(cgroup_root / "cpu" / "cpu.cfs_period_us")
    if quota_v1 and period_v1 and int(quota_v1) > 0:
        return max(int(quota_v1) / int(period_v1), 0.001)
    try:
        return float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return float(psutil.cpu_count() or 1)


def memory_limit_bytes(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process may use: the cgroup limit, else the machine's RAM."""
    v2 = _read(cgroup_root / "memory.max")
    if v2 and v2 != "max":
        return int(v2)
    v1 = _read(cgroup_root / "memory" / "memory.limit_in_bytes")
    if v1 and int(v1) < _NO_LIMIT:
        return int(v1)
    return int(psutil.virtual_memory().total)


class ProcStats:
    """Samples CPU % (since the previous sample) and memory % of one process."""

    def __init__(self, pid: int | None = None, cgroup_root: Path = Path("/sys/fs/cgroup")) -> None:
        self._proc = psutil.Process(pid)
        self.cpu_limit = cpu_limit_cores(cgroup_root)
        self.mem_limit = memory_limit_bytes(cgroup_root)
        self._last_cpu = self._cpu_seconds()
        self._last_wall = time.monotonic()

    def _cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def rss(self) -> int:
        return int(self._proc.memory_info().rss)

    def sample(self) -> tuple[float, float]:
        """(cpu_pct, mem_pct): CPU used since the last call over the limit, RSS over the limit."""
        cpu = self._cpu_seconds()
        wall = time.monotonic()
        elapsed = wall - self._last_wall
        used = cpu - self._last_cpu
        self._last_cpu, self._last_wall = cpu, wall
        cpu_pct = 100.0 * used / elapsed / self.cpu_limit if elapsed > 0 else 0.0
        mem_pct = 100.0 * self.rss() / self.mem_limit
        return round(cpu_pct, 2), round(mem_pct, 2)
