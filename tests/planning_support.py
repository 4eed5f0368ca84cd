"""Shared by the planning tests: environments written to disk, situations, and references."""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping
from pathlib import Path

import yaml

from ssmd_infra.core.environment import Environment, load_environment, parse_environment
from ssmd_infra.core.resolution import resolve
from ssmd_infra.planning.plans import raw_document, render
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.situation import Situation, situation

REPO = Path(__file__).resolve().parent.parent
PROD = REPO / "exchanges" / "environments" / "kalshi-prod.yaml"
DEV = REPO / "exchanges" / "environments" / "kalshi-dev.yaml"

# kalshi-prod's tier1 (45k msg/s in total), with rates that make BTC+ETH one half.
SEED_TIER1 = {"BTCUSD": 20000.0, "ETHUSD": 3000.0, "SOLUSD": 9000.0, "AVAXUSD": 8000.0}
SEED_TIER1["MATICUSD"] = 6000.0


def write_env(
    tmp_path: Path, symbols: Mapping[str, Mapping[str, object]], shards: str
) -> Environment:
    """An environment file with `symbols` and the `shards` block (YAML text)."""
    body = {
        "name": "synthetic",
        "feed": "kalshi",
        "symbols": {k: dict(v) for k, v in symbols.items()},
    }
    text = (
        yaml.safe_dump(body, sort_keys=False)
        + "shards:\n"
        + textwrap.indent(textwrap.dedent(shards), "  ")
    )
    path = tmp_path / "synthetic.yaml"
    path.write_text(text)
    return load_environment(path)


def sit_of(env: Environment, rates: Mapping[str, Mapping[str, float]]) -> Situation:
    return situation(
        env, raw_document(env), Rates(env.name, {k: dict(v) for k, v in rates.items()}, "test")
    )


def planned_layout(sit: Situation, ops: object) -> dict[str, str]:
    """Where every symbol resolves in the file the plan would write (real loader + resolve)."""
    assert sit.env.file is not None
    text = render(Path(sit.env.file).read_text(), ops, sit.env.file)  # type: ignore[arg-type]
    env = parse_environment(text, sit.env.file)
    return resolve(env, sit.universe, complete_universe=env.secmaster.source == "manual").assignment


def best_partition(rates: list[float], ways: int) -> float:
    """The optimal heaviest group, by brute force (small inputs only)."""
    best = float("inf")
    for labels in itertools.product(range(ways), repeat=len(rates)):
        loads = [0.0] * ways
        for rate, label in zip(rates, labels, strict=True):
            loads[label] += rate
        best = min(best, max(loads))
    return best
