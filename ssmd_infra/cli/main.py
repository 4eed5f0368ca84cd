"""The `ssmd` command: one typer app, one sub-app per concept.

User errors (`SsmdError`, including every `ConfigError`) print as `error: ...` on stderr
and exit 1; nothing else is caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer
from rich.console import Console
from rich.markup import escape

from ssmd_infra.core.errors import SsmdError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="ssmd: sharding & scaling of Kalshi market-data capture.",
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def _shard_app() -> typer.Typer:
    from ssmd_infra.cli.reshard import register
    from ssmd_infra.cli.shard import shard_app

    register(shard_app)  # shard rates | plan | apply | rollback
    return shard_app


def _day_app() -> typer.Typer:
    from ssmd_infra.cli.reshard import day_app

    return day_app


def _run_app() -> typer.Typer:
    from runtime.cli import run_app

    return run_app


def _local_app() -> typer.Typer:
    from ssmd_infra.cli.local import local_app

    return local_app


# Each sub-app is imported only when its group is asked for: the runtime processes
# (`ssmd run connector|archiver`) then start without importing the reshard and Pulumi
# machinery, which keeps their start-up (and the window before their signal handlers) short.
def _archive_app() -> typer.Typer:
    from ssmd_infra.cli.archive import archive_app

    return archive_app


GROUPS: dict[str, Callable[[], typer.Typer]] = {
    "shard": _shard_app,
    "day": _day_app,
    "run": _run_app,
    "local": _local_app,
    "archive": _archive_app,
}


_registered: set[str] = set()


def _register(group: str | None = None) -> None:
    """Attach `group`'s sub-app, or every sub-app (for help and unknown commands), once."""
    for name, load in GROUPS.items():
        if (group is None or name == group) and name not in _registered:
            app.add_typer(load(), name=name)
            _registered.add(name)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    _register(args[0] if args and args[0] in GROUPS else None)
    try:
        app(args=argv, standalone_mode=True)
    except SsmdError as exc:
        # the message is the user's text (file names, keys, URLs): never rich markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)
        sys.exit(1)
