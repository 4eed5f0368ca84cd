"""Connector benchmark: CPU per message against a naive pass-through measured in the same run.

    .venv/bin/python bench/connector.py [--paced-seconds 10] [--backlog 200000] [--seconds 60]
                                        [--repeat 3] [--phases abdc] [--read-interval S]

Every consumer runs as its own process and is measured from outside (psutil CPU times of
that process; messages counted in the shard's JetStream stream), so the figures are the
process's own cost, not the exchange's or the server's:

- baseline: the naive pass-through — websockets receive → msgspec extraction of
  type/ticker/trade id → nats-py `publish` with `Nats-Msg-Id` (core publish, no ack),
  `flush()` every 10k messages; uvloop, like the connector;
- connector: `ssmd run connector` exactly as deployed (acknowledged publishing).

(a) paced: the Kalshi simulator sends 10k msg/s (100 markets x 100/s); CPU µs per message
    over a steady window. Goal: connector ≤ 0.6x baseline. Also the latency each adds
    between the exchange and storage: from the simulator's write of a frame (sent in the
    window) to the stream's store timestamp of it, p50/p99/max (`--read-interval 0` for the
    connector reading as data arrives). Two receive-only floors on the
    same feed, for reference: the websockets asyncio client (`recv()` per message) and the
    connector's own transport (`runtime/kalshi/transport.py`, paced like the connector).
(b) backlogged: a replay exchange has N frames ready and writes them as fast as the
    consumer reads; messages per CPU-second until all N are in the stream. The connector
    runs with the `block` policy here, so it forwards all N like the baseline does.
    Goal: connector ≥ 1.2x baseline.
(c) overload, `drop_oldest`: the replay exchange writes without pause for `--seconds`
    while nats-server is stopped (SIGSTOP) for the last two thirds, so the exchange offers
    at least 3x what the NATS path accepts; the connector's RSS is sampled throughout
    (goal: under its 256 MiB request) and its drops must show in its metrics.
(d) the publisher alone, in this process, against nats-py publishing without acks.

`--phases` picks phases (e.g. `a` for a quick paced comparison); `--read-interval` runs the
connector with that `--read-interval` instead of its default. `--nats-auth` runs nats-server
with the environment's generated authorization (`nats.auth: nkeys`): the connector and the
baseline publish as role `connector-bench` with its seed, stream calls are made as `admin`;
without it (the default) the environment says `nats.auth: none` and everyone is anonymous.
Permissions are checked by the server, so the connector's figures should not move.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402
import nats  # noqa: E402
import psutil  # noqa: E402

from ssmd_infra.core.subjects import internal_stream, internal_subject  # noqa: E402
from ssmd_infra.local.servers import free_port, start_nats  # noqa: E402

SHARD = "bench"
FEED = "kalshi"
MARKETS = [f"KXBENCH-25DEC31-B{i}.5" for i in range(100)]


# `--nats-auth`: the environment asks for NKEYs; the default runs everyone anonymously
NATS_AUTH = {"enabled": False}


def env_yaml(capacity: int = 10000, policy: str = "drop_oldest") -> str:
    symbols = "\n".join(f"  {m}: {{tier: 1}}" for m in MARKETS)
    auth = "nkeys" if NATS_AUTH["enabled"] else "none"
    return f"""name: bench
feed: {FEED}
nats: {{auth: {auth}}}
symbols:
{symbols}
streams:
  internal: {{max_age: 1h, max_bytes: 2Gi, duplicate_window: 2m}}
shards:
  {SHARD}:
    selector: {{tier: 1}}
    replicas: 1
    resources: {{cpu: 500m, memory: 256Mi}}
    buffer: {{capacity: {capacity}, drop_policy: {policy}}}
