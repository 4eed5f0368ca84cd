"""`ssmd shard apply|rollback` and `ssmd day roll`: the day roll, and what may precede it.

Each of the three writes (or keeps) the environment file and rolls a target: preflight,
write + commit, `pulumi up` on Kubernetes or a SIGHUP to the local pipeline, then verify that
data flows in every shard. They share one set of options (`RollOptions`, declared once by
`roll_options`).

Exit codes: 0 success; 1 a user error, a refused plan or apply, a failed roll or a shard in
which no data flowed after the roll (the message says what failed and how to roll back);
2 a usage error (typer).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from ssmd_infra.adapters.files import write_atomically
from ssmd_infra.cli.output import out as _out
from ssmd_infra.cli.output import table
from ssmd_infra.cli.params import EnvArg, ProjectOpt, StackOpt
from ssmd_infra.core.environment import (
    Environment,
    environment_path,
    load_environment,
    parse_environment,
)
from ssmd_infra.core.errors import ConfigError, SsmdError
from ssmd_infra.core.nats_auth import ADMIN_ROLE
from ssmd_infra.core.nkey_seeds import RoleSeed, read_seed_file, seed_file_name
from ssmd_infra.core.resolution import layout_of, load_layout
from ssmd_infra.deploy import git, kubernetes
from ssmd_infra.deploy import local as local_target
from ssmd_infra.deploy.verify import VERIFY_TIMEOUT, verify_flow

if TYPE_CHECKING:
    from ssmd_infra.planning.plans import Plan

day_app = typer.Typer(no_args_is_help=True, help="The day roll: end the day, apply, start, verify.")

TARGETS = ("kubernetes", "local")


@dataclass(frozen=True)
class RollOptions:
    """How to roll: the options `apply`, `rollback` and `day roll` share."""

    target: str = "kubernetes"
    allow_dirty: bool = False
    allow_data_loss: bool = False
    stack: str | None = None
    project: Path | None = None
    nats_url: str | None = None
    nats_admin_seed: Path | None = None
    verify_timeout: float = VERIFY_TIMEOUT
    no_verify: bool = False


# The command line of each RollOptions field: its type, flag and help (the default is the
# field's).
_ROLL_FLAGS: dict[str, tuple[Any, str, str | None]] = {
    "target": (str, "--target", "kubernetes (pulumi up) or local"),
    "allow_dirty": (bool, "--allow-dirty", "deploy an environment file with uncommitted changes"),
    "allow_data_loss": (
        bool,
        "--allow-data-loss",
        "roll even though shards disappear: their streams (and stored messages) are deleted",
    ),
    "stack": (str | None, "--stack", StackOpt.help),
    "project": (Path | None, "--project-dir", ProjectOpt.help),
    "nats_url": (
        str | None,
        "--nats-url",
        "NATS to verify data flow on (default: the local pipeline's, or the stack's "
        "ssmd:natsAdminUrl)",
    ),
    "nats_admin_seed": (
        Path | None,
        "--nats-admin-seed",
        "the admin role's seed file (admin.nk) to verify with under nats.auth: nkeys "
        "(default: the local pipeline's)",
    ),
    "verify_timeout": (float, "--verify-timeout", "seconds to wait for data"),
    "no_verify": (bool, "--no-verify", "skip the data-flow verification"),
}


def _roll_parameters() -> list[inspect.Parameter]:
    out = []
    for field in fields(RollOptions):
        kind, flag, help_text = _ROLL_FLAGS[field.name]
        option = typer.Option(field.default, flag, help=help_text)
        out.append(
            inspect.Parameter(
                field.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind
            )
        )
    return out


def roll_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` (which takes `roll: RollOptions`) the roll options on the command line.

    Typer sees the command's own parameters followed by one option per `RollOptions` field;
    the command receives them as one validated `RollOptions`.
    """
    own = [
        p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "roll"
    ]
    names = [f.name for f in fields(RollOptions)]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> None:
        roll = RollOptions(**{name: kwargs.pop(name) for name in names})
        if roll.target not in TARGETS:
            raise typer.BadParameter(f"must be one of {', '.join(TARGETS)}", param_hint="--target")
        command(roll=roll, **kwargs)

    parameters = [*own, *_roll_parameters()]
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    del wrapper.__wrapped__  # typer reads the signature above, not the command's
    return wrapper


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    table(headers, rows, right, indent="  ")


def _verify(
    nats_url: str | None, environment: Environment, timeout: float, seed: RoleSeed | None
) -> tuple[bool, list[dict[str, Any]]]:
    if nats_url is None:
        raise SsmdError("no NATS URL to verify data flow on: give --nats-url, or --no-verify")
    layout = layout_of(environment)
    complete = environment.secmaster.source == "manual"
    flows = asyncio.run(
        verify_flow(
            nats_url,
            list(environment.shards),
            expect=lambda s: bool(layout.symbols_of(s)) or not complete,
            timeout=timeout,
            seed=seed,
        )
    )
    rows = [f.to_dict() for f in flows]
    _out(f"data flow after the roll (msg/s measured over {flows[0].seconds:.1f}s once flowing):")
    _table(
        ["STREAM", "SHARD", "MESSAGES", "MSG/S", ""],
        [
            [
                f.stream,
                f.shard or "(client)",
                f"{f.messages:,}",
                f"{f.rate:,.1f}",
                "ok" if f.ok and f.expected else ("no symbols" if not f.expected else "NO DATA"),
            ]
            for f in flows
        ],
        {2, 3},
    )
    return all(f.ok for f in flows), rows


