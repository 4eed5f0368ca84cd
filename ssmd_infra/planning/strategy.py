"""The `--strategy` of `ssmd shard plan`: `split-<shard>[:N]` or `rebalance`, and its proposal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.proposal import Proposal
from ssmd_infra.planning.rebalance import rebalance
from ssmd_infra.planning.situation import Situation
from ssmd_infra.planning.split import DEFAULT_SPLIT_WAYS, DEFAULT_TOLERANCE, split


@dataclass(frozen=True)
class Strategy:
    """`split-<shard>[:N]` or `rebalance`, parsed."""

    kind: str  # split | rebalance
    shard: str | None = None
    ways: int = DEFAULT_SPLIT_WAYS

    def __str__(self) -> str:
        if self.kind == "split":
            return f"split-{self.shard}:{self.ways}"
        return self.kind


def parse_strategy(text: str) -> Strategy:
    """Parse the `--strategy` value; `PlanError` names what is accepted."""
    value = text.strip()
    if value == "rebalance":
        return Strategy("rebalance")
    if value.startswith("split-") and len(value) > len("split-"):
        body = value[len("split-") :]
        shard, sep, count = body.rpartition(":")
        if not sep:
            shard, count = body, str(DEFAULT_SPLIT_WAYS)
        if not shard:
            raise PlanError(f"strategy {text!r} names no shard; use split-<shard>[:N]")
        try:
            ways = int(count)
        except ValueError:
            raise PlanError(f"strategy {text!r}: N must be a whole number, got {count!r}") from None
        return Strategy("split", shard, ways)
    raise PlanError(
        f"unknown strategy {text!r}; use split-<shard>[:N] (e.g. split-tier1:2) or rebalance"
    )


def propose(
    sit: Situation,
    strategy: Strategy,
    *,
    target_rate: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    names: Sequence[str] | None = None,
) -> Proposal:
    if strategy.kind == "split":
        assert strategy.shard is not None
        return split(
            sit,
            strategy.shard,
            strategy.ways,
            tolerance=tolerance,
            names=names,
            target_rate=target_rate,
        )
    return rebalance(sit, target_rate=target_rate, names=names)
