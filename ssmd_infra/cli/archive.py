"""`ssmd archive verify`: audit an archive directory (the logic and the format live with the
archiver, in `runtime/archiver/verify.py`; this is the command and its table)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ssmd_infra.core.errors import SsmdError

archive_app = typer.Typer(no_args_is_help=True, help="Audit the archive on disk.")

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@archive_app.command("verify")
def verify(
    data_dir: Path = typer.Argument(..., help="The archive root (the archivers' --data-dir)."),
    date: str | None = typer.Option(None, "--date", help="Only this UTC day (YYYY-MM-DD)."),
    shard: str | None = typer.Option(None, "--shard", help="Only this shard."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
) -> None:
    """Per shard and per (connection epoch, sid): exchange-sequence holes, stream-sequence
    holes, duplicates and .part files. Exits 1 on any hole the exchange did not leave itself
    (a recorded gap), or on a missing or corrupt file."""
    from runtime.archiver.verify import verify_archive

    if date is not None and not _DATE.match(date):
        raise SsmdError(f"--date {date!r}: use YYYY-MM-DD")
    report = verify_archive(data_dir, date=date, shard=shard)
    if as_json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        console = Console(highlight=False, soft_wrap=True)
        table = Table(title=f"archive {escape(str(data_dir))}" + (f" on {date}" if date else ""))
        for column in ("shard", "days", "files", "lines", "origins", "exchange holes"):
            table.add_column(column, justify="left" if column == "shard" else "right")
        for column in ("recorded gaps", "stream holes", "duplicates", ".part", "verdict"):
            table.add_column(column, justify="right")
        for s in report.shards:
            data = s.to_json()
            table.add_row(
                escape(s.shard),
                str(len(s.dates)),
                str(s.files),
                str(s.lines),
                str(len(s.origins)),
                f"{data['exchange_holes']} ({data['exchange_missing']} msgs)",
                str(data["recorded_gaps"]),
                f"{len(s.stream_holes)} ({s.stream_missing} msgs)",
                f"{s.stream_duplicates} stream, {data['exchange_duplicates']} exchange",
                str(len(s.part_files)),
                "[green]ok[/]" if s.ok else "[bold red]FAILED[/]",
            )
        console.print(table)
        for s in report.shards:
            for origin in s.origins:
                for start, end in origin.holes[:20]:
                    console.print(
                        f"[red]hole[/] shard {escape(s.shard)} epoch {origin.epoch} "
                        f"sid {origin.sid} ({escape(origin.type)}): exchange seq "
                        f"{start}..{end} missing, not a recorded gap"
                    )
            for start, end in s.stream_holes[:20]:
                console.print(
                    f"[red]hole[/] shard {escape(s.shard)}: stream seq {start}..{end} missing"
                )
            for problem in s.problems[:20]:
                console.print(f"[red]problem[/] shard {escape(s.shard)}: {escape(problem)}")
            for part in s.part_files[:20]:
                console.print(f"[yellow].part[/] {escape(part)}")
            for note in s.notes[:20]:
                console.print(f"[dim]note[/] shard {escape(s.shard)}: {escape(note)}")
    if not report.ok:
        raise typer.Exit(1)
