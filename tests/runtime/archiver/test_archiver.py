"""The archiver against a real nats-server (and redis-server): what is in a shard stream ends
up in gzip JSONL files once (twice at most where at-least-once allows it, never zero), acked
only once it is on disk, whatever happens to the process."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually, running

from runtime.archiver.manifest import DayManifest, FileEntry
from runtime.archiver.recovery import recover
from runtime.archiver.service import Archiver, consumer_name
from runtime.archiver.writer import ArchiveWriter, gzip_member
from runtime.kalshi.protocol import message_id, new_epoch
from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core import redis_keys
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.core.subjects import encode_symbol, internal_stream, internal_subject
from ssmd_infra.local.servers import free_port, start_nats, start_redis

REPO = Path(__file__).resolve().parents[3]
SYMBOLS = ["KXHIGHNY-24DEC05-B43.5", "FED-25DEC-T4.25", "PRES-2028-DEM"]
TYPES = ["trade", "ticker", "orderbook_delta"]


def env_text(shard: str, *, rotation: str = "1h", batch_size: int = 100) -> str:
    symbols = "\n".join(f"  {s}: {{tier: 2}}" for s in SYMBOLS)
    return f"""
name: test-{shard}
feed: kalshi
symbols:
{symbols}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 2m}}
archiver: {{rotation: {rotation}, batch_size: {batch_size}}}
nats: {{auth: none}}  # the shared test server is anonymous; roles: test_nats_roles.py
shards:
  {shard}:
    selector: {{tier: 2}}
    replicas: 1
