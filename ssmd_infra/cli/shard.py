"""`ssmd shard ...`: read and edit the shard layout of an environment.

Thin on purpose: the commands parse options, call the library (`resolution`, `redis_reports`,
`envedit`) and print. Tables are plain aligned text (fast for 100k rows, greppable);
`--json` prints machine-readable output on every read command.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

import typer

from ssmd_infra.adapters.redis_reports import (
    ShardLive,
    read_live,
    redis_url_for,
    shard_status,
)
from ssmd_infra.cli.lazy import Lazy, lazy_group
from ssmd_infra.cli.output import out as _out
from ssmd_infra.cli.output import out_json as _json
from ssmd_infra.cli.output import table as _table
from ssmd_infra.cli.params import EnvArg, JsonOpt, LiveRedisOpt
from ssmd_infra.core.environment import Environment, Shard, load_environment
from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.resolution import (
    Layout,
    Validation,
    knows_every_symbol,
    layout_of,
    validate_document,
    validate_environment,
)
from ssmd_infra.core.selectors import Selector

if TYPE_CHECKING:
    from ssmd_infra.planning.envedit import EditResult

# The resharding commands load the planner, git and Pulumi machinery: imported when they run.
RESHARDING = {
    "rates": Lazy(
        "ssmd_infra.cli.plan:rates_command",
        "Per-symbol message rates measured by the connectors (Redis), per shard.",
    ),
    "plan": Lazy(
        "ssmd_infra.cli.plan:plan_command",
        "Propose new shard boundaries from measured rates; store the plan under an id.",
    ),
    "apply": Lazy(
        "ssmd_infra.cli.roll:apply_command",
        "Write a plan's environment file (comments kept), commit it, and perform the day roll.",
    ),
    "rollback": Lazy(
        "ssmd_infra.cli.roll:rollback_command",
        "Restore the environment file from git and roll again.",
    ),
}

shard_app = typer.Typer(
    cls=lazy_group(RESHARDING),
    no_args_is_help=True,
    help="Inspect and edit shards of an environment.",
)

# -- helpers ------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _replicas(live: ShardLive | None, shard: Shard) -> str:
    if live is None:
        return f"-/{shard.replicas}"
    return f"{live.replicas or 0}/{shard.replicas}"


def _load(env: str) -> tuple[Environment, Layout]:
    environment = load_environment(env)
    return environment, layout_of(environment)


def _live(
    environment: Environment, redis_url: str | None, *, symbol_rates: bool = False
) -> dict[str, ShardLive] | None:
    url = redis_url_for(environment.name, redis_url)
    return read_live(environment.name, environment.shards, url, symbol_rates=symbol_rates)


def _manual_note(environment: Environment) -> str | None:
    if knows_every_symbol(environment):
        return None
    return (
        f"note: symbols are the file's manual ones; the {environment.secmaster.source} "
        f"secmaster adds more at run time"
    )


# -- validate -----------------------------------------------------------------------------------


def _problem_json(p: Problem) -> dict[str, Any]:
    return {
        "file": p.file,
        "line": p.line,
        "column": p.column,
        "path": p.path,
        "message": p.message,
    }


def validation_report(
    env: str,
    plan: str | None = None,
    cpu_budget: str | None = None,
    memory_budget: str | None = None,
) -> Validation:
    """The problems `validate` reports; extend here (more checks append to `problems`).

    With `plan`, the environment file as that plan would write it (refused when the file
    changed since the plan). Every failed deployment check (budget, NATS mappings,
    Kubernetes names) is a problem too, so `validate` fails on it like on an overlap.
    """
    from ssmd_infra.core.checks import Budget, deployment_checks  # stream specs: validate only

    if plan is None:
        report = validate_environment(env)
    else:
        from ssmd_infra.cli.plan import plan_document  # the planner: only for --plan

        report = validate_document(*plan_document(env, plan))
    budget = Budget.parse(cpu_budget, memory_budget)
    if report.env is not None:
        for check in deployment_checks(report.env, budget):
            if check.failed:
                report.problems.append(Problem(check.message, file=report.file, path=check.name))
    return report


@shard_app.command("validate")
def validate(
    env: str = EnvArg,
    as_json: bool = JsonOpt,
    plan: str | None = typer.Option(None, "--plan", help="validate the file a plan would write"),
    cpu_budget: str | None = typer.Option(
        None, "--cpu-budget", help="cores requested at full scale may not exceed (SSMD_CPU_BUDGET)"
    ),
    memory_budget: str | None = typer.Option(
        None,
        "--memory-budget",
        help="memory requested at full scale, e.g. 64Gi (SSMD_MEMORY_BUDGET)",
    ),
) -> None:
    """Check schema, names, pins, orphans, overlaps, resources against a budget and NATS
    subject mappings; list every problem, exit 1 on any."""
    report = validation_report(env, plan, cpu_budget, memory_budget)
    if as_json:
        _json(
            {
                "file": report.file,
                "valid": report.ok,
                "symbols": len(report.layout.assignment) if report.layout else None,
                "shards": len(report.env.shards) if report.env else None,
                "problems": [_problem_json(p) for p in report.problems],
                "warnings": [_problem_json(p) for p in report.warnings],
            }
        )
        if not report.ok:
            raise typer.Exit(1)
        return
    for warning in report.warnings:
        _out(f"warning: {warning}")
    if not report.ok:
        raise ConfigError(report.problems)
    assert report.env is not None and report.layout is not None
    _out(
        f"{report.file}: valid — {len(report.layout.assignment)} symbols in "
        f"{len(report.env.shards)} shards"
    )
    note = _manual_note(report.env)
    if note:
        _out(note)


# -- list / show / symbols ----------------------------------------------------------------------


def _shard_row(
    name: str, shard: Shard, layout: Layout, live: dict[str, ShardLive] | None
) -> dict[str, Any]:
    mine = live.get(name) if live is not None else None
    return {
        "shard": name,
        "symbols": len(layout.symbols_of(name)),
        "replicas": mine.replicas or 0 if mine is not None else None,
        "max_replicas": shard.replicas,
        "min_replicas": shard.min_replicas,
        "msg_rate": mine.msg_rate if mine else None,
        "cpu_pct": mine.cpu_pct if mine else None,
        "mem_pct": mine.mem_pct if mine else None,
    }


@shard_app.command("list")
def list_shards(
    env: str = EnvArg, as_json: bool = JsonOpt, redis_url: str | None = LiveRedisOpt
) -> None:
    """SHARD SYMBOLS REPLICAS MSG/S CPU% MEM% (replicas live/max; '-' when unknown)."""
    environment, layout = _load(env)
    live = _live(environment, redis_url)
    rows = [_shard_row(n, s, layout, live) for n, s in environment.shards.items()]
    if as_json:
        _json(rows)
        return
    _table(
        ("SHARD", "SYMBOLS", "REPLICAS", "MSG/S", "CPU%", "MEM%"),
        [
            (
                r["shard"],
                str(r["symbols"]),
                f"{'-' if r['replicas'] is None else r['replicas']}/{r['max_replicas']}",
                _num(r["msg_rate"]),
                _num(r["cpu_pct"]),
                _num(r["mem_pct"]),
            )
            for r in rows
        ],
        right={1, 2, 3, 4, 5},
    )
    note = _manual_note(environment)
    if note:
        _out(note)


def _resources_text(shard: Shard) -> str:
    req, lim = shard.resources.requests, shard.resources.limits
    if req == lim:
        return f"cpu {req.cpu}, memory {req.memory} (requests = limits)"
    return f"requests cpu {req.cpu}, memory {req.memory}; limits cpu {lim.cpu}, memory {lim.memory}"


@shard_app.command("show")
def show(
    env: str = EnvArg,
    shard: str = typer.Argument(..., help="shard name"),
    as_json: bool = JsonOpt,
    redis_url: str | None = LiveRedisOpt,
) -> None:
    """One shard: selector, symbols, replicas (current/max), resources, rate, status."""
    environment, layout = _load(env)
    spec = environment.shard(shard)
    live = _live(environment, redis_url)
    mine = live.get(shard) if live is not None else None
    symbols = layout.symbols_of(shard)
    pinned = sorted(s for s, target in environment.assignments.items() if target == shard)
    status = shard_status(spec, mine, live is not None)
    selector = Selector.build(shard, spec.selector).describe()
    if as_json:
        _json(
            {
                "shard": shard,
                "environment": environment.name,
                "selector": spec.selector,
                "selector_text": selector,
                "symbols": symbols,
                "pinned": pinned,
                "replicas": {
                    "current": (mine.replicas or 0) if mine is not None else None,
                    "min": spec.min_replicas,
                    "max": spec.replicas,
                },
                "resources": {
                    "requests": spec.resources.requests.model_dump(),
                    "limits": spec.resources.limits.model_dump(),
                },
                "autoscaling": spec.autoscaling.model_dump(),
                "buffer": spec.buffer.model_dump(),
                "msg_rate": mine.msg_rate if mine else None,
                "cpu_pct": mine.cpu_pct if mine else None,
                "mem_pct": mine.mem_pct if mine else None,
                "status": status.split(":")[0],
                "status_text": status,
            }
        )
        return
    listed = textwrap.fill(" ".join(symbols), width=96, initial_indent="  ", subsequent_indent="  ")
    lines = [
        f"shard        {shard}  (environment {environment.name}, feed {environment.feed})",
        f"selector     {selector}",
        f"symbols      {len(symbols)}" + (f" ({len(pinned)} pinned)" if pinned else ""),
        *([listed] if symbols else []),
        f"replicas     {_replicas(mine if live is not None else None, spec)} "
        f"(current/max; min {spec.min_replicas})",
        f"resources    {_resources_text(spec)}",
        f"autoscaling  cpu {spec.autoscaling.cpu_utilization}%, "
        f"{spec.autoscaling.message_rate:,} msg/s per replica",
        f"buffer       {spec.buffer.capacity:,} messages, {spec.buffer.drop_policy}",
        f"rate         {_num(mine.msg_rate if mine else None)} msg/s, cpu "
        f"{_num(mine.cpu_pct if mine else None)}%, mem {_num(mine.mem_pct if mine else None)}%",
        f"status       {status}",
    ]
    _out("\n".join(lines))


@shard_app.command("symbols")
def symbols(
    env: str = EnvArg,
    as_json: bool = JsonOpt,
    redis_url: str | None = LiveRedisOpt,
    only: str | None = typer.Option(None, "--shard", help="only this shard's symbols"),
) -> None:
    """SYMBOL SHARD MSG/S: where every symbol resolves (pins included)."""
    environment, layout = _load(env)
    if only is not None:
        environment.shard(only)  # an unknown shard is an error naming the known ones
    live = _live(environment, redis_url, symbol_rates=True)
    rows: list[dict[str, Any]] = []
    for symbol, shard in layout.assignment.items():
        if only is not None and shard != only:
            continue
        rate = live[shard].symbol_rates.get(symbol) if live is not None else None
        rows.append(
            {
                "symbol": symbol,
                "shard": shard,
                "pinned": symbol in environment.assignments,
                "msg_rate": rate,
            }
        )
    if as_json:
        _json(rows)
        return
    _table(
        ("SYMBOL", "SHARD", "MSG/S"),
        [(r["symbol"], r["shard"], _num(r["msg_rate"])) for r in rows],
        right={2},
    )
    note = _manual_note(environment)
    if note:
        _out(note)


# -- edits --------------------------------------------------------------------------------------


def _report_edit(result: EditResult, dry_run: bool) -> None:
    verb = "would change" if dry_run else "changed"
    _out(f"{result.summary}; {verb} {result.path}")
    moves = result.moves
    if moves:
        _out(f"{len(moves)} symbol(s) move:")
        for symbol, (old, new) in moves.items():
            _out(f"  {symbol}: {old or '-'} -> {new or '-'}")


@shard_app.command("move")
def move(
    env: str = EnvArg,
    symbol: str = typer.Argument(..., help="the symbol to move"),
    source: str = typer.Option(..., "--from", help="the shard the symbol is in now"),
    target: str = typer.Option(..., "--to", help="the shard to move it to"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check and show, write nothing"),
) -> None:
    """Pin SYMBOL to shard --to in `assignments` (comments and formatting kept)."""
    from ssmd_infra.planning.envedit import move_symbol  # ruamel.yaml: only for edits

    result = move_symbol(env, symbol, source=source, target=target, write=not dry_run)
    _report_edit(result, dry_run)


@shard_app.command("create")
def create(
    env: str = EnvArg,
    name: str = typer.Argument(..., help="the new shard's name"),
    selector: str = typer.Option(
        ..., "--selector", help="'k=v,k2=v2' (every key must match; 'v1|v2' for either)"
    ),
    replicas: int = typer.Option(1, "--replicas", help="autoscaler maximum"),
    cpu: str | None = typer.Option(None, "--cpu", help="CPU request = limit, e.g. 500m"),
    memory: str | None = typer.Option(None, "--memory", help="memory request = limit, e.g. 512Mi"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check and show, write nothing"),
) -> None:
    """Add a shard; refused when the name exists or the result would not validate."""
    from ssmd_infra.planning.envedit import create_shard  # ruamel.yaml: only for edits

    result = create_shard(
        env, name, selector, replicas=replicas, cpu=cpu, memory=memory, write=not dry_run
    )
    _report_edit(result, dry_run)