def _admin_seed(
    roll: RollOptions, environment: Environment, auth_dir: str | None
) -> RoleSeed | None:
    """The seed the data-flow verification reads the streams with: the admin's under
    `nats.auth: nkeys` (`--nats-admin-seed`, else the running local pipeline's auth
    directory), None without authorization. Asked before anything changes."""
    if environment.nats.auth != "nkeys":
        return None
    if roll.nats_admin_seed is not None:
        return read_seed_file(roll.nats_admin_seed, ADMIN_ROLE)
    if auth_dir is not None:
        return read_seed_file(Path(auth_dir) / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)
    raise SsmdError(
        f"environment {environment.name} has nats.auth: nkeys: verifying the data flow reads "
        f"the streams as the admin role; give --nats-admin-seed PATH (the "
        f"{seed_file_name(ADMIN_ROLE)} that `ssmd nats auth` wrote), or --no-verify. "
        f"Nothing was changed"
    )


def _roll(
    roll: RollOptions,
    *,
    action: str,
    env_name: str,
    path: Path,
    plan: Plan | None,
    write: tuple[bytes, str] | None,
    after: Environment,
    before: Environment | None = None,
) -> None:
    """Preflight, write + commit the file (when `write`), roll the target, verify.

    With `before` (the file as it is), shards that `after` drops are data loss: listed, and
    refused unless `--allow-data-loss` (then their streams and archive claims are unprotected
    on the stack just before `pulumi up`).
    """
    from ssmd_infra.core.data_loss import removed_shards

    info = git.git_file(path)
    git.require_clean(info, roll.allow_dirty, action)
    removals = removed_shards(before, after) if before is not None else []
    for removal in removals:
        _out(f"data loss: {removal.describe()}")
    if removals and not roll.allow_data_loss:
        raise SsmdError(
            f"`{action}` removes {len(removals)} shard(s) and deletes their data (listed "
            f"above); nothing was changed. Archive what you need, then pass --allow-data-loss"
        )
    nats_url = roll.nats_url
    # everything that can refuse does so before the file is touched
    pulumi: kubernetes.PulumiStack | None = None
    directory: Path | None = None
    stack_name: str | None = None
    running_auth_dir: str | None = None
    if roll.target == "kubernetes":
        directory = kubernetes.project_dir(roll.project)
        stack_name = kubernetes.find_stack(env_name, directory, roll.stack)
        pulumi = kubernetes.PulumiStack(directory, stack_name, lambda line: _out(line.rstrip("\n")))
        if kubernetes.pulumi_cli() is None:
            raise SsmdError(
                f"`{action}` on Kubernetes runs `pulumi up` on stack {stack_name} through the "
                f"Automation API, which needs the Pulumi CLI on PATH "
                f"({kubernetes.PULUMI_INSTALL_HINT}); nothing was changed. Locally: --target local"
            )
    else:
        running = local_target.check_local_target(env_name, path)
        nats_url = nats_url or running.nats_url
        running_auth_dir = running.nats_auth_dir
    admin = None if roll.no_verify else _admin_seed(roll, after, running_auth_dir)
    if write is not None:
        data, message = write
        current = path.read_bytes()
        if data != current:
            write_atomically(path, data, expected=current)
            if info.root is not None and not info.dirty:
                info = git.commit_file(info, message)
                _out(f"committed {info.ref}: {message}")
            else:
                info = git.git_file(path)
                _out(f"wrote {path} (not committed: {info.describe()})")
        else:
            _out(f"{path} already holds that content")
    rollback_hint = (
        f"to go back: `ssmd shard rollback {env_name} --target {roll.target}` (restores the "
        f"previous commit of {info.rel} and rolls again)"
    )
    committed = (
        f"already done: {info.describe()} holds the new environment"
        if write is not None
        else f"the environment file is unchanged ({info.describe()})"
    )
    try:
        if pulumi is not None:
            if removals:
                lifted = pulumi.unprotect_removed([r.shard for r in removals])
                _out(f"protection lifted from {len(lifted)} resource(s) of the removed shards")
            message = kubernetes.update_message(action, env_name, info, plan.id if plan else None)
            _out(f"pulumi up on stack {pulumi.stack}: {message}")
            result = pulumi.up(message)
            _out(f"pulumi up: {result['result']} (update {result['version']})")
        else:
            rolled = local_target.roll_local(env_name, path)
            _out(f"local day roll done: roll {rolled.generation}, shards {rolled.shards}")
            for line in rolled.roll_actions:
                _out(f"  {line}")
    except SsmdError as exc:
        raise SsmdError(f"the day roll failed: {exc}\n{committed}\n{rollback_hint}") from None
    if roll.no_verify:
        _out("data flow not verified (--no-verify)")
        return
    if roll.target == "kubernetes" and nats_url is None:
        assert directory is not None and stack_name is not None
        nats_url = kubernetes.admin_nats_url(directory, stack_name)
    ok, _ = _verify(nats_url, after, roll.verify_timeout, admin)
    if not ok:
        raise SsmdError(
            f"no data flowed within {roll.verify_timeout:.0f}s in the streams marked NO DATA "
            f"above; check those shards' connectors (logs, `ssmd shard show {env_name} SHARD`).\n"
            f"{rollback_hint}"
        )


