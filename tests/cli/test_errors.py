"""The `ssmd` command itself: its groups, and how it reports a user error (`error: ...` on stderr, exit 1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_an_error_message_is_printed_verbatim_even_when_it_looks_like_markup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x[/DB][bold]y.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "ssmd_infra", "shard", "validate", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"error: environment file {path} does not exist" in result.stderr


def test_each_command_group_is_attached_once_however_often_main_runs() -> None:
    from ssmd_infra.cli import main as cli

    for group in ("shard", None, "run", "shard", None):
        cli._register(group)
    names = [group.name for group in cli.app.registered_groups]
    assert sorted(names) == ["day", "local", "nats", "run", "shard"]
