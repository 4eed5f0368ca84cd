"""`ssmd` starts like a tool: a command imports only what it runs.

`ssmd --help` lists the command groups from a table, and `ssmd shard list` reads a YAML file:
neither may import NATS, Redis, Pulumi, rich's Markdown renderer, the round-trip YAML editor,
the runtime or the resharding machinery. The test runs the real command in a fresh interpreter
with `-X importtime`, which names every module the process imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from cli_runner import in_process
from typer.main import get_command

from ssmd_infra.cli.lazy import LazyGroup
from ssmd_infra.cli.main import app

REPO = Path(__file__).resolve().parents[2]

# top-level packages, and ssmd modules (with their sub-modules) that a light command must not load
HEAVY_PACKAGES = {"nats", "redis", "pulumi", "pulumi_kubernetes", "ruamel", "runtime", "aiohttp"}
HEAVY_MODULES = (
    "rich.markdown",
    "ssmd_infra.planning",
    "ssmd_infra.deploy",
    "ssmd_infra.pulumi",
    "ssmd_infra.local",
    "ssmd_infra.cli.plan",
    "ssmd_infra.cli.roll",
)


def imported_modules(*args: str) -> tuple[set[str], str]:
    """Every module `python -m ssmd_infra ARGS` imports, and its stdout."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ssmd_infra", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "ssmd_infra.cli.main" in modules  # the probe itself works
    return modules, result.stdout


def heavy(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if m.split(".")[0] in HEAVY_PACKAGES
        or any(m == h or m.startswith(h + ".") for h in HEAVY_MODULES)
    )


def test_the_root_help_lists_every_group_without_importing_any() -> None:
    modules, out = imported_modules("--help")
    for group in ("shard", "day", "run", "local", "nats", "archive"):
        assert f"  {group} " in out
    assert heavy(modules) == []
    assert "ssmd_infra.cli.shard" not in modules
    assert "ssmd_infra.cli.local" not in modules


@pytest.mark.parametrize(
    "args", [("shard", "list", "kalshi-prod"), ("shard", "--help")], ids=["list", "help"]
)
def test_shard_reports_and_help_import_no_heavy_module(args: tuple[str, ...]) -> None:
    modules, out = imported_modules(*args)
    assert heavy(modules) == []
    assert "tier1" in out or "rollback" in out  # and the command did its job


def test_a_command_that_runs_imports_its_machinery() -> None:
    """The probe can fail: `shard apply --help` builds the roll command, which loads deploy."""
    modules, _ = imported_modules("shard", "apply", "--help")
    assert "ssmd_infra.cli.roll" in modules
    assert "ssmd_infra.deploy.git" in modules


def test_every_listed_help_is_the_help_of_the_command_it_stands_for() -> None:
    root = get_command(app)
    assert isinstance(root, LazyGroup)
    context = typer.Context(root)
    pending: list[LazyGroup] = [root]
    checked = 0
    while pending:
        group = pending.pop()
        for name, lazy in group.lazy_commands.items():
            loaded = group.get_command(context, name)
            assert loaded is not None
            assert loaded.get_short_help_str(1000) == lazy.help, f"{group.name} {name}"
            checked += 1
            if isinstance(loaded, LazyGroup):
                pending.append(loaded)
    assert checked >= 8  # the four groups and the four resharding commands


def test_a_mistyped_command_is_refused_with_a_suggestion(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ssmd = in_process(capsys)
    result = ssmd("shard", "lst", "kalshi-prod")
    assert result.code == 2
    assert "No such command 'lst'. Did you mean 'list'?" in result.err