@roll_options
def apply_command(
    roll: RollOptions,
    env: str = EnvArg,
    plan_id: str = typer.Option(..., "--plan", help="plan id from `ssmd shard plan`"),
) -> None:
    """Write a plan's environment file (comments kept), commit it, and perform the day roll.

    Refuses a plan computed from another version of the file, and a file with uncommitted
    changes (unless --allow-dirty). Kubernetes: `pulumi up` on the stack whose
    `ssmd:environment` is ENV, with the file's commit in the update message. Local: rolls
    the running `ssmd local up`. Then verifies data flows in every shard.
    """
    from ssmd_infra.planning.plans import check_current, load_plan, planned_environment

    plan = load_plan(plan_id)
    path = check_current(plan, env)
    after = planned_environment(plan, path)
    _out(f"applying plan {plan.id} ({plan.strategy}) to {path}")
    for op in plan.ops:
        _out(f"  {op.describe()}")
    _roll(
        roll,
        action="shard apply",
        env_name=plan.env,
        path=path,
        plan=plan,
        write=(
            plan.environment_after.encode(),
            f"ssmd shard apply {plan.env}: plan {plan.id} ({plan.strategy}, "
            f"{len(plan.moves)} symbols move)",
        ),
        after=after,
        before=load_environment(path),
    )
    _out(f"plan {plan.id} applied")


def _print_history(directory: Path, stack_name: str) -> None:
    history = kubernetes.PulumiStack(directory, stack_name, lambda _: None).history()
    _out(f"pulumi stack history of {stack_name}:")
    _table(
        ["VERSION", "RESULT", "ENV COMMIT", "STARTED", "MESSAGE"],
        [
            [
                str(h["version"]),
                str(h["result"]),
                str(h["env_commit"] or "-")[:12],
                str(h["started"])[:19],
                str(h["message"])[:60],
            ]
            for h in history
        ],
        set(),
    )


@roll_options
def rollback_command(
    roll: RollOptions,
    env: str = EnvArg,
    to: str | None = typer.Option(
        None, "--to", help="git revision (default: the commit before the file's last change)"
    ),
) -> None:
    """Restore the environment file from git and roll again.

    Restores the streams' and workloads' configuration of that revision, not stream
    contents. On Kubernetes it first lists `pulumi stack history` with the environment
    commit each update deployed.
    """
    path = environment_path(env)
    info = git.git_file(path)
    git.require_clean(info, roll.allow_dirty, "rollback")
    current = load_environment(path)
    if roll.target == "kubernetes":
        directory = kubernetes.project_dir(roll.project)
        stack_name = kubernetes.find_stack(current.name, directory, roll.stack)
        if kubernetes.pulumi_cli() is not None:
            _print_history(directory, stack_name)
    revision = to if to is not None else git.previous_revision(info)
    commit, content = git.file_at(info, revision)
    try:
        restored = parse_environment(content, str(path))
        layout_of(restored)
    except ConfigError as exc:
        raise SsmdError(
            f"{info.rel} at {revision} ({commit[:12]}) does not validate, so it is not "
            f"restored:\n{exc}"
        ) from None
    if restored.name != current.name:
        raise SsmdError(
            f"{info.rel} at {revision} is environment {restored.name}, not {current.name}"
        )
    _out(f"restoring {info.rel} as of {commit[:12]} ({revision})")
    _roll(
        roll,
        action="shard rollback",
        env_name=current.name,
        path=path,
        plan=None,
        write=(content, f"ssmd shard rollback {current.name}: {info.rel} as of {commit[:12]}"),
        after=restored,
        before=current,
    )
    _out(f"rolled back to {commit[:12]}")


@day_app.command("roll")
@roll_options
def day_roll(roll: RollOptions, env: str = EnvArg) -> None:
    """The day roll on its own: end the day, apply the environment file as committed, start,
    verify data flows in every shard."""
    path = environment_path(env)
    current, _ = load_layout(path)
    _roll(
        roll,
        action="day roll",
        env_name=current.name,
        path=path,
        plan=None,
        write=None,
        after=current,
    )
    _out("day roll done")
