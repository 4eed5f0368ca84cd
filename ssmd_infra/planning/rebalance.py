"""**rebalance**: bring every shard under its target by moving the fewest symbols.

The target is `--target-rate`, else the shard's own `autoscaling.message_rate × replicas ×
HEADROOM` (0.8: what its autoscaler can carry at full scale with 20 % to spare). From each
shard over target it moves the fewest symbols whose rates cover the excess (the largest first;
the last one is the smallest that suffices — a minimal count), into existing shards with room
(worst fit: most headroom first, pinned), else into new carve-outs of the overloaded shard
(first fit decreasing). A ticker alone above the target cannot be fixed by moving it; it stays
and the plan says so (it needs replicas, not a move).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.ops import AddShard, Op, Pin, Unpin
from ssmd_infra.planning.proposal import (
    Proposal,
    carve_ops,
    name_new_shards,
    order_with,
    planned_moves,
    shard_estimates,
)
from ssmd_infra.planning.situation import HEADROOM, Situation


def _fewest_to_cover(candidates: Sequence[tuple[str, float]], need: float) -> list[str]:
    """The fewest symbols whose rates add up to at least `need` (largest first, the last one
    the smallest that suffices); all of them when even that falls short."""
    remaining = sorted(candidates, key=lambda c: (-c[1], c[0]))
    negated = [-rate for _, rate in remaining]  # ascending, for bisect
    chosen: list[str] = []
    while need > 1e-9 and remaining:
        enough = bisect.bisect_right(negated, -need)  # remaining[:enough] each cover `need`
        index = enough - 1 if enough else 0  # the smallest that suffices, else the largest
        symbol, rate = remaining.pop(index)
        negated.pop(index)
        chosen.append(symbol)
        need -= rate
    return chosen


def rebalance(
    sit: Situation,
    *,
    target_rate: float | None = None,
    headroom: float = HEADROOM,
    names: Sequence[str] | None = None,
) -> Proposal:
    """Move the fewest symbols that bring every shard under its target (see module)."""
    if not sit.measured:
        raise PlanError(
            f"no measured rates for any symbol of {sit.env.name}; measure them first "
            f"(run the pipeline, then `ssmd shard rates {sit.env.name} --save FILE`)"
        )
    if target_rate is not None and target_rate <= 0:
        raise PlanError("--target-rate must be positive")
    capacity = {s: sit.capacity(s, target_rate, headroom) for s in sit.env.shards}
    load = {s: sit.rate_of(s) for s in sit.env.shards}
    over = sorted(
        (s for s in sit.env.shards if load[s] > capacity[s]),
        key=lambda s: (-(load[s] - capacity[s]), s),
    )
    notes = list(sit.notes)
    outgoing: dict[str, list[str]] = {}
    for shard in over:
        hot = [s for s in sit.layout.symbols_of(shard) if sit.rates[s] > capacity[shard]]
        for symbol in hot:
            notes.append(
                f"{symbol} alone is {sit.rates[symbol]:,.0f} msg/s, above the target of "
                f"{shard} ({capacity[shard]:,.0f}): moving it cannot help; raise the shard's "
                f"replicas or autoscaling.message_rate"
            )
        candidates = [
            (s, sit.rates[s])
            for s in sit.layout.symbols_of(shard)
            if 0 < sit.rates[s] <= capacity[shard]
        ]
        chosen = _fewest_to_cover(candidates, load[shard] - capacity[shard])
        if load[shard] - sum(sit.rates[s] for s in chosen) > capacity[shard]:
            notes.append(f"{shard} stays above its target even after the moves")
        outgoing[shard] = chosen
    headroom_left = {s: capacity[s] - load[s] for s in sit.env.shards if s not in over}
    moves: dict[str, str] = {}
    leftovers: dict[str, list[str]] = {}
    queue = sorted(
        ((sym, src) for src, syms in outgoing.items() for sym in syms),
        key=lambda item: (-sit.rates[item[0]], item[0]),
    )
    for symbol, source in queue:
        rate = sit.rates[symbol]
        fits = [s for s, room in headroom_left.items() if room >= rate]
        if fits:
            target = max(fits, key=lambda s: (headroom_left[s], -list(sit.env.shards).index(s)))
            headroom_left[target] -= rate
            moves[symbol] = target
        else:
            leftovers.setdefault(source, []).append(symbol)
    ops: list[Op] = []
    inserted: dict[str, list[str]] = {}
    new_names_all: list[str] = []
    name_pool = list(names) if names is not None else None
    for source in [s for s in sit.env.shards if s in leftovers]:
        bins: list[list[str]] = []
        bin_loads: list[float] = []
        for symbol in leftovers[source]:  # already heaviest first
            rate = sit.rates[symbol]
            for index, used in enumerate(bin_loads):
                if used + rate <= capacity[source]:
                    bins[index].append(symbol)
                    bin_loads[index] += rate
                    break
            else:
                bins.append([symbol])
                bin_loads.append(rate)
        given = None
        if name_pool is not None:
            given, name_pool = name_pool[: len(bins)], name_pool[len(bins) :]
        fresh = name_new_shards(sit, source, len(bins), given, taken=set(new_names_all))
        groups = list(zip(fresh, [sorted(b) for b in bins], strict=True))
        ops.extend(carve_ops(sit, source, groups))
        for name, group in groups:
            moves.update({s: name for s in group})
            capacity[name] = capacity[source]
        inserted[source] = fresh
        new_names_all.extend(fresh)
    if name_pool:
        raise PlanError(f"--names: {len(name_pool)} name(s) left over; this plan adds fewer shards")
    new_set = set(new_names_all)
    for symbol, target in sorted(moves.items()):
        if target not in new_set:
            ops.append(Pin(symbol, target))
    ops = _dedupe_pins(ops)
    assignment, moved = planned_moves(sit, moves)
    if not over:
        notes.append("every shard is under its target: nothing to move")
    order = order_with(sit, inserted)
    return Proposal(
        strategy="rebalance",
        ops=tuple(ops),
        assignment=assignment,
        moves=moved,
        estimates=shard_estimates(sit, assignment, order, new_set, capacity),
        balance=None,
        notes=tuple(notes),
        capacities=capacity,
    )


def _dedupe_pins(ops: Sequence[Op]) -> list[Op]:
    """Shard additions first, then one pin per symbol (the last wins), sorted by symbol."""
    adds = [op for op in ops if isinstance(op, AddShard)]
    pins: dict[str, Op] = {}
    for op in ops:
        if isinstance(op, (Pin, Unpin)):
            pins[op.symbol] = op
    return [*adds, *(pins[s] for s in sorted(pins))]
