"""`ssmd shard rates|plan`: measure the per-symbol rates and propose new shard boundaries.

The resharding workflow: measure (`rates`), propose and store a verified plan (`plan`), check
it (`validate --plan`), then write it and roll (`apply`, in `ssmd_infra.cli.roll`). The library
does the work (`planning`, `plans`, `desired_diff`, `checks`); this module parses options and
prints.

Exit codes: 0 success; 1 a user error or a plan that cannot be made; 2 a usage error (typer).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import typer
import yaml

from ssmd_infra.adapters.redis_reports import REDIS_URL_VARIABLE, read_live, redis_url_for
from ssmd_infra.cli.output import out as _out
from ssmd_infra.cli.output import table
from ssmd_infra.cli.params import EnvArg, ProjectOpt, RatesRedisOpt, StackOpt
from ssmd_infra.core.checks import Budget, Check, deployment_checks
from ssmd_infra.core.desired_diff import desired_diff
from ssmd_infra.core.environment import Environment, load_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.resolution import resolve
from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.plans import (
    Plan,
    check_current,
    load_plan,
    make_plan,
    raw_document,
    save_plan,
)
from ssmd_infra.planning.proposal import Proposal
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.situation import HEADROOM, situation
from ssmd_infra.planning.split import DEFAULT_TOLERANCE
from ssmd_infra.planning.strategy import parse_strategy, propose

CpuBudgetOpt = typer.Option(
    None, "--cpu-budget", help="cores the environment may request at full scale (SSMD_CPU_BUDGET)"
)
MemoryBudgetOpt = typer.Option(
    None, "--memory-budget", help="memory it may request, e.g. 64Gi (SSMD_MEMORY_BUDGET)"
)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> None:
    table(headers, rows, right, indent="  ")


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


def rates_command(
    env: str = EnvArg,
    redis_url: str | None = RatesRedisOpt,
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
    from ssmd_infra.deploy import kubernetes

    if kubernetes.pulumi_cli() is None:
        return {"ran": False, "reason": "the Pulumi CLI is not on PATH"}
    try:
        directory = kubernetes.project_dir(project)
        name = kubernetes.find_stack(env.name, directory, stack)
    except SsmdError as exc:
        return {"ran": False, "reason": str(exc)}
    configured = str(kubernetes.stack_config(directory, name).get("ssmd:environment", ""))
    if configured != env.name:
        return {
            "ran": False,
            "reason": f"stack {name} names its environment by path ({configured}), so the "
            f"planned file cannot be previewed before it is written",
        }
    with tempfile.TemporaryDirectory(prefix="ssmd-plan-") as tmp:
        (Path(tmp) / f"{env.name}.yaml").write_text(plan.environment_after)
        stack_obj = kubernetes.PulumiStack(directory, name, lambda line: _out(line.rstrip("\n")))
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
    redis_url: str | None = RatesRedisOpt,
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
