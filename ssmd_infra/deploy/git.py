"""Facts about the environment file in git, the source of truth of every roll.

A roll deploys the committed file: `apply` and `rollback` refuse uncommitted changes (they
would be deployed without a trace), commit what they write, and the commit goes into the
Pulumi update message, so `pulumi stack history` says which version of the file each update
deployed and `rollback` can restore any of them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ssmd_infra.core.errors import SsmdError


@dataclass(frozen=True)
class GitFile:
    """Where the environment file stands in git."""

    path: Path
    root: Path | None  # None: not in a git work tree
    rel: str
    tracked: bool
    dirty: bool  # uncommitted changes (or not committed at all)
    commit: str | None  # last commit that changed the file

    def describe(self) -> str:
        if self.root is None:
            return f"{self.path} (not in a git repository)"
        state = "uncommitted changes" if self.dirty else "committed"
        at = f"@{self.commit[:12]}" if self.commit else ""
        return f"{self.rel}{at} ({state})"

    @property
    def ref(self) -> str:
        """`file@commit`, with `-dirty` when what is deployed is not that commit's content."""
        commit = (self.commit or "uncommitted")[:12]
        return f"{self.rel}@{commit}{'-dirty' if self.dirty else ''}"


def _git(args: Sequence[str], cwd: Path, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise SsmdError("git is not installed; the environment file's history needs it") from None
    if check and result.returncode != 0:
        raise SsmdError(f"git {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result


def git_file(path: Path | str) -> GitFile:
    path = Path(path).resolve()
    probe = _git(["rev-parse", "--show-toplevel"], path.parent, check=False)
    if probe.returncode != 0:
        return GitFile(path, None, str(path), False, True, None)
    root = Path(probe.stdout.strip()).resolve()
    rel = path.relative_to(root).as_posix()
    tracked = _git(["ls-files", "--error-unmatch", "--", rel], root, check=False).returncode == 0
    status = _git(["status", "--porcelain", "--", rel], root).stdout.strip()
    log = _git(["log", "-1", "--format=%H", "--", rel], root, check=False).stdout.strip()
    return GitFile(path, root, rel, tracked, bool(status) or not tracked, log or None)


def require_clean(info: GitFile, allow_dirty: bool, doing: str) -> None:
    """Refuse to `doing` with an environment file whose content is not a commit."""
    if allow_dirty or not info.dirty:
        return
    if info.root is None:
        raise SsmdError(
            f"{info.path} is not in a git repository, so what {doing} deploys could not be "
            f"traced or rolled back; commit it to git, or pass --allow-dirty"
        )
    raise SsmdError(
        f"{info.rel} has uncommitted changes; {doing} deploys the committed file so that every "
        f"roll can be traced and rolled back. Commit them (`git commit -- {info.rel}`), "
        f"or pass --allow-dirty"
    )


def commit_file(info: GitFile, message: str) -> GitFile:
    """Commit only the environment file; returns its new state."""
    assert info.root is not None
    if not info.tracked:
        _git(["add", "--", info.rel], info.root)
    _git(["commit", "-q", "-m", message, "--", info.rel], info.root)
    return git_file(info.path)


def previous_revision(info: GitFile) -> str:
    """The commit before the last one that changed the file: what a rollback restores."""
    if info.root is None:
        raise SsmdError(f"{info.path} is not in a git repository: nothing to roll back to")
    log = _git(["log", "-n", "2", "--format=%H", "--", info.rel], info.root).stdout.split()
    if len(log) < 2:
        raise SsmdError(
            f"{info.rel} has no earlier commit to roll back to (commits: {len(log)}); "
            f"give one with --to REV"
        )
    return log[1]


def file_at(info: GitFile, rev: str) -> tuple[str, bytes]:
    """(full commit, content) of the file at `rev`; clear errors for a bad rev or no file."""
    if info.root is None:
        raise SsmdError(f"{info.path} is not in a git repository: nothing to roll back to")
    resolved = _git(
        ["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], info.root, check=False
    )
    if resolved.returncode != 0:
        raise SsmdError(f"unknown git revision {rev!r}")
    commit = resolved.stdout.strip()
    shown = subprocess.run(
        ["git", "show", f"{commit}:{info.rel}"], cwd=info.root, capture_output=True, check=False
    )
    if shown.returncode != 0:
        raise SsmdError(
            f"{info.rel} does not exist at revision {rev} ({commit[:12]}); "
            f"`git log -- {info.rel}` lists the revisions that have it"
        )
    return commit, shown.stdout
