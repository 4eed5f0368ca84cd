"""Benchmark: shard resolution and `ssmd shard validate` at production sizes.

(1) Resolution of 100,000 synthetic symbols with realistic Kalshi tickers
    (`KXHIGHNY-24DEC05-B43.5`, `INXD-25DEC31-T5250`, `KXNBAGAME-25JAN03LALBOS`, ...) over
    100 shards that mix equality, list and glob selectors and a few nested carve-outs.
    Goal: under 1 s. Baseline in the same run: the rule as written, a naive loop over every
    symbol × every shard with `fnmatch` (measured on a sample, extrapolated).
(2) `ssmd shard validate` end to end (a subprocess: interpreter start, imports, YAML
    loading with line tracking, schema, resolution) on a generated 30,000-symbol
    environment file. Goal: under 5 s. Baseline in the same run: `ssmd --help` (the fixed
    cost of starting the CLI).

(3) `ssmd shard move` in that file (the round-trip edit, validated before it is written).

Every run checks its result: each symbol resolves to exactly one shard.

Usage: .venv/bin/python bench/resolve.py [--symbols 100000] [--file-symbols 30000]
       [--repeat 5] [--naive-sample 5000]
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ssmd_infra.core.environment import Environment, parse_environment  # noqa: E402
from ssmd_infra.core.resolution import resolve  # noqa: E402

MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
# categories served by equality shards (category × tier), by list shards (series lists),
# by glob shards (ticker prefixes), and crypto (tier shards with carve-outs)
EQ_CATEGORIES = ["politics", "economics", "financials", "companies", "entertainment", "science"]
LIST_CATEGORIES = ["climate", "sports"]
GLOB_CATEGORY = "mentions"
CITIES = ["NY", "CHI", "MIA", "LAX", "AUS", "DEN", "PHIL", "SEA", "SFO", "BOS", "DC", "ATL"]
TEAMS = ["LAL", "BOS", "NYK", "GSW", "MIA", "CHI", "DAL", "DEN", "PHX", "MIL", "KC", "BUF"]
SHARDS = 100
EQ_SHARDS = len(EQ_CATEGORIES) * 2  # tier 2 and tier 3 of each: 12
GLOB_SHARDS = 20  # 16 plain prefixes, 4 general globs
CRYPTO_SHARDS = 5  # tier-1 base, three nested carve-outs, tier 2
LIST_SHARDS = SHARDS - EQ_SHARDS - GLOB_SHARDS - CRYPTO_SHARDS  # 63
SERIES_PER_LIST = 5


def series_names(rng: random.Random) -> dict[str, list[str]]:
    """Series tickers per family, unique, Kalshi-like."""
    out: dict[str, list[str]] = {"eq": [], "list": [], "glob": [], "crypto": []}
    seen: set[str] = set()

    def fresh(name: str) -> str:
        base, n = name, 2
        while name in seen:
            name, n = f"{base}{n}", n + 1
        seen.add(name)
        return name

    eq_roots = [
        "PRES",
        "SENATE",
        "HOUSE",
        "GOV",
        "FED",
        "CPI",
        "GDP",
        "PAYROLLS",
        "INXD",
        "NASDAQ100",
    ]
    eq_roots += ["TSLA", "AAPL", "NVDA", "OSCARS", "GRAMMYS", "BOXOFFICE", "SPACEX", "NASA"]
    for i in range(12 * EQ_SHARDS):
        out["eq"].append(fresh(f"KX{rng.choice(eq_roots)}{i % 7 or ''}"))
    list_roots = (
        [f"HIGH{c}" for c in CITIES]
        + [f"RAIN{c}" for c in CITIES]
        + [
            "NBAGAME",
            "NFLGAME",
            "MLBGAME",
            "NHLGAME",
            "EPLGAME",
            "UFCFIGHT",
        ]
    )
    for _ in range(LIST_SHARDS * SERIES_PER_LIST):
        out["list"].append(fresh(f"KX{rng.choice(list_roots)}"))
    for i in range(GLOB_SHARDS):
        out["glob"].append(fresh(f"KXMENTION{rng.choice(['TRUMP', 'MUSK', 'POWELL'])}{i}"))
    for root in ["KXBTCD", "KXBTC", "KXETHD", "KXETH", "KXSOLD", "KXDOGE", "KXXRP", "KXADA"]:
        out["crypto"].append(fresh(root))
    return out


def market_tickers(series: str, count: int, rng: random.Random) -> list[str]:
    """`count` market tickers of one series: events by date, markets by strike or teams."""
    out: list[str] = []
    day = rng.randrange(365)
    while len(out) < count:
        day += 1
        event = f"{series}-{24 + day // 365 % 3}{MONTHS[day // 30 % 12]}{day % 28 + 1:02d}"
        if "GAME" in series or "FIGHT" in series:
            a, b = rng.sample(TEAMS, 2)
            out.append(f"{event}{a}{b}-{a}")
            out.append(f"{event}{a}{b}-{b}")
            continue
        kind = rng.choice("BT")
        base = rng.randrange(20, 9000)
        for k in range(rng.randrange(6, 20)):
            strike = base + k * rng.choice([1, 5, 25])
            frac = rng.choice(["", ".5", ".25", ".75"])
            out.append(f"{event}-{kind}{strike}{frac}")
    return out[:count]


def universe_and_shards(
    symbols: int, seed: int = 7
) -> tuple[dict[str, dict[str, str]], list[tuple[str, dict[str, object]]]]:
    """(symbol → attributes, [(shard, selector)]) with every symbol in exactly one shard."""
    rng = random.Random(seed)
    families = series_names(rng)
    attrs_of: dict[str, dict[str, str]] = {}
    for i, s in enumerate(families["eq"]):
        attrs_of[s] = {
            "category": EQ_CATEGORIES[i % len(EQ_CATEGORIES)],
            "tier": str(2 + i // len(EQ_CATEGORIES) % 2),
        }
    for i, s in enumerate(families["list"]):
        attrs_of[s] = {"category": LIST_CATEGORIES[i % 2], "tier": "2"}
    for s in families["glob"]:
        attrs_of[s] = {"category": GLOB_CATEGORY, "tier": "3"}
    for i, s in enumerate(families["crypto"]):
        attrs_of[s] = {"category": "crypto", "tier": "1" if i < 6 else "2"}
    all_series = [s for fam in families.values() for s in fam]
    per_series = -(-symbols // len(all_series))
    universe: dict[str, dict[str, str]] = {}
    for s in all_series:
        for ticker in market_tickers(s, per_series, rng):
            if len(universe) < symbols and ticker not in universe:
                universe[ticker] = {"series": s, **attrs_of[s]}
    while len(universe) < symbols:  # date collisions left a few short: top up
        s = rng.choice(families["list"])
        ticker = f"{s}-{len(universe)}X-B{rng.randrange(10**6)}.5"
        universe[ticker] = {"series": s, **attrs_of[s]}

    shards: list[tuple[str, dict[str, object]]] = []
    for c in EQ_CATEGORIES:
        for tier in (2, 3):
            shards.append((f"{c}-t{tier}", {"category": c, "tier": tier}))
    lists = families["list"]
    for i in range(LIST_SHARDS):
        chunk = lists[i * SERIES_PER_LIST : (i + 1) * SERIES_PER_LIST]
        shards.append((f"list-{i:02d}", {"series": chunk}))
    for i, s in enumerate(families["glob"]):
        if i < 16:
            shards.append((f"glob-{i:02d}", {"prefix": f"{s}-"}))
        else:  # a general glob (character class and `?`), same family
            shards.append((f"glob-{i:02d}", {"symbol": f"{s}-2[4-6]???[0-9][0-9]-*"}))
    shards.append(("crypto-t1", {"category": "crypto", "tier": 1}))
    shards.append(("crypto-btc", {"category": "crypto", "tier": 1, "prefix": "KXBTC"}))
    shards.append(
        ("crypto-btcd", {"category": "crypto", "tier": 1, "prefix": "KXBTC", "series": "KXBTCD"})
    )
    shards.append(
        ("crypto-eth", {"category": "crypto", "tier": 1, "symbol": ["KXETH-*", "KXETHD-*"]})
    )
    shards.append(("crypto-t2", {"category": "crypto", "tier": 2}))
    assert len(shards) == SHARDS, len(shards)
    return universe, shards


def _flow(value: object) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, int):
        return str(value)
    return '"' + str(value) + '"'


def environment_yaml(
    universe: Mapping[str, Mapping[str, str]], shards: list[tuple[str, dict[str, object]]]
) -> str:
    lines = ["name: bench", "feed: kalshi", "symbols:"]
    for symbol, attrs in universe.items():
        body = ", ".join(f"{k}: {_flow(v)}" for k, v in attrs.items())
        lines.append(f'  "{symbol}": {{{body}}}')
    lines.append("shards:")
    for name, selector in shards:
        sel = ", ".join(f"{k}: {_flow(v)}" for k, v in selector.items())
        lines.append(f"  {name}:")
        lines.append(f"    selector: {{{sel}}}")
        lines.append("    replicas: 3")
        lines.append("    resources: {cpu: 500m, memory: 512Mi}")
    return "\n".join(lines) + "\n"


def naive(env: Environment, universe: Mapping[str, Mapping[str, str]]) -> dict[str, str | None]:
    """The rule as written: every symbol against every shard, `fnmatch` on every value."""

    def norm(spec: Mapping[str, object]) -> dict[str, list[str]]:
        out = {}
        for key, raw in spec.items():
            values = [str(v) for v in raw] if isinstance(raw, list) else [str(raw)]
            if key == "prefix":
                key, values = "symbol", [v if "*" in v else v + "*" for v in values]
            out[key] = values
        return out

    specs = {name: norm(shard.selector) for name, shard in env.shards.items()}
    constraints = {n: {(k, tuple(sorted(v))) for k, v in s.items()} for n, s in specs.items()}
    result: dict[str, str | None] = {}
    for symbol, attrs in universe.items():
        hits = []
        for name, spec in specs.items():
            for key, values in spec.items():
                actual = symbol if key == "symbol" else attrs.get(key)
                if actual is None or not any(fnmatchcase(actual, v) for v in values):
                    break
            else:
                hits.append(name)
        best = [h for h in hits if all(h == o or constraints[h] > constraints[o] for o in hits)]
        result[symbol] = best[0] if len(best) == 1 else None
    return result


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """Wall-clock seconds of each run."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cpu_timed(fn: Callable[[], object], repeat: int) -> list[float]:
    """CPU seconds (user + system) of each run, this process and its children: less
    sensitive than wall-clock time to other work sharing the machine's 2 cores."""
    times = []
    for _ in range(repeat):
        before = _cpu()
        fn()
        times.append(_cpu() - before)
    return times


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def describe(times: list[float]) -> str:
    return (
        f"median {statistics.median(times):.3f} s, min {min(times):.3f} s, "
        f"max {max(times):.3f} s (n={len(times)})"
    )