"""


# -- roles run as child processes -------------------------------------------------------------


class _Body(msgspec.Struct):
    market_ticker: str = ""
    trade_id: str | None = None


class _Envelope(msgspec.Struct):
    type: str
    seq: int | None = None
    msg: _Body | None = None


async def role_floor(ws_url: str, seconds: float) -> None:
    """WebSocket receive alone (websockets, as the Kalshi client uses it): the cost floor of
    any Python consumer of the feed. Measures itself over a steady window and prints it."""
    import resource

    import websockets

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async with websockets.connect(ws_url, compression=None, max_queue=64, max_size=4 << 20) as ws:
        command = {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["trade", "ticker"], "market_tickers": MARKETS},
        }
        await ws.send(json.dumps(command))
        count = 0

        async def read() -> None:
            nonlocal count
            while True:
                await ws.recv(decode=False)
                count += 1

        reader = asyncio.create_task(read())
        await asyncio.sleep(3.0)
        cpu0, n0 = cpu(), count
        await asyncio.sleep(seconds)
        cpu1, n1 = cpu(), count
        reader.cancel()
    print(f"floor {(cpu1 - cpu0) / (n1 - n0) * 1e6:.2f} {n1 - n0}", flush=True)


async def role_floor_raw(ws_url: str, seconds: float, read_interval: float) -> None:
    """WebSocket receive alone through the connector's transport (`runtime/kalshi/transport.py`:
    websockets' sans-I/O protocol on a raw asyncio protocol, every message of a read handed
    over at once; paced like the connector's). Measures itself over a steady window."""
    import resource

    from websockets.uri import parse_uri

    from runtime.kalshi.transport import open_connection

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    count = 0
    reads = 0

    def on_messages(messages: list[bytes]) -> None:
        nonlocal count, reads
        count += len(messages)
        reads += 1

    conn = await open_connection(parse_uri(ws_url), on_messages, read_interval=read_interval)
    command = {
        "id": 1,
        "cmd": "subscribe",
        "params": {"channels": ["trade", "ticker"], "market_tickers": MARKETS},
    }
    conn.send_text(json.dumps(command).encode())
    await asyncio.sleep(3.0)
    cpu0, n0, r0 = cpu(), count, reads
    await asyncio.sleep(seconds)
    cpu1, n1, r1 = cpu(), count, reads
    conn.close()
    print(
        f"floor {(cpu1 - cpu0) / (n1 - n0) * 1e6:.2f} {n1 - n0} {(n1 - n0) / max(1, r1 - r0):.2f}",
        flush=True,
    )


def seed_options() -> dict[str, str]:
    """nats-py options of the seed file in `$NATS_NKEY_SEED` (the connector's role), if any."""
    from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE
    from ssmd_infra.core.subjects import role_inbox_prefix

    path = os.environ.get(NKEY_SEED_VARIABLE)
    if not path:
        return {}
    return {"nkeys_seed": path, "inbox_prefix": role_inbox_prefix(f"connector-{SHARD}")}


async def role_baseline(ws_url: str, nats_url: str) -> None:
    """The naive pass-through the connector is compared with."""
    import websockets

    decode = msgspec.json.Decoder(_Envelope).decode
    nc = await nats.connect(nats_url, **seed_options())
    async with websockets.connect(ws_url, compression=None, max_queue=64, max_size=4 << 20) as ws:
        command = {
            "id": 1,
            "cmd": "subscribe",
            "params": {"channels": ["trade", "ticker"], "market_tickers": MARKETS},
        }
        await ws.send(json.dumps(command))
        count = 0
        while True:
            data = await ws.recv(decode=False)
            env = decode(data)
            if env.msg is None or env.type not in ("trade", "ticker"):
                continue
            ticker = env.msg.market_ticker
            msg_id = env.msg.trade_id or f"{env.type}:{ticker}:{env.seq}"
            await nc.publish(
                internal_subject(SHARD, FEED, env.type, ticker),
                data,
                headers={"Nats-Msg-Id": msg_id},
            )
            count += 1
            if count % 10000 == 0:
                await nc.flush()


def _ws_frame(payload: bytes) -> bytes:
    """One unmasked server-to-client text frame."""
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 65536:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + payload


# every replay run has its own trade ids: the stream's duplicate window must not hide a run
_RUN = os.getpid() << 40


