"""Aggregation benchmark: does `ssmd-client` keep up with the shards' combined input?

    .venv/bin/python bench/aggregate.py [--rate 100000] [--seconds 20] [--shards 4]
                                        [--publishers 4] [--max-seconds 15] [--repeat 1]
                                        [--republish]

The client stream sources every shard stream with a subject transform (one sourcing
goroutine per source in nats-server); it has been reported to top out near 20k msg/s on
some deployments, while the expected tier1 + tier2 load alone is 53k msg/s. This measures it
here, with the project's own stream code (`ssmd_infra.core.streams.stream_specs` +
`ssmd_infra.adapters.jetstream.reconcile_streams`) on a real nats-server ≥ 2.10 on loopback.

Input: realistic ~288-byte Kalshi `trade` frames with `Nats-Msg-Id`, published into the
shard streams by `--publishers` processes (one per shard by default, like the connectors)
through the connector's own acknowledged publisher (`runtime/nats/publisher.py`), paced to
`--rate` combined. Every message is acknowledged by its stream, so nothing is lost
silently, and the stored counts are checked at the end.

Phases, each on a fresh nats-server (a fresh store), alternating when `--repeat` > 1:

- baseline: the same input (same subjects' shape, sizes, ids, publishers) into ONE internal
  stream alone — no sourcing;
- aggregate: the input into `--shards` shard streams, sourced into `ssmd-client`;
- republish (with `--republish`): the aggregate phase with `streams.internal.republish` on
  (each shard stream republishes `internal.{shard}.kalshi.>` → `md.kalshi.>` on core NATS,
  `ssmd-client` still sourcing), plus one live reader in its own process: a core
  subscription on `md.kalshi.>` over a raw socket (a minimal protocol parser, so the reader
  measures the server's republish path rather than a client library) that counts what it
  receives. Core delivery has no acknowledgement or redelivery: missed = published −
  received (a slow consumer is dropped or disconnected by the server);
- live (with `--republish`): the same without `ssmd-client` — what republish costs alone
  (the client stream could live elsewhere, or be split);
- max (if `--max-seconds` > 0): each phase again with the publishers unpaced (as fast as
  their acknowledgement windows allow) — the machine's maximum sustained rate.

Measured per phase, over the steady window (the first 15 % of the run is warm-up):
- the rate into the shard streams (acknowledged = stored), and the rate `ssmd-client`
  stored;
- lag, sampled every 0.25 s: messages behind (shard totals − client total; the stream
  infos are read one after another, so this includes a few ms of ingest), and the delay of
  the newest sourced message (its store time in `ssmd-client` − its store time in the
  shard stream, both server clocks, found via the `Nats-Stream-Source` header);
- after the publishers stop: how long `ssmd-client` takes to hold everything, and the
  final counts (published ids == stored in the shards == stored in the client: no loss,
  no duplicate);
- CPU seconds of nats-server and of the publishers (psutil), per message.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import nats  # noqa: E402
import psutil  # noqa: E402
from nats.aio.client import Client  # noqa: E402

from ssmd_infra.adapters.jetstream import reconcile_streams  # noqa: E402
from ssmd_infra.core.environment import parse_environment  # noqa: E402
from ssmd_infra.core.streams import StreamSpec, internal_stream_spec, stream_specs  # noqa: E402
from ssmd_infra.core.subjects import (  # noqa: E402
    CLIENT_STREAM,
    client_feed_wildcard,
    internal_stream,
    internal_subject,
)
from ssmd_infra.local.servers import ServerProcess, start_nats  # noqa: E402

FEED = "kalshi"
TICKERS_PER_SHARD = 100
SINGLE = "all"  # the baseline's one internal stream
WARMUP = 0.15  # fraction of the run left out of the steady window
SAMPLE_EVERY = 0.25


def shard_names(count: int) -> list[str]:
    return [f"s{i}" for i in range(count)]


def env_yaml(shards: list[str], republish: bool = False) -> str:
    """An environment with these shards; limits far above a run's volume (`discard: old`
    would otherwise drop messages silently and spoil the counts)."""
    flag = ", republish: true" if republish else ""
    lines = "\n".join(
        f"  {s}: {{selector: {{tier: {i}}}, replicas: 1}}" for i, s in enumerate(shards)
    )
    return f"""name: bench-aggregate
