"""What the operator of `ssmd local up` sees: the live per-shard table and the final summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from ssmd_infra.local.figures import ShardFigures

LIVE_COLUMNS = (
    "SHARD",
    "SYMBOLS",
    "REPLICAS",
    "MSG/S",
    "PUBLISHED",
    "DROPS",
    "GAPS",
    "DUPS",
    "RECONN",
    "RESTARTS",
    "ARCHIVED",
)


def _table(title: str, columns: Iterable[str]) -> Table:
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col == "SHARD" else "right")
    return table


def live_view(
    env_name: str,
    generation: int,
    figures: Mapping[str, ShardFigures],
    client_count: int | None,
    feed: str,
    process_restarts: Mapping[str, int],
    events: Iterable[str],
) -> Group:
    """The table refreshed every second, with the supervisor's latest events under it."""
    table = _table(f"ssmd local — {env_name} (roll {generation})", LIVE_COLUMNS)
    for fig in figures.values():
        table.add_row(
            fig.shard,
            str(fig.symbols),
            str(fig.replicas),
            f"{fig.msg_rate:,.0f}",
            f"{fig.published:,}",
            f"{fig.drops:,}",
            f"{fig.gaps:,}",
            f"{fig.duplicates:,}",
            f"{fig.reconnects:,}",
            f"{fig.restarts:,}",
            f"{fig.archived:,}",
        )
    merged = "?" if client_count is None else f"{client_count:,}"
    table.caption = (
        f"ssmd-client: {merged} messages on md.{feed}.>  ·  {_restarts(process_restarts)}"
    )
    return Group(table, *(Text(line, style="dim") for line in events))


def print_summary(summary: Mapping[str, Any], console: Console | None = None) -> None:
    """The per-shard summary printed when the run ends."""
    console = console or Console(highlight=False)
    table = _table(
        f"summary — {summary['env']}",
        (
            "SHARD",
            "SYMBOLS",
            "PUBLISHED",
            "DROPS",
            "GAPS",
            "DUPS",
            "RECONN",
            "RESTARTS",
            "ARCHIVED",
        ),
    )
    for row in summary["shards"]:
        table.add_row(
            row["shard"],
            str(row["symbols"]),
            f"{row['published']:,}",
            f"{row['drops']:,}",
            f"{row['gaps']:,}",
            f"{row['duplicates']:,}",
            f"{row['reconnects']:,}",
            f"{row['restarts']:,}",
            f"{row['archived_lines']:,}",
        )
    console.print(table)
    console.print(
        f"ssmd-client (merged md.*): {summary['client_stream_messages']:,} messages; "
        f"archive under {summary['data_dir']}; {_restarts(summary['process_restarts'])}"
    )


def _restarts(per_kind: Mapping[str, int]) -> str:
    restarted = [f"{kind} {count}" for kind, count in per_kind.items() if count]
    return "restarts: " + ", ".join(restarted) if restarted else "no restarts"