def _trade(seq: int, ticker: str) -> bytes:
    yes = 5 + seq % 90
    body = (
        b'{"trade_id":"%032x","market_ticker":"%s","yes_price":%d,"no_price":%d,'
        b'"yes_price_dollars":"0.%02d00","no_price_dollars":"0.%02d00","count":%d,'
        b'"count_fp":"%d.00","taker_side":"yes","ts":1764547200}'
        % (
            _RUN + seq,
            ticker.encode(),
            yes,
            100 - yes,
            yes,
            100 - yes,
            seq % 500 + 1,
            seq % 500 + 1,
        )
    )
    return b'{"type":"trade","sid":1,"seq":%d,"msg":%s}' % (seq, body)


def _chunk(start: int, count: int) -> bytes:
    return b"".join(
        _ws_frame(_trade(seq, MARKETS[seq % len(MARKETS)])) for seq in range(start, start + count)
    )


async def role_replay(port: int, total: int, endless: bool) -> None:
    """A minimal Kalshi WS v2 endpoint that, on "go" (stdin), writes pre-framed trades as
    fast as the client reads them. Writing raw frames keeps this process off the critical
    path, so the consumer is the bottleneck."""
    from websockets.asyncio.server import ServerConnection, serve

    chunk = 1000
    ready: list[bytes] = (
        []
        if endless
        else [_chunk(start, min(chunk, total + 1 - start)) for start in range(1, total + 1, chunk)]
    )
    go = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stdin() -> None:
        sys.stdin.readline()
        go.set()

    loop.add_reader(sys.stdin.fileno(), on_stdin)

    async def blast(ws: ServerConnection) -> None:
        await go.wait()
        transport = ws.transport
        seq = 1
        index = 0
        while True:
            if endless:
                data = _chunk(seq, chunk)
                seq += chunk
            else:
                if index >= len(ready):
                    return
                data = ready[index]
                index += 1
            transport.write(data)
            while transport.get_write_buffer_size() > 4 << 20:
                await asyncio.sleep(0.001)
                if ws.state.name != "OPEN":
                    return

    blasts: set[asyncio.Task[None]] = set()

    async def handler(ws: ServerConnection) -> None:
        sids = 0
        async for message in ws:
            cmd = json.loads(message)
            if cmd.get("cmd") == "subscribe":
                for channel in cmd["params"]["channels"]:
                    sids += 1
                    await ws.send(
                        json.dumps(
                            {
                                "type": "subscribed",
                                "id": cmd["id"],
                                "msg": {"channel": channel, "sid": sids},
                            }
                        )
                    )
                print("subscribed", flush=True)
                blasts.add(asyncio.create_task(blast(ws)))
            elif cmd.get("cmd") in ("update_subscription", "unsubscribe"):
                await ws.send(json.dumps({"type": "ok", "id": cmd["id"], "sid": 1}))

    async with serve(handler, "127.0.0.1", port, compression=None, max_queue=64):
        print("listening", flush=True)
        await asyncio.Future()


_SID_SEQ = re.compile(rb'"sid":(\d+),"seq":(\d+)')
SEND_TIMES_BOUND = 2_000_000  # (sid, seq) → wall-clock ns of the write, per run (≈ 200 s)


async def role_sim(port: int, rate: float, times_file: str | None = None) -> None:
    """The Kalshi simulator; with `times_file`, it notes when it writes each data frame (wall
    clock, ns, keyed by the frame's sid and seq: one consumer per run) and writes them there
    as JSON on SIGTERM, for the latency from the exchange to the stream's store timestamp."""
    from runtime.kalshi.simulator import KalshiSimulator

    send_times: dict[tuple[int, int], int] = {}
    sim = KalshiSimulator(
        {m: {} for m in MARKETS}, rate_per_market=rate, port=port, tick=0.001, seed=os.getpid()
    )  # a seed per run: trade ids never repeat across runs
    if times_file:
        write = sim.ws.send  # every frame to a connection goes through it

        async def timed_send(conn: Any, frame: bytes) -> None:
            found = _SID_SEQ.search(frame, 0, 64)
            if found is not None and len(send_times) < SEND_TIMES_BOUND:
                send_times[(int(found[1]), int(found[2]))] = time.time_ns()
            await write(conn, frame)

        sim.ws.send = timed_send  # type: ignore[method-assign]
    await sim.start()
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    print("listening", flush=True)
    await done.wait()
    if times_file:
        Path(times_file).write_text(json.dumps([[*k, v] for k, v in send_times.items()]))


