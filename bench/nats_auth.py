"""What least privilege costs nats-server: the same publishing with and without the
generated authorization.

    .venv/bin/python bench/nats_auth.py [--messages 200000] [--symbols 5000] [--repeat 3]

Permissions are checked by the server, not by the clients: a publish is matched against
the publisher's allow list (nats-server caches the result per subject, a small cache, so
thousands of distinct symbols keep missing it). This measures that cost where it lands: the
CPU of nats-server per message, for

- baseline: a nats-server without authorization, an anonymous publisher;
- nkeys: a nats-server started with `ssmd_infra.adapters.nats_auth.write_auth_dir`'s
  authorization, the publisher connected as `connector-tier1` with its seed and inbox;

each on a fresh nats-server with the environment's streams (created by the admin role),
alternating, `--repeat` times. The input is ~288-byte Kalshi trade frames with a
`Nats-Msg-Id` header on `internal.tier1.kalshi.trade.{symbol}` over `--symbols` symbols,
published with nats-py in batches of 1000 (a round trip after each batch keeps the server
below the rate where JetStream drops core publishes); every message must be stored
(checked). The publisher's CPU is reported too: it should not change (the client signs one
nonce at connect time, nothing per message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssmd_infra.adapters import jetstream
from ssmd_infra.adapters.nats_auth import write_auth_dir
from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.nats_auth import ADMIN_ROLE, connector_role
from ssmd_infra.core.nkey_seeds import RoleSeed, read_seed_file, seed_file_name
from ssmd_infra.core.streams import stream_specs
from ssmd_infra.core.subjects import internal_stream, internal_subject
from ssmd_infra.local.servers import start_nats

ENV = """
name: bench-auth
feed: kalshi
streams:
  internal: {max_age: 1h, max_bytes: 1Gi, duplicate_window: 2m}
  client: {max_age: 1h, max_bytes: 1Gi, duplicate_window: 2m}
shards:
  tier1: {selector: {tier: 1}, replicas: 1}
  tier2: {selector: {tier: 2}, replicas: 1}
"""
BATCH = 1000


def frame(symbol: str, n: int) -> bytes:
    msg = {
        "trade_id": f"{n:08d}-bench-0000-0000-000000000000",
        "market_ticker": symbol,
        "yes_price": 36,
        "no_price": 64,
        "yes_price_dollars": "0.3600",
        "no_price_dollars": "0.6400",
        "count": 136,
        "count_fp": "136.00",
        "taker_side": "no",
        "ts": 1733407387,
    }
    return json.dumps({"type": "trade", "sid": 11, "seq": n, "msg": msg}).encode()


def cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def publish_all(url: str, options: dict[str, str], messages: int, symbols: int) -> None:
    nc = await nats.connect(url, name="bench-auth", **options)  # type: ignore[arg-type]
    try:
        subjects = [
            internal_subject("tier1", "kalshi", "trade", f"KXBENCH-{i:05d}") for i in range(symbols)
        ]
        payloads = [frame(f"KXBENCH-{i:05d}", i) for i in range(symbols)]
        for start in range(0, messages, BATCH):
            for n in range(start, min(start + BATCH, messages)):
                await nc.publish(
                    subjects[n % symbols], payloads[n % symbols], headers={"Nats-Msg-Id": str(n)}
                )
            await nc.flush()
    finally:
        await nc.close()


async def stored(url: str, seed: RoleSeed | None, expected: int) -> int:
    deadline = time.monotonic() + 30
    while True:
        async with jetstream.connect(url, seed=seed) as nc:
            raw = await jetstream.stream_raw_info(nc, internal_stream("tier1"))
        count = int(raw["state"]["messages"]) if raw else 0
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(0.1)


def run_phase(phase: str, messages: int, symbols: int) -> dict[str, float]:
    env = parse_environment(ENV, "bench-auth.yaml")
    with tempfile.TemporaryDirectory(prefix="ssmd-bench-auth-") as tmp:
        root = Path(tmp)
        admin: RoleSeed | None = None
        options: dict[str, str] = {}
        extra = None
        if phase == "nkeys":
            changes = write_auth_dir(env, root / "auth")
            extra = changes.config.read_text()
            admin = read_seed_file(root / "auth" / seed_file_name(ADMIN_ROLE), ADMIN_ROLE)
            role = connector_role("tier1")
            options = read_seed_file(root / "auth" / seed_file_name(role), role).nats_py_options()
        server = start_nats(root / "nats", extra_config=extra)
        try:
            asyncio.run(jetstream.reconcile_streams(server.url, stream_specs(env), seed=admin))
            server_ps, me = psutil.Process(server.proc.pid), psutil.Process()
            server_before, me_before = cpu(server_ps), cpu(me)
            asyncio.run(publish_all(server.url, options, messages, symbols))
            count = asyncio.run(stored(server.url, admin, messages))
            server_cpu, me_cpu = cpu(server_ps) - server_before, cpu(me) - me_before
        finally:
            server.stop()
    if count != messages:
        raise SystemExit(f"{phase}: {count} of {messages} messages stored")
    return {
        "server_us": server_cpu / messages * 1e6,
        "publisher_us": me_cpu / messages * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "nkeys": []}
    for _ in range(args.repeat):
        for phase in results:
            results[phase].append(run_phase(phase, args.messages, args.symbols))
    print(f"{args.messages} messages over {args.symbols} symbols, medians of {args.repeat}")
    base = statistics.median(r["server_us"] for r in results["baseline"])
    for phase, runs in results.items():
        server = statistics.median(r["server_us"] for r in runs)
        publisher = statistics.median(r["publisher_us"] for r in runs)
        each = ", ".join(f"{r['server_us']:.2f}" for r in runs)
        print(
            f"{phase:9s} nats-server {server:.2f} µs/msg ({each}) "
            f"ratio {server / base:.2f}×; publisher {publisher:.2f} µs/msg"
        )


if __name__ == "__main__":
    main()
