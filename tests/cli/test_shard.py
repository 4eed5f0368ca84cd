"""`ssmd shard ...` as an operator uses it: reports, live figures, and edits that keep the file.

Reads: `validate`, `list`, `show`, `symbols` (each with `--json`). Live columns come from a
real redis-server; an unreachable Redis shows `-` and the command still succeeds.
Edits: `move` and `create` change only the lines they must, validate the result before
writing, write atomically, and leave the file byte-identical whenever they refuse.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cli_runner import Ssmd, in_process

from ssmd_infra.adapters.files import write_local_state
from ssmd_infra.adapters.redis_reports import ShardLive, read_live, shard_status
from ssmd_infra.core import local_state, redis_keys
from ssmd_infra.core.environment import parse_environment
from ssmd_infra.local.servers import free_port

REPO = Path(__file__).resolve().parents[2]

ENV_TEXT = """\
# a test environment
name: {name}
feed: kalshi
schema: trade:v1

# Symbol attributes (manual)
symbols:
  BTCUSD:
    tier: 1
    category: crypto
  ETHUSD: {{tier: 1, category: crypto}}
  SOLUSD: {{tier: 1, category: crypto}}   # aligned comment
  INXD-25-B4000: {{tier: 2, category: financials}}
  KXHIGHNY-24DEC05-B43.5: {{tier: 2, category: climate}}

# Explicit symbol -> shard pins (written by `ssmd shard move`)
assignments: {{}}

# Shard definitions with selectors
shards:
  tier1:
    selector:
      tier: 1
    replicas: 2              # Auto-scale up to 2 replicas
    resources:
      cpu: "500m"
      memory: "512Mi"

  tier2:
    selector:
      tier: 2
    replicas: 1
    resources:
      cpu: "250m"
      memory: "256Mi"

# the end
"""

SEED_SAMPLE = """\
name: seed
feed: kalshi
symbols:
  BTCUSD: {tier: 1, category: crypto}
  ETHUSD: {tier: 1, category: crypto}
  INXD-25-B4000: {tier: 2, category: financials}
shards:
  tier1: {selector: {tier: 1}, replicas: 2}
  tier2: {selector: {tier: 2}, replicas: 1}
  crypto: {selector: {category: crypto}, replicas: 1}
