"""Resharding proposals: split a shard by measured rates, or rebalance under a target.

Specification, as the tests state it:
- every symbol ends in exactly one shard, and the file the plan writes resolves exactly so
  (checked with the real loader and `resolve`);
- a split is balanced within the stated LPT bounds: the heaviest group is at most
  `mean + (1 - 1/N) * largest unit` and at most `(4/3 - 1/(3N))` times the best partition;
- the same input gives the same plan, byte for byte;
- selectors stay readable: carve-outs with globs on ticker boundaries (the seed's tier1
  splits into `BTC*`/`ETH*` vs the rest), pins only where a glob cannot separate;
- rebalance moves the fewest symbols that bring every shard under its target;
- bad requests are refused with a message that says what to do.
"""

from __future__ import annotations

import itertools
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ssmd_infra.core.environment import Environment, load_environment, parse_environment
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.planning.plans import make_plan, raw_document, render
from ssmd_infra.planning.proposals import (
    AddShard,
    Pin,
    PlanError,
    Rates,
    Situation,
    apply_ops_to_data,
    globs_for,
    natural_prefixes,
    parse_strategy,
    rebalance,
    situation,
    split,
)

REPO = Path(__file__).resolve().parents[2]
PROD = REPO / "exchanges" / "environments" / "kalshi-prod.yaml"
DEV = REPO / "exchanges" / "environments" / "kalshi-dev.yaml"

# The seed's tier1 (45k msg/s in total), with rates that make BTC+ETH one half.
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


# ----------------------------------------------------------------------------- the seed


class TestSeedExample:
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
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
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


# ----------------------------------------------------------------------------- rebalance


FOUR_SHARDS = """\
hot:
  selector: {tier: 1}
  replicas: 1
warm:
  selector: {tier: 2}
  replicas: 1
cool:
  selector: {tier: 3}
  replicas: 1
"""


def fewest_moves(rates: Mapping[str, float], need: float) -> int:
    """Brute force: the fewest symbols whose rates add up to at least `need`."""
    values = sorted(rates.values(), reverse=True)
    total = 0.0
    for count, value in enumerate(values, start=1):
        total += value
        if total >= need:
            return count
    return len(values)


class TestRebalance:
    def test_moves_the_fewest_symbols_into_room_elsewhere(self, tmp_path: Path) -> None:
        hot = {"AXUSD": 400.0, "BXUSD": 300.0, "CXUSD": 250.0, "DXUSD": 50.0, "EXUSD": 30.0}
        symbols = {s: {"tier": 1} for s in hot} | {"FXUSD": {"tier": 2}, "GXUSD": {"tier": 3}}
        env = write_env(tmp_path, symbols, FOUR_SHARDS)
        sit = sit_of(env, {"hot": hot, "warm": {"FXUSD": 100.0}, "cool": {"GXUSD": 10.0}})
        proposal = rebalance(sit, target_rate=600.0)
        # 1030 msg/s in `hot`, target 600: 430 must go; BXUSD + CXUSD would be two moves too,
        # but one symbol cannot do it, so two is the minimum
        assert len(proposal.moves) == fewest_moves(hot, 1030.0 - 600.0) == 2
        for estimate in proposal.estimates:
            assert estimate.rate_after <= 600.0
        assert all(isinstance(op, Pin) for op in proposal.ops)
        assert planned_layout(sit, proposal.ops) == proposal.assignment

    def test_without_room_elsewhere_it_carves_a_new_shard(self, tmp_path: Path) -> None:
        hot = {f"KXA-25DEC0{k}-T1": 200.0 for k in range(4)} | {"KXB-25DEC01-T1": 200.0}
        symbols: dict[str, dict[str, object]] = {s: {"tier": 1} for s in hot}
        symbols |= {"FXUSD": {"tier": 2}, "GXUSD": {"tier": 3}}
        env = write_env(tmp_path, symbols, FOUR_SHARDS)
        sit = sit_of(env, {"hot": hot, "warm": {"FXUSD": 590.0}, "cool": {"GXUSD": 590.0}})
        proposal = rebalance(sit, target_rate=600.0)
        adds = [op for op in proposal.ops if isinstance(op, AddShard)]
        assert [a.shard for a in adds] == ["hot-b"]
        assert adds[0].body["selector"]["tier"] == 1
        assert len(proposal.moves) == 2
        assert all(e.rate_after <= 600.0 for e in proposal.estimates)
        assert planned_layout(sit, proposal.ops) == proposal.assignment

    def test_the_default_target_is_the_autoscaling_capacity_with_headroom(
        self, tmp_path: Path
    ) -> None:
        symbols = {"AXUSD": {"tier": 1}, "BXUSD": {"tier": 1}, "CXUSD": {"tier": 2}}
        env = write_env(tmp_path, symbols, FOUR_SHARDS)
        # hot: 1 replica × 10000 msg/s per pod × 0.8 = 8000
        sit = sit_of(env, {"hot": {"AXUSD": 5000.0, "BXUSD": 4000.0}, "warm": {"CXUSD": 1.0}})
        proposal = rebalance(sit)
        assert {e.shard: e.capacity for e in proposal.estimates}["hot"] == 8000.0
        assert proposal.moves == {"BXUSD": ("hot", "cool")}

    def test_a_ticker_above_the_target_stays_and_is_explained(self, tmp_path: Path) -> None:
        symbols = {"AXUSD": {"tier": 1}, "CXUSD": {"tier": 2}}
        env = write_env(tmp_path, symbols, FOUR_SHARDS)
        sit = sit_of(env, {"hot": {"AXUSD": 900.0}, "warm": {"CXUSD": 1.0}})
        proposal = rebalance(sit, target_rate=600.0)
        assert proposal.ops == ()
        assert any("AXUSD alone" in n and "replicas" in n for n in proposal.notes)

    def test_nothing_to_do_when_every_shard_is_under_target(self, tmp_path: Path) -> None:
        env = write_env(tmp_path, {"AXUSD": {"tier": 1}}, FOUR_SHARDS)
        proposal = rebalance(sit_of(env, {"hot": {"AXUSD": 1.0}}))
        assert proposal.ops == () and proposal.moves == {}
        assert any("nothing to move" in n for n in proposal.notes)