feed: {FEED}
streams:
  internal: {{max_age: 1h, max_bytes: 4Gi, duplicate_window: 2m{flag}}}
  client: {{max_age: 1h, max_bytes: 16Gi, duplicate_window: 2m}}
shards:
{lines}
"""


def tickers(shard_index: int) -> list[str]:
    """Kalshi-like tickers, a dotted strike each (encoded in the subject)."""
    return [f"KXAGG{shard_index:02d}-25DEC31-B{i}.5" for i in range(TICKERS_PER_SHARD)]


# -- the publisher role (a child process) -----------------------------------------------------


def _trade(trade_id: bytes, ticker: bytes, seq: int) -> bytes:
    """A Kalshi WS v2 `trade` frame (≈ 288 bytes with these tickers)."""
    yes = 5 + seq % 90
    count = seq % 500 + 1
    return (
        b'{"type":"trade","sid":1,"seq":%d,"msg":{"trade_id":"%s","market_ticker":"%s",'
        b'"yes_price":%d,"no_price":%d,"yes_price_dollars":"0.%02d00",'
        b'"no_price_dollars":"0.%02d00","count":%d,"count_fp":"%d.00","taker_side":"yes",'
        b'"ts":1764547200}}' % (seq, trade_id, ticker, yes, 100 - yes, yes, 100 - yes, count, count)
    )


async def role_publish(
    nats_url: str, shards: str, subject_shards: str, rate: float, seconds: float, tag: str
) -> None:
    """Publish trades for `shards` (tickers of those shards) into the streams of
    `subject_shards` (the same list, or the single baseline stream), paced at `rate` msg/s
    (0: as fast as the acknowledgement window allows), for `seconds`; then drain and print
    a JSON report. Starts on "go" from stdin so all publishers begin together."""
    from runtime.nats.publisher import JetStreamPublisher

    routes: list[tuple[bytes, bytes]] = []  # (subject, ticker), round-robin
    sources = shards.split(",")
    targets = subject_shards.split(",")
    for source, target in zip(sources, targets, strict=True):
        index = int(source[1:])
        for ticker in tickers(index):
            routes.append(
                (internal_subject(target, FEED, "trade", ticker).encode(), ticker.encode())
            )
    pub = JetStreamPublisher(nats_url, name=f"bench-aggregate-{tag}", max_inflight=8192)
    await pub.start()
    if not await pub.wait_connected(10):
        raise SystemExit(f"publisher {tag}: cannot connect to {nats_url}")
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    import resource

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    prefix = tag.encode()
    cpu0 = cpu()
    n_routes = len(routes)
    sent = 0
    samples: list[tuple[float, int, int]] = []
    wall0 = time.time()
    t0 = time.monotonic()
    next_sample = t0
    while True:
        now = time.monotonic()
        elapsed = now - t0
        if elapsed >= seconds:
            break
        if now >= next_sample:
            samples.append((time.time(), sent, pub.stats.acked))
            next_sample += SAMPLE_EVERY
        room = pub.room
        due = int(elapsed * rate) - sent if rate > 0 else room
        n = min(due, room, 2000)
        for k in range(sent, sent + n):
            trade_id = b"%s%030x" % (prefix, k)  # 32 hex digits, unique per publisher
            subject, market = routes[k % n_routes]
            pub.publish(subject, _trade(trade_id, market, k), b"trade:" + trade_id)
        sent += n
        if pub.room <= 0:
            await pub.wait_for_room()
        elif rate > 0 and n >= due:
            await asyncio.sleep(0.002)  # caught up: wait for the next messages to be due
        else:
            await asyncio.sleep(0)
    wall1 = time.time()
    drained = await pub.drain(120)
    samples.append((time.time(), sent, pub.stats.acked))
    await pub.close()
    cpu_used = cpu() - cpu0
    stats = pub.stats
    print(
        json.dumps(
            {
                "tag": tag,
                "sent": sent,
                "acked": stats.acked,
                "duplicates": stats.duplicates,
                "given_up": stats.given_up,
                "resent": stats.resent,
                "drained": drained,
                "cpu_s": cpu_used,
                "start": wall0,
                "end": wall1,
                "samples": samples,
            }
        ),
        flush=True,
    )


# -- the live reader role (a child process) ---------------------------------------------------


def role_read(nats_url: str, subject: str) -> None:
    """Core-subscribe to `subject` on a raw socket and count the messages (HMSG/MSG) until
    "stop" arrives on stdin; print a JSON report (count, samples, delays from the republish
    `Nats-Time-Stamp` header, whether the server closed the connection)."""
    import socket

    from runtime.nats.protocol import PING, PONG, Err, Parser, Ping, Pong, connect, sub
    from ssmd_infra.core.nats_url import parse_nats_urls

    address = parse_nats_urls(nats_url)[0]
    sock = socket.create_connection((address.host, address.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    parser = Parser()
    while not parser.controls:  # the server's INFO
        parser.feed(sock.recv(4096))
    sock.sendall(connect(name="bench-aggregate-reader") + sub(subject.encode(), 1) + PING)
    while not any(type(op) is Pong for op in parser.take_controls()):
        parser.feed(sock.recv(4096))
    stop = threading.Event()

    def wait_stop() -> None:
        sys.stdin.readline()
        stop.set()

    print("ready", flush=True)
    threading.Thread(target=wait_stop, daemon=True).start()
    sock.settimeout(0.1)
    count = 0
    samples: list[tuple[float, int]] = []
    delays: list[float] = []
    closed = ""
    errors: list[str] = []
    first = last = 0.0
    next_sample = time.time()
    want_delay = False
    while not stop.is_set():
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            data = None
        now = time.time()
        if data == b"":
            closed = "the server closed the connection"
            break
        if now >= next_sample:
            samples.append((now, count))
            next_sample += SAMPLE_EVERY
            want_delay = True
        if not data:
            continue
        before = count
        for _subject, _sid, _reply, headers, _payload in parser.feed(data):
            count += 1
            if want_delay and headers:  # read the republish timestamp
                want_delay = False
                at = headers.find(b"Nats-Time-Stamp: ")
                if at >= 0:
                    stamp = headers[at + 17 : headers.find(b"\r\n", at)].decode()
                    delays.append(now - _parse_time(stamp))
        for op in parser.take_controls():
            if type(op) is Ping:
                sock.sendall(PONG)
            elif type(op) is Err:
                errors.append(f"-ERR {op.message}")
        if count > before:
            first = first or now
            last = now
    samples.append((time.time(), count))
    sock.close()
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    report = {"received": count, "samples": samples, "delays": delays, "closed": closed}
    report["cpu_s"] = usage.ru_utime + usage.ru_stime
    report.update({"errors": errors, "first": first, "last": last})
    print(json.dumps(report), flush=True)


# -- orchestration ----------------------------------------------------------------------------


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _parse_time(text: str) -> float:
    """RFC 3339 with nanoseconds (the server's) → Unix seconds (microsecond precision)."""
    head, _, frac = text.rstrip("Z").partition(".")
    micros = (frac + "000000")[:6]
    when = datetime.fromisoformat(f"{head}.{micros}+00:00")
    return when.timestamp()


async def _api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body or {}).encode(), timeout=5)
    data: dict[str, Any] = json.loads(reply.data)
    return data


