"""The local pipeline's state file: one typed model for its writer and its readers."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from ssmd_infra.adapters.files import write_local_state
from ssmd_infra.core import local_state
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.local_state import LocalState, LocalStateMissing


def a_state(**changes: object) -> LocalState:
    fields: dict[str, object] = {
        "pid": os.getpid(),
        "env": "kalshi-dev",
        "env_file": "/srv/ops/exchanges/environments/kalshi-dev.yaml",
        "nats_url": "nats://127.0.0.1:4222",
        "redis_url": "redis://127.0.0.1:6379/0",
        "data_dir": "/srv/ops/data/local",
        "generation": 2,
        "rolled_at": 1_700_000_000.5,
        "shards": ["tier1", "tier1a", "tier2"],
        "roll_attempts": 3,
        "roll_error": None,
        "roll_actions": ["create ssmd-internal-tier1a"],
    }
    fields.update(changes)
    return LocalState.model_validate(fields)


def test_the_path_is_per_environment_under_dot_ssmd() -> None:
    assert local_state.state_path("kalshi-dev") == Path(".ssmd/local/kalshi-dev.json")


def test_what_is_written_is_what_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / ".ssmd" / "local" / "kalshi-dev.json"
    state = a_state()
    write_local_state(path, state)
    assert local_state.load(path) == state
    assert json.loads(path.read_text())["roll_attempts"] == 3  # plain JSON for operators
    assert [p.name for p in path.parent.iterdir()] == ["kalshi-dev.json"]


def test_a_missing_file_says_no_pipeline_runs(tmp_path: Path) -> None:
    with pytest.raises(LocalStateMissing, match="no local pipeline state"):
        local_state.load(tmp_path / "kalshi-dev.json")


def test_a_file_that_is_not_json_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "kalshi-dev.json"
    path.write_text('{"pid": 12')
    with pytest.raises(
        SsmdError, match=re.escape(f"{path} is not a local pipeline state file")
    ) as caught:
        local_state.load(path)
    assert not isinstance(caught.value, LocalStateMissing)


def test_a_missing_or_mistyped_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "kalshi-dev.json"
    data = a_state().model_dump()
    del data["redis_url"]
    data["pid"] = "twelve"
    path.write_text(json.dumps(data))
    with pytest.raises(SsmdError) as caught:
        local_state.load(path)
    message = str(caught.value)
    assert "redis_url: Field required" in message
    assert "pid: Input should be a valid integer" in message


def test_an_unknown_field_is_refused_so_writer_and_readers_cannot_drift(tmp_path: Path) -> None:
    path = tmp_path / "kalshi-dev.json"
    path.write_text(json.dumps({**a_state().model_dump(), "nats_urls": ["nats://x:4222"]}))
    with pytest.raises(SsmdError, match="nats_urls: Extra inputs are not permitted"):
        local_state.load(path)
