"""After a crash (or any start): finish what a previous archiver process left on disk.

Each `.part` keeps its complete gzip members (a torn tail is cut off: it was never
acknowledged, so the stream delivers it again), is synced and renamed; final files the
manifest does not list yet are added; manifests are rewritten. Only what the manifest does
not account for yet is read (a `.part` from its recorded offset, or a final file it does
not list), so the cost is bounded by the data written since the last manifest.
"""

from __future__ import annotations

import logging
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

from runtime.archiver.lines import line_seq, scan_members
from runtime.archiver.manifest import (
    FINAL_SUFFIX,
    PART_SUFFIX,
    DayManifest,
    FileEntry,
    fsync_dir,
    shard_dirs,
)
from runtime.archiver.writer import ArchiveWriter

log = logging.getLogger("ssmd.archiver.files")


@dataclass
class RecoveryReport:
    parts: int = 0  # .part files recovered (renamed)
    parts_removed: int = 0  # .part files with no complete member (deleted)
    truncated_bytes: int = 0  # torn tails cut off
    unlisted: int = 0  # final files the manifest did not list yet
    lines: int = 0  # lines newly accounted for


def recover(writer: ArchiveWriter) -> RecoveryReport:
    """After a crash (or any start): finish what a previous process left. Each `.part`
    keeps its complete members (the torn tail is cut off), is synced and renamed; final
    files the manifest does not list yet are added; manifests are rewritten."""
    report = RecoveryReport()
    for feed, date, shard_dir in shard_dirs(writer.data_dir, writer.shard):
        parts = sorted(shard_dir.glob(f"*/*{FINAL_SUFFIX}{PART_SUFFIX}"))
        finals = sorted(shard_dir.glob(f"*/*{FINAL_SUFFIX}"))
        manifest = writer.manifest(feed, date)
        listed = set(manifest.files)
        if (
            not parts
            and not manifest.open
            and all(f"{f.parent.name}/{f.name}" in listed for f in finals)
        ):
            continue
        seqs: array[int] = array("q")
        for part in parts:
            _recover_part(manifest, part, report, seqs)
        # open entries whose .part is gone: renamed before the manifest said so
        for rel, entry in list(manifest.open.items()):
            final_rel = rel[: -len(PART_SUFFIX)]
            final = shard_dir / final_rel
            del manifest.open[rel]
            if final.is_file():
                _account_file(final, entry, report, seqs)
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
            _account_file(final, entry, report, seqs)
            manifest.files[rel] = entry
            report.unlisted += 1
        manifest.account(list(seqs))
        manifest.dirty = True
        manifest.write()
    return report


def _account_file(path: Path, entry: FileEntry, report: RecoveryReport, seqs: array[int]) -> int:
    """Account for the complete members of `path` past `entry.bytes` (what the manifest
    already counts): their lines go to `entry`, their sequences to `seqs`. Returns the
    offset past the last complete member."""

    def on_member(lines: list[bytes]) -> None:
        member_seqs = [seq for seq in map(line_seq, lines) if seq is not None]
        seqs.extend(member_seqs)
        if member_seqs:
            entry.note(min(member_seqs), max(member_seqs))
        entry.lines += len(lines)
        report.lines += len(lines)

    start = min(entry.bytes, path.stat().st_size)
    scanned = scan_members(path, start, on_member)
    entry.bytes = scanned.good_end
    entry.recovered = True
    return scanned.good_end


def _recover_part(
    manifest: DayManifest, part: Path, report: RecoveryReport, seqs: array[int]
) -> None:
    rel = f"{part.parent.name}/{part.name}"
    entry = manifest.open.pop(rel, None) or FileEntry(rel, part.parent.name)
    good_end = _account_file(part, entry, report, seqs)
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
        while final.with_name(f"{final.name[: -len(FINAL_SUFFIX)]}-r{n}{FINAL_SUFFIX}").exists():
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
    return recover(ArchiveWriter(data_dir, shard, stream, rotation=3600.0))
