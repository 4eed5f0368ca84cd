"""`ssmd shard rates|plan|apply|rollback` and `ssmd day roll`: resharding at the day roll.

The workflow: measure (`rates`), propose and store a verified plan (`plan`), check it
(`validate --plan`), write it and roll (`apply`), and if the new layout misbehaves, restore
the previous file from git and roll again (`rollback`). The library does the work
(`planning`, `plans`, `desired`, `checks`, `rollout`); this module parses options and prints.

Exit codes: 0 success; 1 a user error, a refused plan or apply, a failed roll or a shard in
which no data flowed after the roll (the message says what failed and how to roll back);
2 a usage error (typer).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
import yaml

from ssmd_infra.adapters.redis_reports import REDIS_URL_VARIABLE, read_live, redis_url_for
from ssmd_infra.core.checks import Budget, Check, deployment_checks
from ssmd_infra.core.desired_diff import desired_diff
from ssmd_infra.core.environment import (
    Environment,
    environment_path,
    load_environment,
    parse_environment,
)
from ssmd_infra.core.errors import ConfigError, Problem, SsmdError
from ssmd_infra.core.resolution import Validation, layout_of, load_layout, resolve
from ssmd_infra.planning.plans import (
    Plan,
    check_current,
    load_plan,
    make_plan,
    planned_environment,
    raw_document,
    save_plan,
)
from ssmd_infra.planning.proposals import (
    DEFAULT_TOLERANCE,
    HEADROOM,
    PlanError,
    Proposal,
    Rates,
    parse_strategy,
    propose,
    situation,
)

day_app = typer.Typer(no_args_is_help=True, help="The day roll: end the day, apply, start, verify.")

TARGETS = ("kubernetes", "local")
EnvArg = typer.Argument(..., help="environment name under exchanges/environments/ or a YAML path")
RedisOpt = typer.Option(
    None,
    "--redis-url",
    envvar=REDIS_URL_VARIABLE,
    help="Redis the connectors report to (default: the one of a running `ssmd local up`)",
)
TargetOpt = typer.Option("kubernetes", "--target", help="kubernetes (pulumi up) or local")
AllowDirtyOpt = typer.Option(
    False, "--allow-dirty", help="deploy an environment file with uncommitted changes"
)
AllowDataLossOpt = typer.Option(
    False,
    "--allow-data-loss",
    help="roll even though shards disappear: their streams (and stored messages) are deleted",
)
StackOpt = typer.Option(None, "--stack", help="Pulumi stack (default: the one naming ENV)")
ProjectOpt = typer.Option(None, "--project-dir", help="Pulumi project directory")
NatsOpt = typer.Option(
    None,
    "--nats-url",
    help="NATS to verify data flow on (default: the local pipeline's, or the stack's "
    "ssmd:natsAdminUrl)",
)
VerifyTimeoutOpt = typer.Option(60.0, "--verify-timeout", help="seconds to wait for data")
NoVerifyOpt = typer.Option(False, "--no-verify", help="skip the data-flow verification")
CpuBudgetOpt = typer.Option(
    None, "--cpu-budget", help="cores the environment may request at full scale (SSMD_CPU_BUDGET)"
)
MemoryBudgetOpt = typer.Option(
    None, "--memory-budget", help="memory it may request, e.g. 64Gi (SSMD_MEMORY_BUDGET)"
)


def _out(text: str = "") -> None:
    typer.echo(text)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for cells in [headers, *rows]:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        _out("  " + "  ".join(parts).rstrip())


def _target(value: str) -> str:
    if value not in TARGETS:
        raise typer.BadParameter(f"must be one of {', '.join(TARGETS)}", param_hint="--target")
    return value


# ----------------------------------------------------------------------------- rates


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rates_from_redis(env: Environment, redis_url: str | None) -> Rates:
    """Per-symbol rates the connectors keep in Redis; `PlanError` says how to get them."""
    url = redis_url_for(env.name, redis_url)
    how = (
        f"measure them where the connectors run (`--redis-url` / ${REDIS_URL_VARIABLE}, or "
        f"a running `ssmd local up {env.name}` in this directory), or give a rates file "
        f"saved earlier with `ssmd shard rates {env.name} --save FILE` as `--rates FILE`"
    )
    if url is None:
        raise PlanError(f"no rates available for {env.name}: no Redis to read them from; {how}")
    live = read_live(env.name, env.shards, url, symbol_rates=True)
    if live is None:
        raise PlanError(f"no rates available for {env.name}: Redis at {url} did not answer; {how}")
    by_shard = {shard: dict(figures.symbol_rates) for shard, figures in live.items()}
    if not any(by_shard.values()):
        raise PlanError(
            f"no rates available for {env.name}: Redis at {url} holds no per-symbol rates "
            f"(`{env.name}:shard:<shard>:symbol_rates`; connectors write them while they run "
            f"and they expire a minute after); {how}"
        )
    return Rates(env.name, {s: r for s, r in by_shard.items() if r}, url, _now())


def rates_from_file(env: Environment, path: Path) -> Rates:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PlanError(
            f"rates file {path} does not exist; write one with "
            f"`ssmd shard rates {env.name} --save {path}`"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"cannot read rates file {path}: {exc}") from None
    rates = Rates.from_dict(data if isinstance(data, dict) else {}, str(path))
    if rates.env and rates.env != env.name:
        raise PlanError(f"rates file {path} was measured on {rates.env}, not {env.name}")
    if not any(rates.by_shard.values()):
        raise PlanError(f"no rates available: {path} holds no per-symbol rates")
    return rates


def shard_rates(
    env: str = EnvArg,
    redis_url: str | None = RedisOpt,
    save: Path | None = typer.Option(None, "--save", help="write the rates to FILE (YAML)"),
    as_json: bool = typer.Option(False, "--json", help="print the rates as JSON"),
    top: int = typer.Option(3, "--top", help="busiest symbols shown per shard"),
) -> None:
    """Per-symbol message rates measured by the connectors (Redis), per shard.

    `--save FILE` keeps them for `ssmd shard plan --rates FILE`, e.g. to plan tomorrow's
    roll from today's peak.
    """
    environment = load_environment(env)
    rates = rates_from_redis(environment, redis_url)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(yaml.safe_dump(rates.to_dict(), sort_keys=False))
    if as_json:
        _out(json.dumps(rates.to_dict(), indent=2))
        return
    rows = []
    for shard in environment.shards:
        measured = rates.by_shard.get(shard, {})
        busiest = sorted(measured.items(), key=lambda kv: (-kv[1], kv[0]))[: max(0, top)]
        rows.append(
            [
                shard,
                str(len(measured)),
                f"{sum(measured.values()):,.1f}",
                ", ".join(f"{s} {r:,.1f}" for s, r in busiest),
            ]
        )
    _out(f"measured per-symbol rates of {environment.name} ({rates.source}, {rates.measured_at})")
    _table(["SHARD", "SYMBOLS", "MSG/S", "BUSIEST"], rows, {1, 2})
    if save is not None:
        _out(f"saved: {save}")


# ----------------------------------------------------------------------------- plan


def _proposal_lines(plan: Plan) -> list[str]:
    return [f"  {op.describe()}" for op in plan.ops]


def _estimate_rows(plan: Plan) -> list[list[str]]:
    return [
        [
            str(e["shard"]),
            str(e["status"]),
            f"{e['symbols_before']} → {e['symbols_after']}",
            f"{e['rate_before']:,.0f}",
            f"{e['rate_after']:,.0f}",
            f"{e['capacity']:,.0f}",
            "over" if e["rate_after"] > e["capacity"] else "ok",
        ]
        for e in plan.estimates
    ]


def print_plan(plan: Plan, *, limit: int = 20) -> None:
    _out(f"plan {plan.id}: {plan.strategy} of {plan.env}")
    _out(
        f"  from {plan.env_file} (sha256 {plan.env_sha256[:12]}…); rates: {plan.rates_source}"
        + (f" at {plan.measured_at}" if plan.measured_at else "")
    )
    _out()
    _out("Proposed changes:")
    for line in _proposal_lines(plan):
        _out(line)
    _out()
    _out("Estimated msg/s of every resulting shard (TARGET: the shard's autoscaling capacity):")
    _table(
        ["SHARD", "STATUS", "SYMBOLS", "BEFORE", "AFTER", "TARGET", ""],
        _estimate_rows(plan),
        {3, 4, 5},
    )
    _out()
    _out(f"Symbols moved: {len(plan.moves)}")
    for symbol, (old, new) in list(sorted(plan.moves.items()))[:limit]:
        _out(f"  {symbol}: {old} → {new}")
    if len(plan.moves) > limit:
        _out(f"  … and {len(plan.moves) - limit} more (all in the plan file)")
    if plan.balance:
        b = plan.balance
        _out()
        _out(
            f"Balance: heaviest {b['heaviest']:,.0f} msg/s vs an even share of {b['mean']:,.0f} "
            f"({b['imbalance']:+.1%}); LPT guarantees ≤ mean + (1 − 1/{b['ways']}) × largest "
            f"unit ({b['largest_unit']:,.0f}) = {b['bound']:,.0f}, and ≤ {b['ratio_bound']:.3f}× "
            f"the best split of the same units"
        )
    for note in plan.notes:
        _out(f"note: {note}")


def _print_checks(checks: Sequence[Check]) -> None:
    for check in checks:
        mark = {"ok": "ok", "warning": "warning", "error": "FAILED"}[check.severity]
        _out(f"  [{mark}] {check.name}: {check.message}")


def _preview(
    env: Environment,
    plan: Plan,
    stack: str | None,
    project: Path | None,
) -> dict[str, Any]:
    """`pulumi preview` of the planned file (without writing it), or why it did not run."""
    from ssmd_infra.deploy import rollout

    if rollout.pulumi_cli() is None:
        return {"ran": False, "reason": "the Pulumi CLI is not on PATH"}
    try:
        directory = rollout.project_dir(project)
        name = rollout.find_stack(env.name, directory, stack)
    except SsmdError as exc:
        return {"ran": False, "reason": str(exc)}
    configured = str(rollout.stack_config(directory, name).get("ssmd:environment", ""))
    if configured != env.name:
        return {
            "ran": False,
            "reason": f"stack {name} names its environment by path ({configured}), so the "
            f"planned file cannot be previewed before it is written",
        }
    with tempfile.TemporaryDirectory(prefix="ssmd-plan-") as tmp:
        (Path(tmp) / f"{env.name}.yaml").write_text(plan.environment_after)
        stack_obj = rollout.PulumiStack(directory, name, lambda line: _out(line.rstrip("\n")))
        try:
            summary = stack_obj.preview(env_dir=Path(tmp))
        except Exception as exc:  # the CLI's own failure: report it, keep ssmd's diff
            return {"ran": False, "reason": f"pulumi preview failed on stack {name}: {exc}"}
    return {"ran": True, "stack": name, "summary": summary}


def plan_command(
    env: str = EnvArg,
    strategy: str = typer.Option(
        ..., "--strategy", help="split-<shard>[:N] (default N=2) or rebalance"
    ),
    target_rate: float | None = typer.Option(
        None,
        "--target-rate",
        help=f"msg/s every shard must stay under (default: its autoscaling.message_rate × "
        f"replicas × {HEADROOM})",
    ),
    rates_file: Path | None = typer.Option(
        None, "--rates", help="rates saved by `ssmd shard rates --save` (default: Redis)"
    ),
    redis_url: str | None = RedisOpt,
    names: str | None = typer.Option(
        None, "--names", help="comma-separated names for the new shards"
    ),
    tolerance: float = typer.Option(
        DEFAULT_TOLERANCE, "--tolerance", help="split: imbalance accepted before globs are cut"
    ),
    cpu_budget: str | None = CpuBudgetOpt,
    memory_budget: str | None = MemoryBudgetOpt,
    stack: str | None = StackOpt,
    project: Path | None = ProjectOpt,
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Propose new shard boundaries from measured rates; store the plan under an id.

    The plan is verified before it is stored: the new file loads, and every symbol resolves
    to the shard the plan says. With the Pulumi CLI on PATH it also runs `pulumi preview` of
    the planned file; without it, ssmd's own desired-state diff is shown.
    """
    if target_rate is not None and target_rate <= 0:
        raise typer.BadParameter("must be positive", param_hint="--target-rate")
    if not 0 <= tolerance < 1:
        raise typer.BadParameter("must be between 0 and 1", param_hint="--tolerance")
    parsed = parse_strategy(strategy)
    environment = load_environment(env)
    budget = Budget.parse(cpu_budget, memory_budget)
    if parsed.kind == "split" and parsed.shard not in environment.shards:
        raise PlanError(
            f"cannot split {parsed.shard!r}: no such shard in {environment.name} "
            f"(shards: {', '.join(environment.shards)})"
        )
    rates = (
        rates_from_file(environment, rates_file)
        if rates_file is not None
        else rates_from_redis(environment, redis_url)
    )
    sit = situation(environment, raw_document(environment), rates)
    name_list = [n for n in names.split(",")] if names else None
    proposal = propose(sit, parsed, target_rate=target_rate, tolerance=tolerance, names=name_list)
    if not proposal.ops:
        _nothing_to_do(proposal, as_json)
        return
    plan, planned_env = make_plan(sit, proposal, rates)
    path = save_plan(plan)
    planned_layout = resolve(
        planned_env, sit.universe, complete_universe=environment.secmaster.source == "manual"
    )
    diff = desired_diff(environment, sit.layout, planned_env, planned_layout)
    checks = deployment_checks(planned_env, budget)
    if as_json:
        data = plan.to_dict()
        data.pop("environment_after")
        data["path"] = str(path)
        data["checks"] = [c.to_dict() for c in checks]
        data["desired_diff"] = diff.to_dict()
        data["preview"] = _preview(environment, plan, stack, project)
        _out(json.dumps(data, indent=2, default=str))
        return
    print_plan(plan)
    _out()
    _out("Checks of the planned environment:")
    _print_checks(checks)
    _out()
    preview = _preview(environment, plan, stack, project)
    if preview["ran"]:
        summary = ", ".join(f"{k} {v}" for k, v in sorted(preview["summary"].items()))
        _out(f"pulumi preview (stack {preview['stack']}): {summary or 'no changes'}")
    else:
        _out(f"pulumi preview not run: {preview['reason']}. ssmd's own desired-state diff:")
        for line in diff.lines():
            _out(f"  {line}")
    _out()
    _out(f"saved: {path}")
    _out(
        f"apply it at the day roll: ssmd shard apply {environment.name} --plan {plan.id} "
        f"--target kubernetes|local"
    )


