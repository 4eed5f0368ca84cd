"""CPU and memory of a runtime process as it reports them to Redis: relative to its cgroup
limits (the pod's), the machine's when there are none."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from runtime.procstats import ProcStats, cpu_limit_cores, memory_limit_bytes


def test_limits_come_from_cgroup_v2_then_v1_then_the_machine(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("50000 100000\n")
    (v2 / "memory.max").write_text("268435456\n")
    assert cpu_limit_cores(v2) == 0.5
    assert memory_limit_bytes(v2) == 256 * 2**20
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "memory").mkdir()
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("25000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text(str(512 * 2**20))
    assert cpu_limit_cores(v1) == 0.25
    assert memory_limit_bytes(v1) == 512 * 2**20
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    (unlimited / "cpu.max").write_text("max 100000\n")
    (unlimited / "memory.max").write_text("max\n")
    assert cpu_limit_cores(unlimited) == len(os.sched_getaffinity(0))
    assert memory_limit_bytes(unlimited) > 256 * 2**20


def test_cpu_and_memory_percentages_are_relative_to_the_limits(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    (tmp_path / "memory.max").write_text(str(2**34))
    stats = ProcStats(cgroup_root=tmp_path)
    wall0, cpu0 = time.monotonic(), time.process_time()
    while time.process_time() < cpu0 + 0.3:  # burn CPU for a moment
        pass
    wall1, cpu1 = time.monotonic(), time.process_time()
    cpu_pct, mem_pct = stats.sample()
    expected = 100.0 * (cpu1 - cpu0) / (wall1 - wall0) / 0.5  # of half a core
    assert expected * 0.75 < cpu_pct < expected * 1.25
    rss = psutil.Process().memory_info().rss
    assert abs(mem_pct - 100.0 * rss / 2**34) < 0.05  # of 16 GiB
