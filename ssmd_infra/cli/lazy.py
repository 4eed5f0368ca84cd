"""Command groups whose commands are imported only when they run.

`ssmd` has commands with very different needs: `ssmd shard list` reads a YAML file, `ssmd shard
plan` loads the planner, `ssmd run connector` the whole runtime. A command line tool that imported
all of it on every start would spend most of `ssmd --help` importing. A `lazy_group` lists some
commands by name, short help and where they live ("module:attribute", a `typer.Typer` for a
sub-group or a command function); its help shows them from that table, and only the command that
is invoked (or whose own help is asked for) is imported and built.

Each `Lazy.help` is the loaded command's short help; `tests/cli/test_startup.py` keeps the two
equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info, get_group_from_info
from typer.models import CommandInfo, TyperInfo


@dataclass(frozen=True)
class Lazy:
    """A command (or sub-group) known by name and help until it is used."""

    target: str  # "package.module:attribute": a typer.Typer, or a command function
    help: str  # its short help, shown in the parent's command list

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        # the import statement's machinery (not importlib.import_module), so `-X importtime`
        # reports this module like any other
        return getattr(__import__(module, fromlist=[attribute]), attribute)


class _Deferred(TyperCommand):
    """Stands in for a lazy command in the group's table: a name and a help line."""

    def __init__(self, name: str, lazy: Lazy) -> None:
        super().__init__(name, help=lazy.help)
        self.lazy = lazy


class LazyGroup(TyperGroup):
    """A typer group whose `lazy_commands` are imported on first use (see module)."""

    lazy_commands: Mapping[str, Lazy] = {}

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        for name, lazy in self.lazy_commands.items():
            self.commands.setdefault(name, _Deferred(name, lazy))

    def get_command(self, ctx: _click.Context, cmd_name: str) -> _click.Command | None:
        command = self.commands.get(cmd_name)
        if isinstance(command, _Deferred):
            command = self._build(cmd_name, command.lazy.load())
            self.commands[cmd_name] = command
        return command

    def format_commands(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        """The command list, from the table: listing a command does not import it."""
        commands = [(n, c) for n, c in self.commands.items() if not c.hidden]
        if not commands:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in commands)
        rows = [(name, command.get_short_help_str(limit)) for name, command in commands]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _build(self, name: str, target: Any) -> _click.Command:
        """The click command of a loaded target, built as typer builds an eager one."""
        if isinstance(target, typer.Typer):
            group = get_group_from_info(
                TyperInfo(target),
                pretty_exceptions_short=True,
                suggest_commands=self.suggest_commands,
                rich_markup_mode=self.rich_markup_mode,
            )
            group.name = name
            return group
        return get_command_from_info(
            CommandInfo(name=name, callback=target),
            pretty_exceptions_short=True,
            rich_markup_mode=self.rich_markup_mode,
        )


def lazy_group(commands: Mapping[str, Lazy]) -> type[LazyGroup]:
    """A `LazyGroup` class for `typer.Typer(cls=...)` with these lazy commands."""
    return type("LazyGroup", (LazyGroup,), {"lazy_commands": dict(commands)})