async def _messages(nc: Client, stream: str) -> tuple[int, int]:
    state = (await _api(nc, f"$JS.API.STREAM.INFO.{stream}"))["state"]
    return int(state["messages"]), int(state["last_seq"])


async def _newest_delay(nc: Client, last_seq: int) -> float | None:
    """Store time of `ssmd-client`'s message `last_seq` minus the store time of the shard
    message it was sourced from (the `Nats-Stream-Source` header names stream and seq)."""
    if last_seq <= 0:
        return None
    got = (await _api(nc, f"$JS.API.STREAM.MSG.GET.{CLIENT_STREAM}", {"seq": last_seq})).get(
        "message"
    )
    if not got or not got.get("hdrs"):
        return None
    headers = base64.b64decode(got["hdrs"]).decode()
    source = next(
        (
            line.split(":", 1)[1].split()
            for line in headers.split("\r\n")
            if line.startswith("Nats-Stream-Source:")
        ),
        None,
    )
    if not source:
        return None
    origin = (await _api(nc, f"$JS.API.STREAM.MSG.GET.{source[0]}", {"seq": int(source[1])})).get(
        "message"
    )
    if not origin:
        return None
    return _parse_time(got["time"]) - _parse_time(origin["time"])


class Monitor:
    """Samples the streams every SAMPLE_EVERY seconds while the phase runs."""

    def __init__(self, nc: Client, internal: list[str], with_client: bool) -> None:
        self.nc = nc
        self.internal = internal
        self.with_client = with_client
        self.samples: list[dict[str, float]] = []
        self._stop = asyncio.Event()

    async def sample(self) -> dict[str, float]:
        client, last_seq = (await _messages(self.nc, CLIENT_STREAM)) if self.with_client else (0, 0)
        shards = 0
        for stream in self.internal:
            shards += (await _messages(self.nc, stream))[0]
        delay = await _newest_delay(self.nc, last_seq) if self.with_client else None
        row = {"t": time.time(), "shards": shards, "client": client}
        if delay is not None:
            row["delay"] = delay
        self.samples.append(row)
        return row

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.sample()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop.set()


