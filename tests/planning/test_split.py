"""split-S:N: cut a shard into N shards of balanced estimated rate.

Specification, as the tests state it:
- every symbol ends in exactly one shard, and the file the plan writes resolves exactly so
  (checked with the real loader and `resolve`);
- a split is balanced within the stated LPT bounds: the heaviest group is at most
  `mean + (1 - 1/N) * largest unit` and at most `(4/3 - 1/(3N))` times the best partition;
- the same input gives the same plan, byte for byte;
- selectors stay readable: carve-outs with globs on ticker boundaries (kalshi-prod's tier1
  splits into `BTC*`/`ETH*` vs the rest), pins only where a glob cannot separate.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planning_support import (
    DEV,
    PROD,
    SEED_TIER1,
    best_partition,
    planned_layout,
    sit_of,
    write_env,
)

from ssmd_infra.core.environment import load_environment
from ssmd_infra.planning.globs import natural_prefixes
from ssmd_infra.planning.ops import AddShard, Pin
from ssmd_infra.planning.plans import make_plan
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.split import split

# ----------------------------------------------------------------------------- kalshi-prod


class TestKalshiProdTier1:
    def test_tier1_split_carves_out_btc_and_eth_with_globs(self) -> None:
        env = load_environment(PROD)
        sit = sit_of(env, {"tier1": SEED_TIER1})
        proposal = split(sit, "tier1", 2)
        (add,) = [op for op in proposal.ops if isinstance(op, AddShard)]
        assert add.shard == "tier1a"
        assert add.body["selector"] == {"tier": 1, "symbol": ["BTC*", "ETH*"]}
        assert not [op for op in proposal.ops if isinstance(op, Pin)]
        # the remainder keeps its name and selector, so markets listed later still land
        assert proposal.assignment["SOLUSD"] == "tier1"
        assert proposal.assignment["AVAXUSD"] == "tier1"
        assert proposal.assignment["MATICUSD"] == "tier1"
        rates = {e.shard: e.rate_after for e in proposal.estimates}
        assert rates["tier1a"] == 23000.0 and rates["tier1"] == 23000.0
        assert sorted(proposal.moves) == ["BTCUSD", "ETHUSD"]

    def test_the_written_file_keeps_comments_and_resolves_as_planned(self) -> None:
        env = load_environment(PROD)
        sit = sit_of(env, {"tier1": SEED_TIER1})
        proposal = split(sit, "tier1", 2)
        rates = Rates(env.name, {"tier1": SEED_TIER1}, "test")
        plan, planned = make_plan(sit, proposal, rates)
        original = PROD.read_text()
        for line in original.splitlines():
            assert line in plan.environment_after  # nothing of the original is lost
        assert "# Auto-scale up to 2 replicas" in plan.environment_after
        assert list(planned.shards) == ["tier1", "tier2", "tier1a"]
        assert planned_layout(sit, proposal.ops) == proposal.assignment

    def test_a_carve_out_never_catches_a_symbol_of_another_shard(self) -> None:
        # kalshi-dev already carves BTC* out of tier1 (tier1a); a new glob must not match BTCUSD
        env = load_environment(DEV)
        tier1 = {"ETHUSD": 9000.0, "SOLUSD": 1000.0, "AVAXUSD": 1000.0, "MATICUSD": 1000.0}
        tier1 |= {"INXD-25-B4000": 3000.0, "INXD-25-B4100": 2000.0, "NASDAQ100-25-B20000": 1000.0}
        sit = sit_of(env, {"tier1": tier1, "tier1a": {"BTCUSD": 5000.0}})
        proposal = split(sit, "tier1", 2)
        (add,) = [op for op in proposal.ops if isinstance(op, AddShard)]
        assert add.shard == "tier1b"  # tier1a is taken
        globs = add.body["selector"]["symbol"]
        globs = [globs] if isinstance(globs, str) else globs
        assert all(not "BTCUSD".startswith(g.rstrip("*")) for g in globs)
        assert planned_layout(sit, proposal.ops)["BTCUSD"] == "tier1a"


# ----------------------------------------------------------------------------- split


def series_symbols(counts: Mapping[str, int]) -> dict[str, dict[str, object]]:
    """Kalshi-like tickers: `{series}-25DEC{k}-T{k}.5`, all tier 1."""
    out: dict[str, dict[str, object]] = {}
    for series, count in counts.items():
        for k in range(count):
            out[f"{series}-25DEC{k:02d}-T{k}.5"] = {"tier": 1}
    return out


TWO_SHARDS = """\
big:
  selector: {tier: 1}
  replicas: 2
rest:
  selector: {tier: 2}
  replicas: 1
