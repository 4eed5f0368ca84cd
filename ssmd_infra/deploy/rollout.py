"""The day roll and what it needs: git facts about the environment file, the Pulumi stack of an
environment (Automation API), the running local pipeline, and a check that data flows.

- **git.** The environment YAML in git is the source of truth: `apply` refuses uncommitted
  changes to it (they would be deployed without a trace), commits what it writes, and puts
  that commit in the Pulumi update message, so `pulumi stack history` says which version of
  the file each update deployed and `rollback` can restore any of them.
- **Kubernetes.** `pulumi up` runs through the Automation API on the stack whose
  `Pulumi.<stack>.yaml` names the environment (`ssmd:environment`), with the program in the
  project directory (`Pulumi.yaml` → `__main__.py`), exactly as an operator's `pulumi up -s
  <stack> --refresh` would. The Automation API drives the `pulumi` CLI, so without it nothing
  runs (and nothing is changed before that is known).
- **Local.** `ssmd local up` records its servers and roll state in `.ssmd/local/<env>.json`;
  the roll is a SIGHUP to that process (it stops the connectors, reconciles the streams and
  starts connectors and archivers with the new assignments), and its outcome is read back
  from the same file.
- **Verification.** Data flows in a shard when its internal stream's last sequence grows;
  the per-shard rate is that growth over the observed window. NATS is asked directly: it is
  where the data is, on either target.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.subjects import CLIENT_STREAM, internal_stream

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_STATE_DIR = Path(".ssmd") / "local"
ROLL_TIMEOUT = 120.0
VERIFY_TIMEOUT = 60.0
VERIFY_WINDOW = 3.0
COMMIT_PATTERN = re.compile(r"@([0-9a-f]{7,40})(-dirty)?\b")
PULUMI_INSTALL_HINT = "install it: https://www.pulumi.com/docs/iac/download-install/"

Out = Callable[[str], None]


# ----------------------------------------------------------------------------- git


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


def file_history(info: GitFile, limit: int = 10) -> list[tuple[str, str]]:
    """(commit, subject) of the last commits that changed the file, newest first."""
    if info.root is None:
        return []
    out = _git(
        ["log", f"-n{limit}", "--format=%H%x09%s", "--", info.rel], info.root, check=False
    ).stdout
    return [tuple(line.split("\t", 1)) for line in out.splitlines() if "\t" in line]  # type: ignore[misc]


# ----------------------------------------------------------------------------- Pulumi


def pulumi_cli() -> str | None:
    """The `pulumi` CLI the Automation API would drive, or None."""
    return shutil.which("pulumi")


def project_dir(explicit: Path | None = None) -> Path:
    """The Pulumi project: `--project-dir`, else the working directory if it has a
    `Pulumi.yaml`, else this repository."""
    if explicit is not None:
        candidate = explicit
    elif (Path.cwd() / "Pulumi.yaml").is_file():
        candidate = Path.cwd()
    else:
        candidate = REPO_ROOT
    if not (candidate / "Pulumi.yaml").is_file():
        raise SsmdError(f"{candidate} is not a Pulumi project (no Pulumi.yaml)")
    return candidate.resolve()


def stack_config(project: Path, stack: str) -> dict[str, Any]:
    path = project / f"Pulumi.{stack}.yaml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SsmdError(f"cannot read {path}: {exc}") from None
    config = data.get("config") if isinstance(data, dict) else None
    return dict(config) if isinstance(config, dict) else {}


def find_stack(env_name: str, project: Path, explicit: str | None = None) -> str:
    """The stack whose `ssmd:environment` is `env_name` (a name, or a path to `<env>.yaml`)."""
    stacks = sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in project.glob("Pulumi.*.yaml"))
    if explicit is not None:
        if explicit not in stacks:
            raise SsmdError(f"no stack file Pulumi.{explicit}.yaml in {project}")
        return explicit
    matches = []
    for stack in stacks:
        value = str(stack_config(project, stack).get("ssmd:environment", ""))
        if value == env_name or (value and Path(value).stem == env_name):
            matches.append(stack)
    if not matches:
        raise SsmdError(
            f"no Pulumi stack in {project} deploys environment {env_name!r} (stacks: "
            f"{', '.join(stacks) or 'none'}); create one with `ssmd:environment: {env_name}` "
            f"in Pulumi.<stack>.yaml, or use --target local"
        )
    if len(matches) > 1:
        raise SsmdError(
            f"several stacks deploy {env_name!r}: {', '.join(matches)}; choose one with --stack"
        )
    return matches[0]


def update_message(action: str, env_name: str, info: GitFile, plan_id: str | None = None) -> str:
    """`ssmd shard apply kalshi-prod (plan X): exchanges/environments/kalshi-prod.yaml@abc123…`."""
    what = f"ssmd {action} {env_name}"
    if plan_id:
        what += f" (plan {plan_id})"
    return f"{what}: {info.ref}"


def commit_of_message(message: str) -> str | None:
    """The environment file's commit recorded in an update message, if any."""
    match = COMMIT_PATTERN.search(message or "")
    return match.group(1) + (match.group(2) or "") if match else None