def _rate(samples: list[dict[str, float]], key: str, t0: float, t1: float) -> float:
    window = [s for s in samples if t0 <= s["t"] <= t1]
    if len(window) < 2:
        return 0.0
    first, last = window[0], window[-1]
    return (last[key] - first[key]) / (last["t"] - first["t"])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def phase(
    workdir: Path, name: str, mode: str, args: argparse.Namespace, rate: float, seconds: float
) -> dict[str, Any]:
    """One run on a fresh nats-server: `mode` is `baseline` (one internal stream),
    `aggregate` (shard streams sourced into ssmd-client while the input flows) or `prefill`
    (shard streams filled first; ssmd-client created afterwards: sourcing alone) or
    `republish` (aggregate, with the shard streams republishing to core and a live reader)
    or `live` (republish and the live reader, no ssmd-client)."""
    shards = shard_names(args.shards)
    aggregate = mode in ("aggregate", "prefill", "republish")  # ssmd-client exists
    republish = mode in ("republish", "live")
    sourcing = mode in ("aggregate", "republish")  # ssmd-client exists while the input flows
    server: ServerProcess = start_nats(workdir / name)
    children: list[subprocess.Popen[bytes]] = []
    try:
        if aggregate or republish:
            yaml_text = env_yaml(shards, republish=republish)
            env = parse_environment(yaml_text, "bench-aggregate.yaml")
            specs: list[StreamSpec] = stream_specs(env)[: None if aggregate else -1]
            internal = [internal_stream(s) for s in shards]
        else:
            env = parse_environment(env_yaml([SINGLE]), "bench-baseline.yaml")
            specs = [internal_stream_spec(env, SINGLE)]
            internal = [internal_stream(SINGLE)]
        late = specs[-1:] if mode == "prefill" else []  # ssmd-client, created after the input
        await reconcile_streams(server.url, specs[: len(specs) - len(late)])
        live_reader: subprocess.Popen[bytes] | None = None
        if republish:
            live_reader = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--role",
                    "read",
                    server.url,
                    client_feed_wildcard(FEED),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=open(workdir / f"{name}-reader.log", "wb"),  # noqa: SIM115 - the child's
                cwd=REPO,
            )
            children.append(live_reader)
            assert live_reader.stdout is not None
            if live_reader.stdout.readline().decode().strip() != "ready":
                raise RuntimeError(f"the reader failed to start (see {workdir}/{name}-reader.log)")
        publishers: list[subprocess.Popen[bytes]] = []
        groups = [shards[p :: args.publishers] for p in range(args.publishers)]
        groups = [g for g in groups if g]
        per_rate = rate / len(groups) if rate > 0 else 0.0
        for p, group in enumerate(groups):
            targets = group if aggregate or republish else [SINGLE] * len(group)
            log = open(workdir / f"{name}-pub{p}.log", "wb")  # noqa: SIM115 - the child's
            publishers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--role",
                        "publish",
                        server.url,
                        ",".join(group),
                        ",".join(targets),
                        str(per_rate),
                        str(seconds),
                        f"{p:02x}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    cwd=REPO,
                )
            )
        children.extend(publishers)
        for child in publishers:
            assert child.stdout is not None
            line = child.stdout.readline().decode().strip()
            if line != "ready":
                raise RuntimeError(f"a publisher failed to start (see {workdir}/{name}-pub*.log)")
        nc = await nats.connect(server.url)
        monitor = Monitor(nc, internal, sourcing)
        server_ps = psutil.Process(server.proc.pid)
        server_cpu0 = _cpu(server_ps)
        own_ps = psutil.Process()
        own_cpu0, machine0, wall0 = _cpu(own_ps), psutil.cpu_times(), time.monotonic()
        watching = asyncio.create_task(monitor.run())
        for child in publishers:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.flush()
        reports: list[dict[str, Any]] = []

        def collect(child: subprocess.Popen[bytes]) -> None:
            assert child.stdout is not None
            out = child.stdout.read().decode().strip().splitlines()
            reports.append(json.loads(out[-1]) if out else {"error": "no report"})

        readers = [threading.Thread(target=collect, args=(c,), daemon=True) for c in publishers]
        for reader in readers:
            reader.start()

        def join_all() -> None:
            for reader in readers:
                reader.join()

        await asyncio.to_thread(join_all)
        for child in publishers:
            child.wait(30)
        if any("error" in r for r in reports):
            raise RuntimeError(f"a publisher failed (see {workdir}/{name}-pub*.log)")
        start = min(r["start"] for r in reports)
        end = max(r["end"] for r in reports)
        sent = sum(r["sent"] for r in reports)
        created = time.time()
        if late:
            await reconcile_streams(server.url, late)
            monitor.with_client = True
        # after the publishers stop: wait for ssmd-client to hold everything
        caught_up: float | None = None
        deadline = time.monotonic() + args.catch_up_timeout
        while aggregate and time.monotonic() < deadline:
            row = await monitor.sample()
            if row["client"] >= row["shards"] >= sent:
                caught_up = row["t"]
                break
            await asyncio.sleep(0.02)
        live: dict[str, Any] = {}
        if live_reader is not None:
            # core delivery is immediate or never: give stragglers in socket buffers a moment
            await asyncio.sleep(1.0)
            assert live_reader.stdin is not None and live_reader.stdout is not None
            live_reader.stdin.write(b"stop\n")
            live_reader.stdin.flush()
            out = (await asyncio.to_thread(live_reader.stdout.read)).decode().strip().splitlines()
            live_reader.wait(30)
            live = json.loads(out[-1]) if out else {"error": "no report"}
            if "error" in live:
                raise RuntimeError(f"the reader failed (see {workdir}/{name}-reader.log)")
        monitor.stop()
        await watching
        final = await monitor.sample()
        server_cpu = _cpu(server_ps) - server_cpu0
        machine1, wall = psutil.cpu_times(), time.monotonic() - wall0
        idle = (machine1.idle - machine0.idle) + (machine1.iowait - machine0.iowait)
        busy = sum(machine1) - sum(machine0) - idle
        publishers_cpu = sum(r["cpu_s"] for r in reports)
        own_cpu = _cpu(own_ps) - own_cpu0
        reader_cpu = float(live.get("cpu_s", 0.0))
        await nc.close()
        steady0 = start + WARMUP * (end - start)
        window = [s for s in monitor.samples if steady0 <= s["t"] <= end]
        behind = [s["shards"] - s["client"] for s in window] if aggregate else []
        delays = [s["delay"] for s in window if "delay" in s]
        # publishers' own view: messages sent per second over the steady window
        sent_rate = 0.0
        for r in reports:
            pts = [(t, n) for t, n, _ in r["samples"] if steady0 <= t <= end]
            if len(pts) >= 2:
                sent_rate += (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
        stored_shards = int(final["shards"])
        result: dict[str, Any] = {
            "phase": name,
            "mode": mode,
            "target_rate": rate,
            "seconds": end - start,
            "sent": sent,
            "acked": sum(r["acked"] for r in reports),
            "ack_duplicates": sum(r["duplicates"] for r in reports),
            "given_up": sum(r["given_up"] for r in reports),
            "resent": sum(r["resent"] for r in reports),
            "publish_rate": sent_rate,
            "shard_rate": _rate(monitor.samples, "shards", steady0, end),
            "stored_shards": stored_shards,
            "server_cpu_s": server_cpu,
            "server_us_per_msg": server_cpu / max(1, sent) * 1e6,
            "publisher_us_per_msg": publishers_cpu / max(1, sent) * 1e6,
            # cores in use over the phase (publishing + catch-up): the machine, nats-server,
            # the publishers, and everything else on this shared machine (other work + monitor)
            "machine_cores": busy / wall,
            "server_cores": server_cpu / wall,
            "publisher_cores": publishers_cpu / wall,
            "reader_cores": reader_cpu / wall,
            "other_cores": (busy - server_cpu - publishers_cpu - reader_cpu - own_cpu) / wall,
        }
        if mode == "prefill":
            result.update(
                {
                    "stored_client": int(final["client"]),
                    "client_rate": sent / (caught_up - created) if caught_up else None,
                    "sourcing_s": (caught_up - created) if caught_up else None,
                }
            )
        elif aggregate:
            result.update(
                {
                    "client_rate": _rate(monitor.samples, "client", steady0, end),
                    "stored_client": int(final["client"]),
                    "behind_max": max(behind, default=0),
                    "behind_p50": _pct([float(b) for b in behind], 0.5),
                    "delay_p50": _pct(delays, 0.5),
                    "delay_p99": _pct(delays, 0.99),
                    "delay_max": max(delays, default=float("nan")),
                    "catch_up_s": (caught_up - end) if caught_up is not None else None,
                }
            )
        if live:
            steady = [(t, n) for t, n in live["samples"] if steady0 <= t <= end]
            live_rate = 0.0
            if len(steady) >= 2:
                live_rate = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
            result.update(
                {
                    "live_rate": live_rate,
                    "live_received": live["received"],
                    "live_missed": sent - live["received"],
                    "live_missed_pct": 100.0 * (sent - live["received"]) / max(1, sent),
                    "live_delay_p50": _pct(live["delays"], 0.5),
                    "live_delay_max": max(live["delays"], default=float("nan")),
                    "live_after_end_s": max(0.0, live["last"] - end) if live["last"] else None,
                    "live_closed": live["closed"] or "no",
                    "live_errors": "; ".join(live["errors"]) or "none",
                }
            )
        result["no_loss_no_dup"] = (
            stored_shards == sent
            and result["given_up"] == 0
            and (not aggregate or result["stored_client"] == sent)
        )
        return result
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
        server.stop()


def fmt(values: dict[str, Any]) -> str:
    out = []
    for key, value in values.items():
        if isinstance(value, float):
            value = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.0f}"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        out.append(f"{key}={value}")
    return " ".join(out)


