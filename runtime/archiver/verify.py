"""`ssmd archive verify`: prove from the archive alone that nothing was lost, or say where.

For each shard (all its days, or one `--date`) it reads every archive file, final and
`.part`, line by line, and the day manifests, and reports:

- **exchange-sequence holes** per origin, i.e. per (connection epoch, `sid`): Kalshi numbers
  each subscription's messages 1, 2, 3, … on a connection, and every non-trade line carries
  the epoch, sid and exchange seq it came with (`lines.py`). A hole is *recorded* when the
  connector saw the exchange skip those seqs and forwarded a `ssmd_gap` record for them
  (`runtime.kalshi.protocol.gap_record`): the exchange never sent them. Any other hole is a
  loss on our side (a buffer drop, a lost publish) and fails the audit. Trades are
  identified by their `trade_id` so that replicas store each once; the stream does not
  carry a trade's epoch, so trade subscriptions are counted but not audited by seq.
- **stream-sequence holes** per shard: every message of `ssmd-internal-{shard}` has a
  stream seq and the archiver writes each at least once, so a seq missing between the
  first and last archived is a message the archive lost. Always a failure.
- **duplicates**: lines whose stream seq was archived before (at-least-once redelivery) and
  exchange seqs seen twice on one origin (a snapshot frame stored by two replicas has two
  origins, so it is not one of these).
- **`.part` files** (an archiver is running, or was killed and has not been recovered yet;
  their complete members are read), torn or corrupt gzip members, files a manifest lists
  that are missing, and line counts that differ from the manifests.

It streams: one gzip member in memory at a time, and per shard only merged sequence ranges
(`manifest.SeqRanges`, bounded) per origin and for the stream, plus the recorded gaps
(bounded per origin). A day of data is read in constant memory per origin.

With `--date`, an origin or the stream may have begun the day before: holes before the
first seq seen are then not counted (the leading seqs are on another day).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from runtime.archiver.lines import ArchiveLine, decode_line, gap_of, scan_members
from runtime.archiver.manifest import (
    FINAL_SUFFIX,
    MANIFEST,
    PART_SUFFIX,
    DayManifest,
    SeqRanges,
)
from runtime.kalshi.protocol import GAP_TYPE, TRADE_ID_PREFIX
from ssmd_infra.core.errors import SsmdError

log = logging.getLogger("ssmd.archive.verify")

MAX_RECORDED_GAPS = 10_000  # per origin; beyond it the audit says it could not keep them all
MAX_LISTED = 50  # holes and problems listed per origin / shard (all are counted)


@dataclass
class OriginReport:
    """One (connection epoch, sid): what was archived from it and what is missing."""

    epoch: str
    sid: int
    type: str
    lines: int = 0
    duplicates: int = 0
    first: int | None = None
    last: int | None = None
    holes: list[tuple[int, int]] = field(default_factory=list)  # not recorded: losses
    missing: int = 0  # exchange seqs in those holes
    recorded: list[tuple[int, int]] = field(default_factory=list)  # the exchange's own gaps
    recorded_missing: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "sid": self.sid,
            "type": self.type,
            "lines": self.lines,
            "first": self.first,
            "last": self.last,
            "duplicates": self.duplicates,
            "holes": [list(h) for h in self.holes[:MAX_LISTED]],
            "missing": self.missing,
            "recorded_gaps": [list(g) for g in self.recorded[:MAX_LISTED]],
            "recorded_missing": self.recorded_missing,
        }


@dataclass
class ShardReport:
    """One shard over the days read."""

    shard: str
    dates: list[str] = field(default_factory=list)
    files: int = 0
    lines: int = 0
    trades: int = 0  # trade lines (audited by id, not by exchange seq)
    unattributed: int = 0  # lines without an origin (no epoch/sid/seq: e.g. `_invalid`)
    stream_first: int | None = None
    stream_last: int | None = None
    stream_holes: list[tuple[int, int]] = field(default_factory=list)
    stream_missing: int = 0
    stream_duplicates: int = 0
    part_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # fatal: corrupt, missing, unreadable
    notes: list[str] = field(default_factory=list)  # not fatal: unlisted files, counts
    origins: list[OriginReport] = field(default_factory=list)

    @property
    def holes(self) -> int:
        """Unrecorded exchange-seq holes plus stream-seq holes."""
        return sum(len(o.holes) for o in self.origins) + len(self.stream_holes)

    @property
    def ok(self) -> bool:
        return self.holes == 0 and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "ok": self.ok,
            "dates": self.dates,
            "files": self.files,
            "lines": self.lines,
            "trades": self.trades,
            "unattributed": self.unattributed,
            "stream": {
                "first": self.stream_first,
                "last": self.stream_last,
                "holes": [list(h) for h in self.stream_holes[:MAX_LISTED]],
                "missing": self.stream_missing,
                "duplicates": self.stream_duplicates,
            },
            "exchange_holes": sum(len(o.holes) for o in self.origins),
            "exchange_missing": sum(o.missing for o in self.origins),
            "exchange_duplicates": sum(o.duplicates for o in self.origins),
            "recorded_gaps": sum(len(o.recorded) for o in self.origins),
            "part_files": self.part_files,
            "problems": self.problems[:MAX_LISTED],
            "notes": self.notes[:MAX_LISTED],
            "origins": [o.to_json() for o in self.origins],
        }


@dataclass
class ArchiveReport:
    data_dir: str
    date: str | None
    shards: list[ShardReport]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.shards)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "date": self.date,
            "ok": self.ok,
            "shards": [s.to_json() for s in self.shards],
        }


@dataclass
class _Origin:
    """Running state of one origin while the shard's files are read."""

    type: str
    seqs: SeqRanges = field(default_factory=SeqRanges)
    lines: int = 0
    duplicates: int = 0
    recorded: SeqRanges = field(default_factory=SeqRanges)
    recorded_dropped: bool = False


