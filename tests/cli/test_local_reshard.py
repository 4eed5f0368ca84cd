"""A full local reshard: split a shard of the dev environment while the pipeline runs, then
roll back — with real processes (nats-server, redis-server, the Kalshi simulator, connectors,
archivers) started by `ssmd local up`.

What must hold:
- after `ssmd shard apply --target local`, every symbol publishes in its new shard;
- after `ssmd shard rollback --target local`, every symbol publishes in its old shard again;
- a roll the streams refuse is reported with how to roll back, and the old layout runs on;
- nothing any shard stream holds — before, between or after the rolls — is missing from the
  archive or from `ssmd-client` once the pipeline has stopped.

The environment is a copy of kalshi-dev in a temporary git repository; the rates the plan
uses are the ones the running connectors measured (Redis, found through the pipeline's state
file), as an operator would do it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import pytest
import yaml
from nats.aio.msg import Msg

from ssmd_infra.cli.main import main
from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.subjects import CLIENT_STREAM, internal_stream, parse_internal_subject
from ssmd_infra.local.servers import ServerProcess, start_nats, start_redis

REPO = Path(__file__).resolve().parents[2]
ENV_REL = "exchanges/environments/kalshi-dev.yaml"

pytestmark = [pytest.mark.timeout(240), pytest.mark.servers]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers of this test alone, so the streams hold only this pipeline's messages."""
    nats_server = start_nats(tmp_path / "nats")
    redis_server = start_redis(tmp_path / "redis")
    yield nats_server, redis_server
    redis_server.stop()
    nats_server.stop()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "ops"
    (root / ENV_REL).parent.mkdir(parents=True)
    shutil.copy(REPO / ENV_REL, root / ENV_REL)
    # the test's own servers are anonymous, and it watches `internal.>` itself: a shared
    # development server (`ssmd local up` with authorization: tests/local)
    with (root / ENV_REL).open("a") as handle:
        handle.write("nats: {auth: none}\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "ops@example.com")
    git(root, "config", "user.name", "ops")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "kalshi-dev")
    monkeypatch.chdir(root)
    for variable in ("SSMD_REDIS_URL", "SSMD_ENV_DIR"):
        monkeypatch.delenv(variable, raising=False)
    return root


