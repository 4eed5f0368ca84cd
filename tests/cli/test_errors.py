"""The `ssmd` command itself: how it reports a user error (`error: ...` on stderr, exit 1)."""

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
