"""The `ssmd` command: one typer app, one sub-group per concept, each imported when used.

`ssmd --help` lists the groups from the table below without importing them, and a command
imports only what it runs (`ssmd shard list` reads a YAML file: no NATS, Redis, Pulumi, planner
or runtime). Help is plain text (no rich panels, which would import rich's Markdown renderer on
every `--help`).

User errors (`SsmdError`, including every `ConfigError`) print as `error: ...` on stderr
and exit 1; nothing else is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from ssmd_infra.cli.lazy import Lazy, lazy_group
from ssmd_infra.core.errors import SsmdError

GROUPS = {
    "shard": Lazy("ssmd_infra.cli.shard:shard_app", "Inspect and edit shards of an environment."),
    "day": Lazy("ssmd_infra.cli.roll:day_app", "The day roll: end the day, apply, start, verify."),
    "run": Lazy("runtime.cli:run_app", "Run a runtime process (connector, archiver, simulator)."),
    "local": Lazy("ssmd_infra.cli.local:local_app", "Run the pipeline locally, no cluster."),
    "nats": Lazy("ssmd_infra.cli.nats:nats_app", "NATS credentials and permissions."),
    "archive": Lazy("ssmd_infra.cli.archive:archive_app", "Audit the archive on disk."),
}

app = typer.Typer(
    cls=lazy_group(GROUPS),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="ssmd: sharding & scaling of Kalshi market-data capture.",
)


@app.callback()
def _root() -> None:
    """The groups are the commands; the root itself only dispatches."""


def print_error(exc: SsmdError) -> None:
    """`error: ...` in bold red on stderr; the message is the user's text (file names, keys,
    URLs), printed verbatim, never read as rich markup."""
    from rich.console import Console  # only on the error path
    from rich.markup import escape

    console = Console(stderr=True, highlight=False, soft_wrap=True)
    console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)


def main(argv: list[str] | None = None) -> None:
    # ssmd uses no pydantic plugins; looking for them reads the metadata of every installed
    # distribution when the first model is built, a large share of a short command's start-up
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")
    try:
        app(args=argv, standalone_mode=True)
    except SsmdError as exc:
        print_error(exc)
        sys.exit(1)