class _ShardAudit:
    """Reads one shard's files and keeps only bounded per-origin state."""

    def __init__(self, shard: str, leading_known: bool) -> None:
        self.report = ShardReport(shard)
        self.leading_known = leading_known  # the origins' first seqs are within what is read
        self.stream = SeqRanges()
        self.origins: dict[tuple[str, int], _Origin] = {}

    def day(self, feed: str, date: str, directory: Path) -> None:
        report = self.report
        report.dates.append(date)
        manifest = self._manifest(feed, date, directory)
        on_disk: dict[str, Path] = {}
        for path in sorted(directory.glob(f"*/*{FINAL_SUFFIX}")):
            on_disk[f"{path.parent.name}/{path.name}"] = path
        parts = sorted(directory.glob(f"*/*{FINAL_SUFFIX}{PART_SUFFIX}"))
        lines_before = report.lines
        for path in [*on_disk.values(), *parts]:
            self._file(path, directory, is_part=path.name.endswith(PART_SUFFIX))
        if manifest is None:
            return
        for rel in sorted(set(manifest.files) - set(on_disk)):
            report.problems.append(f"{date}: {rel} is in the manifest but not on disk")
        unlisted = sorted(set(on_disk) - set(manifest.files))
        if unlisted:
            report.notes.append(
                f"{date}: {len(unlisted)} final file(s) the manifest does not list yet "
                f"(the archiver's recovery adds them), e.g. {unlisted[0]}"
            )
        read = report.lines - lines_before
        if not parts and not manifest.open and not unlisted and manifest.lines != read:
            report.notes.append(
                f"{date}: the manifest counts {manifest.lines} lines, the files hold {read}"
            )

    def _manifest(self, feed: str, date: str, directory: Path) -> DayManifest | None:
        if not (directory / MANIFEST).is_file():
            self.report.notes.append(f"{date}: no {MANIFEST} (no archiver has closed a file yet)")
            return None
        return DayManifest.load(directory, feed, date, self.report.shard, "")

    def _file(self, path: Path, directory: Path, *, is_part: bool) -> None:
        report = self.report
        rel = str(path.relative_to(directory.parent.parent.parent))
        report.files += 1
        if is_part:
            report.part_files.append(rel)
        try:
            scanned = scan_members(path, 0, self._member)
        except OSError as exc:
            report.problems.append(f"{rel}: unreadable: {exc.strerror}")
            return
        if scanned.corrupt is not None:
            torn_part = is_part and scanned.corrupt.startswith("torn")
            (report.notes if torn_part else report.problems).append(f"{rel}: {scanned.corrupt}")

    def _member(self, lines: list[bytes]) -> None:
        for raw in lines:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        report = self.report
        try:
            line: ArchiveLine = decode_line(raw)
        except msgspec.DecodeError as exc:
            if len(report.problems) < 1000:
                report.problems.append(f"a line that is not an archive line ({exc}): {raw[:80]!r}")
            return
        report.lines += 1
        if not self.stream.add(line.seq, line.seq):
            report.stream_duplicates += 1
        if line.type == GAP_TYPE:
            self._gap(raw)
            return
        if line.id is not None and line.id.startswith(TRADE_ID_PREFIX):
            report.trades += 1
            return
        if line.epoch is None or line.sid is None or line.exchange_seq is None:
            report.unattributed += 1
            return
        origin = self._origin(line.epoch, line.sid, line.type or "")
        origin.lines += 1
        if not origin.seqs.add(line.exchange_seq, line.exchange_seq):
            origin.duplicates += 1

    def _origin(self, epoch: str, sid: int, msg_type: str) -> _Origin:
        key = (epoch, sid)
        origin = self.origins.get(key)
        if origin is None:
            origin = self.origins[key] = _Origin(msg_type)
        elif not origin.type:
            origin.type = msg_type
        return origin

    def _gap(self, raw: bytes) -> None:
        try:
            gap = gap_of(raw)
        except msgspec.DecodeError as exc:
            self.report.problems.append(f"an {GAP_TYPE} line that does not parse: {exc}")
            return
        origin = self._origin(gap.epoch, gap.sid, gap.channel)
        if len(origin.recorded) >= MAX_RECORDED_GAPS:
            origin.recorded_dropped = True
            return
        if gap.from_ <= gap.to:
            origin.recorded.add(gap.from_, gap.to)

    def finish(self) -> ShardReport:
        report = self.report
        stream = self.stream
        report.stream_first, report.stream_last = stream.first, stream.last
        report.stream_holes = [(a, b) for a, b in stream.gaps()]
        report.stream_missing = stream.missing
        if stream.truncated:
            report.problems.append("too many stream-seq holes to list them all")
        for (epoch, sid), state in sorted(self.origins.items()):
            out = OriginReport(epoch, sid, state.type, state.lines, state.duplicates)
            out.first, out.last = state.seqs.first, state.seqs.last
            holes = [(a, b) for a, b in state.seqs.gaps()]
            if self.leading_known and out.first is not None and out.first > 1:
                holes.insert(0, (1, out.first - 1))  # a subscription numbers from 1
            out.recorded = [(a, b) for a, b in state.recorded.ranges()]
            out.recorded_missing = state.recorded.covered
            out.holes = list(unrecorded_parts(holes, out.recorded))
            out.missing = sum(b - a + 1 for a, b in out.holes)
            if state.seqs.truncated:
                report.problems.append(f"origin {epoch}/{sid}: too many holes to list them all")
            if state.recorded_dropped:
                report.problems.append(f"origin {epoch}/{sid}: over {MAX_RECORDED_GAPS} gaps")
            report.origins.append(out)
        return report