def _nothing_to_do(proposal: Proposal, as_json: bool) -> None:
    if as_json:
        _out(
            json.dumps(
                {
                    "strategy": proposal.strategy,
                    "changes": [],
                    "shards": [e.to_dict() for e in proposal.estimates],
                    "notes": list(proposal.notes),
                },
                indent=2,
            )
        )
        return
    _out(f"{proposal.strategy}: nothing to change; no plan saved")
    for note in proposal.notes:
        _out(f"note: {note}")


# ----------------------------------------------------------------------------- validate --plan


def plan_document(env: str, plan_id: str) -> tuple[str, str]:
    """(text, file) `validate --plan` checks: the file as the plan would write it, after
    refusing a plan computed from another version of the environment file. The file is
    labelled with the plan, since line numbers are those of the planned text."""
    plan = load_plan(plan_id)
    path = check_current(plan, env)
    return plan.environment_after, f"{path} (as planned by {plan.id})"


def add_deployment_checks(
    report: Validation, cpu_budget: str | None, memory_budget: str | None
) -> Validation:
    """`report` with every failed deployment check (budget, NATS mappings, Kubernetes
    names) appended to its problems, so `validate` fails on them like on an overlap."""
    budget = Budget.parse(cpu_budget, memory_budget)
    if report.env is None:
        return report
    for check in deployment_checks(report.env, budget):
        if check.failed:
            report.problems.append(Problem(check.message, file=report.file, path=check.name))
    return report


