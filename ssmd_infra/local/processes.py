"""Processes of the local pipeline, each in its own process group.

Every process `ssmd local up` starts (servers and runtime children alike) is the leader of a
new session, hence of its own process group, so that:

- a Ctrl-C in the terminal reaches only the supervisor, which then stops its children in
  order (a terminal SIGINT would otherwise hit every child at once and lose the drain);
- stopping a process signals its whole group, so nothing it may have started survives it.

One rule for stopping: SIGTERM to the group, wait up to a timeout, then SIGKILL to the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

POLL_INTERVAL = 0.05


def spawn(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` as the leader of a new process group, its output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:  # the child keeps its own descriptor
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """`sig` to the process group `proc` leads (its pgid is its pid); gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def kill_now(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL the group and reap the leader; returns its exit code."""
    signal_group(proc, signal.SIGKILL)
    return proc.wait()


def stop_blocking(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the group, give it `timeout` seconds, then SIGKILL it (for synchronous callers)."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    return kill_now(proc)  # also whatever the leader left in its group


def stop_all_blocking(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    """SIGTERM every group at once, wait up to `timeout` seconds for all, SIGKILL every group
    (also of leaders already gone: whatever they started goes with them) and reap."""
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
    for proc in procs:
        kill_now(proc)


async def stop_gracefully(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM the group, wait up to `timeout` seconds without blocking the loop, then
    SIGKILL the group; returns the leader's exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, timeout)
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL_INTERVAL)
    return kill_now(proc)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code once `proc` has exited, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(POLL_INTERVAL)
    return proc.returncode


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
