"""The local target: find the running `ssmd local up`, SIGHUP it, read back the roll's outcome.

The pipeline is stood in for by a real process that does what `ssmd local up` does on SIGHUP
as far as this target can see: it records the roll in its state file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ssmd_infra.adapters.files import write_local_state
from ssmd_infra.core import local_state
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.local_state import LocalState
from ssmd_infra.deploy import local as local_target

REPO = Path(__file__).resolve().parents[2]

# On SIGHUP: one more roll attempt; a roll (or a refusal, with ROLL_ERROR) recorded in the file.
PIPELINE = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from ssmd_infra.adapters.files import write_local_state
    from ssmd_infra.core import local_state

    path = Path(sys.argv[1])
    error = sys.argv[2] or None

    def roll(*_):
        state = local_state.load(path)
        write_local_state(path, state.model_copy(update={
            "roll_attempts": state.roll_attempts + 1,
            "generation": state.generation + (0 if error else 1),
            "roll_error": error,
            "roll_actions": [] if error else ["update ssmd-internal-tier1"],
        }))

    signal.signal(signal.SIGHUP, roll)
    print("ready", flush=True)
    while True:
        time.sleep(0.05)
    """
)


def a_state(env_file: Path, pid: int) -> LocalState:
    return LocalState(
        pid=pid,
        env="kalshi-dev",
        env_file=str(env_file.resolve()),
        nats_url="nats://127.0.0.1:4222",
        redis_url="redis://127.0.0.1:6379/0",
        data_dir=str(env_file.parent / "data"),
        generation=0,
        rolled_at=0.0,
        shards=["tier1"],
        roll_attempts=0,
        roll_error=None,
        roll_actions=[],
    )


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "kalshi-dev.yaml").write_text("name: kalshi-dev\n")
    return tmp_path


def start_pipeline(workdir: Path, error: str = "") -> Iterator[subprocess.Popen[str]]:
    path = workdir / local_state.state_path("kalshi-dev")
    proc = subprocess.Popen(
        [sys.executable, "-c", PIPELINE, str(path), error],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        write_local_state(path, a_state(workdir / "kalshi-dev.yaml", proc.pid))
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def pipeline(workdir: Path) -> Iterator[subprocess.Popen[str]]:
    yield from start_pipeline(workdir)


@pytest.fixture
def refusing_pipeline(workdir: Path) -> Iterator[subprocess.Popen[str]]:
    yield from start_pipeline(workdir, error="shard tier9 has no symbols")


def test_the_roll_is_a_sighup_and_its_outcome_is_read_back(
    workdir: Path, pipeline: subprocess.Popen[str]
) -> None:
    state = local_target.roll_local("kalshi-dev", workdir / "kalshi-dev.yaml", timeout=30)
    assert (state.roll_attempts, state.generation) == (1, 1)
    assert state.roll_actions == ["update ssmd-internal-tier1"]
    assert pipeline.poll() is None  # the pipeline keeps running


def test_a_refused_roll_is_an_error_with_the_pipelines_reason(
    workdir: Path, refusing_pipeline: subprocess.Popen[str]
) -> None:
    with pytest.raises(SsmdError, match="local day roll was refused: shard tier9 has no symbols"):
        local_target.roll_local("kalshi-dev", workdir / "kalshi-dev.yaml", timeout=30)


def test_no_state_file_says_how_to_start_a_pipeline(workdir: Path) -> None:
    with pytest.raises(SsmdError, match="no local pipeline is running for kalshi-dev") as caught:
        local_target.running_pipeline("kalshi-dev")
    assert "`ssmd local up kalshi-dev`" in str(caught.value)


def test_a_state_file_of_a_dead_process_is_stale(workdir: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = local_state.state_path("kalshi-dev")
    write_local_state(path, a_state(workdir / "kalshi-dev.yaml", dead.pid))
    with pytest.raises(SsmdError, match=rf"\(pid {dead.pid}\) is not running any more"):
        local_target.running_pipeline("kalshi-dev")


def test_a_pipeline_running_another_file_is_not_rolled(
    workdir: Path, pipeline: subprocess.Popen[str]
) -> None:
    other = workdir / "elsewhere" / "kalshi-dev.yaml"
    other.parent.mkdir()
    other.write_text("name: kalshi-dev\n")
    with pytest.raises(SsmdError, match="nothing was changed"):
        local_target.roll_local("kalshi-dev", other, timeout=30)
    state = local_state.load(workdir / local_state.state_path("kalshi-dev"))
    assert state.roll_attempts == 0  # no SIGHUP was sent