"""


@pytest.fixture
def ssmd(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Ssmd]:
    """Run `ssmd ARGS...` in-process, as the console script does; returns a `Result`."""
    monkeypatch.delenv("SSMD_REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no `ssmd local up` state here

    yield in_process(capsys)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    name = f"t-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "envs" / f"{name}.yaml"
    path.parent.mkdir()
    path.write_text(ENV_TEXT.format(name=name))
    return path


def env_name(path: Path) -> str:
    return path.stem


def diff(before: str, after: str) -> list[str]:
    """The changed lines, as `+line` / `-line`."""
    return [
        line.rstrip("\n")
        for line in difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


# -- validate ----------------------------------------------------------------------------------


def test_validate_accepts_a_valid_environment(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "validate", str(env_file))
    assert r.code == 0, r.err
    assert r.out.strip() == f"{env_file}: valid — 5 symbols in 2 shards"


@pytest.mark.parametrize("name", ["kalshi-prod", "kalshi-dev"])
def test_validate_by_name_finds_the_repositorys_environments(ssmd: Ssmd, name: str) -> None:
    r = ssmd("shard", "validate", name)
    assert r.code == 0, r.err
    assert "valid" in r.out


def test_validate_rejects_the_seed_sample_naming_both_symbols_and_shards(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_SAMPLE)
    r = ssmd("shard", "validate", str(path))
    assert r.code == 1
    assert r.out == ""
    assert r.err.startswith("error: 2 problems:")
    assert f"{path}:4:3: symbols.BTCUSD: overlap: symbol 'BTCUSD' matches shards tier1, crypto" in (
        r.err
    )
    assert f"{path}:5:3: symbols.ETHUSD: overlap: symbol 'ETHUSD' matches shards tier1, crypto" in (
        r.err
    )


def test_validate_json(ssmd: Ssmd, env_file: Path, tmp_path: Path) -> None:
    r = ssmd("shard", "validate", str(env_file), "--json")
    assert r.code == 0
    report = json.loads(r.out)
    assert report == {
        "file": str(env_file),
        "valid": True,
        "symbols": 5,
        "shards": 2,
        "problems": [],
        "warnings": [],
    }
    bad = tmp_path / "seed.yaml"
    bad.write_text(SEED_SAMPLE)
    r = ssmd("shard", "validate", str(bad), "--json")
    assert r.code == 1
    report = json.loads(r.out)
    assert report["valid"] is False
    assert [(p["line"], p["path"]) for p in report["problems"]] == [
        (4, "symbols.BTCUSD"),
        (5, "symbols.ETHUSD"),
    ]


def test_validate_warns_about_a_shard_without_symbols(ssmd: Ssmd, env_file: Path) -> None:
    text = env_file.read_text() + "  spare:\n    selector: {tier: 3}\n    replicas: 1\n"
    env_file.write_text(text)
    r = ssmd("shard", "validate", str(env_file))
    assert r.code == 0
    assert "warning:" in r.out and "shards.spare" in r.out and "gets no symbols" in r.out


def test_an_unknown_environment_name_lists_the_available_ones(ssmd: Ssmd) -> None:
    r = ssmd("shard", "validate", "kalshi-staging")
    assert r.code == 1
    assert "unknown environment 'kalshi-staging'" in r.err
    assert "kalshi-dev, kalshi-prod" in r.err


# Every bad input: exit 1, a message naming file, line and key path, nothing written by
# `validate`, `move` or `create`.
BAD_INPUTS: dict[str, tuple[str, str, str]] = {
    # name: (replace this, with this, expected "line: keypath" in the message)
    "unknown key": ("# the end\n", "colour: blue\n", ":37:1: colour: unknown key 'colour'"),
    "unknown nested key": (
        "    replicas: 1\n",
        "    replicas: 1\n    autoscaling: {cpu: 80}\n",
        ":33:19: shards.tier2.autoscaling.cpu: unknown key 'cpu'",
    ),
    "duplicate key": (
        "    replicas: 1\n",
        "    replicas: 1\n    replicas: 4\n",
        ":33:5: shards.tier2.replicas: duplicate key 'replicas' (first defined on line 32)",
    ),
    "duplicate shard": (
        "# the end\n",
        "  tier1:\n    selector: {tier: 3}\n    replicas: 1\n",
        ":37:3: shards.tier1: duplicate key 'tier1' (first defined on line 21)",
    ),
    "empty shards": (
        "shards:\n",
        "shards: {}\nold_shards:\n",
        ":20:1: shards: no shards defined",
    ),
    "replicas 0": (
        "replicas: 1\n",
        "replicas: 0\n",
        ":32:5: shards.tier2.replicas: must be at least 1",
    ),
    "replicas negative": (
        "replicas: 1\n",
        "replicas: -3\n",
        ":32:5: shards.tier2.replicas: must be at least 1",
    ),
    "min_replicas above replicas": (
        "    replicas: 1\n",
        "    replicas: 1\n    min_replicas: 3\n",
        ":29:3: shards.tier2: min_replicas 3 is greater than replicas 1",
    ),
    "512Mb": ('"256Mi"', '"256Mb"', ":35:7: shards.tier2.resources.memory: malformed quantity"),
    "-1 quantity": ('"250m"', "-1", ":34:7: shards.tier2.resources.cpu: malformed quantity"),
    "abc quantity": ('"250m"', "abc", ":34:7: shards.tier2.resources.cpu: malformed quantity"),
    "dotted shard": (
        "  tier2:\n",
        "  tier.2:\n",
        ":29:3: shards.tier.2: shard name 'tier.2' contains '.'",
    ),
    "starred shard": (
        "  tier2:\n",
        '  "tier*":\n',
        ":29:3: shards.tier*: shard name 'tier*' contains '*'",
    ),
    "shard with >": (
        "  tier2:\n",
        '  "tier>":\n',
        ":29:3: shards.tier>: shard name 'tier>' contains '>'",
    ),
    "shard with a space": (
        "  tier2:\n",
        '  "tier 2":\n',
        ":29:3: shards.tier 2: shard name 'tier 2' contains ' '",
    ),
    "feed with a dot": (
        "feed: kalshi",
        "feed: kal.shi",
        ":3:1: feed: feed name 'kal.shi' contains '.'",
    ),
    "pin to a missing shard": (
        "assignments: {}",
        "assignments: {BTCUSD: tier9}",
        ":17:15: assignments.BTCUSD: pin of 'BTCUSD' to shard 'tier9'",
    ),
    "pin of a missing symbol": (
        "assignments: {}",
        "assignments:\n  DOGEUSD: tier1",
        ":18:3: assignments.DOGEUSD: pin of symbol 'DOGEUSD', which is not a known symbol",
    ),
    "orphan": (
        "  KXHIGHNY-24DEC05-B43.5: {tier: 2,",
        "  KXHIGHNY-24DEC05-B43.5: {tier: 3,",
        ":14:3: symbols.KXHIGHNY-24DEC05-B43.5: orphan",
    ),
    "overlap": (
        "# the end\n",
        "  crypto:\n    selector: {category: crypto}\n    replicas: 1\n",
        ":8:3: symbols.BTCUSD: overlap: symbol 'BTCUSD' matches shards tier1, crypto",
    ),
    "yaml syntax error": ("    replicas: 1\n", "    replicas: [1\n", ":33:14: YAML syntax error"),
    "empty selector list": (
        "      tier: 2\n",
        "      tier: []\n",
        ":30:5: shards.tier2.selector: selector key 'tier' has an empty list",
    ),
    "top level not a mapping": ("", "", ":1: expected a mapping"),
}


def _bad_text(case: str, name: str) -> str:
    old, new, _ = BAD_INPUTS[case]
    if case == "top level not a mapping":
        return "- just\n- a list\n"
    text = ENV_TEXT.format(name=name)
    assert old in text, case
    return text.replace(old, new, 1)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_is_refused_with_its_place_and_nothing_is_written(
    ssmd: Ssmd, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(_bad_text(case, "bad"))
    before = path.read_bytes()
    expected = BAD_INPUTS[case][2]
    r = ssmd("shard", "validate", str(path))
    assert r.code == 1
    assert r.err.startswith("error: ")
    assert f"{path}{expected}" in r.err, r.err
    for edit in (
        ("move", str(path), "SOLUSD", "--from", "tier1", "--to", "tier2"),
        ("create", str(path), "spare", "--selector", "tier=7"),
    ):
        r = ssmd("shard", *edit)
        assert r.code == 1, (edit, r.out)
        assert r.err.startswith("error: ")
        assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no temp files


@pytest.mark.parametrize(("data", "words"), [(b"", "empty file"), (b"\x89PNG\x00\x01", "binary")])
def test_an_empty_or_binary_file_is_refused(
    ssmd: Ssmd, tmp_path: Path, data: bytes, words: str
) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(data)
    for args in (
        ("validate", str(path)),
        ("list", str(path)),
        ("move", str(path), "A", "--from", "a", "--to", "b"),
    ):
        r = ssmd("shard", *args)
        assert r.code == 1
        assert f"error: {path}: " in r.err and words in r.err
    assert path.read_bytes() == data


# -- list / show / symbols without Redis ------------------------------------------------------


def test_list_shows_the_seed_columns_with_dashes_when_nothing_is_live(
    ssmd: Ssmd, env_file: Path
) -> None:
    r = ssmd("shard", "list", str(env_file))
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].split() == ["SHARD", "SYMBOLS", "REPLICAS", "MSG/S", "CPU%", "MEM%"]
    assert lines[1].split() == ["tier1", "3", "-/2", "-", "-", "-"]
    assert lines[2].split() == ["tier2", "2", "-/1", "-", "-", "-"]


def test_an_unreachable_redis_shows_dashes_and_succeeds(ssmd: Ssmd, env_file: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    r = ssmd("shard", "list", str(env_file), "--redis-url", url)
    assert time.monotonic() - started < 5
    assert r.code == 0, r.err
    assert r.out.splitlines()[1].split() == ["tier1", "3", "-/2", "-", "-", "-"]
    r = ssmd("shard", "show", str(env_file), "tier1", "--redis-url", url)
    assert r.code == 0
    assert "status       unknown" in r.out
    r = ssmd("shard", "symbols", str(env_file), "--redis-url", url, "--json")
    assert r.code == 0
    assert {row["msg_rate"] for row in json.loads(r.out)} == {None}


def test_a_malformed_redis_url_is_a_user_error(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "list", str(env_file), "--redis-url", "localhost:6379")
    assert r.code == 1
    assert "bad Redis URL" in r.err


def test_list_json(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "list", str(env_file), "--json")
    assert json.loads(r.out) == [
        {
            "shard": "tier1",
            "symbols": 3,
            "replicas": None,
            "max_replicas": 2,
            "min_replicas": 1,
            "msg_rate": None,
            "cpu_pct": None,
            "mem_pct": None,
        },
        {
            "shard": "tier2",
            "symbols": 2,
            "replicas": None,
            "max_replicas": 1,
            "min_replicas": 1,
            "msg_rate": None,
            "cpu_pct": None,
            "mem_pct": None,
        },
    ]


def test_symbols_lists_every_symbol_with_its_shard(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "symbols", str(env_file))
    assert r.code == 0
    rows = [line.split() for line in r.out.splitlines()]
    assert rows[0] == ["SYMBOL", "SHARD", "MSG/S"]
    assert rows[1:] == [
        ["BTCUSD", "tier1", "-"],
        ["ETHUSD", "tier1", "-"],
        ["INXD-25-B4000", "tier2", "-"],
        ["KXHIGHNY-24DEC05-B43.5", "tier2", "-"],
        ["SOLUSD", "tier1", "-"],
    ]


def test_symbols_json_is_a_list_of_symbol_and_shard(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "symbols", str(env_file), "--json")
    rows = json.loads(r.out)
    assert [(row["symbol"], row["shard"]) for row in rows] == [
        ("BTCUSD", "tier1"),
        ("ETHUSD", "tier1"),
        ("INXD-25-B4000", "tier2"),
        ("KXHIGHNY-24DEC05-B43.5", "tier2"),
        ("SOLUSD", "tier1"),
    ]


def test_symbols_of_one_shard(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "symbols", str(env_file), "--shard", "tier2", "--json")
    assert [row["symbol"] for row in json.loads(r.out)] == [
        "INXD-25-B4000",
        "KXHIGHNY-24DEC05-B43.5",
    ]
    r = ssmd("shard", "symbols", str(env_file), "--shard", "tier9")
    assert r.code == 1 and "no shard 'tier9'" in r.err and "tier1, tier2" in r.err


def test_show_describes_one_shard(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "show", str(env_file), "tier1")
    assert r.code == 0, r.err
    fields = {line[:13].strip(): line[13:] for line in r.out.splitlines() if line[:1] != " "}
    assert fields["selector"] == "tier=1"
    assert fields["symbols"] == "3"
    assert "  BTCUSD ETHUSD SOLUSD" in r.out
    assert fields["replicas"] == "-/2 (current/max; min 1)"
    assert fields["resources"] == "cpu 500m, memory 512Mi (requests = limits)"
    assert fields["rate"] == "- msg/s, cpu -%, mem -%"
    assert fields["status"].startswith("unknown")


def test_show_json(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "show", str(env_file), "tier2", "--json")
    shown = json.loads(r.out)
    assert shown["selector"] == {"tier": "2"}
    assert shown["symbols"] == ["INXD-25-B4000", "KXHIGHNY-24DEC05-B43.5"]
    assert shown["replicas"] == {"current": None, "min": 1, "max": 1}
    assert shown["resources"]["limits"] == {"cpu": "250m", "memory": "256Mi"}
    assert shown["status"] == "unknown"


def test_show_of_a_missing_shard_names_the_existing_ones(ssmd: Ssmd, env_file: Path) -> None:
    r = ssmd("shard", "show", str(env_file), "tier9")
    assert r.code == 1
    assert "no shard 'tier9'" in r.err and "(shards: tier1, tier2)" in r.err


# -- live figures from a real Redis ------------------------------------------------------------


def seed_redis(url: str, env: str) -> None:
    client = redis.Redis.from_url(url)
    client.hset(
        redis_keys.metrics_key(env, "tier1"),
        mapping={"msg_rate": 1234.5, "cpu_pct": 45.25, "mem_pct": 60.0},
    )
    client.set(redis_keys.replicas_key(env, "tier1"), 2)
    client.hset(
        redis_keys.symbol_rates_key(env, "tier1"), mapping={"BTCUSD": 1000.0, "ETHUSD": 234.5}
    )
    client.close()


def test_list_shows_live_figures_from_redis(ssmd: Ssmd, env_file: Path, redis_url: str) -> None:
    seed_redis(redis_url, env_name(env_file))
    r = ssmd("shard", "list", str(env_file), "--redis-url", redis_url)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[1].split() == ["tier1", "3", "2/2", "1,234.5", "45.2", "60.0"]
    assert lines[2].split() == ["tier2", "2", "0/1", "-", "-", "-"]  # reachable, not running
    r = ssmd("shard", "list", str(env_file), "--redis-url", redis_url, "--json")
    first = json.loads(r.out)[0]
    assert (first["replicas"], first["msg_rate"], first["cpu_pct"], first["mem_pct"]) == (
        2,
        1234.5,
        45.25,
        60.0,
    )


def test_the_redis_url_may_come_from_the_environment(
    ssmd: Ssmd, env_file: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_redis(redis_url, env_name(env_file))
    monkeypatch.setenv("SSMD_REDIS_URL", redis_url)
    r = ssmd("shard", "list", str(env_file))
    assert r.out.splitlines()[1].split()[2] == "2/2"


def test_the_redis_of_a_running_local_pipeline_is_found(
    ssmd: Ssmd, env_file: Path, redis_url: str, tmp_path: Path
) -> None:
    seed_redis(redis_url, env_name(env_file))
    state = tmp_path / ".ssmd" / "local" / f"{env_name(env_file)}.json"
    write_local_state(state, running_state(env_file, redis_url))
    r = ssmd("shard", "list", str(env_file))
    assert r.out.splitlines()[1].split()[2] == "2/2"


def test_an_unreadable_local_state_leaves_the_live_figures_unknown(
    ssmd: Ssmd, env_file: Path, redis_url: str, tmp_path: Path
) -> None:
    seed_redis(redis_url, env_name(env_file))
    state = tmp_path / ".ssmd" / "local" / f"{env_name(env_file)}.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"redis_url": redis_url}))  # not a state file: fields missing
    r = ssmd("shard", "list", str(env_file))
    assert r.code == 0, r.err
    assert r.out.splitlines()[1].split()[2] == "-/2"


def running_state(env_file: Path, redis_url: str) -> local_state.LocalState:
    return local_state.LocalState(
        pid=os.getpid(),
        env=env_name(env_file),
        env_file=str(env_file),
        nats_url="nats://127.0.0.1:4222",
        redis_url=redis_url,
        data_dir="/var/lib/ssmd",
        generation=0,
        rolled_at=0.0,
        shards=["tier1", "tier2"],
        roll_attempts=0,
        roll_error=None,
        roll_actions=[],
    )


def test_show_and_symbols_use_live_figures(ssmd: Ssmd, env_file: Path, redis_url: str) -> None:
    seed_redis(redis_url, env_name(env_file))
    r = ssmd("shard", "show", str(env_file), "tier1", "--redis-url", redis_url)
    assert "replicas     2/2 (current/max; min 1)" in r.out
    assert "rate         1,234.5 msg/s, cpu 45.2%, mem 60.0%" in r.out
    assert "status       running" in r.out
    r = ssmd("shard", "symbols", str(env_file), "--redis-url", redis_url)
    rows = {line.split()[0]: line.split()[1:] for line in r.out.splitlines()[1:]}
    assert rows["BTCUSD"] == ["tier1", "1,000.0"]
    assert rows["ETHUSD"] == ["tier1", "234.5"]
    assert rows["SOLUSD"] == ["tier1", "-"]
    r = ssmd("shard", "symbols", str(env_file), "--redis-url", redis_url, "--json")
    assert json.loads(r.out)[0] == {
        "symbol": "BTCUSD",
        "shard": "tier1",
        "pinned": False,
        "msg_rate": 1000.0,
    }


def test_read_live_returns_none_without_a_url_or_a_server() -> None:
    assert read_live("e", ["a"], None) is None
    assert read_live("e", ["a"], f"redis://127.0.0.1:{free_port()}") is None


@pytest.mark.parametrize(
    ("live", "words"),
    [
        (None, "unknown"),
        (ShardLive(replicas=0), "down"),
        (ShardLive(replicas=1, msg_rate=10, cpu_pct=5), "degraded"),
        (ShardLive(replicas=3, msg_rate=10, cpu_pct=5), "running"),
        (ShardLive(replicas=4, msg_rate=10, cpu_pct=95), "saturated"),
        (ShardLive(replicas=4, msg_rate=80_000, cpu_pct=5), "saturated"),
    ],
)
def test_shard_status(live: ShardLive | None, words: str) -> None:
    env = parse_environment(
        "name: e\nfeed: f\nsymbols: {A: {t: 1}}\n"
        "shards: {s: {selector: {t: 1}, replicas: 4, min_replicas: 2}}\n",
        "e.yaml",
    )
    assert shard_status(env.shards["s"], live, live is not None).startswith(words)


# -- move --------------------------------------------------------------------------------------


def test_move_writes_a_pin_and_keeps_everything_else(ssmd: Ssmd, env_file: Path) -> None:
    before = env_file.read_text()
    r = ssmd("shard", "move", str(env_file), "BTCUSD", "--from", "tier1", "--to", "tier2")
    assert r.code == 0, r.err
    assert "pinned BTCUSD to tier2 (was tier1)" in r.out
    assert "BTCUSD: tier1 -> tier2" in r.out
    assert diff(before, env_file.read_text()) == [
        "-assignments: {}",
        "+assignments:",
        "+  BTCUSD: tier2",
    ]
    r = ssmd("shard", "symbols", str(env_file), "--json")
    assert {row["symbol"]: row["shard"] for row in json.loads(r.out)}["BTCUSD"] == "tier2"
    assert ssmd("shard", "validate", str(env_file)).code == 0


def test_move_appends_to_existing_pins_and_moving_back_removes_the_pin(
    ssmd: Ssmd, env_file: Path
) -> None:
    original = env_file.read_text()
    assert (
        ssmd("shard", "move", str(env_file), "BTCUSD", "--from", "tier1", "--to", "tier2").code == 0
    )
    after_one = env_file.read_text()
    assert (
        ssmd("shard", "move", str(env_file), "ETHUSD", "--from", "tier1", "--to", "tier2").code == 0
    )
    assert diff(after_one, env_file.read_text()) == ["+  ETHUSD: tier2"]
    r = ssmd("shard", "move", str(env_file), "ETHUSD", "--from", "tier2", "--to", "tier1")
    assert r.code == 0
    assert "removed the pin of ETHUSD" in r.out
    assert env_file.read_text() == after_one
    assert (
        ssmd("shard", "move", str(env_file), "BTCUSD", "--from", "tier2", "--to", "tier1").code == 0
    )
    assert diff(original, env_file.read_text()) == []


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("BTCUSD", "--from", "tier2", "--to", "tier1"), "is in shard 'tier1', not 'tier2'"),
        (("BTCUSD", "--from", "tier1", "--to", "tier9"), "no shard 'tier9' to move to"),
        (("BTCUSD", "--from", "tier1", "--to", "tier1"), "already in shard 'tier1'"),
        (("DOGEUSD", "--from", "tier1", "--to", "tier2"), "unknown symbol 'DOGEUSD'"),
        (("BTCUSD", "--from", "nope", "--to", "tier2"), "no shard 'nope'"),
    ],
)
def test_move_refuses_and_leaves_the_file_byte_identical(
    ssmd: Ssmd, env_file: Path, args: tuple[str, ...], words: str
) -> None:
    before = env_file.read_bytes()
    r = ssmd("shard", "move", str(env_file), *args)
    assert r.code == 1
    assert words in r.err
    assert f"{env_file} unchanged" in r.err
    assert env_file.read_bytes() == before


def test_move_refuses_a_result_that_would_not_validate(ssmd: Ssmd, env_file: Path) -> None:
    # another symbol is ambiguous: pinning BTCUSD does not make the file valid
    text = env_file.read_text().replace(
        "# the end\n", "  clim:\n    selector: {category: climate}\n    replicas: 1\n"
    )
    env_file.write_text(text)
    before = env_file.read_bytes()
    r = ssmd("shard", "move", str(env_file), "BTCUSD", "--from", "tier1", "--to", "tier2")
    assert r.code == 1
    assert "would not validate" in r.err
    assert "symbol 'KXHIGHNY-24DEC05-B43.5' matches shards tier2, clim" in r.err
    assert env_file.read_bytes() == before


def test_move_settles_an_overlap(ssmd: Ssmd, tmp_path: Path) -> None:
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_SAMPLE)
    r = ssmd("shard", "move", str(path), "BTCUSD", "--from", "tier2", "--to", "crypto")
    assert r.code == 1 and "matches shards tier1, crypto (overlap)" in r.err
    # one pin is not enough (ETHUSD stays ambiguous): refused
    r = ssmd("shard", "move", str(path), "BTCUSD", "--from", "tier1", "--to", "crypto")
    assert r.code == 1 and "symbol 'ETHUSD' matches shards tier1, crypto" in r.err
    path.write_text(SEED_SAMPLE + "assignments: {ETHUSD: crypto}\n")
    r = ssmd("shard", "move", str(path), "BTCUSD", "--from", "tier1", "--to", "crypto")
    assert r.code == 0, r.err
    assert ssmd("shard", "validate", str(path)).code == 0


def test_move_dry_run_writes_nothing(ssmd: Ssmd, env_file: Path) -> None:
    before = env_file.read_bytes()
    r = ssmd(
        "shard", "move", str(env_file), "BTCUSD", "--from", "tier1", "--to", "tier2", "--dry-run"
    )
    assert r.code == 0
    assert "would change" in r.out
    assert env_file.read_bytes() == before


# -- create ------------------------------------------------------------------------------------


def test_create_adds_a_carve_out_shard_at_the_end_of_shards(ssmd: Ssmd, env_file: Path) -> None:
    before = env_file.read_text()
    r = ssmd(
        "shard",
        "create",
        str(env_file),
        "tier1a",
        "--selector",
        "tier=1,prefix=BTC*|ETH*",
        "--replicas",
        "3",
        "--cpu",
        "750m",
        "--memory",
        "1Gi",
    )
    assert r.code == 0, r.err
    assert "created shard tier1a" in r.out
    assert "2 symbol(s) move" in r.out and "BTCUSD: tier1 -> tier1a" in r.out
    assert diff(before, env_file.read_text()) == [
        "+  tier1a:",
        "+    selector:",
        "+      tier: 1",
        "+      prefix: [BTC*, ETH*]",
        "+    replicas: 3",
        "+    resources:",
        '+      cpu: "750m"',
        '+      memory: "1Gi"',
    ]
    assert env_file.read_text().endswith('memory: "1Gi"\n\n# the end\n')  # the tail stays last
    r = ssmd("shard", "symbols", str(env_file), "--shard", "tier1a", "--json")
    assert [row["symbol"] for row in json.loads(r.out)] == ["BTCUSD", "ETHUSD"]


def test_create_with_defaults(ssmd: Ssmd, env_file: Path) -> None:
    before = env_file.read_text()
    r = ssmd("shard", "create", str(env_file), "climate", "--selector", "tier=2,category=climate")
    assert r.code == 0, r.err
    assert diff(before, env_file.read_text()) == [
        "+  climate:",
        "+    selector:",
        "+      tier: 2",
        "+      category: climate",
        "+    replicas: 1",
    ]
    shown = json.loads(ssmd("shard", "show", str(env_file), "climate", "--json").out)
    assert shown["symbols"] == ["KXHIGHNY-24DEC05-B43.5"]
    assert shown["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}


def test_create_quotes_values_yaml_would_read_as_something_else(ssmd: Ssmd, env_file: Path) -> None:
    text = env_file.read_text().replace("SOLUSD: {tier: 1,", 'SOLUSD: {flag: "yes", tier: 1,')
    env_file.write_text(text)
    r = ssmd("shard", "create", str(env_file), "flagged", "--selector", "tier=1,flag=yes")
    assert r.code == 0, r.err
    assert '      flag: "yes"' in env_file.read_text()
    shown = json.loads(ssmd("shard", "show", str(env_file), "flagged", "--json").out)
    assert shown["symbols"] == ["SOLUSD"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("tier1", "--selector", "tier=3"), "shard 'tier1' already exists"),
        (("crypto", "--selector", "category=crypto"), "matches shards tier1, crypto"),
        (("bad.name", "--selector", "tier=3"), "shard name 'bad.name' contains '.'"),
        (("spare", "--selector", "tier"), "bad --selector"),
        (("spare", "--selector", "tier=3", "--cpu", "abc"), "--cpu: malformed quantity 'abc'"),
        (("spare", "--selector", "tier=3", "--memory", "512Mb"), "did you mean '512Mi'"),
        (
            ("spare", "--selector", "tier=3", "--replicas", "0"),
            "shards.spare.replicas: must be at least 1",
        ),
    ],
)
def test_create_refuses_and_leaves_the_file_byte_identical(
    ssmd: Ssmd, env_file: Path, args: tuple[str, ...], words: str
) -> None:
    before = env_file.read_bytes()
    r = ssmd("shard", "create", str(env_file), *args)
    assert r.code == 1
    assert words in r.err, r.err
    assert env_file.read_bytes() == before
    assert sorted(p.name for p in env_file.parent.iterdir()) == [env_file.name]


def test_create_by_environment_name(
    ssmd: Ssmd, env_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSMD_ENV_DIR", str(env_file.parent))
    r = ssmd(
        "shard",
        "create",
        env_name(env_file),
        "spare",
        "--selector",
        "tier=2,category=none",
        "--dry-run",
    )
    assert r.code == 0, r.err
    assert f"would change {env_file}" in r.out


# -- round trip and atomic writes --------------------------------------------------------------


HAND_WRITTEN = (
    "# top comment\r\n"
    "name: hand\r\n"
    "feed: kalshi\r\n"
    "symbols:\r\n"
    "    BTCUSD: { tier: 1,  category: crypto }   # spaced flow\r\n"
    "    INX:    {tier: 2}\r\n"
    "assignments:\r\n"
    "    INX: tier2   # hot\r\n"
    "\r\n"
    "# the shards\r\n"
    "shards:\r\n"
    "    tier1:\r\n"
    "        selector: {tier: [1,  3]}\r\n"
    "        replicas: 2\r\n"
    "    tier2:\r\n"
    "        selector:\r\n"
    "            tier: 2\r\n"
    "        replicas: 1\r\n"
    "        # about tier2\r\n"
    "\r\n"
    "# streams next\r\n"
    "streams:\r\n"
    "    internal: {max_age: 24h}\r\n"
)


def test_edits_touch_only_their_lines_in_a_hand_written_file(ssmd: Ssmd, tmp_path: Path) -> None:
    path = tmp_path / "hand.yaml"
    path.write_bytes(HAND_WRITTEN.encode())
    assert ssmd("shard", "validate", str(path)).code == 0
    r = ssmd("shard", "move", str(path), "BTCUSD", "--from", "tier1", "--to", "tier2")
    assert r.code == 0, r.err
    r = ssmd("shard", "create", str(path), "tier3", "--selector", "tier=3")
    assert r.code == 0, r.err
    after = path.read_bytes().decode()
    assert "\n" not in after.replace("\r\n", "")  # line endings kept
    assert diff(HAND_WRITTEN, after) == [
        "+    BTCUSD: tier2\r",
        "+    tier3:\r",
        "+        selector:\r",
        "+            tier: 3\r",
        "+        replicas: 1\r",
    ]
    lines = after.split("\r\n")
    assert lines[lines.index("    BTCUSD: tier2") - 1] == "    INX: tier2   # hot"
    # the new shard goes after tier2's own comment, before the next section's heading
    assert lines[lines.index("    tier3:") - 1] == "        # about tier2"
    assert lines[lines.index("# streams next") - 1] == ""


# -- the console script ------------------------------------------------------------------------


def test_the_console_script_runs(tmp_path: Path) -> None:
    """The installed `ssmd` script (`python -m ssmd_infra` runs in tests/cli/test_startup.py)."""
    path = tmp_path / "seed.yaml"
    path.write_text(SEED_SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "SSMD_REDIS_URL"}
    bad = subprocess.run(
        [str(Path(sys.executable).parent / "ssmd"), "shard", "validate", str(path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert bad.returncode == 1
    assert "BTCUSD" in bad.stderr and "ETHUSD" in bad.stderr and "Traceback" not in bad.stderr


def test_edits_when_symbols_come_last_and_the_file_has_no_final_newline(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    text = (
        "name: last\nfeed: kalshi\nshards:\n  a: {selector: {tier: 1}, replicas: 1}\n"
        "  b: {selector: {tier: 2}, replicas: 1}\n# the symbols\nsymbols:\n"
        "  X: {tier: 1}   # x\n  Y:    {tier: 2}"
    )
    path = tmp_path / "last.yaml"
    path.write_text(text)
    assert ssmd("shard", "move", str(path), "X", "--from", "a", "--to", "b").code == 0
    assert path.read_text() == text + "\nassignments:\n  X: b\n"
    r = ssmd("shard", "create", str(path), "c", "--selector", "tier=3")
    assert r.code == 0, r.err
    assert path.read_text().endswith(
        "  b: {selector: {tier: 2}, replicas: 1}\n  c:\n    selector:\n      tier: 3\n"
        "    replicas: 1\n# the symbols\nsymbols:\n  X: {tier: 1}   # x\n  Y:    {tier: 2}\n"
        "assignments:\n  X: b\n"
    )


def test_a_refused_edit_lists_the_first_problems_and_counts_the_rest(
    ssmd: Ssmd, tmp_path: Path
) -> None:
    symbols = "".join(f"  S{i:02d}: {{tier: 1}}\n" for i in range(30))
    path = tmp_path / "many.yaml"
    path.write_text(
        f"name: many\nfeed: kalshi\nsymbols:\n{symbols}shards:\n  a: {{selector: {{tier: 1}}, replicas: 1}}\n"
    )
    r = ssmd("shard", "create", str(path), "b", "--selector", "prefix=S")
    assert r.code == 1
    assert r.err.count("overlap:") == 20
    assert "... and 10 more" in r.err