def unrecorded_parts(
    holes: Iterable[tuple[int, int]], recorded: list[tuple[int, int]]
) -> Iterable[tuple[int, int]]:
    """The parts of `holes` no recorded gap covers (both sorted, inclusive ranges)."""
    i = 0
    for start, end in holes:
        while i < len(recorded) and recorded[i][1] < start:
            i += 1
        j = i
        cursor = start
        while cursor <= end and j < len(recorded) and recorded[j][0] <= end:
            r_start, r_end = recorded[j]
            if r_start > cursor:
                yield cursor, r_start - 1
            cursor = max(cursor, r_end + 1)
            j += 1
        if cursor <= end:
            yield cursor, end


def verify_archive(
    data_dir: Path, *, date: str | None = None, shard: str | None = None
) -> ArchiveReport:
    """Audit the archive under `data_dir` (`{feed}/{date}/{shard}/…`), optionally one day and
    one shard. Raises `SsmdError` when there is nothing to audit."""
    if not data_dir.is_dir():
        raise SsmdError(f"{data_dir}: not a directory (the archive's --data-dir)")
    days: dict[str, list[tuple[str, str, Path]]] = {}
    # hidden directories are not feeds: `ssmd local up` keeps its servers' stores, logs and
    # keys under `DIR/.local/` (a JetStream store there looked like a shard)
    feeds = (p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    for feed_dir in sorted(feeds):
        for date_dir in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
            if date is not None and date_dir.name != date:
                continue
            for shard_dir in sorted(p for p in date_dir.iterdir() if p.is_dir()):
                if shard is None or shard_dir.name == shard:
                    days.setdefault(shard_dir.name, []).append(
                        (feed_dir.name, date_dir.name, shard_dir)
                    )
    if not days:
        what = " and ".join(
            x for x in (f"date {date}" if date else "", f"shard {shard}" if shard else "") if x
        )
        raise SsmdError(
            f"{data_dir}: no archive{' for ' + what if what else ''} "
            f"(expected {{feed}}/{{YYYY-MM-DD}}/{{shard}}/ directories)"
        )
    reports = []
    for name, shard_days in sorted(days.items()):
        audit = _ShardAudit(name, leading_known=date is None)
        for feed, day, directory in shard_days:
            audit.day(feed, day, directory)
        reports.append(audit.finish())
    return ArchiveReport(str(data_dir), date, reports)
