"""rebalance: move the fewest symbols that bring every shard under its target."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from planning_support import (
    planned_layout,
    sit_of,
    write_env,
)

from ssmd_infra.planning.ops import AddShard, Pin
from ssmd_infra.planning.rebalance import rebalance

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
