"""`ssmd archive verify`: an archive written by the real pipeline (Kalshi simulator, connector,
nats-server, archiver) verifies clean, whatever the exchange does to its payloads and
sequences; an archive with a message taken out fails, naming the shard, the origin and the
missing sequence."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import pytest
from waiting import eventually, running

from runtime.archiver.service import Archiver
from runtime.archiver.verify import verify_archive
from runtime.archiver.writer import gzip_member
from runtime.connector.service import Connector
from runtime.connector.settings import ConnectorSettings
from runtime.kalshi.protocol import GAP_TYPE, gap_record, message_id, new_epoch
from runtime.kalshi.protocol import Frame as KalshiFrame
from runtime.kalshi.simulator import KalshiSimulator
from runtime.nats.publisher import JetStreamPublisher
from ssmd_infra.adapters.jetstream import reconcile_streams
from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.streams import internal_stream_spec
from ssmd_infra.core.subjects import internal_stream, internal_subject
from ssmd_infra.local.servers import free_port

pytestmark = pytest.mark.servers

REPO = Path(__file__).resolve().parents[3]
MARKETS = ["BTCUSD", "ETHUSD", "INXD-25-B4012.5", "FED-25DEC-T4.25"]


class Pipeline:
    """One shard (its own stream), a simulated exchange, and the archive directory."""

    def __init__(self, nats_url: str, tmp_path: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.shard = f"v{tag}"
        symbols = "\n".join(f"  {s}: {{tier: 1}}" for s in MARKETS)
        self.env_file = tmp_path / f"verify-{tag}.yaml"
        self.env_file.write_text(
            f"""
name: verify-{tag}
feed: kalshi
symbols:
{symbols}
streams:
  internal: {{max_age: 1h, max_bytes: 64Mi, duplicate_window: 2m}}
nats: {{auth: none}}  # the shared test server is anonymous; roles: tests/runtime/test_nats_roles.py
shards:
  {self.shard}: {{selector: {{tier: 1}}, replicas: 1}}
