"""End to end: `ssmd local up` on a 3-shard environment with a carve-out and dotted tickers.

The simulator, the connectors and the archivers are real processes started by `ssmd local
up`; the test only brings its own nats-server (`--nats-url`), so that the merged client
stream can be read after the run. That server enforces the environment's NATS roles
(`nats.auth: nkeys`, the default): every process runs as its own role with only its own seed
(`--nats-auth-dir`), and the client stream is read as the `client` role. Every message the simulated exchange sent must be in
`ssmd-client` exactly once under `md.kalshi.{type}.{encoded symbol}`, and in the archive of
the shard its symbol resolves to exactly once; nothing `local up` started may outlive it.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest

from ssmd_infra.adapters.nats_auth import AUTHORIZATION_FILE, write_auth_dir
from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.nats_auth import CLIENT_ROLE
from ssmd_infra.core.nkey_seeds import read_seed_file, seed_file_name
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.subjects import CLIENT_STREAM, client_subject
from ssmd_infra.local.servers import ServerProcess, start_nats

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / "tests" / "envs" / "e2e.yaml"
SECONDS = 8


@pytest.fixture
def auth_dir(tmp_path: Path) -> Path:
    """The seeds and authorization of the e2e environment, as `ssmd nats auth` writes them."""
    return write_auth_dir(load_environment(ENV_FILE), tmp_path / "nats-auth").directory


@pytest.fixture
def own_nats(tmp_path: Path, auth_dir: Path) -> Any:
    config = (auth_dir / AUTHORIZATION_FILE).read_text()
    server = start_nats(tmp_path / "nats", extra_config=config)
    yield server
    server.stop()


async def client_messages(nats_url: str, auth_dir: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(subject, Nats-Msg-Id, frame) of every message in `ssmd-client`, read as `client`."""
    client = read_seed_file(auth_dir / seed_file_name(CLIENT_ROLE), CLIENT_ROLE)
    nc = await nats.connect(nats_url, **client.nats_py_options())
    try:
        js = nc.jetstream()
        total = (await js.stream_info(CLIENT_STREAM)).state.messages
        sub = await js.pull_subscribe("md.>", stream=CLIENT_STREAM)
        out: list[tuple[str, str, dict[str, Any]]] = []
        while len(out) < total:
            for msg in await sub.fetch(min(1000, total - len(out)), timeout=5):
                headers = msg.headers or {}
                out.append((msg.subject, headers.get("Nats-Msg-Id", ""), json.loads(msg.data)))
                await msg.ack()
        return out
    finally:
        await nc.close()


def leftovers(markers: list[str]) -> list[str]:
    """Command lines of processes that mention any marker (ours excluded)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.pid != psutil.Process().pid and any(m in cmdline for m in markers):
            found.append(f"{proc.pid}: {cmdline}")
    return found


async def test_local_up_every_message_once_in_the_client_stream_and_the_archive(
    own_nats: ServerProcess, auth_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "archive"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "local",
            "up",
            str(ENV_FILE),
            "--for",
            str(SECONDS),
            "--json",
            "--rate",
            "40",
            "--data-dir",
            str(data),
            "--nats-url",
            own_nats.url,
            "--nats-auth-dir",
            str(auth_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # the state file goes under the working directory
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)

    # nothing it started outlives it (the nats-server is the test's own)
    assert leftovers([str(data), own_nats.url]) == []

    env = load_environment(ENV_FILE)
    layout = resolve(env, merge_symbols(env), complete_universe=True)
    shards = {row["shard"]: row for row in summary["shards"]}
    assert set(shards) == set(env.shards)
    for name, row in shards.items():  # every shard flowing, and all of it archived
        assert row["symbols"] == len(layout.symbols_of(name)) > 0
        assert row["published"] > 0, row
        assert row["archived_lines"] == row["published"], row
        assert row["drops"] == 0, row

    sent = summary["simulator"]
    messages = await client_messages(own_nats.url, auth_dir)
    assert summary["client_stream_messages"] == len(messages) == sent["generated"] > 0
    ids = Counter(msg_id for _, msg_id, _ in messages)
    assert len(ids) == len(messages), "a message appears twice in ssmd-client"
    types: Counter[str] = Counter()
    markets: Counter[str] = Counter()
    expected: dict[str, tuple[str, str]] = {}  # msg id → (type, symbol)
    for subject, msg_id, frame in messages:
        msg_type, symbol = frame["type"], frame["msg"]["market_ticker"]
        assert subject == client_subject("kalshi", msg_type, symbol)
        types[msg_type] += 1
        markets[symbol] += 1
        expected[msg_id] = (msg_type, symbol)
    assert dict(types) == sent["sent_by_type"]  # what the exchange sent, per type
    assert dict(markets) == sent["sent_by_market"]  # ... and per market
    assert any("." in symbol for symbol in markets)  # the dotted tickers went through

    archived: Counter[str] = Counter()
    for path in data.glob("kalshi/*/*/*/*.jsonl.gz"):
        shard, msg_type = path.parent.parent.name, path.parent.name
        with gzip.open(path, "rb") as handle:
            for raw in handle:
                line = json.loads(raw)
                archived[line["id"]] += 1
                assert expected[line["id"]] == (msg_type, line["symbol"])
                assert layout.assignment[line["symbol"]] == shard, "archived in the wrong shard"
    assert archived == Counter(set(expected)), "not exactly once in the archive"
    assert not list(data.rglob("*.part"))
    for name in env.shards:  # one manifest per day (two if the run straddled midnight UTC)
        days = [json.loads(p.read_text()) for p in data.glob(f"kalshi/*/{name}/manifest.json")]
        assert sum(day["lines"] for day in days) == shards[name]["published"]
        assert all(day["gaps"] == [] and day["duplicates"] == 0 for day in days)