"""


class Shard:
    """One test's shard: its environment, its stream, a publisher of Kalshi-like frames."""

    def __init__(self, nats_url: str, tmp_path: Path, **env_options: Any) -> None:
        self.name = f"ar{uuid.uuid4().hex[:8]}"
        self.nats_url = nats_url
        self.env_file = tmp_path / f"{self.name}.yaml"
        self.env_file.write_text(env_text(self.name, **env_options))
        self.env: Environment = parse_environment(self.env_file.read_text(), str(self.env_file))
        self.stream = internal_stream(self.name)
        self.data = tmp_path / "data"
        self.sent: dict[str, tuple[str, str, bytes]] = {}  # msg id → (type, symbol, frame)
        self._n = 0
        self.epoch = new_epoch()  # one simulated connector connection, one sid per type
        self.exchange_seqs = dict.fromkeys(TYPES, 0)

    async def create(self) -> Shard:
        await reconcile_streams(self.nats_url, [internal_stream_spec(self.env, self.name)])
        return self

    def frames(self, count: int) -> list[tuple[bytes, bytes, bytes]]:
        """`count` new (subject, frame, msg id), cycling through types and dotted symbols."""
        out = []
        for _ in range(count):
            n = self._n
            self._n += 1
            msg_type, symbol = TYPES[n % len(TYPES)], SYMBOLS[(n // len(TYPES)) % len(SYMBOLS)]
            sid = TYPES.index(msg_type) + 1
            self.exchange_seqs[msg_type] += 1
            seq = self.exchange_seqs[msg_type]
            trade_id = uuid.uuid4().hex if msg_type == "trade" else None
            msg_id = message_id(msg_type, self.epoch, sid, seq, trade_id)
            body = {"market_ticker": symbol, "n": n, "yes_price": n % 99 + 1, "trade_id": trade_id}
            frame = json.dumps({"type": msg_type, "sid": sid, "seq": seq, "msg": body}).encode()
            subject = internal_subject(self.name, "kalshi", msg_type, symbol).encode()
            self.sent[msg_id] = (msg_type, symbol, frame)
            out.append((subject, frame, msg_id.encode()))
        return out

    async def publish(self, count: int) -> None:
        await self.publish_raw(self.frames(count))

    async def publish_raw(self, items: list[tuple[bytes, bytes, bytes]]) -> None:
        publisher = JetStreamPublisher(self.nats_url, name="test-archiver-feed")
        await publisher.start()
        try:
            for subject, frame, msg_id in items:
                while publisher.room <= 0:
                    await publisher.wait_for_room()
                publisher.publish(subject, frame, msg_id)
            assert await publisher.drain(20), "the stream did not acknowledge everything"
        finally:
            await publisher.close()

    def archiver(self, **options: Any) -> Archiver:
        defaults: dict[str, Any] = {"nats_url": self.nats_url, "data_dir": self.data}
        defaults["metrics_port"] = 0
        defaults.update(options)
        return Archiver(self.env, self.name, **defaults)

    def command(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "archiver",
            str(self.env_file),
            self.name,
            "--nats-url",
            self.nats_url,
            "--data-dir",
            str(self.data),
            *extra,
        ]

    async def consumer_state(self) -> tuple[int, int, int]:
        """(ack floor stream sequence, num_ack_pending, num_pending) of the archiver's
        consumer; (-1, -1, -1) while it does not exist."""
        nc = await nats.connect(self.nats_url)
        try:
            info = await nc.jetstream().consumer_info(self.stream, consumer_name(self.name))
        except nats.js.errors.NotFoundError:
            return -1, -1, -1
        finally:
            await nc.close()
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        return floor, int(info.num_ack_pending or 0), int(info.num_pending or 0)

    def day_dirs(self) -> list[Path]:
        return sorted(self.data.glob(f"kalshi/*/{self.name}"))

    def parts(self) -> list[Path]:
        return sorted(self.data.rglob("*.part"))

    def lines(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every line of every final archive file (each file must decompress completely)."""
        out = []
        for path in sorted(self.data.rglob("*.jsonl.gz")):
            with gzip.open(path, "rb") as handle:
                for raw in handle:
                    out.append((path, json.loads(raw)))
        return out

    def manifest(self) -> dict[str, Any]:
        (day,) = self.day_dirs()
        data: dict[str, Any] = json.loads((day / "manifest.json").read_text())
        return data


@pytest.fixture
async def shard(nats_url: str, tmp_path: Path) -> Shard:
    return await Shard(nats_url, tmp_path).create()


async def scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def drained(archiver: Archiver, count: int) -> Callable[[], bool]:
    return lambda: archiver.stats.archived >= count and archiver.stats.acked_seq >= count


# -- what lands where -------------------------------------------------------------------------


async def test_every_message_archived_once_in_its_type_dir_with_the_decoded_symbol(
    shard: Shard,
) -> None:
    await shard.publish(300)
    odd = [  # not JSON; JSON with line breaks; a subject that is not type.symbol
        (internal_subject(shard.name, "kalshi", "trade", SYMBOLS[0]).encode(), b"not json{", b"x1"),
        (
            internal_subject(shard.name, "kalshi", "ticker", SYMBOLS[1]).encode(),
            b'{"type": "ticker",\n "msg": {}}',
            b"x2",
        ),
        (f"internal.{shard.name}.junk".encode(), b'{"a":1}', b"x3"),
    ]
    await shard.publish_raw(odd)
    archiver = shard.archiver()
    async with running(archiver):
        await eventually(drained(archiver, 303), "everything archived and acked")
        assert archiver.port is not None
        metrics = await scrape(archiver.port)
        assert metrics["ssmd_archiver_messages_total"] == 303
        assert metrics["ssmd_archiver_invalid_total"] == 2
        assert metrics["ssmd_archiver_lag"] == 0
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"http://127.0.0.1:{archiver.port}/healthz")).status == 200
    assert shard.parts() == []
    lines = shard.lines()
    by_id = Counter(line["id"] for _, line in lines)
    assert set(by_id) == set(shard.sent) | {"x1", "x2", "x3"}
    assert set(by_id.values()) == {1}
    assert sorted(line["seq"] for _, line in lines) == list(range(1, 304))
    for path, line in lines:
        if line["id"] in shard.sent:
            msg_type, symbol, frame = shard.sent[line["id"]]
            assert line["type"] == msg_type and path.parent.name == msg_type
            assert line["symbol"] == symbol  # decoded: the dots are back
            assert line["frame"] == json.loads(frame)
            # where the exchange sent it from: a trade's epoch is not carried (its id is its
            # trade_id, shared by replicas); every other frame's is, from its origin id
            assert line["sid"] == json.loads(frame)["sid"]
            assert line["exchange_seq"] == json.loads(frame)["seq"]
            assert line["epoch"] == (None if msg_type == "trade" else shard.epoch)
            assert path.parent.parent.name == shard.name
            assert path.parent.parent.parent.name == time.strftime(
                "%Y-%m-%d", time.gmtime(line["received_ns"] / 1e9)
            )
    odd_lines = {line["id"]: (path, line) for path, line in lines if line["id"].startswith("x")}
    assert odd_lines["x1"][1]["frame_text"] == "not json{"
    assert odd_lines["x1"][1]["epoch"] is odd_lines["x1"][1]["sid"] is None
    assert odd_lines["x2"][1]["frame"] == {"type": "ticker", "msg": {}}
    assert odd_lines["x3"][0].parent.name == "_invalid"
    assert odd_lines["x3"][1]["subject"] == f"internal.{shard.name}.junk"
    assert all(encode_symbol(s) != s for s in SYMBOLS[:2])  # the test's symbols need encoding


async def test_rotation_renames_files_and_a_clean_stop_leaves_no_part(shard: Shard) -> None:
    archiver = shard.archiver(rotation=0.6)
    async with running(archiver):
        for wave in range(1, 4):
            await shard.publish(60)
            await eventually(drained(archiver, 60 * wave), f"wave {wave} archived")
            if wave == 1:
                assert shard.parts(), "files are written under .part names"
            await asyncio.sleep(0.8)  # past the rotation
        await eventually(lambda: not shard.parts(), "rotated files renamed while running")
        assert archiver.writer.files_finalized >= 3 * len(TYPES)
    assert shard.parts() == []
    lines = shard.lines()
    assert Counter(line["id"] for _, line in lines) == Counter(set(shard.sent))
    files = sorted(shard.data.rglob("*.jsonl.gz"))
    manifest = shard.manifest()
    listed = {entry["path"]: entry for entry in manifest["files"]}
    assert set(listed) == {f"{p.parent.name}/{p.name}" for p in files}
    for path in files:
        entry = listed[f"{path.parent.name}/{path.name}"]
        with gzip.open(path, "rb") as handle:
            seqs = [json.loads(raw)["seq"] for raw in handle]
        assert entry["lines"] == len(seqs)
        assert (entry["seq_first"], entry["seq_last"]) == (min(seqs), max(seqs))
        assert entry["bytes"] == path.stat().st_size
    assert manifest["open"] == []
    assert manifest["lines"] == 180
    assert manifest["seq_ranges"] == [[1, 180]]
    assert manifest["gaps"] == [] and manifest["missing"] == 0 and manifest["duplicates"] == 0


async def test_manifest_lists_gaps_in_the_stream_sequence(shard: Shard) -> None:
    await shard.publish(100)
    nc = await nats.connect(shard.nats_url)
    try:  # messages gone from the stream before the archiver read them: a gap to report
        for seq in [*range(40, 50), 77]:
            await nc.jetstream().delete_msg(shard.stream, seq)
    finally:
        await nc.close()
    archiver = shard.archiver()
    async with running(archiver):
        await eventually(lambda: archiver.stats.archived >= 89, "archived")
    manifest = shard.manifest()
    assert manifest["seq_first"] == 1 and manifest["seq_last"] == 100
    assert manifest["seq_ranges"] == [[1, 39], [50, 76], [78, 100]]
    assert manifest["gaps"] == [[40, 49], [77, 77]]
    assert manifest["missing"] == 11
    assert manifest["lines"] == 89 == sum(e["lines"] for e in manifest["files"])
    assert manifest["stream"] == shard.stream and manifest["shard"] == shard.name


# -- at least once ------------------------------------------------------------------------------


async def test_nothing_is_acked_before_it_is_fsynced(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    await shard.publish(250)
    release = threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        assert release.wait(30)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)  # the module the archive writer calls
    archiver = shard.archiver()
    task = asyncio.create_task(archiver.run())
    try:
        await eventually(lambda: archiver.stats.deliveries >= 100, "deliveries in hand")
        await asyncio.sleep(0.5)
        floor, ack_pending, _ = await shard.consumer_state()
        assert floor == 0 and ack_pending >= 100  # delivered, written, but not synced: no ack
        assert archiver.stats.archived == 0
        release.set()
        await eventually(drained(archiver, 250), "archived after the fsyncs")
        await eventually(
            lambda: _await_floor(shard, 250), "ack floor at the last message", timeout=10
        )
    finally:
        release.set()
        archiver.stop()
        await asyncio.wait_for(task, 20)
    assert len(shard.lines()) == 250


async def _await_floor(shard: Shard, floor: int) -> bool:
    return (await shard.consumer_state())[0] >= floor


async def test_deliveries_to_a_dead_process_are_archived_not_acked_away(shard: Shard) -> None:
    """The ack-all trap: a previous process got a batch and died before writing it. Acking
    anything newer would acknowledge that batch too; the archiver resyncs instead."""
    await shard.publish(200)
    nc = await nats.connect(shard.nats_url)
    try:
        js = nc.jetstream()
        await js.add_consumer(
            shard.stream,
            ConsumerConfig(
                durable_name=consumer_name(shard.name), ack_policy=AckPolicy.ALL, ack_wait=60
            ),
        )
        sub = await js.pull_subscribe_bind(consumer_name(shard.name), shard.stream)
        taken = await sub.fetch(50, timeout=5)  # the dead process's batch: never written
        assert len(taken) == 50
    finally:
        await nc.close()
    archiver = shard.archiver()
    async with running(archiver):
        await eventually(drained(archiver, 200), "everything archived")
        assert archiver.stats.resyncs == 1
    seqs = Counter(line["seq"] for _, line in shard.lines())
    assert sorted(seqs) == list(range(1, 201))
    assert set(seqs.values()) == {1}


async def test_a_disk_slower_than_ack_wait_means_duplicates_never_loss(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream redelivers what stays unacknowledged past `ack_wait`: written twice, each
    copy with its sequence and msg id, counted as duplicates; nothing acked unwritten."""
    await shard.publish(400)
    stalled = threading.Event()
    real_fsync = os.fsync

    def first_fsync_stalls(fd: int) -> None:
        if not stalled.is_set():
            stalled.set()
            time.sleep(1.5)  # three times ack_wait: the rounds in hand time out meanwhile
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", first_fsync_stalls)
    archiver = shard.archiver(ack_wait=0.5, batch_size=100)
    async with running(archiver):
        await eventually(lambda: _await_floor(shard, 400), "everything acked", timeout=30)
        await eventually(drained(archiver, 400), "archived")
    assert archiver.stats.redelivered > 0
    lines = shard.lines()
    seqs = Counter(line["seq"] for _, line in lines)
    assert sorted(seqs) == list(range(1, 401)), "no message missing"
    ids_of: dict[int, set[str]] = {}
    for _, line in lines:
        ids_of.setdefault(line["seq"], set()).add(line["id"])
    assert all(len(ids) == 1 for ids in ids_of.values())
    manifest = shard.manifest()
    assert manifest["duplicates"] == len(lines) - 400 == sum(n - 1 for n in seqs.values())
    assert manifest["seq_ranges"] == [[1, 400]]


async def test_a_consumer_deleted_from_outside_is_recreated_from_the_start(shard: Shard) -> None:
    await shard.publish(100)
    archiver = shard.archiver()
    async with running(archiver):
        await eventually(drained(archiver, 100), "first hundred archived")
        nc = await nats.connect(shard.nats_url)
        try:
            await nc.jetstream().delete_consumer(shard.stream, consumer_name(shard.name))
        finally:
            await nc.close()
        await shard.publish(100)
        await eventually(lambda: _await_floor(shard, 200), "recreated and caught up")
        await eventually(lambda: archiver.stats.acked_seq >= 200, "acked")
        assert archiver.stats.resyncs == 1
    seqs = Counter(line["seq"] for _, line in shard.lines())
    assert sorted(seqs) == list(range(1, 201))  # its position was lost: duplicates, not loss
    assert shard.manifest()["duplicates"] == sum(seqs.values()) - 200


def _start(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


async def test_sigkill_mid_file_then_restart_loses_nothing_acked(shard: Shard) -> None:
    port = free_port()
    log = shard.data.parent / "archiver.log"
    shard.data.mkdir(parents=True, exist_ok=True)
    feed_task = asyncio.create_task(_feed(shard, batches=40, size=100))
    proc = _start(shard.command("--metrics-port", str(port), "--batch-size", "50"), log)
    try:
        await eventually(lambda: _await_floor(shard, 600), "some batches acked", timeout=30)
        proc.kill()  # SIGKILL: no chance to rename, sync or ack anything more
        proc.wait(10)
        acked_before, _, _ = await shard.consumer_state()
        parts = shard.parts()
        assert parts, "the killed archiver left its open files under .part names"
        assert not list(shard.data.rglob("*.jsonl.gz")), "no final name before rotation"
        # and a torn write at the end of one of them: half a gzip member
        member = gzip_member(b'{"seq":999999,"id":"torn"}\n' * 50)
        with open(parts[0], "ab") as handle:
            handle.write(member[: len(member) // 2])
        await feed_task
        total = len(shard.sent)
        proc = _start(shard.command("--metrics-port", str(port), "--batch-size", "50"), log)
        await eventually(lambda: _await_floor(shard, total), "all acked after restart", timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        feed_task.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert shard.parts() == []
    lines = shard.lines()  # every final file decompresses completely: the torn tail is gone
    ids = Counter(line["id"] for _, line in lines)
    assert set(ids) == set(shard.sent), "no message missing"
    by_seq: dict[int, set[str]] = {}
    for _, line in lines:
        by_seq.setdefault(line["seq"], set()).add(line["id"])
    assert all(len(found) == 1 for found in by_seq.values()), "a duplicate is the same message"
    duplicated = {seq for seq, n in Counter(line["seq"] for _, line in lines).items() if n > 1}
    assert all(seq > acked_before for seq in duplicated), "only unacked messages come twice"
    manifest = shard.manifest()
    assert manifest["lines"] == len(lines)
    assert manifest["duplicates"] == len(lines) - len(by_seq)
    assert manifest["seq_ranges"] == [[1, total]] and manifest["gaps"] == []
    assert sum(e["lines"] for e in manifest["files"]) == len(lines)


def test_recovery_keeps_complete_members_and_accounts_what_the_manifest_missed(
    tmp_path: Path,
) -> None:
    """The files a killed archiver leaves: a `.part` the manifest knows up to its first
    member, with a torn last member; a final file renamed just before the kill, which the
    manifest does not list yet. Recovery keeps exactly the complete members."""
    writer = ArchiveWriter(tmp_path, "s1", "ssmd-internal-s1", rotation=3600)

    def member(seqs: range) -> bytes:
        return gzip_member(b"".join(b'{"seq":%d,"id":"m%d","frame":{}}\n' % (s, s) for s in seqs))

    day = tmp_path / "kalshi" / "2024-12-05" / "s1"
    (day / "trade").mkdir(parents=True)
    part = day / "trade" / "trade-20241205T000000Z-1.jsonl.gz.part"
    first, second, torn = member(range(1, 11)), member(range(11, 21)), member(range(21, 31))
    part.write_bytes(first + second + torn[: len(torn) // 2])
    unlisted = day / "trade" / "trade-20241205T000500Z-31.jsonl.gz"
    unlisted.write_bytes(member(range(31, 41)) + member(range(41, 46)))
    manifest = DayManifest(day, "kalshi", "2024-12-05", "s1", "ssmd-internal-s1")
    entry = FileEntry(f"trade/{part.name}", "trade", lines=10, bytes=len(first))
    entry.note(1, 10)
    manifest.open[entry.path] = entry
    manifest.account(list(range(1, 11)))
    manifest.write()

    report = recover(writer)

    assert (report.parts, report.unlisted, report.parts_removed) == (1, 1, 0)
    assert report.truncated_bytes == len(torn) // 2
    assert report.lines == 10 + 15  # the second member and the unlisted file; not the first
    assert not list(day.rglob("*.part"))
    recovered = day / "trade" / part.name.removesuffix(".part")
    assert recovered.read_bytes() == first + second
    with gzip.open(recovered, "rb") as handle:
        assert [json.loads(line)["seq"] for line in handle] == list(range(1, 21))
    data = json.loads((day / "manifest.json").read_text())
    files = {e["path"]: e for e in data["files"]}
    assert files[f"trade/{recovered.name}"]["lines"] == 20
    assert files[f"trade/{recovered.name}"]["bytes"] == len(first + second)
    assert files[f"trade/{unlisted.name}"]["lines"] == 15
    assert (
        files[f"trade/{unlisted.name}"]["seq_first"],
        files[f"trade/{unlisted.name}"]["seq_last"],
    ) == (31, 45)
    assert data["open"] == []
    assert data["lines"] == 35 and data["duplicates"] == 0
    assert data["seq_ranges"] == [[1, 20], [31, 45]] and data["gaps"] == [[21, 30]]
    assert recover(writer).lines == 0  # nothing left to recover: idempotent


async def _feed(shard: Shard, batches: int, size: int) -> None:
    for _ in range(batches):
        await shard.publish(size)
        await asyncio.sleep(0.02)


@pytest.mark.servers
async def test_a_nats_restart_is_an_outage_not_an_exit(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats")
    try:
        shard = await Shard(server.url, tmp_path).create()
        archiver = shard.archiver(batch_size=50)
        async with running(archiver) as task:
            await shard.publish(200)
            await eventually(drained(archiver, 200), "archived before the restart")
            server.restart()
            await shard.publish(200)
            await eventually(drained(archiver, 400), "archived after the restart", timeout=30)
            assert not task.done()
            assert archiver.pull.stats.reconnects >= 1
    finally:
        server.stop()
    assert sorted(line["seq"] for _, line in shard.lines()) == list(range(1, 401))


# -- bounded memory ------------------------------------------------------------------------------


async def test_memory_is_bounded_by_one_fetch_and_one_write(shard: Shard) -> None:
    await shard.publish(3000)
    archiver = shard.archiver(batch_size=100, max_open=2)
    pull, writer = archiver.pull, archiver.writer
    held: list[int] = []
    open_files: list[int] = []
    writes = {"now": 0, "most": 0}
    real_take, real_request, real_write = pull.take, pull.request, writer.write_batch
    refused = []

    def take() -> list[Any]:
        out = real_take()
        held.append(len(out))
        return out

    def request(batch: int, max_bytes: int, expires: float) -> bool:
        assert batch == 100
        if pull.request_open:
            refused.append(batch)
        return real_request(batch, max_bytes, expires)

    def write_batch(*args: Any) -> int:
        writes["now"] += 1
        writes["most"] = max(writes["most"], writes["now"])
        try:
            return real_write(*args)
        finally:
            open_files.append(len(writer.files))
            writes["now"] -= 1

    pull.take, pull.request = take, request  # type: ignore[method-assign]
    writer.write_batch = write_batch  # type: ignore[method-assign,assignment]
    async with running(archiver):
        await eventually(drained(archiver, 3000), "backlog archived")
    assert max(held) <= 100 and sum(held) == 3000  # never more than one fetch in hand
    assert refused == []  # never a second request while one is open
    assert writes["most"] == 1  # one round written at a time
    assert max(open_files) <= 2  # open files bounded although there are 3 types
    assert len(shard.lines()) == 3000


# -- reports ----------------------------------------------------------------------------------


async def test_redis_reports_with_a_ttl_and_redis_down_changes_nothing_else(
    shard: Shard, tmp_path: Path
) -> None:
    import redis.asyncio as aioredis

    server = start_redis(tmp_path / "redis")
    client = aioredis.Redis.from_url(server.url)
    archiver = shard.archiver(redis_url=server.url, report_interval=0.1)
    try:
        async with running(archiver):
            await shard.publish(100)
            key = redis_keys.archiver_key(shard.env.name, shard.name)

            async def reported() -> bool:
                values = await client.hgetall(key)
                return values.get(b"messages") == b"100"

            await eventually(reported, "the archiver's hash in Redis")
            values = await client.hgetall(key)
            assert {b"messages", b"bytes", b"files", b"lag"} <= set(values)
            assert 0 < await client.ttl(key) <= redis_keys.KEY_TTL_SECONDS
            await client.aclose()
            server.kill()
            await shard.publish(150)
            await eventually(drained(archiver, 250), "archived with Redis down")
            await eventually(lambda: not archiver.redis_ok, "Redis seen down")
            assert archiver.port is not None
            async with aiohttp.ClientSession() as http:
                assert (await http.get(f"http://127.0.0.1:{archiver.port}/healthz")).status == 200
    finally:
        server.stop()
    assert len(shard.lines()) == 250


# -- bad inputs --------------------------------------------------------------------------------


def test_bad_inputs_are_clear_errors(nats_url: str, tmp_path: Path) -> None:
    shard = Shard(nats_url, tmp_path)  # its stream is never created

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ssmd_infra", "run", "archiver", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    common = ["--data-dir", str(shard.data), "--metrics-port", "0"]
    cases = [
        ([str(shard.env_file), "nope", "--nats-url", nats_url, *common], "no shard 'nope'"),
        (
            [str(shard.env_file), shard.name, "--nats-url", nats_url, "--batch-size", "0", *common],
            "--batch-size",
        ),
        (
            [
                str(shard.env_file),
                shard.name,
                "--nats-url",
                f"nats://127.0.0.1:{free_port()}",
                *common,
            ],
            "cannot connect to NATS",
        ),
        ([str(shard.env_file), shard.name, "--nats-url", nats_url, *common], "does not exist"),
    ]
    for args, expected in cases:
        result = run(*args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert expected in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


# -- SIGTERM in awkward states: a clean exit, whatever the process is doing ---------------------
#
# `ssmd local up` gives an archiver DRAIN_TIMEOUT after SIGTERM, then kills it. Whatever state
# the signal finds — starting, connecting to a NATS that does not answer, resyncing, NATS gone,
# mid-stream under load — the process must exit 0 with every file under its final name and
# the manifests complete. Time limits here are generous: the behaviour is asserted, not speed.

STOP_TIMEOUT = 60.0


async def _exit_code(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int | None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


async def _sigterm(proc: subprocess.Popen[bytes]) -> int | None:
    proc.send_signal(signal.SIGTERM)
    return await _exit_code(proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def _logged(log: Path, text: str) -> None:
    await eventually(
        lambda: log.is_file() and text in log.read_text(errors="replace"),
        f"{text!r} in {log.name}",
        timeout=STOP_TIMEOUT,
    )


def _consistent_archive(shard: Shard) -> set[int]:
    """No `.part` left, every final file complete, and every day's manifest lists exactly
    the final files on disk and accounts for exactly their lines and sequences. Returns the
    sequences archived."""
    assert shard.parts() == [], "files left under .part names"
    lines = shard.lines()
    listed = 0
    for day in shard.day_dirs():
        manifest = json.loads((day / "manifest.json").read_text())
        assert manifest["open"] == []
        on_disk = {f"{p.parent.name}/{p.name}" for p in day.glob("*/*.jsonl.gz")}
        assert {e["path"] for e in manifest["files"]} == on_disk
        day_lines = [line for path, line in lines if path.parent.parent == day]
        assert manifest["lines"] == len(day_lines) == sum(e["lines"] for e in manifest["files"])
        covered = {s for start, end in manifest["seq_ranges"] for s in range(start, end + 1)}
        assert covered == {line["seq"] for line in day_lines}
        listed += manifest["lines"]
    assert listed == len(lines)
    return {line["seq"] for _, line in lines}


async def _leave_unacked_deliveries(shard: Shard, count: int) -> None:
    """A previous process took `count` deliveries and died: the next start must resync."""
    nc = await nats.connect(shard.nats_url)
    try:
        js = nc.jetstream()
        await js.add_consumer(
            shard.stream,
            ConsumerConfig(
                durable_name=consumer_name(shard.name), ack_policy=AckPolicy.ALL, ack_wait=60
            ),
        )
        sub = await js.pull_subscribe_bind(consumer_name(shard.name), shard.stream)
        assert len(await sub.fetch(count, timeout=5)) == count
    finally:
        await nc.close()


async def test_sigterm_at_any_step_of_start_up_is_a_clean_exit(shard: Shard) -> None:
    """From its first log line on — loading the environment, recovering files, connecting,
    resyncing a consumer a dead process left with deliveries outstanding, starting to fetch —
    a SIGTERM stops the archiver cleanly, and the next start still archives everything."""
    await shard.publish(300)
    await _leave_unacked_deliveries(shard, 50)
    shard.data.mkdir(parents=True, exist_ok=True)
    for i, delay in enumerate((0.0, 0.05, 0.15, 0.3, 0.6, 1.0)):
        log = shard.data.parent / f"archiver-{i}.log"
        proc = _start(shard.command("--metrics-port", "0", "--batch-size", "20"), log)
        try:
            await _logged(log, "starting")
            await asyncio.sleep(delay)
            code = await _sigterm(proc)
            assert code == 0, (delay, code, log.read_text())
        finally:
            _reap(proc)
        _consistent_archive(shard)
    log = shard.data.parent / "archiver-last.log"
    proc = _start(shard.command("--metrics-port", "0"), log)
    try:
        await _logged(log, "started")
        await eventually(lambda: _await_floor(shard, 300), "all acked", timeout=STOP_TIMEOUT)
        assert await _sigterm(proc) == 0
    finally:
        _reap(proc)
    assert _consistent_archive(shard) == set(range(1, 301))


async def test_sigterm_while_nats_does_not_answer_is_a_clean_exit(shard: Shard) -> None:
    """A NATS that accepts the connection and says nothing (stalled, overloaded): the
    connection attempt is abandoned at SIGTERM — exit 0, not a connection error after its
    retries — and the `.part` a killed predecessor left is still finalised."""
    import socket

    day = shard.data / "kalshi" / "2024-12-05" / shard.name
    (day / "trade").mkdir(parents=True)
    part = day / "trade" / "trade-20241205T000000Z-1.jsonl.gz.part"
    part.write_bytes(
        gzip_member(b"".join(b'{"seq":%d,"id":"m%d","frame":{}}\n' % (s, s) for s in range(1, 11)))
    )
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        command = shard.command("--metrics-port", "0")
        command[command.index("--nats-url") + 1] = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        log = shard.data.parent / "archiver.log"
        proc = _start(command, log)
        try:
            await _logged(log, "starting")
            await asyncio.sleep(0.5)  # connecting: each attempt waits 2 s for the server
            code = await _sigterm(proc)
        finally:
            _reap(proc)
    text = log.read_text()
    assert code == 0, text
    assert "cannot connect" not in text
    assert _consistent_archive(shard) == set(range(1, 11))


@pytest.mark.servers
async def test_sigterm_with_nats_gone_is_a_clean_exit(tmp_path: Path) -> None:
    """NATS went away mid-run (both connections retrying): the files still get their final
    names and the manifests; what was acked is archived."""
    server = start_nats(tmp_path / "nats")
    try:
        shard = await Shard(server.url, tmp_path).create()
        await shard.publish(500)
        shard.data.mkdir(parents=True, exist_ok=True)
        log = tmp_path / "archiver.log"
        proc = _start(shard.command("--metrics-port", "0", "--batch-size", "50"), log)
        try:
            await eventually(lambda: _await_floor(shard, 500), "acked", timeout=STOP_TIMEOUT)
            server.kill()
            await _logged(log, "lost the NATS connection")
            code = await _sigterm(proc)
            assert code == 0, log.read_text()
        finally:
            _reap(proc)
    finally:
        server.stop()
    assert _consistent_archive(shard) == set(range(1, 501))


async def test_sigterm_while_a_resync_keeps_failing_is_a_clean_exit(shard: Shard) -> None:
    """The stream deleted from outside: the consumer is gone and every resync fails, retried
    every second. A SIGTERM ends the retries: exit 0, files final, manifests complete."""
    await shard.publish(200)
    shard.data.mkdir(parents=True, exist_ok=True)
    log = shard.data.parent / "archiver.log"
    proc = _start(shard.command("--metrics-port", "0", "--batch-size", "50"), log)
    try:
        await eventually(lambda: _await_floor(shard, 200), "acked", timeout=STOP_TIMEOUT)
        nc = await nats.connect(shard.nats_url)
        try:
            await nc.jetstream().delete_stream(shard.stream)
        finally:
            await nc.close()
        await _logged(log, "resync failed")
        code = await _sigterm(proc)
        assert code == 0, log.read_text()
    finally:
        _reap(proc)
    assert _consistent_archive(shard) == set(range(1, 201))


async def test_sigterm_mid_stream_under_load_is_a_clean_exit(shard: Shard) -> None:
    """Messages arriving all along, small batches, a request and a write in flight: each
    SIGTERM gives exit 0, final files and complete manifests, and never an ack beyond what
    is archived; the last start archives the rest."""
    shard.data.mkdir(parents=True, exist_ok=True)
    feed = asyncio.create_task(_feed(shard, batches=60, size=100))
    try:
        for i in range(3):
            floor_before = (await shard.consumer_state())[0]
            log = shard.data.parent / f"archiver-{i}.log"
            proc = _start(shard.command("--metrics-port", "0", "--batch-size", "20"), log)
            try:
                await eventually(
                    lambda f=floor_before: _await_floor(shard, f + 200),
                    "progress under load",
                    timeout=STOP_TIMEOUT,
                )
                code = await _sigterm(proc)
                assert code == 0, log.read_text()
            finally:
                _reap(proc)
            seqs = _consistent_archive(shard)
            floor = (await shard.consumer_state())[0]
            assert set(range(1, floor + 1)) <= seqs, "acked but not archived"
        await feed
    finally:
        feed.cancel()
    total = len(shard.sent)
    log = shard.data.parent / "archiver-last.log"
    proc = _start(shard.command("--metrics-port", "0"), log)
    try:
        await _logged(log, "started")
        await eventually(lambda: _await_floor(shard, total), "all acked", timeout=STOP_TIMEOUT)
        assert await _sigterm(proc) == 0
    finally:
        _reap(proc)
    assert _consistent_archive(shard) == set(range(1, total + 1))
    ids = {line["id"] for _, line in shard.lines()}
    assert ids == set(shard.sent)


async def test_an_archiver_the_local_pipeline_kills_has_its_part_files_finalised(
    shard: Shard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An archiver that does not exit within the drain timeout (here: stopped with SIGSTOP)
    is killed by `ssmd local up`, leaving `.part` files; for a shard removed at a roll no
    archiver starts again, so the pipeline finalises them itself."""
    from ssmd_infra.local import supervisor as local
    from ssmd_infra.local.children import Child, ChildSpec

    await shard.publish(300)
    shard.data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = shard.data.parent / "archiver.log"
    # the runtime arguments, after `python -m ssmd_infra run`
    args = shard.command("--metrics-port", str(port), "--batch-size", "50")[4:]
    child = Child(ChildSpec("archiver", shard.name, tuple(args), port), log, os.environ)
    proc = child.proc
    pipeline = local.LocalPipeline(str(shard.env_file), shard.data, nats_url=shard.nats_url)
    pipeline.children.append(child)
    try:
        await eventually(lambda: _await_floor(shard, 300), "acked", timeout=STOP_TIMEOUT)
        assert shard.parts(), "rotation is an hour: its files are open"
        proc.send_signal(signal.SIGSTOP)  # hung: SIGTERM cannot stop it in time
        monkeypatch.setattr(local, "DRAIN_TIMEOUT", 3.0)
        await pipeline._stop_archivers({shard.name})
        assert proc.returncode == -signal.SIGKILL
        assert pipeline.children == []
    finally:
        _reap(proc)
    assert _consistent_archive(shard) == set(range(1, 301))
