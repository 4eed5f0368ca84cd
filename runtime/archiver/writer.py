"""Writing the archive: gzip JSONL files per feed/date/shard/type, at least once.

Files are gzip, written as **one gzip member per batch** (level 1). A concatenation of
members is a normal gzip file (`gzip.open`, `zcat`, pandas read it whole), and a member
is complete or it is not: after a crash the complete members of a `.part` file are kept and
a torn tail is cut off (it was never acknowledged, so the stream delivers it again;
`recovery.py`).

Writes are appended to `….jsonl.gz.part` and each batch is flushed and `fsync`ed before the
archiver acknowledges it; a file gets its final name (the same without `.part`, by
`rename`, then the directory is `fsync`ed) when it is rotated, at shutdown, or by recovery.
A final name therefore only ever holds complete, synced members. Layout and manifest:
`manifest.py`. Recovery's cost is bounded by the data written since the last manifest
(written on every rotation and at least every `manifest_interval` seconds).
"""

from __future__ import annotations

import contextlib
import os
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from runtime.archiver.manifest import (
    FINAL_SUFFIX,
    PART_SUFFIX,
    DayManifest,
    FileEntry,
    fsync_dir,
)

GZIP_LEVEL = 1


def gzip_member(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """One complete gzip member holding `data`."""
    packer = zlib.compressobj(level, zlib.DEFLATED, 31)
    return packer.compress(data) + packer.flush()


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
