"""Bad plan requests are refused with a message that says what to do."""

from __future__ import annotations

import pytest
from planning_support import (
    PROD,
    SEED_TIER1,
    sit_of,
)

from ssmd_infra.core.environment import load_environment
from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.split import split
from ssmd_infra.planning.strategy import parse_strategy

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