# ----------------------------------------------------------------------------- the roll


def _verify(
    nats_url: str | None, environment: Environment, timeout: float
) -> tuple[bool, list[dict[str, Any]]]:
    from ssmd_infra.deploy import rollout

    if nats_url is None:
        raise SsmdError("no NATS URL to verify data flow on: give --nats-url, or --no-verify")
    layout = layout_of(environment)
    complete = environment.secmaster.source == "manual"
    flows = asyncio.run(
        rollout.verify_flow(
            nats_url,
            list(environment.shards),
            expect=lambda s: bool(layout.symbols_of(s)) or not complete,
            timeout=timeout,
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


def _roll(
    *,
    action: str,
    env_name: str,
    path: Path,
    target: str,
    allow_dirty: bool,
    plan: Plan | None,
    write: tuple[bytes, str] | None,
    stack: str | None,
    project: Path | None,
    nats_url: str | None,
    verify_timeout: float,
    no_verify: bool,
    after: Environment,
    before: Environment | None = None,
    allow_data_loss: bool = False,
) -> None:
    """Preflight, write + commit the file (when `write`), roll the target, verify.

    With `before` (the file as it is), shards that `after` drops are data loss: listed, and
    refused unless `allow_data_loss` (then their streams and archive claims are unprotected
    on the stack just before `pulumi up`).
    """
    from ssmd_infra.core.data_loss import removed_shards
    from ssmd_infra.deploy import rollout
    from ssmd_infra.planning.envedit import write_atomically

    info = rollout.git_file(path)
    rollout.require_clean(info, allow_dirty, action)
    removals = removed_shards(before, after) if before is not None else []
    for removal in removals:
        _out(f"data loss: {removal.describe()}")
    if removals and not allow_data_loss:
        raise SsmdError(
            f"`{action}` removes {len(removals)} shard(s) and deletes their data (listed "
            f"above); nothing was changed. Archive what you need, then pass --allow-data-loss"
        )
    # everything that can refuse does so before the file is touched
    pulumi: rollout.PulumiStack | None = None
    directory: Path | None = None
    stack_name: str | None = None
    if target == "kubernetes":
        directory = rollout.project_dir(project)
        stack_name = rollout.find_stack(env_name, directory, stack)
        pulumi = rollout.PulumiStack(directory, stack_name, lambda line: _out(line.rstrip("\n")))
        if rollout.pulumi_cli() is None:
            raise SsmdError(
                f"`{action}` on Kubernetes runs `pulumi up` on stack {stack_name} through the "
                f"Automation API, which needs the Pulumi CLI on PATH "
                f"({rollout.PULUMI_INSTALL_HINT}); nothing was changed. Locally: --target local"
            )
    else:
        state = rollout.check_local_target(env_name, path)
        nats_url = nats_url or state.get("nats_url")
    if write is not None:
        data, message = write
        current = path.read_bytes()
        if data != current:
            write_atomically(path, data, expected=current)
            if info.root is not None and not info.dirty:
                info = rollout.commit_file(info, message)
                _out(f"committed {info.ref}: {message}")
            else:
                info = rollout.git_file(path)
                _out(f"wrote {path} (not committed: {info.describe()})")
        else:
            _out(f"{path} already holds that content")
    rollback_hint = (
        f"to go back: `ssmd shard rollback {env_name} --target {target}` (restores the "
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
            message = rollout.update_message(action, env_name, info, plan.id if plan else None)
            _out(f"pulumi up on stack {pulumi.stack}: {message}")
            result = pulumi.up(message)
            _out(f"pulumi up: {result['result']} (update {result['version']})")
        else:
            state = rollout.roll_local(env_name, path)
            _out(
                f"local day roll done: roll {state.get('generation')}, shards {state.get('shards')}"
            )
            for line in state.get("roll_actions") or []:
                _out(f"  {line}")
    except SsmdError as exc:
        raise SsmdError(f"the day roll failed: {exc}\n{committed}\n{rollback_hint}") from None
    if no_verify:
        _out("data flow not verified (--no-verify)")
        return
    if target == "kubernetes" and nats_url is None:
        assert directory is not None and stack_name is not None
        nats_url = rollout.admin_nats_url(directory, stack_name)
    ok, _ = _verify(nats_url, after, verify_timeout)
    if not ok:
        raise SsmdError(
            f"no data flowed within {verify_timeout:.0f}s in the streams marked NO DATA above; "
            f"check those shards' connectors (logs, `ssmd shard show {env_name} SHARD`).\n"
            f"{rollback_hint}"
        )


def apply_command(
    env: str = EnvArg,
    plan_id: str = typer.Option(..., "--plan", help="plan id from `ssmd shard plan`"),
    target: str = TargetOpt,
    allow_dirty: bool = AllowDirtyOpt,
    allow_data_loss: bool = AllowDataLossOpt,
    stack: str | None = StackOpt,
    project: Path | None = ProjectOpt,
    nats_url: str | None = NatsOpt,
    verify_timeout: float = VerifyTimeoutOpt,
    no_verify: bool = NoVerifyOpt,
) -> None:
    """Write a plan's environment file (comments kept), commit it, and perform the day roll.

    Refuses a plan computed from another version of the file, and a file with uncommitted
    changes (unless --allow-dirty). Kubernetes: `pulumi up` on the stack whose
    `ssmd:environment` is ENV, with the file's commit in the update message. Local: rolls
    the running `ssmd local up`. Then verifies data flows in every shard.
    """
    _target(target)
    plan = load_plan(plan_id)
    path = check_current(plan, env)
    after = planned_environment(plan, path)
    _out(f"applying plan {plan.id} ({plan.strategy}) to {path}")
    for line in _proposal_lines(plan):
        _out(line)
    _roll(
        action="shard apply",
        env_name=plan.env,
        path=path,
        target=target,
        allow_dirty=allow_dirty,
        plan=plan,
        write=(
            plan.environment_after.encode(),
            f"ssmd shard apply {plan.env}: plan {plan.id} ({plan.strategy}, "
            f"{len(plan.moves)} symbols move)",
        ),
        stack=stack,
        project=project,
        nats_url=nats_url,
        verify_timeout=verify_timeout,
        no_verify=no_verify,
        after=after,
        before=load_environment(path),
        allow_data_loss=allow_data_loss,
    )
    _out(f"plan {plan.id} applied")


def rollback_command(
    env: str = EnvArg,
    to: str | None = typer.Option(
        None, "--to", help="git revision (default: the commit before the file's last change)"
    ),
    target: str = TargetOpt,
    allow_dirty: bool = AllowDirtyOpt,
    allow_data_loss: bool = AllowDataLossOpt,
    stack: str | None = StackOpt,
    project: Path | None = ProjectOpt,
    nats_url: str | None = NatsOpt,
    verify_timeout: float = VerifyTimeoutOpt,
    no_verify: bool = NoVerifyOpt,
) -> None:
    """Restore the environment file from git and roll again.

    Restores the streams' and workloads' configuration of that revision, not stream
    contents. On Kubernetes it first lists `pulumi stack history` with the environment
    commit each update deployed.
    """
    from ssmd_infra.deploy import rollout

    _target(target)
    path = environment_path(env)
    info = rollout.git_file(path)
    rollout.require_clean(info, allow_dirty, "rollback")
    current = load_environment(path)
    if target == "kubernetes":
        directory = rollout.project_dir(project)
        stack_name = rollout.find_stack(current.name, directory, stack)
        if rollout.pulumi_cli() is not None:
            history = rollout.PulumiStack(directory, stack_name, lambda _: None).history()
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
    revision = to if to is not None else rollout.previous_revision(info)
    commit, content = rollout.file_at(info, revision)
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
        action="shard rollback",
        env_name=current.name,
        path=path,
        target=target,
        allow_dirty=allow_dirty,
        plan=None,
        write=(content, f"ssmd shard rollback {current.name}: {info.rel} as of {commit[:12]}"),
        stack=stack,
        project=project,
        nats_url=nats_url,
        verify_timeout=verify_timeout,
        no_verify=no_verify,
        after=restored,
        before=current,
        allow_data_loss=allow_data_loss,
    )
    _out(f"rolled back to {commit[:12]}")


@day_app.command("roll")
def day_roll(
    env: str = EnvArg,
    target: str = TargetOpt,
    allow_dirty: bool = AllowDirtyOpt,
    stack: str | None = StackOpt,
    project: Path | None = ProjectOpt,
    nats_url: str | None = NatsOpt,
    verify_timeout: float = VerifyTimeoutOpt,
    no_verify: bool = NoVerifyOpt,
) -> None:
    """The day roll on its own: end the day, apply the environment file as committed, start,
    verify data flows in every shard."""
    _target(target)
    path = environment_path(env)
    current, _ = load_layout(path)
    _roll(
        action="day roll",
        env_name=current.name,
        path=path,
        target=target,
        allow_dirty=allow_dirty,
        plan=None,
        write=None,
        stack=stack,
        project=project,
        nats_url=nats_url,
        verify_timeout=verify_timeout,
        no_verify=no_verify,
        after=current,
    )
    _out("day roll done")


def register(shard_app: typer.Typer) -> None:
    """Add `rates`, `plan`, `apply` and `rollback` to `ssmd shard` (once)."""
    if any(c.name == "plan" for c in shard_app.registered_commands):
        return
    shard_app.command("rates")(shard_rates)
    shard_app.command("plan")(plan_command)
    shard_app.command("apply")(apply_command)
    shard_app.command("rollback")(rollback_command)