# -- orchestration ----------------------------------------------------------------------------


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env_file = workdir / "bench.yaml"
        self.seed_env: dict[str, str] = {}  # NATS_NKEY_SEED of the connector and the baseline
        self.admin: Any = None
        config = None
        if NATS_AUTH["enabled"]:
            from ssmd_infra.adapters.nats_auth import write_auth_dir
            from ssmd_infra.core.environment import load_environment
            from ssmd_infra.core.nkey_seeds import NKEY_SEED_VARIABLE, read_seed_file

            self.env_file.write_text(env_yaml())
            changes = write_auth_dir(load_environment(self.env_file), workdir / "auth")
            config = changes.config.read_text()
            self.seed_env = {NKEY_SEED_VARIABLE: str(changes.directory / f"connector-{SHARD}.nk")}
            self.admin = read_seed_file(changes.directory / "admin.nk", "admin")
        self.nats = start_nats(workdir / "nats", extra_config=config)
        self.children: list[subprocess.Popen[bytes]] = []
        self.read_interval: float | None = None  # the connector's default unless set

    def child(
        self, args: list[str], extra_env: dict[str, str] | None = None, stdin: bool = False
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"child-{len(self.children)}.log", "wb")  # noqa: SIM115
        env = {**os.environ, **(extra_env or {})}
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )
        self.children.append(proc)
        return proc

    def role(self, *args: str, stdin: bool = False) -> subprocess.Popen[bytes]:
        return self.child(
            [sys.executable, str(Path(__file__).resolve()), "--role", *args],
            self.seed_env,
            stdin=stdin,
        )

    def connector(self, ws_url: str, metrics_port: int) -> subprocess.Popen[bytes]:
        return self.child(
            [
                sys.executable,
                "-m",
                "ssmd_infra",
                "run",
                "connector",
                str(self.env_file),
                SHARD,
                "--nats-url",
                self.nats.url,
                "--kalshi-ws-url",
                ws_url,
                "--metrics-port",
                str(metrics_port),
                "--log-level",
                "WARNING",
                *(
                    ["--read-interval", str(self.read_interval)]
                    if self.read_interval is not None
                    else []
                ),
            ],
            self.seed_env,
        )

    def baseline(self, ws_url: str) -> subprocess.Popen[bytes]:
        return self.role("baseline", ws_url, self.nats.url)

    async def reset_stream(self) -> None:
        from ssmd_infra.adapters.jetstream import connect, reconcile_streams
        from ssmd_infra.core.environment import load_environment
        from ssmd_infra.core.streams import internal_stream_spec

        env = load_environment(self.env_file)
        async with connect(self.nats.url, seed=self.admin) as nc:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream(internal_stream(SHARD))  # forgets msg ids
        await reconcile_streams(self.nats.url, [internal_stream_spec(env, SHARD)], seed=self.admin)

    async def stored(self) -> int:
        from ssmd_infra.adapters.jetstream import connect

        async with connect(self.nats.url, seed=self.admin) as nc:
            return int((await nc.jetstream().stream_info(internal_stream(SHARD))).state.messages)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for proc in self.children:
            with contextlib.suppress(Exception):
                self.stop(proc)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.nats.proc.pid, signal.SIGCONT)
        self.nats.stop()


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def wait_line(proc: subprocess.Popen[bytes], expected: str) -> None:
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"child exited before printing {expected!r}")
        if line.strip() == expected:
            return


async def wait_stored(bench: Bench, at_least: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = await bench.stored()
        if count >= at_least or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.1)


