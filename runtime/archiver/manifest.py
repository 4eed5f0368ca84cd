"""The archive's layout on disk and its manifest: what one shard archived on one day.

Layout (one directory per UTC day of the stream's timestamps)::

    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/manifest.json
    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/{type}/{type}-{YYYYMMDDTHHMMSSZ}-{first seq}.jsonl.gz
    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/{type}/…jsonl.gz.part       (the file being written)

The manifest (`manifest.json`, replaced atomically: temp file, fsync, rename, fsync the
directory) says, for one feed/day/shard: the final files (lines, bytes, first/last stream
sequence), the files still open when it was written (`open`, with the byte offset up to
which they are accounted for), and the stream sequences archived that day as merged ranges,
the gaps between them, how many are missing, and how many lines were duplicates (a sequence
archived twice: at-least-once redelivery). Files: `writer.py`; crash recovery: `recovery.py`;
the audit: `verify.py`.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ssmd.archiver.files")

PART_SUFFIX = ".part"
FINAL_SUFFIX = ".jsonl.gz"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MAX_RANGES = 10_000  # merged sequence ranges kept per day; beyond it the closest gaps merge


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: never a partial file under the name."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- sequence ranges ----------------------------------------------------------------------------


class SeqRanges:
    """Stream sequences seen, as sorted, merged, inclusive ranges (bounded count)."""

    def __init__(self, ranges: Iterable[Iterable[int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.covered = 0
        self.truncated = False  # some gaps were merged away to stay bounded
        for start, end in ranges:
            self.add(int(start), int(end))

    def __len__(self) -> int:
        return len(self._starts)

    def ranges(self) -> list[list[int]]:
        return [[s, e] for s, e in zip(self._starts, self._ends, strict=True)]

    def gaps(self) -> list[list[int]]:
        return [[self._ends[i] + 1, self._starts[i + 1] - 1] for i in range(len(self._starts) - 1)]

    @property
    def first(self) -> int | None:
        return self._starts[0] if self._starts else None

    @property
    def last(self) -> int | None:
        return self._ends[-1] if self._ends else None

    @property
    def missing(self) -> int:
        if not self._starts:
            return 0
        return self._ends[-1] - self._starts[0] + 1 - self.covered

    def add(self, start: int, end: int) -> int:
        """Add `start..end`; returns how many of those sequences were new."""
        starts, ends = self._starts, self._ends
        if not starts or start > ends[-1] + 1:  # the usual case: after everything
            starts.append(start)
            ends.append(end)
            self.covered += end - start + 1
            self._bound()
            return end - start + 1
        if start == ends[-1] + 1:  # the other usual case: extends the last range
            ends[-1] = end
            self.covered += end - start + 1
            return end - start + 1
        # general case: merge with every range it touches
        i = bisect.bisect_left(ends, start - 1)
        j = bisect.bisect_right(starts, end + 1)
        before = self.covered
        if i >= j:  # touches nothing: insert
            starts.insert(i, start)
            ends.insert(i, end)
            self.covered += end - start + 1
            self._bound()
            return self.covered - before
        merged_start = min(start, starts[i])
        merged_end = max(end, ends[j - 1])
        removed = sum(ends[k] - starts[k] + 1 for k in range(i, j))
        del starts[i:j]
        del ends[i:j]
        starts.insert(i, merged_start)
        ends.insert(i, merged_end)
        self.covered += merged_end - merged_start + 1 - removed
        return self.covered - before

    def add_sorted(self, seqs: list[int]) -> int:
        """Add sorted, distinct sequences (runs become ranges); returns how many were new."""
        if not seqs:
            return 0
        first, last = seqs[0], seqs[-1]
        if last - first + 1 == len(seqs):  # one run: the common case
            return self.add(first, last)
        added = 0
        run_start = prev = first
        for seq in seqs[1:]:
            if seq != prev + 1:
                added += self.add(run_start, prev)
                run_start = seq
            prev = seq
        return added + self.add(run_start, prev)

    def _bound(self) -> None:
        """Keep at most MAX_RANGES ranges: merge the smallest gap (and say so)."""
        while len(self._starts) > MAX_RANGES:
            starts, ends = self._starts, self._ends
            k = min(range(len(starts) - 1), key=lambda i: starts[i + 1] - ends[i])
            ends[k] = ends[k + 1]  # `covered` is unchanged, so `missing` stays exact
            del starts[k + 1]
            del ends[k + 1]
            self.truncated = True


# -- manifest -----------------------------------------------------------------------------------


@dataclass
class FileEntry:
    """One archive file as the manifest records it (path relative to the day/shard dir)."""

    path: str
    type: str
    lines: int = 0
    bytes: int = 0
    seq_first: int | None = None
    seq_last: int | None = None
    recovered: bool = False

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "lines": self.lines,
            "bytes": self.bytes,
            "seq_first": self.seq_first,
            "seq_last": self.seq_last,
        }
        if self.recovered:
            out["recovered"] = True
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(
            path=str(data["path"]),
            type=str(data["type"]),
            lines=int(data.get("lines", 0)),
            bytes=int(data.get("bytes", 0)),
            seq_first=data.get("seq_first"),
            seq_last=data.get("seq_last"),
            recovered=bool(data.get("recovered", False)),
        )

    def note(self, seq_min: int, seq_max: int) -> None:
        if self.seq_first is None or seq_min < self.seq_first:
            self.seq_first = seq_min
        if self.seq_last is None or seq_max > self.seq_last:
            self.seq_last = seq_max


@dataclass
class DayManifest:
    """What one shard archived on one day; `write()` replaces manifest.json atomically."""

    directory: Path  # {data_dir}/{feed}/{date}/{shard}
    feed: str
    date: str
    shard: str
    stream: str
    files: dict[str, FileEntry] = field(default_factory=dict)  # final files by path
    open: dict[str, FileEntry] = field(default_factory=dict)  # .part files by path
    ranges: SeqRanges = field(default_factory=SeqRanges)
    lines: int = 0
    duplicates: int = 0
    dirty: bool = False

    @property
    def path(self) -> Path:
        return self.directory / MANIFEST

    @classmethod
    def load(cls, directory: Path, feed: str, date: str, shard: str, stream: str) -> DayManifest:
        manifest = cls(directory, feed, date, shard, stream)
        try:
            data = json.loads((directory / MANIFEST).read_bytes())
        except FileNotFoundError:
            return manifest
        except (OSError, ValueError) as exc:
            # only ever written atomically, so this is damage from outside: rebuild from files
            log.error("unreadable manifest %s (%s); rebuilding it", directory / MANIFEST, exc)
            return manifest
        manifest.files = {
            e["path"]: FileEntry.from_json(e) for e in data.get("files", []) if "path" in e
        }
        manifest.open = {
            e["path"]: FileEntry.from_json(e) for e in data.get("open", []) if "path" in e
        }
        manifest.ranges = SeqRanges(data.get("seq_ranges", []))
        manifest.ranges.truncated = bool(data.get("ranges_truncated", False))
        manifest.lines = int(data.get("lines", 0))
        manifest.duplicates = int(data.get("duplicates", 0))
        return manifest

    def to_json(self) -> dict[str, Any]:
        ranges = self.ranges
        out: dict[str, Any] = {
            "version": MANIFEST_VERSION,
            "feed": self.feed,
            "date": self.date,
            "shard": self.shard,
            "stream": self.stream,
            "updated": _iso(time.time()),
            "lines": self.lines,
            "files": [e.to_json() for e in sorted(self.files.values(), key=lambda e: e.path)],
            "open": [e.to_json() for e in sorted(self.open.values(), key=lambda e: e.path)],
            "seq_first": ranges.first,
            "seq_last": ranges.last,
            "seq_ranges": ranges.ranges(),
            "gaps": ranges.gaps(),
            "missing": ranges.missing,
            "duplicates": self.duplicates,
        }
        if ranges.truncated:
            out["ranges_truncated"] = True
        return out

    def write(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.to_json(), indent=1).encode() + b"\n")
        self.dirty = False

    def account(self, seqs: list[int]) -> None:
        """Lines with these stream sequences were written (and synced) today."""
        unique = sorted(set(seqs))
        added = self.ranges.add_sorted(unique)
        self.lines += len(seqs)
        self.duplicates += len(seqs) - added
        self.dirty = True

    def account_runs(self, runs: list[tuple[int, int]]) -> None:
        """Lines with the sequences of these inclusive ranges were written (and synced)."""
        for start, end in runs:
            added = self.ranges.add(start, end)
            self.lines += end - start + 1
            self.duplicates += end - start + 1 - added
        self.dirty = True


def shard_dirs(data_dir: Path, shard: str) -> Iterator[tuple[str, str, Path]]:
    """(feed, date, directory) of every day `shard` has under `data_dir`, in order."""
    if not data_dir.is_dir():
        return
    for feed_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        for date_dir in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
            shard_dir = date_dir / shard
            if shard_dir.is_dir():
                yield feed_dir.name, date_dir.name, shard_dir
