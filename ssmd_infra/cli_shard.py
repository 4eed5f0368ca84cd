"""`ssmd shard ...`: read and edit the shard layout of an environment."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from .environment import load_environment
from .resolution import resolve
from .secmaster import merge_symbols

shard_app = typer.Typer(no_args_is_help=True, help="Inspect and edit shards of an environment.")
console = Console(highlight=False, soft_wrap=True)

EnvArg = typer.Argument(..., help="environment name under exchanges/environments/ or a YAML path")


@shard_app.command("validate")
def validate(env: str = EnvArg) -> None:
    """Check the environment: schema, names, pins, orphans and overlaps. Exit 1 on any problem."""
    environment = load_environment(env)
    layout = resolve(
        environment,
        merge_symbols(environment),
        complete_universe=environment.secmaster.source == "manual",
    )
    console.print(
        f"{environment.file}: valid — {len(layout.assignment)} symbols in "
        f"{len(environment.shards)} shards"
    )


@shard_app.command("list")
def list_shards(env: str = EnvArg, as_json: bool = typer.Option(False, "--json")) -> None:
    """SHARD SYMBOLS REPLICAS MSG/S CPU% MEM%."""
    environment = load_environment(env)
    layout = resolve(
        environment,
        merge_symbols(environment),
        complete_universe=environment.secmaster.source == "manual",
    )
    rows = [
        {"shard": name, "symbols": len(layout.symbols_of(name)), "replicas": shard.replicas}
        for name, shard in environment.shards.items()
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(box=None)
    for col in ("SHARD", "SYMBOLS", "REPLICAS"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["shard"]), str(row["symbols"]), str(row["replicas"]))
    console.print(table)
