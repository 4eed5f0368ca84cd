"""The `ssmd` command: one typer app, one sub-app per concept.

User errors (`SsmdError`, including every `ConfigError`) print as `error: ...` on stderr
and exit 1; nothing else is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console
from rich.markup import escape

from .errors import SsmdError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="ssmd: sharding & scaling of Kalshi market-data capture.",
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


@functools.cache
def _register() -> None:
    """Attach the sub-apps once per process (imported here: `ssmd --help` stays light)."""
    from .cli_reshard import day_app, register
    from .cli_shard import shard_app

    register(shard_app)  # shard rates | plan | apply | rollback
    app.add_typer(shard_app, name="shard")
    app.add_typer(day_app, name="day")
    from runtime.cli import run_app

    app.add_typer(run_app, name="run")
    from .cli_local import local_app

    app.add_typer(local_app, name="local")


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except SsmdError as exc:
        # the message is the user's text (file names, keys, URLs): never rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
        sys.exit(1)