"""


class TestSplit:
    def test_units_follow_ticker_boundaries(self) -> None:
        assert natural_prefixes("KXHIGHNY-24DEC05-B43.5") == ["KXHIGHNY-", "KXHIGHNY-24DEC05-"]
        assert natural_prefixes("BTCUSD") == ["BTC"]
        assert natural_prefixes("PLAIN") == []

    def test_balanced_series_are_kept_whole(self, tmp_path: Path) -> None:
        symbols = series_symbols({"KXA": 4, "KXB": 4, "KXC": 4, "KXD": 4})
        env = write_env(tmp_path, symbols, TWO_SHARDS)
        sit = sit_of(env, {"big": {s: 100.0 for s in symbols}})
        proposal = split(sit, "big", 2)
        (add,) = [op for op in proposal.ops if isinstance(op, AddShard)]
        globs = add.body["selector"]["symbol"]
        assert len(globs) == 2 and all(g.startswith("KX") and g.endswith("-*") for g in globs)
        assert proposal.balance is not None and proposal.balance.imbalance == 0.0

    def test_a_dominant_series_is_cut_along_its_events(self, tmp_path: Path) -> None:
        symbols = series_symbols({"KXHOT": 6, "KXCOLD": 2})
        env = write_env(tmp_path, symbols, TWO_SHARDS)
        rates = {s: (1000.0 if s.startswith("KXHOT") else 10.0) for s in symbols}
        sit = sit_of(env, {"big": rates})
        proposal = split(sit, "big", 2)
        assert proposal.balance is not None
        assert proposal.balance.imbalance <= 0.10
        (add,) = [op for op in proposal.ops if isinstance(op, AddShard)]
        # the hot series no longer moves as one unit: event-level globs
        assert all(g.startswith("KXHOT-25DEC") for g in add.body["selector"]["symbol"])
        assert planned_layout(sit, proposal.ops) == proposal.assignment

    def test_one_ticker_above_the_mean_is_reported_not_hidden(self, tmp_path: Path) -> None:
        symbols = series_symbols({"KXA": 1, "KXB": 3})
        env = write_env(tmp_path, symbols, TWO_SHARDS)
        rates = {s: (900.0 if s.startswith("KXA") else 10.0) for s in symbols}
        proposal = split(sit_of(env, {"big": rates}), "big", 2)
        assert proposal.balance is not None
        assert proposal.balance.heaviest == 900.0
        assert proposal.balance.heaviest <= proposal.balance.bound
        assert any("cannot be divided further" in n for n in proposal.notes)

    def test_a_shard_that_already_constrains_the_symbol_is_split_with_pins(
        self, tmp_path: Path
    ) -> None:
        # tier1a is {tier: 1, prefix: BTC*}: a glob carve-out of it would not be more specific
        text = DEV.read_text().replace(
            "  BTCUSD: {tier: 1, category: crypto}",
            "  BTCUSD: {tier: 1, category: crypto}\n  BTCEUR: {tier: 1, category: crypto}",
        )
        copy = tmp_path / "kalshi-dev.yaml"
        copy.write_text(text)
        env = load_environment(copy)
        sit = sit_of(env, {"tier1a": {"BTCUSD": 500.0, "BTCEUR": 400.0}})
        proposal = split(sit, "tier1a", 2)
        pins = [op for op in proposal.ops if isinstance(op, Pin)]
        assert [(p.symbol, p.shard) for p in pins] == [("BTCEUR", "tier1a-b")]
        assert planned_layout(sit, proposal.ops) == proposal.assignment

    def test_same_input_same_plan(self, tmp_path: Path) -> None:
        symbols = series_symbols({"KXA": 3, "KXB": 5, "KXC": 2})
        env = write_env(tmp_path, symbols, TWO_SHARDS)
        rates = {"big": {s: float(len(s) * 7 % 13) + 1 for s in symbols}}
        first = make_plan(
            sit_of(env, rates), split(sit_of(env, rates), "big", 3), Rates("x", rates, "t")
        )
        second = make_plan(
            sit_of(env, rates), split(sit_of(env, rates), "big", 3), Rates("x", rates, "t")
        )
        assert first[0].id == second[0].id
        assert first[0].ops == second[0].ops
        assert first[0].environment_after == second[0].environment_after


# Tickers that share no prefix, so every unit is one ticker: the bounds then speak about
# partitions of the tickers themselves and can be checked by brute force.
PAIRS = [f"{a}{b}USD" for a, b in itertools.product("ABCDEFGH", "XYZ")]


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rates=st.lists(st.integers(min_value=0, max_value=5000), min_size=3, max_size=8),
    ways=st.integers(min_value=2, max_value=3),
)
def test_split_invariants_on_random_rate_sets(tmp_path: Path, rates: list[int], ways: int) -> None:
    """Every symbol in exactly one shard, nothing outside the split shard moves, and the
    heaviest group is within both LPT bounds of the best partition."""
    if ways > len(rates) or not any(rates):
        return
    names = PAIRS[: len(rates)]
    symbols: dict[str, dict[str, object]] = {s: {"tier": 1} for s in names}
    symbols["OTHERUSD"] = {"tier": 2}
    env = write_env(tmp_path, symbols, TWO_SHARDS)
    measured = {s: float(r) for s, r in zip(names, rates, strict=True)}
    sit = sit_of(env, {"big": measured})
    proposal = split(sit, "big", ways)
    layout = planned_layout(sit, proposal.ops)
    assert layout == proposal.assignment
    assert set(layout) == set(symbols)
    assert layout["OTHERUSD"] == "rest"
    groups = {shard for s, shard in layout.items() if s in measured}
    assert len(groups) == ways
    balance = proposal.balance
    assert balance is not None
    heaviest = max(sum(measured[s] for s in names if layout[s] == shard) for shard in groups)
    assert heaviest == pytest.approx(balance.heaviest)
    assert heaviest <= balance.bound + 1e-6
    assert heaviest <= balance.ratio_bound * best_partition(list(measured.values()), ways) + 1e-6
