"""Replacing a file atomically: the old bytes or the new ones, never a mixture, no temporary left.

`write_atomically` is how every rewritten file is written (environment edits, rolls, plans, the
local pipeline's state).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ssmd_infra.adapters.files import FileChanged, write_atomically


def test_a_refused_write_leaves_the_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes(b"old")
    with pytest.raises(FileChanged, match="modified while being edited"):
        write_atomically(path, b"new", expected=b"older")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.yaml"]


def test_a_failed_rename_leaves_the_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes(b"old")

    def broken(src: str, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_atomically(path, b"new", expected=b"old")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.yaml"]


def test_a_write_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "e.yaml"
    path.write_bytes(b"old")
    path.chmod(0o640)
    write_atomically(path, b"new", expected=b"old")
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_new_file_is_created_with_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    umask = os.umask(0o022)
    try:
        write_atomically(path, b"id: x\n")
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"id: x\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]


def test_an_unreadable_expected_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    with pytest.raises(FileChanged, match="cannot re-read it"):
        write_atomically(path, b"new", expected=b"old")
    assert list(tmp_path.iterdir()) == []