"""
        )
        self.env: Environment = parse_environment(self.env_file.read_text(), str(self.env_file))
        self.nats_url = nats_url
        self.data = tmp_path / "archive"
        self.sim = KalshiSimulator(
            {m: {"category": "test"} for m in MARKETS}, rate_per_market=40, tick=0.002
        )

    async def start(self) -> Pipeline:
        await reconcile_streams(self.nats_url, [internal_stream_spec(self.env, self.shard)])
        await self.sim.start()
        return self

    def connector(self) -> Connector:
        settings = ConnectorSettings(
            nats_url=self.nats_url,
            kalshi_ws_url=self.sim.ws_url,
            metrics_port=0,
            client_options={"backoff_initial": 0.05, "backoff_max": 0.2},
        )
        return Connector(self.env, self.shard, settings)

    def archiver(self) -> Archiver:
        return Archiver(
            self.env, self.shard, nats_url=self.nats_url, data_dir=self.data, metrics_port=0
        )

    async def stored(self) -> int:
        nc = await nats.connect(self.nats_url)
        try:
            info = await nc.jetstream().stream_info(internal_stream(self.shard))
            return int(info.state.messages)
        finally:
            await nc.close()

    async def archive_everything(self) -> None:
        """Run the archiver until it has written and acknowledged the whole stream."""
        total = await self.stored()
        archiver = self.archiver()
        async with running(archiver):
            await eventually(
                lambda: archiver.stats.archived >= total and archiver.stats.acked_seq >= total,
                "the stream archived",
            )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.data.rglob("*.jsonl.gz")):
            with gzip.open(path, "rb") as handle:
                out.extend(json.loads(raw) for raw in handle)
        return out


@pytest.fixture
async def pipeline(nats_url: str, tmp_path: Path) -> Any:
    built = await Pipeline(nats_url, tmp_path).start()
    yield built
    await built.sim.stop()


def verify_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ssmd_infra", "archive", "verify", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


async def quiesce(pipeline: Pipeline, connector: Connector) -> None:
    """Stop the exchange; wait until every frame read is acknowledged by the stream."""
    pipeline.sim.set_rate(0)
    last = -1
    while True:
        await eventually(
            lambda: connector.publisher.inflight == 0 and len(connector.buffer) == 0,
            "connector drained",
        )
        if connector.received == last:
            return
        last = connector.received
        await asyncio.sleep(0.3)


async def test_byte_identical_tickers_are_each_archived_and_the_archive_verifies(
    pipeline: Pipeline,
) -> None:
    sim = pipeline.sim
    connector = pipeline.connector()
    async with running(connector):
        await eventually(lambda: sum(sim.sent.values()) >= 200, "traffic")
        sim.identical_tickers(True)  # A→B→A within a second: the same payload, new seqs
        await eventually(lambda: sum(sim.sent.values()) >= 400, "traffic with repeats")
        sim.identical_tickers(False)
        sim.skip_sequence(3)  # the exchange skips seqs on every subscription
        await eventually(lambda: sum(sim.sent.values()) >= 600, "traffic after the gap")
        await quiesce(pipeline, connector)
    assert connector.forwarder.gap_records >= 2  # one per subscription (trade, ticker)
    await pipeline.archive_everything()

    lines = pipeline.lines()
    data = [line for line in lines if line["type"] != GAP_TYPE]
    archived = Counter((line["type"], line["symbol"]) for line in data)
    assert archived == sim.sent  # every message the exchange sent, once
    tickers = [line for line in data if line["type"] == "ticker"]
    payloads = Counter(json.dumps(line["frame"]["msg"], sort_keys=True) for line in tickers)
    assert sum(n - 1 for n in payloads.values() if n > 1) >= 40  # the repeats: all kept
    assert all(line["epoch"] for line in tickers) and len({line["epoch"] for line in tickers}) == 1

    report = verify_archive(pipeline.data)
    (shard,) = report.shards
    assert report.ok, shard.to_json()
    assert shard.lines == len(lines) and shard.trades == archived_trades(data)
    assert shard.stream_holes == [] and shard.stream_duplicates == 0 and not shard.part_files
    recorded = [g for o in shard.origins for g in o.recorded]
    assert len(recorded) >= 2 and all(b - a + 1 == 3 for a, b in recorded)
    assert {o.type for o in shard.origins if o.recorded} == {"trade", "ticker"}
    assert sum(o.lines for o in shard.origins) == len(tickers)

    result = verify_command(str(pipeline.data), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"] is True


def archived_trades(lines: list[dict[str, Any]]) -> int:
    return sum(1 for line in lines if line["type"] == "trade")


class Feed:
    """Frames published straight into a shard stream as one connector connection would."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.epoch = new_epoch()
        self.items: list[tuple[bytes, bytes, bytes]] = []

    def ticker(self, sid: int, seq: int, symbol: str) -> None:
        body = {"market_ticker": symbol, "price": 50, "ts": 1}
        raw = json.dumps({"type": "ticker", "sid": sid, "seq": seq, "msg": body}).encode()
        subject = internal_subject(self.pipeline.shard, "kalshi", "ticker", symbol).encode()
        self.items.append((subject, raw, message_id("ticker", self.epoch, sid, seq).encode()))

    def gap(self, sid: int, first_missing: int, next_seq: int, symbol: str) -> None:
        frame = KalshiFrame(b"", "ticker", symbol, "", self.epoch, sid, next_seq, first_missing)
        record = gap_record(frame)
        assert record is not None
        subject = internal_subject(self.pipeline.shard, "kalshi", GAP_TYPE, symbol).encode()
        self.items.append((subject, record.raw, record.msg_id.encode()))

    async def publish(self) -> None:
        publisher = JetStreamPublisher(self.pipeline.nats_url, name="test-verify-feed")
        await publisher.start()
        try:
            for item in self.items:
                while publisher.room <= 0:
                    await publisher.wait_for_room()
                publisher.publish(*item)
            assert await publisher.drain(20)
        finally:
            await publisher.close()


def rewrite_without(path: Path, drop: Any) -> None:
    """Rewrite an archive file without the lines `drop(line)` selects: a message lost."""
    with gzip.open(path, "rb") as handle:
        kept = [raw for raw in handle if not drop(json.loads(raw))]
    path.write_bytes(gzip_member(b"".join(kept)))


