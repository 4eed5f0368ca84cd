"""What a roll needs to know about the environment file in git, in a real repository."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.deploy import git


def run_git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "ops"
    root.mkdir()
    run_git(root, "init", "-q", "-b", "main")
    run_git(root, "config", "user.email", "ops@example.com")
    run_git(root, "config", "user.name", "ops")
    (root / "env.yaml").write_text("name: a\n")
    run_git(root, "add", "env.yaml")
    run_git(root, "commit", "-q", "-m", "first")
    return root


def test_a_committed_file_is_clean_and_knows_its_commit(repo: Path) -> None:
    info = git.git_file(repo / "env.yaml")
    head = run_git(repo, "rev-parse", "HEAD")
    assert (info.rel, info.tracked, info.dirty, info.commit) == ("env.yaml", True, False, head)
    assert info.ref == f"env.yaml@{head[:12]}"
    git.require_clean(info, allow_dirty=False, doing="apply")  # no error


def test_uncommitted_changes_are_refused_unless_allowed(repo: Path) -> None:
    (repo / "env.yaml").write_text("name: b\n")
    info = git.git_file(repo / "env.yaml")
    assert info.dirty and info.ref.endswith("-dirty")
    with pytest.raises(SsmdError, match=r"env\.yaml has uncommitted changes; apply deploys"):
        git.require_clean(info, allow_dirty=False, doing="apply")
    git.require_clean(info, allow_dirty=True, doing="apply")


def test_a_file_outside_git_cannot_be_traced(tmp_path: Path) -> None:
    path = tmp_path / "loose.yaml"
    path.write_text("name: a\n")
    info = git.git_file(path)
    assert info.root is None and info.dirty
    with pytest.raises(SsmdError, match="is not in a git repository"):
        git.require_clean(info, allow_dirty=False, doing="day roll")
    with pytest.raises(SsmdError, match="nothing to roll back to"):
        git.previous_revision(info)


def test_commit_file_commits_only_that_file(repo: Path) -> None:
    (repo / "env.yaml").write_text("name: b\n")
    (repo / "other.txt").write_text("not mine\n")
    info = git.commit_file(git.git_file(repo / "env.yaml"), "roll b")
    assert not info.dirty
    assert run_git(repo, "log", "-1", "--format=%s") == "roll b"
    assert run_git(repo, "status", "--porcelain") == "?? other.txt"


def test_rollback_finds_the_previous_commit_and_its_content(repo: Path) -> None:
    first = run_git(repo, "rev-parse", "HEAD")
    (repo / "env.yaml").write_text("name: b\n")
    info = git.commit_file(git.git_file(repo / "env.yaml"), "second")
    assert git.previous_revision(info) == first
    assert git.file_at(info, first) == (first, b"name: a\n")


def test_a_single_commit_has_nothing_before_it(repo: Path) -> None:
    with pytest.raises(SsmdError, match="no earlier commit to roll back to"):
        git.previous_revision(git.git_file(repo / "env.yaml"))


def test_bad_revisions_are_named(repo: Path) -> None:
    info = git.git_file(repo / "env.yaml")
    with pytest.raises(SsmdError, match="unknown git revision 'nope'"):
        git.file_at(info, "nope")
    (repo / "README").write_text("x\n")
    run_git(repo, "add", "README")
    run_git(repo, "commit", "-q", "-m", "readme")
    run_git(repo, "rm", "-q", "env.yaml")
    run_git(repo, "commit", "-q", "-m", "gone")
    with pytest.raises(SsmdError, match=r"env\.yaml does not exist at revision HEAD"):
        git.file_at(info, "HEAD")