async def paced(bench: Bench, which: str, seconds: float) -> dict[str, float]:
    """CPU per message over a steady window at 10k msg/s, and the latency the consumer adds:
    from the simulator's write of each frame sent in that window to the stream's store
    timestamp of that frame (p50, p99, max; both wall clocks of this machine)."""
    await bench.reset_stream()
    port = free_port()
    times_file = bench.workdir / f"send-times-{which}.json"
    sim = bench.role("sim", str(port), "100", str(times_file))
    wait_line(sim, "listening")
    ws_url = f"ws://127.0.0.1:{port}/trade-api/ws/v2"
    consumer = (
        bench.baseline(ws_url) if which == "baseline" else bench.connector(ws_url, free_port())
    )
    try:
        await wait_stored(bench, 1, 30)
        await asyncio.sleep(3.0)  # warm up: steady state only
        ps = psutil.Process(consumer.pid)
        cpu0, n0, t0 = cpu_seconds(ps), await bench.stored(), time.monotonic()
        wall0 = time.time_ns()
        await asyncio.sleep(seconds)
        cpu1, n1, t1 = cpu_seconds(ps), await bench.stored(), time.monotonic()
        wall1 = time.time_ns()
        await asyncio.sleep(0.5)  # what was sent in the window reaches the stream
    finally:
        bench.stop(consumer)
        bench.stop(sim)  # it writes the send times as it stops
    stored_at = await store_times(bench)
    count = n1 - n0
    sent_at = {(sid, seq): ns for sid, seq, ns in json.loads(times_file.read_text())}
    delays = sorted(
        (stored - sent_at[key]) / 1e6
        for key, stored in stored_at.items()
        if key in sent_at and wall0 <= sent_at[key] <= wall1
    )
    return {
        "messages": count,
        "rate": count / (t1 - t0),
        "cpu_s": cpu1 - cpu0,
        "us_per_msg": (cpu1 - cpu0) / count * 1e6 if count else float("nan"),
        "latency_n": len(delays),
        "p50_ms": _quantile(delays, 0.5),
        "p99_ms": _quantile(delays, 0.99),
        "max_ms": delays[-1] if delays else float("nan"),
    }


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Origin(msgspec.Struct):
    sid: int
    seq: int


async def store_times(bench: Bench) -> dict[tuple[int, int], int]:
    """(sid, seq) of each frame in the stream → its store timestamp (ns, from the delivery
    metadata in the reply subject), read in batches by a no-ack pull consumer; on a
    JetStream error (a loaded machine can time out an API call) a new consumer resumes
    after the last sequence read."""
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    decode = msgspec.json.Decoder(_Origin).decode
    nc = await nats.connect(bench.nats.url)
    out: dict[tuple[int, int], int] = {}
    try:
        js = nc.jetstream()
        last = (await js.stream_info(internal_stream(SHARD))).state.last_seq
        seen = 0
        for _attempt in range(10):
            config = ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=seen + 1,
                inactive_threshold=60.0,
            )
            try:
                sub = await js.pull_subscribe(
                    f"internal.{SHARD}.>", stream=internal_stream(SHARD), config=config
                )
                while seen < last:
                    for msg in await sub.fetch(2000, timeout=10):
                        parts = msg.reply.split(".")
                        off = 0 if len(parts) == 9 else 2
                        seen = int(parts[5 + off])
                        with contextlib.suppress(msgspec.DecodeError):
                            origin = decode(msg.data)
                            out[(origin.sid, origin.seq)] = int(parts[7 + off])
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
                break
            except (nats.errors.Error, TimeoutError) as exc:
                print(f"reading store times: {exc!r}; resuming after {seen}", file=sys.stderr)
    finally:
        await nc.close()
    return out


async def floor(bench: Bench, seconds: float, role: str = "floor") -> dict[str, float]:
    port = free_port()
    sim = bench.role("sim", str(port), "100")
    wait_line(sim, "listening")
    args = [role, f"ws://127.0.0.1:{port}/trade-api/ws/v2", str(seconds)]
    if role == "floor-raw":
        from runtime.connector.settings import READ_INTERVAL

        read_interval = bench.read_interval
        args.append(str(READ_INTERVAL if read_interval is None else read_interval))
    consumer = bench.role(*args)
    try:
        assert consumer.stdout is not None
        words = consumer.stdout.readline().decode().split()
    finally:
        bench.stop(consumer)
        bench.stop(sim)
    out = {"us_per_msg": float(words[1]), "messages": int(words[2])}
    if len(words) > 3:
        out["msgs_per_read"] = float(words[3])
    return out


