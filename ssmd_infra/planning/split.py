"""**split-S:N**: cut shard S into N shards of balanced estimated rate.

S's symbols are partitioned into N groups by longest-processing-time (LPT): units (symbols
sharing a glob) are sorted by rate, heaviest first, and each goes to the least-loaded group.
Bounds (Graham): the heaviest group is at most `mean + (1 - 1/N) * largest unit`, and at most
`(4/3 - 1/(3N))` times the best possible partition of those units. Units are coarse for
readability; while the imbalance exceeds the tolerance (default 10 %) the heaviest unit is cut
along the next ticker boundary, down to single tickers. A single ticker heavier than the mean is
a floor no partition can beat; the plan reports the imbalance either way. The group with the
most symbols keeps the shard's name and selector (fewest symbols move).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.globs import Domain, can_carve_with_globs, domain_of, natural_prefixes
from ssmd_infra.planning.proposal import (
    Balance,
    Proposal,
    carve_ops,
    name_new_shards,
    order_with,
    planned_moves,
    shard_estimates,
)
from ssmd_infra.planning.situation import Situation

DEFAULT_TOLERANCE = 0.10
DEFAULT_SPLIT_WAYS = 2


@dataclass
class _Unit:
    """Symbols that move together because one glob selects them."""

    key: str  # the prefix (glob without `*`) or the exact ticker
    level: int  # index into natural_prefixes; -1 for an exact ticker
    symbols: list[str]
    rate: float

    @property
    def exact(self) -> bool:
        return self.level < 0


def _units_at(
    sit: Situation, symbols: Sequence[str], level: int, domain: Domain | None
) -> list[_Unit]:
    """Group `symbols` by their natural prefix at `level`; a prefix whose glob would catch a
    symbol outside the group is cut further right away."""
    groups: dict[tuple[str, int], list[str]] = {}
    for symbol in symbols:
        chain = natural_prefixes(symbol) if domain is not None else []
        if level < len(chain):
            groups.setdefault((chain[level], level), []).append(symbol)
        else:
            groups.setdefault((symbol, -1), []).append(symbol)
    units = []
    for (key, lvl), members in sorted(groups.items()):
        members.sort()
        unit = _Unit(key, lvl, members, sum(sit.rates[s] for s in members))
        if not unit.exact and domain is not None and domain.count(key) != len(members):
            units.extend(_refine(sit, unit, domain))
        else:
            units.append(unit)
    return units


def _refine(sit: Situation, unit: _Unit, domain: Domain | None) -> list[_Unit]:
    return _units_at(sit, unit.symbols, unit.level + 1, domain)


def _lpt(units: Sequence[_Unit], ways: int) -> list[list[_Unit]]:
    """Longest processing time first; ties broken by symbol count then name (deterministic)."""
    groups: list[list[_Unit]] = [[] for _ in range(ways)]
    loads = [0.0] * ways
    counts = [0] * ways
    for unit in sorted(units, key=lambda u: (-u.rate, -len(u.symbols), u.key)):
        index = min(range(ways), key=lambda i: (loads[i], counts[i], i))
        groups[index].append(unit)
        loads[index] += unit.rate
        counts[index] += len(unit.symbols)
    return groups


def split(
    sit: Situation,
    shard: str,
    ways: int = DEFAULT_SPLIT_WAYS,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    names: Sequence[str] | None = None,
    target_rate: float | None = None,
) -> Proposal:
    """Partition `shard`'s symbols into `ways` shards of balanced estimated rate (see module)."""
    if shard not in sit.env.shards:
        raise PlanError(
            f"cannot split {shard!r}: no such shard in {sit.env.name} "
            f"(shards: {', '.join(sit.env.shards)})"
        )
    members = sit.layout.symbols_of(shard)
    if ways < 2:
        raise PlanError(f"split-{shard}:{ways}: N must be at least 2")
    if ways > len(members):
        raise PlanError(
            f"split-{shard}:{ways}: shard {shard} has {len(members)} symbol(s), so it can be "
            f"split into at most {len(members)} shards"
        )
    total = sum(sit.rates[s] for s in members)
    if not any(s in sit.measured for s in members):
        raise PlanError(
            f"no measured rates for any symbol of shard {shard}; measure them first "
            f"(run the pipeline, then `ssmd shard rates {sit.env.name} --save FILE`)"
        )
    globbable = can_carve_with_globs(sit, shard)
    domain = domain_of(sit, shard) if globbable else None
    units = _units_at(sit, members, 0, domain)
    # silent (or unmeasured) tickers weigh nothing: they stay where they are unless a group
    # would otherwise be empty, so they never cost a move
    idle = [u for u in units if u.rate <= 0]
    units = [u for u in units if u.rate > 0]
    mean = total / ways
    while True:
        groups = _lpt(units, ways)
        loads = [sum(u.rate for u in g) for g in groups]
        filled = all(groups)
        if filled and max(loads) <= mean * (1.0 + tolerance):
            break
        coarse = [u for u in units if len(u.symbols) > 1]
        if not coarse:
            break
        heaviest = max(coarse, key=lambda u: (u.rate, len(u.symbols), u.key))
        if filled and heaviest.rate <= tolerance * mean:
            break  # the LPT bound is already within the tolerance; cutting would only add globs
        units.remove(heaviest)
        units.extend(_refine(sit, heaviest, domain))
    spare = sorted((_Unit(s, -1, [s], 0.0) for u in idle for s in u.symbols), key=lambda u: u.key)
    for group in groups:
        if not group:  # fewer busy tickers than N (ways ≤ symbols, so spares suffice)
            group.append(spare.pop(0))
    keep = max(range(ways), key=lambda i: (sum(len(u.symbols) for u in groups[i]), loads[i], -i))
    groups[keep].extend(spare)
    symbol_groups = [sorted(s for u in g for s in u.symbols) for g in groups]
    # the biggest group stays (fewest moves); the others become carve-outs ordered by content
    carved = sorted((g for i, g in enumerate(symbol_groups) if i != keep), key=lambda g: g[0])
    new_names = name_new_shards(sit, shard, ways - 1, names)
    moves = {s: name for name, group in zip(new_names, carved, strict=True) for s in group}
    ops = carve_ops(sit, shard, list(zip(new_names, carved, strict=True)))
    assignment, moved = planned_moves(sit, moves)
    capacity = {s: sit.capacity(s, target_rate) for s in sit.env.shards}
    capacity.update({n: capacity[shard] for n in new_names})
    order = order_with(sit, {shard: new_names})
    final_loads = sorted(loads)
    balance = Balance(
        ways=ways,
        mean=mean,
        heaviest=final_loads[-1],
        lightest=final_loads[0],
        largest_unit=max((u.rate for u in units), default=0.0),
        bound=mean + (1.0 - 1.0 / ways) * max((u.rate for u in units), default=0.0),
    )
    notes = list(sit.notes)
    if balance.imbalance > tolerance:
        notes.append(
            f"the split is {balance.imbalance:.0%} above an even share: the heaviest unit "
            f"({balance.largest_unit:,.0f} msg/s) cannot be divided further"
        )
    return Proposal(
        strategy=f"split-{shard}:{ways}",
        ops=tuple(ops),
        assignment=assignment,
        moves=moved,
        estimates=shard_estimates(sit, assignment, order, set(new_names), capacity),
        balance=balance,
        notes=tuple(notes),
        capacities=capacity,
    )
