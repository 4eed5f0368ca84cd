"""`ssmd local up` supervises: real processes, real faults.

Each test runs the real command on the small three-shard environment against the simulator
and injects a fault for real (`kill -9` of one process of the run, a signal during
start-up). What must hold every time:

- the run ends by itself (`--for`), with the killed process restarted;
- every message the simulator reports as sent (over all its incarnations) is in the archive
  at least once, and no `.part` file is left;
- no process of the run survives it (by command line and by process group).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import pytest
from local_runs import (
    E2E_ENV,
    SIGNALS,
    LocalRun,
    archived_types,
    metrics,
    missing_from_archive,
    sim_post,
    sim_stats,
)

pytestmark = [pytest.mark.servers, pytest.mark.timeout(240)]

RUN_FOR = "16"
RATE = "40"  # msg/s per market: 6 markets


def pid_of(state: dict[str, Any], victim: str) -> int:
    for server in state["servers"]:
        if server["name"] == victim:
            return int(server["pid"])
    for child in state["children"]:
        if child["kind"] == victim:
            return int(child["pid"])
    raise AssertionError(f"no {victim} in {state}")


def restarted(state: dict[str, Any] | None, victim: str, old_pid: int) -> bool:
    if state is None:
        return False
    processes = [*state["servers"], *state["children"]]
    return any(
        p.get("name", p.get("kind")) == victim and p["pid"] != old_pid and p["restarts"] >= 1
        for p in processes
    )


def connector_flushed(port: int, last: list[float]) -> bool:
    """Nothing buffered, nothing awaiting an ack, and nothing new received since last call."""
    now = metrics(port)
    received = now.get("ssmd_connector_messages_total", -1.0)
    settled = (
        now.get("ssmd_connector_buffer_depth", 1.0) == 0
        and now.get("ssmd_connector_publish_inflight", 1.0) == 0
        and last[-1:] == [received]
    )
    last.append(received)
    return settled


@pytest.mark.parametrize(
    "victim", ["nats-server", "redis-server", "archiver", "connector", "simulator"]
)
def test_kill_9_mid_run_restarts_the_process_and_every_sent_message_is_archived(
    tmp_path: Any, victim: str
) -> None:
    run = LocalRun(tmp_path, "--for", RUN_FOR, "--rate", RATE).start()
    try:
        state = run.running()
        run.wait_until("the exchange is sending", lambda: sim_stats(state)["generated"] >= 200)
        pid = pid_of(state, victim)
        if victim == "connector":
            # A connector holds what it received and has not yet published in memory, and
            # Kalshi does not replay: a kill -9 loses that much by nature. The exchange pauses
            # until the connector holds nothing and resumes once it is back, so the test proves
            # that the restart loses nothing.
            sim_post(state, "pause")
            port = next(c["metrics_port"] for c in state["children"] if c["pid"] == pid)
            seen: list[float] = []
            run.wait_until("the connector holds nothing", lambda: connector_flushed(port, seen))
        os.kill(pid, signal.SIGKILL)
        run.wait_until(f"{victim} restarted", lambda: restarted(run.state(), victim, pid))
        if victim == "connector":  # (frames sent to the dead socket would be lost too)
            sim_post(state, "resume")
        summary = run.summary()
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.signal(signal.SIGTERM)
            run.finish()
    assert run.leftovers() == []
    assert summary["process_restarts"][victim] >= 1, summary["process_restarts"]
    sent = summary["simulator"]
    assert sent["generated"] > 0
    assert sum(sent["sent_by_market"].values()) == sent["generated"]
    assert missing_from_archive(run.data, sent["sent_by_market"]) == {}
    assert not list(run.data.rglob("*.part"))
    for row in summary["shards"]:
        assert row["drops"] == 0, row
        assert row["archived_lines"] >= row["published"] > 0, row


@pytest.mark.parametrize(
    ("stage", "signame"),
    [
        ("nats-server", "SIGINT"),
        ("redis-server", "SIGINT"),
        ("simulator", "SIGINT"),
        ("simulator", "SIGTERM"),
    ],
)
def test_a_signal_during_start_up_stops_every_process_started_so_far(
    tmp_path: Any, stage: str, signame: str
) -> None:
    run = LocalRun(tmp_path, "--rate", RATE).start()  # no --for: only the signal ends it
    logs = run.data / ".local"
    started = {
        "nats-server": logs / "nats" / "nats-server.log",
        "redis-server": logs / "redis" / "redis-server.log",
        "simulator": logs / "logs" / "simulator-0.log",
    }[stage]
    try:
        run.wait_until(f"{stage} is started", started.exists)
        assert run.state() is None, "still starting"
        run.signal(SIGNALS[signame])
        code, _, err = run.finish(60)
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    assert code == 128 + SIGNALS[signame], err
    assert f"interrupted by {signame} during start-up" in err
    assert run.leftovers() == []
    assert run.seen, "the run had started processes"
    assert not run.state_path.exists()


def test_sigterm_mid_run_is_an_ordered_stop_that_archives_everything_sent(
    tmp_path: Any,
) -> None:
    run = LocalRun(tmp_path, "--rate", RATE).start()  # no --for: only the signal ends it
    try:
        state = run.running()
        run.wait_until("the exchange is sending", lambda: sim_stats(state)["generated"] >= 200)
        run.signal(signal.SIGTERM)
        summary = run.summary()
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    assert run.leftovers() == []
    sent = summary["simulator"]
    assert missing_from_archive(run.data, sent["sent_by_market"]) == {}
    assert summary["client_stream_messages"] == sent["generated"]
    assert set(summary["process_restarts"].values()) == {0}


def test_a_second_ctrl_c_skips_the_drain_and_still_leaves_no_process(tmp_path: Any) -> None:
    run = LocalRun(tmp_path, "--rate", RATE).start()
    try:
        state = run.running()
        run.wait_until("the exchange is sending", lambda: sim_stats(state)["generated"] >= 50)
        run.signal(signal.SIGINT)  # the ordered stop begins (the simulator pauses first) ...
        run.wait_until("the stop has begun", lambda: sim_stats(state)["paused"])
        run.signal(signal.SIGINT)  # ... and the second one cuts it short
        code, _, err = run.finish(60)
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.finish()
    assert code == 128 + signal.SIGINT, err
    assert "stopped without draining" in err
    assert run.leftovers() == []
    assert not run.state_path.exists()


def test_two_runs_on_one_data_dir_within_the_dedup_window_lose_nothing(tmp_path: Any) -> None:
    """The second run reuses the first one's NATS store (same data dir), well within the
    streams' 2-minute duplicate window: its trades must not be taken for the first's."""
    first = LocalRun(tmp_path, "--for", "6", "--rate", RATE).start().summary()
    run = LocalRun(tmp_path, "--for", "6", "--rate", RATE).start()
    second = run.summary()
    assert run.leftovers() == []
    sent = [first["simulator"], second["simulator"]]
    trades = sum(s["sent_by_type"].get("trade", 0) for s in sent)
    assert trades > 0
    archived = archived_types(run.data)
    assert archived["trade"] == trades
    assert sum(archived.values()) == sum(s["generated"] for s in sent)
    published = sum(row["published"] for row in second["shards"])  # both runs: one store
    assert published == sum(s["generated"] for s in sent)


def simulator_seed(*extra: str) -> str:
    """The seed a `ssmd run simulator` start reports on its first line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssmd_infra", "run", "simulator", str(E2E_ENV), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert "seed " in first, first
    return first.rsplit("seed ", 1)[1].strip()


def test_without_seed_each_simulator_run_draws_its_own_so_ids_never_repeat() -> None:
    """Trade ids come from the seed: a fixed default would repeat the previous run's ids,
    which the streams would drop as duplicates within their dedup window."""
    assert simulator_seed() != simulator_seed()
    assert simulator_seed("--seed", "7") == "7"  # reproducible on request