# ----------------------------------------------------------------------------- inputs


class TestBadInputs:
    def test_unknown_strategy(self) -> None:
        with pytest.raises(PlanError, match="unknown strategy 'shuffle'; use split-<shard>"):
            parse_strategy("shuffle")

    def test_strategy_forms(self) -> None:
        assert str(parse_strategy("split-tier1")) == "split-tier1:2"
        assert str(parse_strategy("split-tier1-b:3")) == "split-tier1-b:3"
        assert parse_strategy("rebalance").kind == "rebalance"
        with pytest.raises(PlanError, match="whole number"):
            parse_strategy("split-tier1:two")

    def test_splitting_a_missing_shard(self) -> None:
        sit = sit_of(load_environment(PROD), {"tier1": SEED_TIER1})
        with pytest.raises(
            PlanError, match=r"no such shard in kalshi-prod \(shards: tier1, tier2\)"
        ):
            split(sit, "tier9", 2)

    @pytest.mark.parametrize("ways", [1, 0, 6])
    def test_n_out_of_range(self, ways: int) -> None:
        sit = sit_of(load_environment(PROD), {"tier1": SEED_TIER1})
        message = "at least 2" if ways < 2 else "has 5 symbol"
        with pytest.raises(PlanError, match=message):
            split(sit, "tier1", ways)

    def test_no_rates_for_the_shard(self) -> None:
        sit = sit_of(load_environment(PROD), {"tier2": {"FED-25DEC-T4.25": 3.0}})
        with pytest.raises(PlanError, match="ssmd shard rates kalshi-prod --save FILE"):
            split(sit, "tier1", 2)

    def test_malformed_rates_file(self) -> None:
        with pytest.raises(PlanError, match="not a rates file"):
            Rates.from_dict({"BTCUSD": 3}, "rates.yaml")
        with pytest.raises(PlanError, match="must be a number"):
            Rates.from_dict({"shards": {"tier1": {"BTCUSD": "fast"}}}, "rates.yaml")

    def test_names_for_new_shards_are_checked(self) -> None:
        sit = sit_of(load_environment(PROD), {"tier1": SEED_TIER1})
        with pytest.raises(PlanError, match="already exists"):
            split(sit, "tier1", 2, names=["tier2"])
        with pytest.raises(PlanError, match="not a valid shard name"):
            split(sit, "tier1", 2, names=["Tier.B"])
        assert split(sit, "tier1", 2, names=["crypto-majors"]).ops[0].shard == "crypto-majors"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- secmaster symbols


def test_measured_symbols_the_file_does_not_list_are_planned_on_secmaster_environments() -> None:
    """kalshi-prod gets most markets from the Kalshi REST secmaster: the measured ones join
    the universe with the defaults and the attributes of the shard that measured them."""
    env = load_environment(PROD)
    tier2 = {f"KXRAIN-25DEC{k:02d}-T1": 50.0 for k in range(6)} | {"KXSNOW-25DEC01-T1": 300.0}
    sit = sit_of(env, {"tier2": tier2})
    assert sit.layout.assignment["KXSNOW-25DEC01-T1"] == "tier2"
    proposal = split(sit, "tier2", 2)
    plan, _ = make_plan(sit, proposal, Rates(env.name, {"tier2": tier2}, "t"))
    (add,) = [op for op in proposal.ops if isinstance(op, AddShard)]
    assert add.body["selector"] == {"tier": 2, "symbol": "KXSNOW-*"}
    assert set(plan.extra_symbols) == set(proposal.moves)


def test_globs_select_exactly_the_group_within_the_domain() -> None:
    from ssmd_infra.planning.proposals import _Domain

    domain = _Domain(["BTCUSD", "BTCEUR", "ETHUSD", "KXA-1-X", "KXA-2-X", "KXB-1-X"])
    assert globs_for(["ETHUSD", "KXB-1-X"], domain) == ["ETH*", "KXB-*"]
    # BTC* would also catch BTCEUR: exact ticker instead
    assert globs_for(["BTCUSD"], domain) == ["BTCUSD"]
    assert globs_for(["KXA-1-X", "KXA-2-X"], domain) == ["KXA-*"]


def test_ops_on_plain_data_match_the_rendered_file() -> None:
    env = load_environment(PROD)
    sit = sit_of(env, {"tier1": SEED_TIER1})
    proposal = split(sit, "tier1", 2)
    data = apply_ops_to_data(raw_document(env), proposal.ops)
    rendered = yaml.safe_load(render(PROD.read_text(), proposal.ops))
    assert data["shards"] == rendered["shards"]
    assert merge_symbols(env)  # the repository's file itself is untouched
    assert PROD.read_text().count("tier1a") == 0