async def test_a_hole_fails_the_audit_naming_shard_epoch_sid_and_seq(
    pipeline: Pipeline,
) -> None:
    feed = Feed(pipeline)
    for seq in range(1, 41):
        feed.ticker(1, seq, MARKETS[seq % 2])
    feed.gap(1, 41, 44, MARKETS[0])  # the exchange skipped 41..43: recorded, not a loss
    for seq in range(44, 61):
        feed.ticker(1, seq, MARKETS[0])
    for seq in range(1, 21):
        feed.ticker(2, seq, MARKETS[2])
    await feed.publish()
    await pipeline.archive_everything()

    clean = verify_command(str(pipeline.data), "--shard", pipeline.shard)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (shard,) = verify_archive(pipeline.data).shards
    assert shard.ok and shard.lines == 78
    by_sid = {o.sid: o for o in shard.origins}
    assert by_sid[1].recorded == [(41, 43)] and by_sid[1].holes == []
    assert (by_sid[1].first, by_sid[1].last, by_sid[2].last) == (1, 60, 20)

    (ticker_file,) = pipeline.data.rglob("ticker/*.jsonl.gz")
    rewrite_without(ticker_file, lambda line: line["sid"] == 1 and line["exchange_seq"] == 17)

    result = verify_command(str(pipeline.data))
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    assert (
        f"hole shard {pipeline.shard} epoch {feed.epoch} sid 1 (ticker): exchange seq 17..17"
        in (text)
    )
    assert f"hole shard {pipeline.shard}: stream seq 17..17 missing" in text
    report = json.loads(verify_command(str(pipeline.data), "--json").stdout)
    (bad,) = report["shards"]
    assert report["ok"] is False and bad["ok"] is False
    assert bad["stream"]["holes"] == [[17, 17]]
    origin = next(o for o in bad["origins"] if o["sid"] == 1)
    assert origin["epoch"] == feed.epoch
    assert origin["holes"] == [[17, 17]] and origin["recorded_gaps"] == [[41, 43]]


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(SsmdError, match="not a directory"):
        verify_archive(tmp_path / "absent")
    with pytest.raises(SsmdError, match="no archive for date 2026-01-01"):
        verify_archive(tmp_path, date="2026-01-01")
    result = verify_command(str(tmp_path), "--date", "yesterday")
    assert result.returncode == 1 and "--date 'yesterday': use YYYY-MM-DD" in result.stderr


async def test_a_connector_killed_and_restarted_within_the_dedup_window_loses_nothing(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    """The restarted process gets a new epoch: its sids and seqs start again at 1, and no
    frame of it is taken for one of the killed process's (a 2-minute dedup window)."""
    sim = pipeline.sim
    log = tmp_path / "connector.log"

    def start() -> subprocess.Popen[bytes]:
        args = [
            *(sys.executable, "-m", "ssmd_infra", "run", "connector"),
            *(str(pipeline.env_file), pipeline.shard, "--nats-url", pipeline.nats_url),
            *("--kalshi-ws-url", sim.ws_url, "--metrics-port", str(free_port())),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("KALSHI_")}
        with log.open("ab") as out:
            return subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=out)

    first = start()
    try:
        await eventually(lambda: sum(sim.sent.values()) >= 300, "traffic", timeout=30)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        await eventually(lambda: sim.stats()["connections"] == 0, "the socket gone")
        await asyncio.sleep(0.3)
        stored_before, sent_before = await pipeline.stored(), sum(sim.sent.values())
        assert stored_before > 0
        second = start()
        try:
            await eventually(
                lambda: sum(sim.sent.values()) >= sent_before + 300, "traffic again", timeout=30
            )
            sim.set_rate(0)
            sent_after = sum(sim.sent.values())
            await eventually(
                lambda: _stored_reaches(pipeline, stored_before + sent_after - sent_before),
                "everything the restarted connector received, stored",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(20) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert await pipeline.stored() == stored_before + sent_after - sent_before

    await pipeline.archive_everything()
    (shard,) = verify_archive(pipeline.data).shards
    assert shard.ok, shard.to_json()
    epochs = {o.epoch for o in shard.origins}
    assert len(epochs) == 2  # the killed connection and the new one, both audited
    assert all(o.first == 1 and o.holes == [] for o in shard.origins)  # each from seq 1


async def _stored_reaches(pipeline: Pipeline, count: int) -> bool:
    return await pipeline.stored() >= count


def test_the_local_pipelines_own_files_under_dot_local_are_not_an_archive(tmp_path: Path) -> None:
    """`ssmd local up` keeps nats-server's JetStream store (and logs, keys) under
    `DIR/.local/`: three levels deep, like `{feed}/{date}/{shard}`, but not a shard."""
    (tmp_path / ".local" / "nats" / "jetstream").mkdir(parents=True)
    with pytest.raises(SsmdError, match="no archive"):
        verify_archive(tmp_path)
