"""The archive on disk: gzip JSONL files per feed/date/shard/type, their manifest, recovery.

Layout (one directory per UTC day of the stream's timestamps)::

    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/manifest.json
    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/{type}/{type}-{YYYYMMDDTHHMMSSZ}-{first seq}.jsonl.gz
    {data_dir}/{feed}/{YYYY-MM-DD}/{shard}/{type}/…jsonl.gz.part       (the file being written)

Files are gzip, written as **one gzip member per batch** (level 1). A concatenation of
members is a normal gzip file (`gzip.open`, `zcat`, pandas read it whole), and a member
is complete or it is not: after a crash the complete members of a `.part` file are kept and
a torn tail is cut off (it was never acknowledged, so the stream delivers it again).

Writes are appended to `….jsonl.gz.part` and each batch is flushed and `fsync`ed before the
archiver acknowledges it; a file gets its final name (the same without `.part`, by
`rename`, then the directory is `fsync`ed) when it is rotated, at shutdown, or by recovery.
A final name therefore only ever holds complete, synced members.

The manifest (`manifest.json`, replaced atomically: temp file, fsync, rename, fsync the
directory) says, for one feed/day/shard: the final files (lines, bytes, first/last stream
sequence), the files still open when it was written (`open`, with the byte offset up to
which they are accounted for), and the stream sequences archived that day as merged ranges,
the gaps between them, how many are missing, and how many lines were duplicates (a sequence
archived twice: at-least-once redelivery). Recovery (`ArchiveWriter.recover`) reads only
what the manifest does not account for yet: a `.part` from its recorded offset, or a final
file the manifest does not list, so its cost is bounded by the data written since the last
manifest (written on every rotation and at least every `manifest_interval` seconds).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import os
import time
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("ssmd.archiver.files")

PART_SUFFIX = ".part"
FINAL_SUFFIX = ".jsonl.gz"
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
MAX_RANGES = 10_000  # merged sequence ranges kept per day; beyond it the closest gaps merge
GZIP_LEVEL = 1
_READ_CHUNK = 64 << 10  # compressed bytes per read: bounds the output of one inflate call
_SEQ_PREFIX = b'{"seq":'


def gzip_member(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """One complete gzip member holding `data`."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


def line_seq(line: bytes) -> int | None:
    """The stream sequence of an archive line (it comes first), or None."""
    if not line.startswith(_SEQ_PREFIX):
        return None
    end = line.find(b",", 7)
    try:
        return int(line[7:end])
    except ValueError:
        return None


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


# -- one file being written --------------------------------------------------------------------


