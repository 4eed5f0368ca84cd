"""How the commands print: plain aligned tables (fast for 100k rows, greppable) and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import typer


def out(text: str = "") -> None:
    typer.echo(text)


def out_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int], indent: str = ""
) -> None:
    """Columns as wide as their widest cell; the columns in `right` aligned right."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return (indent + "  ".join(parts)).rstrip()

    typer.echo("\n".join([line(headers), *(line(r) for r in rows)]))
