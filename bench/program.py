"""Benchmark: the whole Pulumi program under Pulumi's mocks, 30k symbols × 20 shards.

Goal: under 10 s (`pulumi preview` of a production-sized environment stays interactive).
For comparison in the same run:
- baseline: the same program for the small `kalshi-dev` environment (the fixed cost of
  Pulumi, pulumi_kubernetes and the mock engine);
- the pure part alone (load + validate + resolve + build every manifest, no Pulumi), so the
  share of the engine's registration work is visible.

Each run is reported as wall time and as this process's CPU time: on a machine shared with
other work the wall time grows with the load (the baseline shows by how much), the CPU time
much less. The goal is judged on the wall time.

Usage: .venv/bin/python bench/program.py [--symbols 30000] [--shards 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ssmd_infra.core.environment import load_environment  # noqa: E402
from ssmd_infra.core.resolution import resolve  # noqa: E402
from ssmd_infra.core.secmaster import merge_symbols  # noqa: E402
from ssmd_infra.pulumi import manifests  # noqa: E402
from ssmd_infra.pulumi.offline import run_program  # noqa: E402
from ssmd_infra.pulumi.stack_config import parse_stack_config  # noqa: E402

CATEGORIES = ["crypto", "financials", "climate", "economics", "politics", "sports", "culture"]


def environment_yaml(symbols: int, shards: int) -> str:
    """`symbols` Kalshi-like tickers (some dotted) over `shards` shards, one of them a carve-out."""
    lines = ["name: bench", "feed: kalshi", "symbols:"]
    for i in range(symbols):
        bucket = i % (shards - 1)
        ticker = f"KX{CATEGORIES[i % len(CATEGORIES)].upper()}-{i // 100:04d}-B{i % 100}.5"
        if i % 50 == 0:
            ticker = f"BTC-{i:06d}"
        lines.append(
            f"  {ticker}: {{bucket: {bucket}, category: {CATEGORIES[i % len(CATEGORIES)]}}}"
        )
    lines.append("shards:")
    lines.append('  carve: {selector: {bucket: 0, prefix: "BTC*"}, replicas: 4}')
    for b in range(shards - 1):
        lines.append(
            f"  s{b:02d}: {{selector: {{bucket: {b}}}, replicas: 3, "
            f"resources: {{cpu: 500m, memory: 512Mi}}}}"
        )
    return "\n".join(lines) + "\n"


def timed(fn: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each of `repeat` calls."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=30_000)
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "bench.yaml"
        env_file.write_text(environment_yaml(args.symbols, args.shards))
        config = {
            "environment": str(env_file),
            "imageRepository": "registry.example.com/ssmd/runtime",
            "natsUrl": "nats://nats:4222",
            "redisUrl": "redis://redis:6379/0",
            "kalshiApiKeyId": "bench",
            "kalshiPrivateKey": pem,
        }
        secret = ("kalshiPrivateKey",)

        def big() -> object:
            return run_program(REPO / "__main__.py", config, secret_keys=secret)

        def small() -> object:
            return run_program(
                REPO / "__main__.py", {**config, "environment": "kalshi-dev"}, secret_keys=secret
            )

        def pure() -> object:
            env = load_environment(env_file)
            layout = resolve(env, merge_symbols(env))
            stack = parse_stack_config(
                "bench", {k: v for k, v in config.items() if k != "kalshiPrivateKey"}
            )
            return [
                manifests.shard_objects(
                    manifests.ShardContext(
                        env, layout, env.shards[s], stack, manifests.Refs.pending(False)
                    )
                )
                for s in env.shards
            ]

        result = run_program(REPO / "__main__.py", config, secret_keys=secret)  # warm-up + counts
        resources = len(result.resources)
        counted = sum(s["symbols"] for s in result.outputs["shards"].values())
        assert counted == args.symbols, (counted, args.symbols)
        rows = [
            (f"program, {args.symbols} symbols × {args.shards} shards", timed(big, args.repeat)),
            ("baseline: program, kalshi-dev (20 symbols × 3 shards)", timed(small, args.repeat)),
            (
                f"pure part only, {args.symbols} × {args.shards} (no Pulumi)",
                timed(pure, args.repeat),
            ),
        ]
    print(f"resources declared: {resources}; symbols resolved: {counted}")
    for label, (wall, cpu) in rows:
        print(
            f"{label:<58} median {statistics.median(wall):6.2f} s  (min {min(wall):.2f}, "
            f"max {max(wall):.2f}, n={len(wall)}); CPU median {statistics.median(cpu):.2f} s"
        )
    verdict = "met" if statistics.median(rows[0][1][0]) < 10 else "MISSED"
    print(f"goal < 10 s: {verdict}")


if __name__ == "__main__":
    main()