async def backlogged(bench: Bench, which: str, total: int) -> dict[str, float]:
    # `block`: a consumer that outruns the NATS path waits (TCP back-pressure) instead of
    # dropping, so both sides forward all `total` messages and the ratio compares like work
    bench.env_file.write_text(env_yaml(policy="block"))
    await bench.reset_stream()
    port = free_port()
    replay = bench.role("replay", str(port), str(total), "0", stdin=True)
    wait_line(replay, "listening")
    ws_url = f"ws://127.0.0.1:{port}"
    consumer = (
        bench.baseline(ws_url) if which == "baseline" else bench.connector(ws_url, free_port())
    )
    try:
        wait_line(replay, "subscribed")
        await asyncio.sleep(1.0)  # the consumer has finished starting up
        ps = psutil.Process(consumer.pid)
        cpu0, t0 = cpu_seconds(ps), time.monotonic()
        assert replay.stdin is not None
        replay.stdin.write(b"go\n")
        replay.stdin.flush()
        last, stable_since = -1, time.monotonic()
        while True:
            count = await bench.stored()
            if count >= total:
                break
            if count == 0 and time.monotonic() - t0 > 10:
                raise RuntimeError(f"{which}: nothing reached the stream in 10 s")
            if count != last:
                last, stable_since = count, time.monotonic()
            elif time.monotonic() - stable_since > 3.0:
                break  # nothing more is coming (a lossy consumer)
            await asyncio.sleep(0.05)
        cpu1, t1 = cpu_seconds(ps), time.monotonic()
    finally:
        bench.stop(consumer)
        bench.stop(replay)
    return {
        "messages": count,
        "lost": total - count,
        "wall_s": t1 - t0,
        "cpu_s": cpu1 - cpu0,
        "msgs_per_cpu_s": count / (cpu1 - cpu0) if cpu1 > cpu0 else float("nan"),
    }


async def publisher_alone(bench: Bench, total: int) -> dict[str, float]:
    """`JetStreamPublisher` alone, in this process: CPU per acknowledged message (288-byte
    payloads, window-limited), and nats-py publishing the same with a header, no ack."""
    import resource

    from runtime.nats.publisher import JetStreamPublisher

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    payload = b"x" * 288
    subject = internal_subject(SHARD, FEED, "trade", MARKETS[0]).encode()
    await bench.reset_stream()
    from ssmd_infra.core.subjects import role_inbox_prefix

    seed_file = next(iter(bench.seed_env.values()), None)
    pub = JetStreamPublisher(
        bench.nats.url,
        nkey_seed_file=Path(seed_file) if seed_file else None,
        inbox_prefix=role_inbox_prefix(f"connector-{SHARD}") if seed_file else "_INBOX",
    )
    await pub.start()
    await pub.wait_connected(10)
    c0 = cpu()
    for i in range(total):
        while pub.room <= 0:
            await pub.wait_for_room()
        pub.publish(subject, payload, b"pub-%d" % i)
    await pub.drain(60)
    acked_cpu = cpu() - c0
    await pub.close()
    stored = await bench.stored()
    await bench.reset_stream()
    os.environ.update(bench.seed_env)
    nc = await nats.connect(bench.nats.url, **seed_options())
    c0 = cpu()
    for i in range(total):
        await nc.publish(subject.decode(), payload, headers={"Nats-Msg-Id": f"nats-py-{i}"})
        if i % 10000 == 9999:
            await nc.flush()
    await nc.flush()
    plain_cpu = cpu() - c0
    await nc.close()
    return {
        "acked_us_per_msg": acked_cpu / total * 1e6,
        "acked_stored": stored,
        "nats_py_no_ack_us_per_msg": plain_cpu / total * 1e6,
    }


