"""Benchmark: how fast the `ssmd` command starts and answers.

(1) `ssmd --help` and `ssmd shard list kalshi-prod`, end to end (a fresh interpreter each run),
    against the same-run baseline `python -c "import typer, pydantic, yaml"`: the libraries
    every `ssmd` command needs. Goal: each within 2× the baseline (median of the runs). The
    three commands run interleaved, so a burst of other work on the machine hits all three.
(2) On the 30,000-symbol environment file `bench/resolve.py` generates: `ssmd shard validate`
    (goal < 2.5 s) and `ssmd shard move` (goal < 3 s), end to end.

Wall-clock medians are the figures the goals speak about; CPU time (user + system of the child
process) is printed too, being less sensitive to other work sharing the machine.

Usage: .venv/bin/python bench/cli.py [--repeat 15] [--file-symbols 30000] [--file-repeat 5]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resolve import cli, environment_yaml, universe_and_shards

from ssmd_infra.core.environment import load_environment

REPO = Path(__file__).resolve().parent.parent
TYPER_FLOOR = (
    "import typer, pydantic, yaml\n"
    "app = typer.Typer()\n"
    "@app.command()\n"
    "def echo(text: str) -> None:\n"
    "    print(text)\n"
    "app(['x'])\n"
)


def run(command: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of `command`, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def summary(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f} s, min {min(values):.3f} s, "
        f"max {max(values):.3f} s (n={len(values)})"
    )


def startup(repeat: int) -> bool:
    commands = {
        "baseline": [sys.executable, "-c", "import typer, pydantic, yaml"],
        "ssmd --help": [*cli(), "--help"],
        "ssmd shard list kalshi-prod": [*cli(), "shard", "list", "kalshi-prod"],
        # for reference: the least any typer command costs (typer parses its arguments
        # through pydantic TypeAdapters, which `import pydantic` alone does not load)
        "a one-argument typer command": [sys.executable, "-c", TYPER_FLOOR],
    }
    for command in commands.values():
        run(command)  # warm the page cache
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, command in commands.items():
            seconds, used = run(command)
            wall[name].append(seconds)
            cpu[name].append(used)
    base_wall = statistics.median(wall["baseline"])
    base_cpu = statistics.median(cpu["baseline"])
    print("(1) start-up, end to end (interleaved runs)")
    print(f'    baseline `python -c "import typer, pydantic, yaml"`: {summary(wall["baseline"])}')
    print(f"        CPU {summary(cpu['baseline'])}")
    ok = True
    for name in list(commands)[1:]:
        ratio = statistics.median(wall[name]) / base_wall
        cpu_ratio = statistics.median(cpu[name]) / base_cpu
        goal = name.startswith("ssmd")
        ok = ok and (ratio <= 2.0 or not goal)
        print(
            f"    `{name}`: {summary(wall[name])} → {ratio:.2f}× the baseline"
            + (" [goal ≤ 2×]" if goal else "")
        )
        print(f"        CPU {summary(cpu[name])} → {cpu_ratio:.2f}× the baseline's CPU")
    return ok


def big_file(symbols: int, repeat: int) -> bool:
    universe, shards = universe_and_shards(symbols, seed=11)
    text = environment_yaml(universe, shards)
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-30k.yaml"
        path.write_text(text)
        print(
            f"(2) a {len(universe):,}-symbol, {len(shards)}-shard environment file "
            f"({len(text) / 2**20:.1f} MiB, generated as bench/resolve.py does)"
        )
        validate = [*cli(), "shard", "validate", str(path)]
        run(validate)  # warm
        timings = [run(validate) for _ in range(repeat)]
        median = statistics.median(t[0] for t in timings)
        ok = ok and median < 2.5
        print(f"    `ssmd shard validate`: {summary([t[0] for t in timings])} [goal < 2.5 s]")
        print(f"        CPU {summary([t[1] for t in timings])}")

        symbol, attrs = next((s, a) for s, a in universe.items() if a["category"] == "sports")
        source = next(
            n
            for n, sel in shards
            if isinstance(series := sel.get("series"), list) and attrs["series"] in series
        )
        target = next(n for n, _ in shards if n != source)
        move = [*cli(), "shard", "move", str(path), symbol, "--from", source, "--to", target]
        timings = []
        for _ in range(repeat):
            path.write_text(text)  # each run makes the same edit to the same file
            timings.append(run(move))
        pinned = load_environment(path).assignments  # the edit was made, and made right
        assert pinned.get(symbol) == target, f"{symbol} not pinned to {target}"
        median = statistics.median(t[0] for t in timings)
        ok = ok and median < 3.0
        print(
            f"    `ssmd shard move {symbol} --from {source} --to {target}`: "
            f"{summary([t[0] for t in timings])} [goal < 3 s]"
        )
        print(f"        CPU {summary([t[1] for t in timings])}")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--file-symbols", type=int, default=30_000)
    parser.add_argument("--file-repeat", type=int, default=5)
    args = parser.parse_args()
    started = startup(args.repeat)
    answered = big_file(args.file_symbols, args.file_repeat)
    print("all goals met" if started and answered else "some goal NOT met (see above)")


if __name__ == "__main__":
    main()
