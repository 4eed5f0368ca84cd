"""Arguments and options that several `ssmd` commands share: one definition each."""

from __future__ import annotations

import typer

from ssmd_infra.adapters.redis_reports import REDIS_URL_VARIABLE

EnvArg = typer.Argument(..., help="environment name under exchanges/environments/ or a YAML path")
JsonOpt = typer.Option(False, "--json", help="print JSON instead of a table")
LiveRedisOpt = typer.Option(
    None,
    "--redis-url",
    envvar=REDIS_URL_VARIABLE,
    help="Redis with the runtime's live figures (default: the one of a running `ssmd local "
    "up`); unreachable → '-'",
)
RatesRedisOpt = typer.Option(
    None,
    "--redis-url",
    envvar=REDIS_URL_VARIABLE,
    help="Redis the connectors report to (default: the one of a running `ssmd local up`)",
)
StackOpt = typer.Option(None, "--stack", help="Pulumi stack (default: the one naming ENV)")
ProjectOpt = typer.Option(None, "--project-dir", help="Pulumi project directory")
