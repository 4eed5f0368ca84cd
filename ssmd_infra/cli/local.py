"""`ssmd local up`: the whole pipeline on one machine (the README's main job)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

local_app = typer.Typer(no_args_is_help=True, help="Run the pipeline locally, no cluster.")


@local_app.command("up")
def up(
    env: str = typer.Argument("kalshi-dev", help="environment name or YAML path"),
    data_dir: Path = typer.Option(Path("data/local"), "--data-dir", help="archive directory"),
    seconds: float | None = typer.Option(None, "--for", help="run this long, then stop cleanly"),
    as_json: bool = typer.Option(False, "--json", help="print the final summary as JSON"),
    nats_url: str | None = typer.Option(None, "--nats-url", help="use this NATS, don't start one"),
    redis_url: str | None = typer.Option(
        None, "--redis-url", help="use this Redis, don't start one"
    ),
    rate: float = typer.Option(10.0, "--rate", help="simulator msg/s per market"),
) -> None:
    """Start nats-server, redis-server, the Kalshi simulator, connectors and archivers.

    Shows a live table until Ctrl-C (or `--for SECONDS`), then stops everything it started
    in order (exchange, connectors, archivers, servers) and prints a per-shard summary.
    """
    from ssmd_infra.local.supervisor import (  # servers, NATS, aiohttp: only when running
        LocalPipeline,
        run_local,
    )

    if seconds is not None and seconds <= 0:
        raise typer.BadParameter("must be positive", param_hint="--for")
    if rate < 0:
        raise typer.BadParameter("must not be negative", param_hint="--rate")
    pipeline = LocalPipeline(
        env, data_dir, nats_url=nats_url, redis_url=redis_url, rate_per_market=rate
    )
    summary = asyncio.run(run_local(pipeline, seconds, live=not as_json))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary)


def print_summary(summary: dict[str, Any]) -> None:
    console = Console(highlight=False)
    table = Table(title=f"summary — {summary['env']}")
    for col in ("SHARD", "SYMBOLS", "PUBLISHED", "DROPS", "GAPS", "ARCHIVED"):
        table.add_column(col, justify="left" if col == "SHARD" else "right")
    for row in summary["shards"]:
        table.add_row(
            row["shard"],
            str(row["symbols"]),
            f"{row['published']:,}",
            f"{row['drops']:,}",
            f"{row['gaps']:,}",
            f"{row['archived_lines']:,}",
        )
    console.print(table)
    console.print(
        f"ssmd-client (merged md.*): {summary['client_stream_messages']:,} messages; "
        f"archive under {summary['data_dir']}"
    )
