"""The Kubernetes target: the Pulumi stack of an environment, through the Automation API.

`pulumi up` runs on the stack whose `Pulumi.<stack>.yaml` names the environment
(`ssmd:environment`), with the program in the project directory (`Pulumi.yaml` →
`__main__.py`), exactly as an operator's `pulumi up -s <stack> --refresh` would. The
Automation API drives the `pulumi` CLI, so without it nothing runs (and nothing is changed
before that is known). Each update's message records the environment file's commit
(`file@commit`), which `commit_of_message` reads back from `pulumi stack history`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from ssmd_infra.core.errors import SsmdError
from ssmd_infra.deploy.git import GitFile

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMIT_PATTERN = re.compile(r"@([0-9a-f]{7,40})(-dirty)?\b")
PULUMI_INSTALL_HINT = "install it: https://www.pulumi.com/docs/iac/download-install/"

Out = Callable[[str], None]


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


def admin_nats_url(project: Path, stack: str) -> str | None:
    """Where the operator's machine reaches NATS for this stack (`ssmd:natsAdminUrl`)."""
    config = stack_config(project, stack)
    url = config.get("ssmd:natsAdminUrl") or config.get("ssmd:natsUrl")
    return str(url) if url else None


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


def op_counts(changes: Any) -> dict[str, int]:
    """`{"create": 7, "same": 20}` from an Automation API OpMap (keys may be `OpType`s)."""
    return {str(getattr(k, "value", k)): int(v) for k, v in dict(changes or {}).items()}


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

    # --- Automation API failures: every error is a user error saying what failed
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
