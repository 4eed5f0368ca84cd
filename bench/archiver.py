"""Archiver benchmark: drain a pre-filled shard stream, against a naive loop in the same run.

    .venv/bin/python bench/archiver.py [--messages 1000000] [--repeat 1] [--batch-size 1000]

A nats-server on a loopback port gets one shard stream pre-filled with N realistic Kalshi
trade frames (≈ 288 bytes, 100 markets with dotted tickers, `Nats-Msg-Id` = `trade:{uuid}`),
published with acknowledgement. Then, on the same stored messages, each with its own
durable consumer and its own empty data directory:

- baseline: the naive loop, as its own process — nats-py `pull_subscribe` + `fetch(1000)`,
  for each message one line (`seq`, msg id, subject, raw frame) written with
  `gzip.open(..., compresslevel=6).write`, then `msg.ack()`; no fsync (which only flatters
  it);
- archiver: `ssmd run archiver` exactly as deployed (fsync before ack, ack-all per batch);
- floor (for reference): the naive loop's fetch and per-message ack alone, writing nothing
  (an earlier estimate: "fetch(1000) + ack per message ≈ 35k msgs/s").

Both are timed from outside the same way: a poller reads the consumer's state every 50 ms;
the run starts at the first delivery and ends when the ack floor reaches N. CPU seconds of
the process (psutil) give msgs per CPU-second too; the archiver's RSS is sampled every
50 ms (peak reported). Goal: archiver ≥ 2.5× the baseline's msgs/s, RSS < 256 MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nats  # noqa: E402
import psutil  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402

from ssmd_infra.adapters.jetstream import reconcile_streams  # noqa: E402
from ssmd_infra.core.environment import load_environment  # noqa: E402
from ssmd_infra.core.streams import stream_specs  # noqa: E402
from ssmd_infra.core.subjects import internal_stream, internal_subject  # noqa: E402
from ssmd_infra.local.servers import free_port, start_nats  # noqa: E402

SHARD = "bench"
FEED = "kalshi"
MARKETS = [f"KXBENCH-25DEC31-B{i}.5" for i in range(100)]
STREAM = internal_stream(SHARD)
BASELINE_CONSUMER = "naive"


def env_yaml(batch_size: int) -> str:
    symbols = "\n".join(f"  {m}: {{tier: 1}}" for m in MARKETS)
    # the benchmark's nats-server is anonymous (the archiver's role adds no per-message cost:
    # permissions are checked by the server; see docs/BENCHMARKS.md, NATS permissions)
    return f"""name: bench
feed: {FEED}
nats: {{auth: none}}
symbols:
{symbols}
streams:
  internal: {{max_age: 2h, max_bytes: 4Gi, duplicate_window: 2m}}
archiver:
  rotation: 1h
  batch_size: {batch_size}
shards:
  {SHARD}:
    selector: {{tier: 1}}
    replicas: 1
