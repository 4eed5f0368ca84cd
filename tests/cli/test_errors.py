"""The `ssmd` command itself: how it reports a user error (`error: ...` on stderr, exit 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import in_process


def test_an_error_message_is_printed_verbatim_even_when_it_looks_like_markup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "x[/DB][bold]y.yaml"
    result = in_process(capsys)("shard", "validate", str(path))
    assert result.code == 1
    assert result.err.startswith("error: ")
    assert f"error: environment file {path} does not exist" in result.err
