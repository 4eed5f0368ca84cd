"""The supervisor's process rules, on real processes: groups, stop, restart with backoff, lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.local import processes
from ssmd_infra.local.lock import DataDirLock
from ssmd_infra.local.restarts import RestartPolicy, Supervision
from ssmd_infra.local.servers import ServerProcess


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stopping_a_process_ends_what_it_started_in_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = processes.spawn(
        ["sh", "-c", f"sleep 300 & echo $! > {pid_file}; wait"], tmp_path / "sh.log"
    )
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) == proc.pid  # its own group, led by the process we started
    processes.stop_blocking(proc, timeout=5)
    assert proc.returncode is not None
    deadline = time.monotonic() + 5
    while not gone(grandchild):
        assert time.monotonic() < deadline, "the grandchild survived"
        time.sleep(0.05)


async def test_a_process_that_ignores_sigterm_is_killed_after_the_timeout(
    tmp_path: Path,
) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(300)"
    )
    proc = processes.spawn([sys.executable, "-c", code], tmp_path / "stubborn.log")
    while not ready.exists():
        time.sleep(0.05)
    assert await processes.stop_gracefully(proc, timeout=0.5) == -signal.SIGKILL


def crasher(tmp_path: Path) -> ServerProcess:
    """A real process that exits with code 3 at once, supervised like a server."""
    return ServerProcess.launch("crasher", 0, tmp_path, ["sh", "-c", "exit 3"])


def test_a_crash_is_restarted_at_once_then_with_doubling_delays(tmp_path: Path) -> None:
    policy = RestartPolicy(first=0.0, initial=0.5, maximum=2.0, stable_after=30.0)
    supervision = Supervision(policy)
    process = crasher(tmp_path)
    supervision.watch(process)
    process.proc.wait()
    now = time.monotonic()
    events = supervision.check(now)
    assert events == [
        "crasher exited with code 3; restart in 0.0s",
        "crasher restarted (restart 1)",
    ]
    delays = []
    for restart in range(2, 6):
        process.proc.wait()
        events = supervision.check(now)  # due later: not restarted yet
        delay = float(events[0].rsplit("restart in ", 1)[1].rstrip("s"))
        assert len(events) == 1 and process.restarts.count == restart - 1
        assert supervision.check(now + delay - 0.01) == []
        assert supervision.check(now + delay) == [f"crasher restarted (restart {restart})"]
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1.0, 2.0, 2.0]  # doubling, capped
    assert len(set(process.pids)) == 6  # the first start and five restarts
    process.kill()


def test_a_process_that_stayed_up_counts_its_next_crash_as_a_first(tmp_path: Path) -> None:
    supervision = Supervision(RestartPolicy(initial=0.5, stable_after=10.0))
    process = ServerProcess.launch("sleeper", 0, tmp_path, ["sleep", "300"])
    supervision.watch(process)
    process.restarts.crashes_in_a_row = 4  # as after a crash loop
    now = time.monotonic()
    assert supervision.check(now + 11) == []  # up for longer than stable_after
    process.kill()
    assert supervision.check(now + 11)[0].endswith("restart in 0.0s")
    process.kill()


def test_a_process_no_longer_watched_is_not_restarted(tmp_path: Path) -> None:
    supervision = Supervision()
    process = crasher(tmp_path)
    supervision.watch(process)
    supervision.forget([process])
    process.proc.wait()
    assert supervision.check() == []
    assert process.restarts.count == 0


def test_the_data_dir_lock_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from ssmd_infra.local.lock import DataDirLock; "
            f"DataDirLock(Path({str(data)!r})).acquire(); print('held', flush=True); "
            "time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(
            SsmdError, match=rf"in use by another `ssmd local up` \(pid {holder.pid}\)"
        ):
            DataDirLock(data).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = DataDirLock(data)
    lock.acquire()  # a stale lock file does not block
    assert (data / ".local" / "lock").read_text().strip() == str(os.getpid())
    lock.release()