"""


def trade_frame(rng: random.Random, sid: int, seq: int) -> tuple[str, bytes, str]:
    """(ticker, frame, msg id) of one Kalshi WebSocket v2 trade message."""
    ticker = MARKETS[seq % len(MARKETS)]
    yes = rng.randint(1, 99)
    count = rng.randint(1, 500)
    trade_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    body = {
        "trade_id": trade_id,
        "market_ticker": ticker,
        "yes_price": yes,
        "no_price": 100 - yes,
        "yes_price_dollars": f"{yes / 100:.4f}",
        "no_price_dollars": f"{(100 - yes) / 100:.4f}",
        "count": count,
        "count_fp": f"{count}.00",
        "taker_side": rng.choice(("yes", "no")),
        "ts": 1733407387 + seq // 1000,
    }
    frame = {"type": "trade", "sid": sid, "seq": seq, "msg": body}
    return ticker, json.dumps(frame, separators=(",", ":")).encode(), f"trade:{trade_id}"


async def prefill(nats_url: str, count: int) -> float:
    """Publish `count` frames with acknowledgement (the connector's publisher); returns the
    mean frame size."""
    from runtime.nats.publisher import JetStreamPublisher

    rng = random.Random(int.from_bytes(os.urandom(4), "big"))  # fresh ids: dedup hides nothing
    publisher = JetStreamPublisher(nats_url, name="bench-prefill", max_inflight=8192)
    await publisher.start()
    await publisher.wait_connected(5)
    subjects = {m: internal_subject(SHARD, FEED, "trade", m).encode() for m in MARKETS}
    size = 0
    for seq in range(count):
        ticker, frame, msg_id = trade_frame(rng, 1, seq)
        size += len(frame)
        while publisher.room <= 0:
            await publisher.wait_for_room()
        publisher.publish(subjects[ticker], frame, msg_id.encode())
    if not await publisher.drain(120):
        raise RuntimeError("prefill: the stream did not acknowledge everything")
    await publisher.close()
    return size / count


# -- the naive loop, run as its own process ----------------------------------------------------


async def role_baseline(nats_url: str, out_dir: str, write: bool = True) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(BASELINE_CONSUMER, STREAM)
    path = Path(out_dir) / "naive.jsonl.gz"
    with gzip.open(path, "ab", compresslevel=6) as out:
        while True:
            try:
                msgs = await sub.fetch(1000, timeout=2.0)
            except nats.errors.TimeoutError:
                continue
            if not write:
                for msg in msgs:
                    await msg.ack()
                continue
            for msg in msgs:
                meta = msg.metadata
                msg_id = (msg.headers or {}).get("Nats-Msg-Id", "")
                line = b'{"seq":%d,"id":"%s","subject":"%s","frame":%s}\n' % (
                    meta.sequence.stream,
                    msg_id.encode(),
                    msg.subject.encode(),
                    msg.data,
                )
                out.write(line)
                await msg.ack()


# -- measurement -------------------------------------------------------------------------------


async def measure(
    nats_url: str, consumer: str, proc: subprocess.Popen[bytes], count: int
) -> dict[str, Any]:
    """Poll the consumer until its ack floor reaches `count`; time, CPU and peak RSS."""
    ps = psutil.Process(proc.pid)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    start: float | None = None
    cpu0 = 0.0
    peak = 0
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{consumer}: the process exited with {proc.returncode}")
            with_children = ps.memory_info().rss
            peak = max(peak, with_children)
            try:
                info = await js.consumer_info(STREAM, consumer, timeout=2)
            except NotFoundError:
                await asyncio.sleep(0.05)
                continue
            now = time.monotonic()
            if start is None and info.delivered is not None and info.delivered.consumer_seq > 0:
                start = now
                times = ps.cpu_times()
                cpu0 = times.user + times.system
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if floor >= count:
                times = ps.cpu_times()
                cpu = times.user + times.system - cpu0
                assert start is not None
                elapsed = now - start
                return {
                    "seconds": elapsed,
                    "rate": count / elapsed,
                    "cpu": cpu,
                    "per_cpu_second": count / cpu if cpu > 0 else float("nan"),
                    "peak_rss": peak,
                }
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def add_baseline_consumer(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    with contextlib.suppress(NotFoundError):
        await js.delete_consumer(STREAM, BASELINE_CONSUMER)
    await js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=BASELINE_CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=60),
    )
    await nc.close()


async def delete_consumer(nats_url: str, name: str) -> None:
    nc = await nats.connect(nats_url)
    with contextlib.suppress(NotFoundError):
        await nc.jetstream().delete_consumer(STREAM, name)
    await nc.close()


def stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


async def run_baseline(
    nats_url: str, work: Path, count: int, role: str = "baseline"
) -> dict[str, Any]:
    await add_baseline_consumer(nats_url)
    out = work / "naive"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--nats-url", nats_url, "--out", str(out)]
    )
    try:
        return await measure(nats_url, BASELINE_CONSUMER, proc, count)
    finally:
        proc.kill()
        proc.wait()


async def run_archiver(nats_url: str, work: Path, env_file: Path, count: int) -> dict[str, Any]:
    await delete_consumer(nats_url, f"archiver-{SHARD}")
    data = work / "archive"
    shutil.rmtree(data, ignore_errors=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ssmd_infra",
            "run",
            "archiver",
            str(env_file),
            SHARD,
            "--nats-url",
            nats_url,
            "--data-dir",
            str(data),
            "--metrics-port",
            str(free_port()),
            "--log-level",
            "WARNING",
        ],
        cwd=REPO,
    )
    try:
        result = await measure(nats_url, f"archiver-{SHARD}", proc, count)
    finally:
        code = stop(proc)
    result["exit"] = code
    lines = 0
    for path in data.rglob("*.jsonl.gz"):
        with gzip.open(path, "rb") as handle:
            lines += sum(1 for _ in handle)
    result["lines"] = lines
    result["parts_left"] = len(list(data.rglob("*.part")))
    return result


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="ssmd-bench-archiver-"))
    env_file = work / "bench.yaml"
    env_file.write_text(env_yaml(args.batch_size))
    server = start_nats(work / "nats")
    try:
        await reconcile_streams(server.url, stream_specs(load_environment(env_file)))
        t0 = time.monotonic()
        size = await prefill(server.url, args.messages)
        print(
            f"prefilled {args.messages:,} trade frames (mean {size:.0f} bytes) in "
            f"{time.monotonic() - t0:.1f}s",
            flush=True,
        )
        ratios = []
        for i in range(args.repeat):
            base = await run_baseline(server.url, work, args.messages)
            print(
                f"[{i + 1}] baseline: {base['rate']:,.0f} msg/s ({base['seconds']:.1f}s, "
                f"{base['per_cpu_second']:,.0f} msgs/CPU-s, peak RSS "
                f"{base['peak_rss'] / 2**20:.0f} MiB)",
                flush=True,
            )
            arch = await run_archiver(server.url, work, env_file, args.messages)
            print(
                f"[{i + 1}] archiver: {arch['rate']:,.0f} msg/s ({arch['seconds']:.1f}s, "
                f"{arch['per_cpu_second']:,.0f} msgs/CPU-s, peak RSS "
                f"{arch['peak_rss'] / 2**20:.0f} MiB, exit {arch['exit']}, "
                f"{arch['lines']:,} lines, {arch['parts_left']} .part left)",
                flush=True,
            )
            ratios.append(arch["rate"] / base["rate"])
            print(f"[{i + 1}] ratio: {ratios[-1]:.2f}x", flush=True)
            if args.floor:
                floor = await run_baseline(server.url, work, args.messages, "floor")
                print(
                    f"[{i + 1}] floor (fetch + ack each, no writing): {floor['rate']:,.0f} msg/s "
                    f"({floor['per_cpu_second']:,.0f} msgs/CPU-s); archiver "
                    f"{arch['rate'] / floor['rate']:.2f}x",
                    flush=True,
                )
        print(
            f"median ratio {statistics.median(ratios):.2f}x over {len(ratios)} run(s) "
            f"({', '.join(f'{r:.2f}' for r in ratios)})"
        )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--no-floor", dest="floor", action="store_false", help="skip the no-write reference"
    )
    parser.add_argument("--role", choices=["baseline", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--nats-url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.role is not None:
        asyncio.run(role_baseline(parsed.nats_url, parsed.out, write=parsed.role == "baseline"))
    else:
        asyncio.run(main(parsed))
