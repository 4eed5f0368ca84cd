"""The situation a plan starts from, on an environment fed by the Kalshi secmaster."""

from __future__ import annotations

from planning_support import (
    PROD,
    sit_of,
)

from ssmd_infra.core.environment import load_environment
from ssmd_infra.planning.ops import AddShard
from ssmd_infra.planning.plans import make_plan
from ssmd_infra.planning.rates import Rates
from ssmd_infra.planning.split import split


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
