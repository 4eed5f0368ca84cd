"""The local target: the day roll of a running `ssmd local up`.

That process records where it is in its state file (`ssmd_infra.core.local_state`). The roll is
a SIGHUP to it (it stops the connectors, reconciles the streams and starts connectors and
archivers with the new assignments); its outcome is read back from the same file once the
count of rolls asked for has grown.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from ssmd_infra.core import local_state
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.local_state import LocalState, LocalStateMissing

ROLL_TIMEOUT = 120.0
POLL_SECONDS = 0.2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def running_pipeline(env_name: str) -> LocalState:
    """The running `ssmd local up` of `env_name`, or an error saying how to start one."""
    path = local_state.state_path(env_name)
    try:
        state = local_state.load(path)
    except LocalStateMissing:
        raise SsmdError(
            f"no local pipeline is running for {env_name} (no {path}); start one with "
            f"`ssmd local up {env_name}` from this directory"
        ) from None
    if not _alive(state.pid):
        raise SsmdError(
            f"the local pipeline of {env_name} (pid {state.pid}) is not running any more "
            f"({path} is stale); start it with `ssmd local up {env_name}`"
        )
    return state


def check_local_target(env_name: str, env_file: Path) -> LocalState:
    """The running pipeline, if it runs this very environment file."""
    state = running_pipeline(env_name)
    running = Path(state.env_file).resolve()
    if running != env_file.resolve():
        raise SsmdError(
            f"the local pipeline of {env_name} runs {running}, not {env_file.resolve()}; "
            f"nothing was changed"
        )
    return state


def roll_local(env_name: str, env_file: Path, timeout: float = ROLL_TIMEOUT) -> LocalState:
    """SIGHUP the running pipeline and wait for it to report the roll's outcome."""
    state = check_local_target(env_name, env_file)
    path = local_state.state_path(env_name)
    before = state.roll_attempts
    os.kill(state.pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        try:
            state = local_state.load(path)
        except LocalStateMissing:
            if not _alive(state.pid):
                break  # the pipeline stopped (and removed its file) instead of rolling
            continue
        if state.roll_attempts > before:
            if state.roll_error:
                raise SsmdError(f"the local day roll was refused: {state.roll_error}")
            return state
        if not _alive(state.pid):
            break
    raise SsmdError(
        f"the local pipeline of {env_name} did not report the day roll within {timeout:.0f}s; "
        f"see its console and the logs under its data directory"
    )