class PulumiStack:
    """One stack of the project through the Automation API; the only place that imports it.

    `select_stack(stack_name, work_dir=<project>)` uses the project's own program (Pulumi.yaml
    → `__main__.py` in the project's virtualenv), the same one `pulumi up -s <stack>` runs.
    """

    def __init__(self, project: Path, stack: str, out: Out) -> None:
        self.project = project
        self.stack = stack
        self.out = out

    def _select(self, env_vars: dict[str, str] | None = None) -> Any:
        if pulumi_cli() is None:
            raise SsmdError(
                f"the Pulumi CLI is not on PATH; the Automation API needs it to run `pulumi` on "
                f"stack {self.stack} ({PULUMI_INSTALL_HINT}). Nothing was changed"
            )
        try:
            from pulumi import automation as auto
        except ImportError:
            raise SsmdError(
                "the Pulumi Python SDK is not installed here (`pip install '.[pulumi]'`, as "
                "scripts/setup.sh does); nothing was changed"
            ) from None
        opts = auto.LocalWorkspaceOptions(env_vars=env_vars) if env_vars else None
        try:
            return auto.select_stack(stack_name=self.stack, work_dir=str(self.project), opts=opts)
        except auto.errors.CommandError as exc:
            raise self._failure("selecting the stack", exc) from None

    # --- Automation API failures (issue 11): every error is a user error saying what failed
    def _failure(self, doing: str, exc: Exception) -> SsmdError:
        """`exc` (any `pulumi.automation.errors.CommandError`) as a user error about `doing`.

        The caller adds what was already committed and how to roll back; this says what
        failed, in the CLI's own words (the last lines of its error output), and for the
        failures that have a known cure, the cure.
        """
        from pulumi.automation import errors

        stack = self.stack
        if isinstance(exc, errors.ConcurrentUpdateError):
            return SsmdError(
                f"{doing} on stack {stack} did not start: another update of the stack is "
                f"running. Wait for it, or if it died, `pulumi cancel -s {stack}`"
            )
        if isinstance(exc, errors.StackNotFoundError):
            return SsmdError(
                f"{doing}: stack {stack} does not exist in the current Pulumi backend "
                f"(`pulumi whoami -v`; `pulumi stack init {stack}` to create it)"
            )
        text = str(exc)
        tail = [line for line in text.splitlines() if line.strip()][-12:]
        hint = ""
        if "protect" in text:  # "protected", "marked for protection"
            hint = (
                "\nthe update deletes or replaces protected data (a stream, an archive volume "
                "or the namespace). Removed shards: `ssmd shard apply|rollback "
                "--allow-data-loss` lifts the protection of exactly their stream and archive "
                "volume. A stream replacement (storage, retention) or a new archive storage "
                "class cannot keep the data: revert that edit, or archive the data and set "
                f"`ssmd:protect` to false on stack {stack} for that roll"
            )
        return SsmdError(f"{doing} on stack {stack} failed:\n" + "\n".join(tail) + hint)

    def unprotect_removed(self, shards: Sequence[str]) -> list[str]:
        """Lift `protect` from the stream and archive claim of each shard in `shards` (they are
        about to be deleted on purpose); the URNs unprotected. Through the stack's exported
        state: the Automation API's equivalent of `pulumi state unprotect`."""
        from pulumi.automation import errors

        suffixes = tuple(f"::{s}-stream" for s in shards) + tuple(f"::{s}-archive" for s in shards)
        stack = self._select()
        try:
            state = stack.export_stack()
            resources = state.deployment.get("resources") or []
            lifted = [
                r["urn"] for r in resources if r.get("protect") and r["urn"].endswith(suffixes)
            ]
            if lifted:
                for resource in resources:
                    if resource["urn"] in lifted:
                        resource["protect"] = False
                stack.import_stack(state)
        except errors.CommandError as exc:
            raise self._failure("lifting the protection of the removed shards' data", exc) from None
        return lifted

    def preview(self, env_dir: Path | None = None) -> dict[str, int]:
        """`pulumi preview --diff`: the counts of creates, updates, replaces, deletes.

        With `env_dir`, the program reads the environment from there (`SSMD_ENV_DIR`): that
        is how a plan is previewed before its file is written.
        """
        from pulumi.automation import errors

        env_vars = {"SSMD_ENV_DIR": str(env_dir)} if env_dir is not None else None
        try:
            result = self._select(env_vars).preview(diff=True, on_output=self.out)
        except errors.CommandError as exc:
            raise self._failure("pulumi preview", exc) from None
        return op_counts(result.change_summary)

    def up(self, message: str) -> dict[str, Any]:
        """`pulumi up --refresh --message ...`: read live streams first, then converge."""
        from pulumi.automation import errors

        try:
            result = self._select().up(message=message, refresh=True, on_output=self.out)
        except errors.CommandError as exc:
            raise self._failure("pulumi up", exc) from None
        summary = result.summary
        return {
            "result": getattr(summary, "result", None),
            "version": getattr(summary, "version", None),
            "resource_changes": op_counts(getattr(summary, "resource_changes", None)),
            "message": message,
        }

    def history(self, limit: int = 10) -> list[dict[str, Any]]:
        """The last updates, each with the environment commit its message recorded."""
        from pulumi.automation import errors

        try:
            updates = self._select().history(page_size=limit, page=1)
        except errors.CommandError as exc:
            raise self._failure("pulumi stack history", exc) from None
        rows = []
        for update in updates:
            rows.append(
                {
                    "version": update.version,
                    "kind": update.kind,
                    "result": update.result,
                    "started": str(update.start_time),
                    "message": update.message,
                    "env_commit": commit_of_message(update.message),
                    "resource_changes": op_counts(update.resource_changes),
                }
            )
        return rows