def _median(results: list[dict[str, Any]], name: str, key: str) -> float:
    values = [r[key] for r in results if r["name"] == name and r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


async def main(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rate.split(",")]
    modes = args.modes.split(",") + (["republish", "live"] if args.republish else [])
    workdir = Path(tempfile.mkdtemp(prefix="ssmd-bench-aggregate-"))
    print(
        f"# {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; {args.shards} shards, "
        f"{args.publishers} publisher processes, {args.seconds:.0f} s per paced phase; "
        f"work dir {workdir}",
        flush=True,
    )
    # (name, mode, rate, seconds); baseline and aggregate alternate between repeats
    plan: list[tuple[str, str, float, float]] = []
    for i in range(args.repeat):
        for rate in rates:
            order = modes if i % 2 == 0 else modes[::-1]
            plan += [(f"{mode}@{rate:.0f}", mode, rate, args.seconds) for mode in order]
    if args.max_seconds > 0:
        plan += [(f"{mode}@max", mode, 0.0, args.max_seconds) for mode in modes]
    if args.prefill > 0:
        plan.append(("prefill", "prefill", 0.0, args.prefill))
    results: list[dict[str, Any]] = []
    for n, (name, mode, rate, seconds) in enumerate(plan):
        # every phase has its own server store: a reused one would answer "duplicate"
        run_dir = workdir / f"{n:02d}"
        result = {"name": name, **await phase(run_dir, name, mode, args, rate, seconds)}
        results.append(result)
        print(fmt(result), flush=True)

    print("\n# summary (medians over repeats)")
    for label in [f"{r:.0f}" for r in rates] + (["max"] if args.max_seconds > 0 else []):
        base = _median(results, f"baseline@{label}", "shard_rate")
        into = _median(results, f"aggregate@{label}", "shard_rate")
        out = _median(results, f"aggregate@{label}", "client_rate")
        agg = f"aggregate@{label}"
        print(
            f"{'paced ' + label if label != 'max' else 'unpaced'}: baseline (one stream) stored "
            f"{base:,.0f}/s | aggregate: shard streams {into:,.0f}/s ({into / base:.2f}x), "
            f"ssmd-client {out:,.0f}/s ({out / base:.2f}x baseline, {out / into:.2f}x its "
            f"input) | behind max {_median(results, agg, 'behind_max'):,.0f} msgs | newest "
            f"message delay p50 {_median(results, agg, 'delay_p50') * 1000:,.0f} ms, max "
            f"{_median(results, agg, 'delay_max') * 1000:,.0f} ms | catch-up after stop "
            f"{_median(results, agg, 'catch_up_s'):.2f} s | nats-server "
            f"{_median(results, agg, 'server_us_per_msg'):.1f} vs "
            f"{_median(results, f'baseline@{label}', 'server_us_per_msg'):.1f} µs/msg"
        )
    labels = [f"{r:.0f}" for r in rates] + (["max"] if args.max_seconds > 0 else [])
    for label, mode in [(x, m) for m in ("republish", "live") if m in modes for x in labels]:
        rep = f"{mode}@{label}"
        client = (
            f"ssmd-client {_median(results, rep, 'client_rate'):,.0f}/s, delay max "
            f"{_median(results, rep, 'delay_max') * 1000:,.0f} ms"
            if mode == "republish"
            else "no ssmd-client"
        )
        print(
            f"{'paced ' + label if label != 'max' else 'unpaced'}, republish on ({mode}): shard "
            f"streams {_median(results, rep, 'shard_rate'):,.0f}/s | live reader "
            f"{_median(results, rep, 'live_rate'):,.0f}/s, missed "
            f"{_median(results, rep, 'live_missed'):,.0f} "
            f"({_median(results, rep, 'live_missed_pct'):.2f} %), delay p50 "
            f"{_median(results, rep, 'live_delay_p50') * 1000:,.1f} ms, max "
            f"{_median(results, rep, 'live_delay_max') * 1000:,.0f} ms | {client} | "
            f"nats-server {_median(results, rep, 'server_us_per_msg'):.1f} µs/msg"
        )
    if args.prefill > 0:
        print(
            f"sourcing alone (shard streams pre-filled, then ssmd-client created): "
            f"{_median(results, 'prefill', 'client_rate'):,.0f} msg/s"
        )
    print(f"no loss, no duplicate in every phase: {all(r['no_loss_no_dup'] for r in results)}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(workdir)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument(
        "--rate", default="100000", help="combined msg/s; several, comma-separated, for a sweep"
    )
    parser.add_argument("--modes", default="baseline,aggregate", help=argparse.SUPPRESS)
    parser.add_argument(
        "--republish",
        action="store_true",
        help="add the republish phase: shard streams republish to md.kalshi.> on core NATS, "
        "a live reader process counts what it receives (missed = published - received)",
    )
    parser.add_argument(
        "--prefill",
        type=float,
        default=10.0,
        help="seconds of unpaced input into the shard streams before ssmd-client exists; "
        "then the time ssmd-client takes to source it all (0: skip)",
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--catch-up-timeout", type=float, default=120.0)
    parser.add_argument("--json", help="also write every phase's figures here")
    args = parser.parse_args()
    if args.role:
        role, *rest = args.role
        if role == "read":
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            role_read(*rest)
            return
        if role != "publish":
            raise SystemExit(f"unknown role {role}")
        url, shards, targets, rate, seconds, tag = rest
        import uvloop

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        uvloop.run(role_publish(url, shards, targets, float(rate), float(seconds), tag))
        return
    if args.publishers < 1 or args.shards < 1:
        raise SystemExit("--shards and --publishers must be >= 1")
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