def ssmd(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        captured = capsys.readouterr()
        assert exc.code in (0, None), f"ssmd {' '.join(args)} failed:\n{captured.out}{captured.err}"
        return captured.out
    return capsys.readouterr().out


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def publishing_shards(
    url: str, symbols: set[str], seconds: float = 10.0
) -> dict[str, set[str]]:
    """symbol → the shards it was published in, watched until every symbol showed up (and at
    least two seconds)."""
    seen: dict[str, set[str]] = {}
    nc = await nats.connect(url)

    async def on_message(msg: Msg) -> None:
        shard, _, _, symbol = parse_internal_subject(msg.subject)
        seen.setdefault(symbol, set()).add(shard)

    await nc.subscribe("internal.>", cb=on_message)
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        await asyncio.sleep(0.2)
        if set(seen) >= symbols and time.monotonic() - began >= 2.0:
            break
    await nc.close()
    return seen


async def stream_contents(url: str, stream: str, subject: str) -> list[tuple[int, str]]:
    """(stream sequence, Nats-Msg-Id) of every message the stream holds."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[tuple[int, str]] = []
    if info.state.messages:
        sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
        while len(out) < info.state.messages:
            msg = await sub.next_msg(timeout=10)
            out.append((msg.metadata.sequence.stream, (msg.headers or {}).get("Nats-Msg-Id", "")))
        await sub.unsubscribe()
    await nc.close()
    return out


def archived(data_dir: Path) -> dict[str, set[int]]:
    """shard → the stream sequences in its archive files.

    Final files, and the complete gzip members of `.part` files: the archiver fsyncs every
    member before it acknowledges it, and its recovery keeps exactly those, so they are in
    the archive even when an archiver was stopped before it renamed its open files.
    """
    out: dict[str, set[int]] = {}
    for path in [*data_dir.glob("kalshi/*/*/*/*.jsonl.gz"), *data_dir.glob("kalshi/*/*/*/*.part")]:
        shard = path.parent.parent.name
        data = path.read_bytes()
        while data:
            member = zlib.decompressobj(31)
            text = member.decompress(data)
            if not member.eof:
                break  # a torn tail: never acknowledged, so not archived
            out.setdefault(shard, set()).update(
                json.loads(line)["seq"] for line in text.splitlines()
            )
            data = member.unused_data
    return out


def diagnose(data_dir: Path, shard: str) -> str:
    """The shard's archive files (final and open) and its archivers' log tails."""
    files = sorted(str(p.relative_to(data_dir)) for p in data_dir.glob(f"kalshi/*/{shard}/**/*"))
    logs = []
    for log in sorted((data_dir / ".local" / "logs").glob(f"archiver-{shard}-*.log")):
        logs.append(f"{log.name}:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return "files:\n  " + "\n  ".join(files) + "\n" + "\n".join(logs)


def layout_of(path: Path) -> dict[str, str]:
    env = load_environment(path)
    return resolve(env, merge_symbols(env)).assignment


def test_split_while_running_then_roll_back(
    repo: Path, servers: tuple[ServerProcess, ServerProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    nats_server, redis_server = servers
    env_file = repo / ENV_REL
    before = layout_of(env_file)
    data_dir = repo / "data"
    pipeline = subprocess.Popen(
        [
            sys.executable, "-m", "ssmd_infra", "local", "up", "kalshi-dev",
            "--data-dir", str(data_dir), "--nats-url", nats_server.url,
            "--redis-url", redis_server.url, "--json",
        ],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("SSMD_ENV_DIR", "SSMD_REDIS_URL")},
    )  # fmt: skip
    try:
        state = repo / ".ssmd" / "local" / "kalshi-dev.json"
        wait_for(state.is_file, 60, "the pipeline's state file")
        # the connectors measure per-symbol rates into Redis; plan from them
        out = ""

        def planned() -> bool:
            nonlocal out
            try:
                out = ssmd(capsys, "shard", "plan", "kalshi-dev", "--strategy", "split-tier1")
            except AssertionError:
                return False
            return True

        wait_for(planned, 40, "per-symbol rates in Redis")
        plan_id = Path(out.split("saved: ")[1].split()[0]).stem
        plan = yaml.safe_load((repo / ".ssmd" / "plans" / f"{plan_id}.yaml").read_text())
        expected = dict(before) | {s: m[1] for s, m in plan["moves"].items()}
        assert plan["moves"] and set(expected.values()) == {"tier1a", "tier1", "tier1b", "tier2"}

        applied = ssmd(
            capsys, "shard", "apply", "kalshi-dev", "--plan", plan_id, "--target", "local"
        )
        assert "created stream ssmd-internal-tier1b" in applied
        assert "NO DATA" not in applied
        assert layout_of(env_file) == expected
        seen = asyncio.run(publishing_shards(nats_server.url, set(before)))
        assert seen == {s: {shard} for s, shard in expected.items()}

        # the rollback removes tier1b again: its stream goes, so it has to be allowed
        rolled = ssmd(
            capsys, "shard", "rollback", "kalshi-dev", "--target", "local", "--allow-data-loss"
        )
        assert "data loss: shard tier1b: stream ssmd-internal-tier1b is deleted" in rolled
        assert "NO DATA" not in rolled
        assert layout_of(env_file) == before
        assert (
            git(repo, "log", "--format=%s")
            .splitlines()[0]
            .startswith("ssmd shard rollback kalshi-dev")
        )
        seen = asyncio.run(publishing_shards(nats_server.url, set(before)))
        assert seen == {s: {shard} for s, shard in before.items()}

        # a roll the streams refuse (file → memory storage would need a replacement, which
        # loses data) fails with what to do, and yesterday's layout keeps running
        env_file.write_text(
            env_file.read_text().replace(
                "    max_age: 24h\n", "    max_age: 24h\n    storage: memory\n", 1
            )
        )
        git(repo, "commit", "-q", "-am", "internal streams in memory")
        capsys.readouterr()
        with pytest.raises(SystemExit):
            main(["day", "roll", "kalshi-dev", "--target", "local"])
        refused = capsys.readouterr().err
        assert "the day roll failed: the local day roll was refused" in refused
        assert "deletes their stored messages" in refused
        assert "to go back: `ssmd shard rollback kalshi-dev --target local`" in refused
        seen = asyncio.run(publishing_shards(nats_server.url, set(before)))
        assert seen == {s: {shard} for s, shard in before.items()}
    finally:
        pipeline.send_signal(signal.SIGTERM)
        stdout, stderr = pipeline.communicate(timeout=120)
    assert pipeline.returncode == 0, stderr.decode()[-3000:]
    summary = json.loads(stdout)
    assert summary["rolls"] == 2  # the refused one does not count

    # nothing any shard stream holds is missing from the archive or from ssmd-client
    files = archived(data_dir)
    client_ids = {
        msg_id for _, msg_id in asyncio.run(stream_contents(nats_server.url, CLIENT_STREAM, "md.>"))
    }
    for shard in ("tier1a", "tier1", "tier1b", "tier2"):
        held = asyncio.run(
            stream_contents(nats_server.url, internal_stream(shard), f"internal.{shard}.>")
        )
        assert held, f"{shard} published nothing"
        missing = {seq for seq, _ in held} - files.get(shard, set())
        assert not missing, f"{shard}: {len(missing)} not archived\n{diagnose(data_dir, shard)}"
        assert {msg_id for _, msg_id in held} <= client_ids, f"{shard}: not all in ssmd-client"