def op_counts(changes: Any) -> dict[str, int]:
    """`{"create": 7, "same": 20}` from an Automation API OpMap (keys may be `OpType`s)."""
    return {str(getattr(k, "value", k)): int(v) for k, v in dict(changes or {}).items()}


def admin_nats_url(project: Path, stack: str) -> str | None:
    """Where the operator's machine reaches NATS for this stack (`ssmd:natsAdminUrl`)."""
    config = stack_config(project, stack)
    url = config.get("ssmd:natsAdminUrl") or config.get("ssmd:natsUrl")
    return str(url) if url else None


# ----------------------------------------------------------------------------- local


def local_state_path(env_name: str) -> Path:
    return LOCAL_STATE_DIR / f"{env_name}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_local_state(env_name: str) -> dict[str, Any]:
    """The running `ssmd local up` of `env_name`, or an error saying how to start one."""
    path = local_state_path(env_name)
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SsmdError(
            f"no local pipeline is running for {env_name} (no {path}); start one with "
            f"`ssmd local up {env_name}` from this directory"
        ) from None
    except (OSError, ValueError) as exc:
        raise SsmdError(f"cannot read {path}: {exc}") from None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        raise SsmdError(
            f"the local pipeline of {env_name} (pid {pid}) is not running any more ({path} is "
            f"stale); start it with `ssmd local up {env_name}`"
        )
    return state