def cli() -> list[str]:
    script = Path(sys.executable).parent / "ssmd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ssmd_infra"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=100_000)
    parser.add_argument("--file-symbols", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--naive-sample", type=int, default=5_000)
    args = parser.parse_args()

    # (1) resolution
    universe, shards = universe_and_shards(args.symbols)
    env = parse_environment(
        environment_yaml({}, shards).replace("symbols:\n", "symbols: {}\n"), "bench.yaml"
    )
    selectors = {
        "list": sum(1 for _, sel in shards if any(isinstance(v, list) for v in sel.values())),
        "glob": sum(1 for _, sel in shards if "prefix" in sel or "symbol" in sel),
    }
    dotted = sum(1 for s in universe if "." in s)
    print(
        f"(1) resolution: {len(universe):,} symbols ({dotted:,} with a dot, e.g. "
        f"{next(s for s in universe if '.' in s)}) × {len(env.shards)} shards "
        f"({selectors['list']} with lists, {selectors['glob']} with symbol globs, 3 nested carve-outs)"
    )
    layout = resolve(env, universe)
    assert len(layout.assignment) == len(universe)
    sizes = sorted(len(v) for v in layout.by_shard.values())
    print(f"    every symbol in exactly one shard; shard sizes {sizes[0]}–{sizes[-1]}")
    times = timed(lambda: resolve(env, universe), args.repeat)
    best = statistics.median(times)
    print(f"    resolve(): {describe(times)} → {len(universe) / best:,.0f} symbols/s  [goal < 1 s]")
    cpu = cpu_timed(lambda: resolve(env, universe), args.repeat)
    print(f"    resolve() CPU time: {describe(cpu)}")

    sample = dict(list(universe.items())[:: max(1, len(universe) // args.naive_sample)])
    reference = naive(env, sample)
    assert reference == {s: layout.assignment[s] for s in sample}, "naive rule disagrees"
    naive_times = timed(lambda: naive(env, sample), max(1, args.repeat // 2))
    naive_rate = len(sample) / statistics.median(naive_times)
    print(
        f"    baseline, naive symbol × shard fnmatch loop on {len(sample):,} symbols: "
        f"{describe(naive_times)} → {naive_rate:,.0f} symbols/s "
        f"(≈ {len(universe) / naive_rate:.1f} s for {len(universe):,}); "
        f"resolve() is {len(universe) / best / naive_rate:.0f}× faster"
    )

    # (2) validate end to end
    file_universe, file_shards = universe_and_shards(args.file_symbols, seed=11)
    text = environment_yaml(file_universe, file_shards)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-30k.yaml"
        path.write_text(text)
        command = [*cli(), "shard", "validate", str(path)]
        print(
            f"(2) `ssmd shard validate` of a {len(file_universe):,}-symbol, "
            f"{len(file_shards)}-shard file ({len(text) / 2**20:.1f} MiB), end to end"
        )

        def run(cmd: list[str]) -> None:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")

        run(command)  # warm the page cache and byte-code
        times = timed(lambda: run(command), args.repeat)
        print(f"    validate: {describe(times)}  [goal < 5 s]")
        cpu = cpu_timed(lambda: run(command), args.repeat)
        print(f"    validate CPU time (user + sys of the process): {describe(cpu)}")
        floor = timed(lambda: run([*cli(), "--help"]), args.repeat)
        print(f"    baseline, `ssmd --help` (start-up and imports): {describe(floor)}")
        floor_cpu = cpu_timed(lambda: run([*cli(), "--help"]), args.repeat)
        print(f"    baseline CPU time: {describe(floor_cpu)}")
        parse_times = timed(lambda: parse_environment(text, str(path)), max(1, args.repeat // 2))
        print(f"    of which, in process: load + schema {describe(parse_times)}")

        # (3) an edit of the same file: load, pin, validate the result, write atomically
        symbol, attrs = next((s, a) for s, a in file_universe.items() if a["category"] == "sports")
        source = next(
            n
            for n, sel in file_shards
            if isinstance(series := sel.get("series"), list) and attrs["series"] in series
        )
        target = next(n for n, _ in file_shards if n != source)

        def move() -> None:
            path.write_text(text)
            run([*cli(), "shard", "move", str(path), symbol, "--from", source, "--to", target])

        times = timed(move, max(1, args.repeat // 2))
        print(f"(3) `ssmd shard move` in the same file, end to end: {describe(times)}")


if __name__ == "__main__":
    main()