async def scrape(port: int) -> dict[str, float]:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http:
        text = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def overload(bench: Bench, seconds: float) -> dict[str, Any]:
    bench.env_file.write_text(env_yaml(policy="drop_oldest"))
    await bench.reset_stream()
    port = free_port()
    replay = bench.role("replay", str(port), "0", "1", stdin=True)
    wait_line(replay, "listening")
    metrics_port = free_port()
    consumer = bench.connector(f"ws://127.0.0.1:{port}", metrics_port)
    stopped = False
    rss: list[int] = []
    try:
        wait_line(replay, "subscribed")
        await asyncio.sleep(1.0)
        ps = psutil.Process(consumer.pid)
        assert replay.stdin is not None
        replay.stdin.write(b"go\n")
        replay.stdin.flush()
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if not stopped and time.monotonic() - t0 >= seconds / 3:
                os.kill(bench.nats.proc.pid, signal.SIGSTOP)
                stopped = True
            rss.append(int(ps.memory_info().rss))
            await asyncio.sleep(0.25)
        metrics = await scrape(metrics_port)
        alive = consumer.poll() is None
    finally:
        if stopped:
            os.kill(bench.nats.proc.pid, signal.SIGCONT)
        bench.stop(replay)
    try:
        await asyncio.sleep(3.0)  # NATS is back: the connector resumes publishing
        after = await scrape(metrics_port)
    finally:
        bench.stop(consumer)
    received = metrics.get("ssmd_connector_messages_total", 0.0)
    published = metrics.get("ssmd_connector_published_total", 0.0)
    return {
        "seconds": seconds,
        "received": int(received),
        "offered_rate": received / seconds,
        "published_during": int(published),
        "overload_factor": received / published if published else float("inf"),
        "dropped": int(metrics.get("ssmd_connector_dropped_total", 0.0)),
        "buffer_depth_max_metric": int(metrics.get("ssmd_connector_buffer_depth", 0.0)),
        "rss_start_mib": rss[0] / 2**20,
        "rss_max_mib": max(rss) / 2**20,
        "alive_through_overload": alive,
        "published_after_nats_returned": int(
            after.get("ssmd_connector_published_total", 0.0) - published
        ),
    }