def check_local_target(env_name: str, env_file: Path) -> dict[str, Any]:
    """The running pipeline, if it runs this very environment file."""
    state = read_local_state(env_name)
    running = Path(str(state.get("env_file", ""))).resolve()
    if running != env_file.resolve():
        raise SsmdError(
            f"the local pipeline of {env_name} runs {running}, not {env_file.resolve()}; "
            f"nothing was changed"
        )
    return state


def roll_local(env_name: str, env_file: Path, timeout: float = ROLL_TIMEOUT) -> dict[str, Any]:
    """SIGHUP the running pipeline and wait for it to report the roll's outcome."""
    state = check_local_target(env_name, env_file)
    before = int(state.get("roll_attempts") or state.get("generation") or 0)
    os.kill(int(state["pid"]), signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        try:
            loaded = json.loads(local_state_path(env_name).read_text())
        except (OSError, ValueError):
            continue  # being replaced, or the pipeline stopped: re-check below
        state = dict(loaded)
        attempts = int(state.get("roll_attempts") or state.get("generation") or 0)
        if attempts > before:
            error = state.get("roll_error")
            if error:
                raise SsmdError(f"the local day roll was refused: {error}")
            return state
        if not _alive(int(state.get("pid", 0))):
            break
    raise SsmdError(
        f"the local pipeline of {env_name} did not report the day roll within {timeout:.0f}s; "
        f"see its console and the logs under its data directory"
    )


# ----------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Flow:
    """What one stream did after the roll."""

    stream: str
    shard: str | None
    messages: int  # since the verification began
    seconds: float  # the measuring window
    expected: bool  # False for a shard with no symbols: nothing can flow
    window_messages: int = 0  # during the measuring window

    @property
    def ok(self) -> bool:
        return self.messages > 0 or not self.expected

    @property
    def rate(self) -> float:
        return self.window_messages / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "shard": self.shard,
            "ok": self.ok,
            "messages": self.messages,
            "rate": round(self.rate, 3),
        }


async def _last_seqs(nc: Any, names: Sequence[str]) -> dict[str, int | None]:
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    out: dict[str, int | None] = {}
    for name in names:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            out[name] = None
            continue
        out[name] = int(info.state.last_seq)
    return out


async def verify_flow(
    nats_url: str,
    shards: Sequence[str],
    *,
    expect: Callable[[str], bool] = lambda _: True,
    timeout: float = VERIFY_TIMEOUT,
    window: float = VERIFY_WINDOW,
) -> list[Flow]:
    """Watch every shard stream (and the client stream) until each expected one has grown,
    at most `timeout` seconds; then measure every rate over a further `window` seconds, so
    the figures are the steady state, not the connectors' start-up. A stream that never grew
    is a failed shard (`Flow.ok` false)."""
    from ssmd_infra.adapters import jetstream

    names = [internal_stream(s) for s in shards] + [CLIENT_STREAM]
    shard_of: dict[str, str | None] = {internal_stream(s): s for s in shards}
    shard_of[CLIENT_STREAM] = None
    wanted = [n for n in names if shard_of[n] is None or expect(str(shard_of[n]))]
    async with jetstream.connect(nats_url) as nc:
        start = await _last_seqs(nc, names)
        began = time.monotonic()
        while True:
            now = await _last_seqs(nc, names)
            if all((now[n] or 0) > (start[n] or 0) for n in wanted):
                break
            if time.monotonic() - began >= timeout:
                break
            await asyncio.sleep(0.5)
        flowing = await _last_seqs(nc, names)
        measured_from = time.monotonic()
        await asyncio.sleep(window)
        end = await _last_seqs(nc, names)
        seconds = time.monotonic() - measured_from
    return [
        Flow(
            stream=name,
            shard=shard_of[name],
            messages=max(0, (end[name] or 0) - (start[name] or 0)),
            seconds=seconds,
            expected=name in wanted,
            window_messages=max(0, (end[name] or 0) - (flowing[name] or 0)),
        )
        for name in names
    ]