class ArchiveFile:
    """A `.part` file receiving gzip members; `finalize()` gives it its final name."""

    def __init__(self, directory: Path, msg_type: str, first_seq: int, first_ts: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(first_ts))
        base = f"{msg_type}-{stamp}-{first_seq}"
        name = base + FINAL_SUFFIX
        n = 0
        while (directory / name).exists() or (directory / (name + PART_SUFFIX)).exists():
            n += 1
            name = f"{base}-{n}{FINAL_SUFFIX}"
        self.final = directory / name
        self.part = directory / (name + PART_SUFFIX)
        self.type = msg_type
        self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fsync_dir(directory)  # the new name survives a power loss
        self.opened = time.monotonic()
        self.size = 0
        self.lines = 0
        self.synced = True

    def append(self, member: bytes, lines: int) -> None:
        view = memoryview(member)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(member)
        self.lines += lines
        self.synced = False

    def sync(self) -> None:
        if not self.synced:
            os.fsync(self._fd)
            self.synced = True

    def finalize(self) -> Path:
        """Sync, close, rename to the final name, sync the directory."""
        self.sync()
        os.close(self._fd)
        self._fd = -1
        os.rename(self.part, self.final)
        fsync_dir(self.final.parent)
        return self.final

    def abandon(self) -> None:
        """Close without renaming (an error path: recovery deals with the `.part`)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


# -- recovery ----------------------------------------------------------------------------------


@dataclass
class ScanResult:
    good_end: int  # offset just past the last complete member
    size: int  # the file's size
    lines: int = 0  # lines in the complete members


def scan_members(
    path: Path, offset: int, on_member: Callable[[int, list[int]], None]
) -> ScanResult:
    """Walk the complete gzip members of `path` from `offset`; `on_member(lines, seqs)` gets
    the line count and the stream sequences of each complete member, and only of complete
    ones. Stops at the first torn or corrupt member. Memory: one read chunk, its output,
    and the sequences of one member (one batch)."""
    size = path.stat().st_size
    result = ScanResult(good_end=offset, size=size)
    with open(path, "rb") as handle:
        handle.seek(offset)
        member_start = offset
        inflater = zlib.decompressobj(31)
        used = 0  # compressed bytes of the current member consumed so far
        partial = b""  # the current member's unfinished last line
        count = 0
        seqs: list[int] = []
        data = b""
        while True:
            if not data:
                data = handle.read(_READ_CHUNK)
                if not data:
                    break  # end of file: a member not finished here is torn
            try:
                out = inflater.decompress(data)
            except zlib.error as exc:
                log.warning("%s: corrupt gzip member at offset %d (%s)", path, member_start, exc)
                return result
            if out:
                lines = (partial + out).split(b"\n")
                partial = lines.pop()
                count += len(lines)
                seqs.extend(seq for seq in map(line_seq, lines) if seq is not None)
            if not inflater.eof:
                used += len(data)
                data = b""
                continue
            rest = inflater.unused_data
            used += len(data) - len(rest)
            if partial:  # a last line without its newline (not ours, but a line)
                count += 1
                seq = line_seq(partial)
                if seq is not None:
                    seqs.append(seq)
            on_member(count, seqs)
            result.lines += count
            member_start += used
            result.good_end = member_start
            used, partial, count, seqs = 0, b"", 0, []
            inflater = zlib.decompressobj(31)
            data = rest
    return result


@dataclass
class RecoveryReport:
    parts: int = 0  # .part files recovered (renamed)
    parts_removed: int = 0  # .part files with no complete member (deleted)
    truncated_bytes: int = 0  # torn tails cut off
    unlisted: int = 0  # final files the manifest did not list yet
    lines: int = 0  # lines newly accounted for


# -- the writer ---------------------------------------------------------------------------------


FileKey = tuple[str, str, str]  # (feed, date, type): one open file each


@dataclass(slots=True)
class Group:
    """What one batch brings to one file: its lines and facts about them."""

    lines: list[bytes]
    seq_min: int
    seq_max: int
    first_ts: float  # stream timestamp of the first line, seconds


class ArchiveWriter:
    """Owns the open files and manifests of one shard. Not thread-safe: one caller at a time
    (the archiver runs every call in a worker thread, one after another)."""

    def __init__(
        self,
        data_dir: Path,
        shard: str,
        stream: str,
        *,
        rotation: float,
        manifest_interval: float = 10.0,
        max_open: int = 64,
        max_days: int = 4,
        level: int = GZIP_LEVEL,
    ) -> None:
        self.data_dir = data_dir
        self.shard = shard
        self.stream = stream
        self.rotation = rotation
        self.manifest_interval = manifest_interval
        self.max_open = max_open
        self.max_days = max_days
        self.level = level
        self.files: OrderedDict[FileKey, ArchiveFile] = OrderedDict()
        self.manifests: OrderedDict[tuple[str, str], DayManifest] = OrderedDict()
        self.files_finalized = 0
        self.bytes_written = 0
        self.lines_written = 0
        self._manifest_at = time.monotonic()

    # -- paths and manifests ----------------------------------------------------------------

    def day_dir(self, feed: str, date: str) -> Path:
        return self.data_dir / feed / date / self.shard

    def manifest(self, feed: str, date: str) -> DayManifest:
        key = (feed, date)
        found = self.manifests.get(key)
        if found is not None:
            self.manifests.move_to_end(key)
            return found
        found = DayManifest.load(self.day_dir(feed, date), feed, date, self.shard, self.stream)
        self.manifests[key] = found
        while len(self.manifests) > self.max_days:
            (old_feed, old_date), old = next(iter(self.manifests.items()))
            if any(k[0] == old_feed and k[1] == old_date for k in self.files):
                break  # still has open files: keep it (bounded by the open-file bound)
            if old.dirty:
                old.write()
            del self.manifests[(old_feed, old_date)]
        return found

    # -- writing ----------------------------------------------------------------------------

    def write_batch(
        self, groups: dict[FileKey, Group], runs: dict[tuple[str, str], list[tuple[int, int]]]
    ) -> int:
        """Append one gzip member per (feed, date, type) and fsync every file touched, then
        account for the batch's stream sequences (`runs`: inclusive ranges per (feed, date)).
        Returns the compressed bytes written. Only once this has returned may the batch be
        acknowledged."""
        written = 0
        touched: list[tuple[ArchiveFile, FileEntry, Group]] = []
        for key, group in groups.items():
            feed, date, msg_type = key
            manifest = self.manifest(feed, date)
            handle = self._open(key, group.seq_min, group.first_ts)
            member = gzip_member(b"".join(group.lines), self.level)
            handle.append(member, len(group.lines))
            written += len(member)
            rel = f"{msg_type}/{handle.part.name}"
            entry = manifest.open.get(rel)
            if entry is None:
                entry = manifest.open[rel] = FileEntry(rel, msg_type)
            touched.append((handle, entry, group))
        for handle, _, _ in touched:
            handle.sync()
        # synced: now (and only now) the lines count as archived
        for handle, entry, group in touched:
            entry.lines = handle.lines
            entry.bytes = handle.size
            entry.note(group.seq_min, group.seq_max)
        for (feed, date), day_runs in runs.items():
            self.manifest(feed, date).account_runs(day_runs)
        self.lines_written += sum(len(g.lines) for g in groups.values())
        self.bytes_written += written
        return written

    def _open(self, key: FileKey, first_seq: int, first_ts: float) -> ArchiveFile:
        handle = self.files.get(key)
        if handle is not None:
            self.files.move_to_end(key)
            return handle
        while len(self.files) >= self.max_open:  # bounded: close the least recently used
            old_key = next(iter(self.files))
            self._finalize(old_key)
        feed, date, msg_type = key
        handle = ArchiveFile(self.day_dir(feed, date) / msg_type, msg_type, first_seq, first_ts)
        self.files[key] = handle
        return handle

    def _finalize(self, key: FileKey) -> None:
        handle = self.files.pop(key)
        feed, date, msg_type = key
        manifest = self.manifest(feed, date)
        part_rel = f"{msg_type}/{handle.part.name}"
        final = handle.finalize()
        entry = manifest.open.pop(part_rel, None) or FileEntry(part_rel, msg_type)
        entry.path = f"{msg_type}/{final.name}"
        entry.lines = handle.lines
        entry.bytes = handle.size
        manifest.files[entry.path] = entry
        manifest.dirty = True
        self.files_finalized += 1

    def rotate(self, now: float | None = None, *, force_manifests: bool = False) -> int:
        """Finalize files open for `rotation` seconds; write changed manifests when a file
        was finalized or `manifest_interval` passed. Returns files finalized."""
        now = time.monotonic() if now is None else now
        due = [k for k, f in self.files.items() if now - f.opened >= self.rotation]
        for key in due:
            self._finalize(key)
        if due or force_manifests or now - self._manifest_at >= self.manifest_interval:
            self.write_manifests()
            self._manifest_at = now
        return len(due)

    def write_manifests(self) -> None:
        for manifest in self.manifests.values():
            if manifest.dirty:
                manifest.write()

    def close(self) -> int:
        """Finalize every open file and write the manifests (clean shutdown)."""
        count = len(self.files)
        for key in list(self.files):
            self._finalize(key)
        self.write_manifests()
        return count

    def abandon(self) -> None:
        for handle in self.files.values():
            handle.abandon()
        self.files.clear()

    @property
    def open_files(self) -> int:
        return len(self.files)

    # -- recovery ---------------------------------------------------------------------------

    def _shard_dirs(self) -> Iterator[tuple[str, str, Path]]:
        if not self.data_dir.is_dir():
            return
        for feed_dir in sorted(p for p in self.data_dir.iterdir() if p.is_dir()):
            for date_dir in sorted(p for p in feed_dir.iterdir() if p.is_dir()):
                shard_dir = date_dir / self.shard
                if shard_dir.is_dir():
                    yield feed_dir.name, date_dir.name, shard_dir

    def recover(self) -> RecoveryReport:
        """After a crash (or any start): finish what a previous process left. Each `.part`
        keeps its complete members (the torn tail is cut off), is synced and renamed; final
        files the manifest does not list yet are added; manifests are rewritten."""
        report = RecoveryReport()
        for feed, date, shard_dir in self._shard_dirs():
            parts = sorted(shard_dir.glob(f"*/*{FINAL_SUFFIX}{PART_SUFFIX}"))
            finals = sorted(shard_dir.glob(f"*/*{FINAL_SUFFIX}"))
            manifest = self.manifest(feed, date)
            listed = set(manifest.files)
            if (
                not parts
                and not manifest.open
                and all(f"{f.parent.name}/{f.name}" in listed for f in finals)
            ):
                continue
            seqs: array[int] = array("q")
            for part in parts:
                self._recover_part(manifest, part, report, seqs)
            # open entries whose .part is gone: renamed before the manifest said so
            for rel, entry in list(manifest.open.items()):
                final_rel = rel[: -len(PART_SUFFIX)]
                final = shard_dir / final_rel
                del manifest.open[rel]
                if final.is_file():
                    self._account_file(final, entry, report, seqs)
                    manifest.files[final_rel] = entry
                    entry.path = final_rel
                    report.unlisted += 1
                else:
                    log.error("%s: %s vanished; its %d lines are gone", shard_dir, rel, entry.lines)
            for final in sorted(shard_dir.glob(f"*/*{FINAL_SUFFIX}")):
                rel = f"{final.parent.name}/{final.name}"
                if rel in manifest.files:
                    continue
                entry = FileEntry(rel, final.parent.name, recovered=True)
                self._account_file(final, entry, report, seqs)
                manifest.files[rel] = entry
                report.unlisted += 1
            manifest.account(list(seqs))
            manifest.dirty = True
            manifest.write()
        return report

    @staticmethod
    def _account_file(
        path: Path, entry: FileEntry, report: RecoveryReport, seqs: array[int]
    ) -> int:
        """Account for the complete members of `path` past `entry.bytes` (what the manifest
        already counts): their lines go to `entry`, their sequences to `seqs`. Returns the
        offset past the last complete member."""

        def on_member(count: int, member_seqs: list[int]) -> None:
            seqs.extend(member_seqs)
            if member_seqs:
                entry.note(min(member_seqs), max(member_seqs))
            entry.lines += count
            report.lines += count

        start = min(entry.bytes, path.stat().st_size)
        scanned = scan_members(path, start, on_member)
        entry.bytes = scanned.good_end
        entry.recovered = True
        return scanned.good_end

    def _recover_part(
        self, manifest: DayManifest, part: Path, report: RecoveryReport, seqs: array[int]
    ) -> None:
        rel = f"{part.parent.name}/{part.name}"
        entry = manifest.open.pop(rel, None) or FileEntry(rel, part.parent.name)
        good_end = self._account_file(part, entry, report, seqs)
        size = part.stat().st_size
        if good_end < size:
            log.warning("%s: cutting a torn tail of %d bytes", part, size - good_end)
            report.truncated_bytes += size - good_end
            with open(part, "r+b") as handle:
                handle.truncate(good_end)
                handle.flush()
                os.fsync(handle.fileno())
        if good_end == 0:
            part.unlink()
            fsync_dir(part.parent)
            report.parts_removed += 1
            return
        final = part.with_name(part.name[: -len(PART_SUFFIX)])
        if final.exists():  # cannot happen by our naming; never overwrite a final file
            n = 1
            while final.with_name(
                f"{final.name[: -len(FINAL_SUFFIX)]}-r{n}{FINAL_SUFFIX}"
            ).exists():
                n += 1
            final = final.with_name(f"{final.name[: -len(FINAL_SUFFIX)]}-r{n}{FINAL_SUFFIX}")
        os.rename(part, final)
        fsync_dir(final.parent)
        entry.path = f"{final.parent.name}/{final.name}"
        manifest.files[entry.path] = entry
        report.parts += 1


def finalize_shard(data_dir: Path, shard: str, stream: str) -> RecoveryReport:
    """Finish, without an archiver, NATS or a consumer, what archivers of `shard` left under
    `data_dir`: each `.part` keeps its complete members and gets its final name, and the
    manifests account for everything on disk (`ArchiveWriter.recover`, as an archiver does at
    start-up). For a shard whose archiver had to be killed and which may never run again (a
    shard removed at a day roll). Never while an archiver of the shard is running."""
    return ArchiveWriter(data_dir, shard, stream, rotation=3600.0).recover()