async def main(args: argparse.Namespace) -> None:
    """Baseline and connector alternate, `--repeat` times each: the machine is shared, so the
    ratio of medians of interleaved runs is what is reported."""
    phases = set(args.phases)
    paced_ratios: list[float] = []
    backlog_ratios: list[float] = []
    runs: dict[str, list[dict[str, float]]] = {}
    alone: dict[str, float] = {}
    o: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ssmd-bench-") as tmp:
        bench = Bench(Path(tmp))
        bench.read_interval = args.read_interval
        bench.env_file.write_text(env_yaml())
        try:
            for _ in range(args.repeat if "a" in phases else 0):
                row = {}
                for which in ("baseline", "connector"):
                    row[which] = await paced(bench, which, args.paced_seconds)
                    runs.setdefault(f"paced_{which}", []).append(row[which])
                    print(f"(a) paced 10k msg/s   {which:9s}: {fmt(row[which])}", flush=True)
                paced_ratios.append(row["connector"]["us_per_msg"] / row["baseline"]["us_per_msg"])
                for name, role in (("floor", "floor"), ("raw floor", "floor-raw")):
                    row[name] = await floor(bench, args.paced_seconds, role)
                    runs.setdefault(f"paced_{name}", []).append(row[name])
                    print(f"(a) paced 10k msg/s   {name:9s}: {fmt(row[name])}", flush=True)
            for _ in range(args.repeat if "b" in phases else 0):
                row = {}
                for which in ("baseline", "connector"):
                    row[which] = await backlogged(bench, which, args.backlog)
                    runs.setdefault(f"backlog_{which}", []).append(row[which])
                    print(f"(b) backlogged        {which:9s}: {fmt(row[which])}", flush=True)
                if row["baseline"]["msgs_per_cpu_s"] > 0:
                    backlog_ratios.append(
                        row["connector"]["msgs_per_cpu_s"] / row["baseline"]["msgs_per_cpu_s"]
                    )
            if "d" in phases:
                alone = await publisher_alone(bench, args.backlog)
                print(f"(d) publisher alone: {fmt(alone)}", flush=True)
            if "c" in phases:
                o = await overload(bench, args.seconds)
                print(f"(c) overload: {fmt(o)}", flush=True)
        finally:
            bench.close()

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[key])

    print()
    if paced_ratios:
        print(
            f"(a) paced 10k msg/s, CPU per message (median of {args.repeat}): connector "
            f"{med('paced_connector', 'us_per_msg'):.1f} µs, baseline "
            f"{med('paced_baseline', 'us_per_msg'):.1f} µs; ratio "
            f"{statistics.median(paced_ratios):.2f}x (runs: "
            f"{', '.join(f'{r:.2f}' for r in paced_ratios)}; goal ≤ 0.6x); receive alone: "
            f"websockets asyncio client {med('paced_floor', 'us_per_msg'):.1f} µs, the "
            f"connector's transport {med('paced_raw floor', 'us_per_msg'):.1f} µs "
            f"({med('paced_raw floor', 'msgs_per_read'):.1f} messages per socket read)"
        )
        read_interval = "default" if args.read_interval is None else f"{args.read_interval:g}"
        for which in ("connector", "baseline"):
            print(
                f"(a) latency exchange → stream store, {which} (read interval {read_interval}; "
                f"median of {args.repeat} runs): p50 {med(f'paced_{which}', 'p50_ms'):.2f} ms, "
                f"p99 {med(f'paced_{which}', 'p99_ms'):.2f} ms, max "
                f"{med(f'paced_{which}', 'max_ms'):.2f} ms"
            )
    if backlog_ratios:
        print(
            f"(b) backlogged {args.backlog:,} msgs, msgs per CPU-second (median of "
            f"{args.repeat}): connector {med('backlog_connector', 'msgs_per_cpu_s'):,.0f}, "
            f"baseline {med('backlog_baseline', 'msgs_per_cpu_s'):,.0f}; ratio "
            f"{statistics.median(backlog_ratios):.2f}x (runs: "
            f"{', '.join(f'{r:.2f}' for r in backlog_ratios)}; goal ≥ 1.2x); lost: baseline "
            f"{sum(r['lost'] for r in runs['backlog_baseline'])}, connector "
            f"{sum(r['lost'] for r in runs['backlog_connector'])}"
        )
    if alone:
        print(
            f"(d) publishing alone, CPU per message: acknowledged (runtime/nats/publisher.py) "
            f"{alone['acked_us_per_msg']:.2f} µs ({alone['acked_stored']:,} stored); nats-py "
            f"publish with a header, no ack {alone['nats_py_no_ack_us_per_msg']:.2f} µs"
        )
    if o:
        print(
            f"(c) overload {o['seconds']:.0f}s, drop_oldest: offered {o['offered_rate']:,.0f} "
            f"msg/s = {o['overload_factor']:.1f}x what NATS accepted; RSS "
            f"{o['rss_start_mib']:.0f} → max {o['rss_max_mib']:.0f} MiB (goal < 256); dropped "
            f"{o['dropped']:,} (counted); alive={o['alive_through_overload']}; published in 3 s "
            f"after NATS returned: {o['published_after_nats_returned']:,}"
        )


def fmt(values: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:,.2f}"
        if isinstance(v, float)
        else f"{k}={v:,}"
        if isinstance(v, int) and not isinstance(v, bool)
        else f"{k}={v}"
        for k, v in values.items()
    )


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=60.0, help="overload duration")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved runs of (a) and (b)")
    parser.add_argument(
        "--read-interval",
        type=float,
        default=None,
        help="the connector's --read-interval (default: the connector's own default)",
    )
    parser.add_argument(
        "--phases", default="abdc", help="which phases to run (default: all of a, b, d, c)"
    )
    parser.add_argument(
        "--nats-auth",
        action="store_true",
        help="nats-server with the generated authorization; everyone connects as its role",
    )
    args = parser.parse_args()
    NATS_AUTH["enabled"] = args.nats_auth
    if args.role:
        import uvloop

        role, *rest = args.role
        if role == "baseline":
            uvloop.run(role_baseline(rest[0], rest[1]))
        elif role == "replay":
            uvloop.run(role_replay(int(rest[0]), int(rest[1]), rest[2] == "1"))
        elif role == "floor":
            uvloop.run(role_floor(rest[0], float(rest[1])))
        elif role == "floor-raw":
            uvloop.run(role_floor_raw(rest[0], float(rest[1]), float(rest[2])))
        elif role == "sim":
            uvloop.run(role_sim(int(rest[0]), float(rest[1]), rest[2] if len(rest) > 2 else None))
        return
    asyncio.run(main(args))


if __name__ == "__main__":
    cli()
