"""A proposal: edits to the environment file, the layout they must produce, and estimates.

How new boundaries are expressed, in order of preference (like the carve-out `tier1a` of
kalshi-dev.yaml):

1. **Carve-outs.** A new shard gets the selector of the shard it is cut from plus a
   `symbol:` list of globs (`{tier: 1, symbol: [BTC*, ETH*]}`, see `globs`). Its constraints
   are a strict superset of the original's, so resolution gives it those symbols; the original
   shard keeps its selector and therefore everything else, including markets listed after the
   roll.
2. **Pins** (`assignments`) only where a glob cannot separate: the symbol is already pinned,
   the source shard's selector already constrains `symbol` (a carve-out of a carve-out would
   not be more specific), the ticker contains glob characters, or — in `rebalance` — the symbol
   moves into an existing shard whose selector its attributes do not match.

Pure (no I/O): `ssmd_infra.planning.plans` turns a proposal into a stored, verified plan.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ssmd_infra.core.selectors import PREFIX_KEY, SYMBOL_KEY
from ssmd_infra.core.subjects import SHARD_NAME
from ssmd_infra.planning.errors import PlanError
from ssmd_infra.planning.globs import Domain, can_carve_with_globs, domain_of, globs_for, needs_pin
from ssmd_infra.planning.ops import AddShard, Op, Pin
from ssmd_infra.planning.situation import Situation


@dataclass(frozen=True)
class ShardEstimate:
    shard: str
    status: str  # new | changed | unchanged
    symbols_before: int
    symbols_after: int
    rate_before: float
    rate_after: float
    capacity: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "shard": self.shard,
            "status": self.status,
            "symbols_before": self.symbols_before,
            "symbols_after": self.symbols_after,
            "rate_before": round(self.rate_before, 3),
            "rate_after": round(self.rate_after, 3),
            "capacity": round(self.capacity, 3),
        }


@dataclass(frozen=True)
class Balance:
    """How even a split came out, and the LPT guarantee it is held to."""

    ways: int
    mean: float
    heaviest: float
    lightest: float
    largest_unit: float
    bound: float  # mean + (1 - 1/N) * largest unit

    @property
    def imbalance(self) -> float:
        """Heaviest group over the mean, minus one (0.05 = 5 % above an even split)."""
        return self.heaviest / self.mean - 1.0 if self.mean > 0 else 0.0

    @property
    def ratio_bound(self) -> float:
        """LPT is within this factor of the best partition of the same units."""
        return 4.0 / 3.0 - 1.0 / (3.0 * self.ways)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ways": self.ways,
            "mean": round(self.mean, 3),
            "heaviest": round(self.heaviest, 3),
            "lightest": round(self.lightest, 3),
            "imbalance": round(self.imbalance, 4),
            "largest_unit": round(self.largest_unit, 3),
            "bound": round(self.bound, 3),
            "ratio_bound": round(self.ratio_bound, 4),
        }


@dataclass(frozen=True)
class Proposal:
    """Edits to the environment file and the layout they must produce."""

    strategy: str
    ops: tuple[Op, ...]
    assignment: dict[str, str]
    moves: dict[str, tuple[str, str]]
    estimates: tuple[ShardEstimate, ...]
    balance: Balance | None = None
    notes: tuple[str, ...] = ()
    capacities: dict[str, float] = field(default_factory=dict)


def shard_estimates(
    sit: Situation,
    assignment: Mapping[str, str],
    order: Sequence[str],
    new: set[str],
    capacity: Mapping[str, float],
) -> tuple[ShardEstimate, ...]:
    after_rate: dict[str, float] = {s: 0.0 for s in order}
    after_count: dict[str, int] = {s: 0 for s in order}
    for symbol, shard in assignment.items():
        after_rate[shard] += sit.rates.get(symbol, 0.0)
        after_count[shard] += 1
    out = []
    for shard in order:
        before_symbols = sit.layout.symbols_of(shard)
        changed = any(assignment.get(s) != shard for s in before_symbols) or (
            after_count[shard] != len(before_symbols)
        )
        status = "new" if shard in new else ("changed" if changed else "unchanged")
        out.append(
            ShardEstimate(
                shard,
                status,
                len(before_symbols),
                after_count[shard],
                sit.rate_of(shard) if shard not in new else 0.0,
                after_rate[shard],
                capacity[shard],
            )
        )
    return tuple(out)


def name_new_shards(
    sit: Situation,
    base: str,
    count: int,
    given: Sequence[str] | None,
    taken: set[str] | None = None,
) -> list[str]:
    """Names for `count` shards cut from `base`: the operator's, else `tier1b`, `tier1c`, ..."""
    taken = set(sit.env.shards) | (taken or set())
    if given is not None:
        names = [n.strip() for n in given if n.strip()]
        if len(names) != count:
            raise PlanError(f"--names needs exactly {count} name(s) for the new shard(s)")
        for name in names:
            if name in taken:
                raise PlanError(f"--names: shard {name!r} already exists")
            if not SHARD_NAME.match(name):
                raise PlanError(
                    f"--names: {name!r} is not a valid shard name (lower-case letters, digits "
                    f"and '-', at most 40 characters)"
                )
        if len(set(names)) != len(names):
            raise PlanError("--names: the names must differ")
        return names
    # `tier1` → `tier1a` (as kalshi-dev's carve-out is named); `crypto` → `crypto-b` (it is "a")
    stem, letters = (base, "abcdefghijklmnopqrstuvwxyz")
    if not base[-1].isdigit():
        stem, letters = f"{base}-", "bcdefghijklmnopqrstuvwxyz"
    names = []
    for letter in letters:
        candidate = f"{stem}{letter}"
        if candidate not in taken and SHARD_NAME.match(candidate):
            names.append(candidate)
            taken.add(candidate)
            if len(names) == count:
                return names
    raise PlanError(f"cannot name {count} new shard(s) after {base!r}; give --names")


def carve_ops(sit: Situation, source: str, groups: Sequence[tuple[str, Sequence[str]]]) -> list[Op]:
    """Operations that move each group of `source`'s symbols into its new shard."""
    raw_shards = sit.raw.get("shards") or {}
    raw_body = copy.deepcopy(dict(raw_shards.get(source) or {}))
    raw_selector = dict(raw_body.get("selector") or sit.env.shards[source].selector)
    globbable = can_carve_with_globs(sit, source)
    domain = domain_of(sit, source) if globbable else Domain(())
    ops: list[Op] = []
    pins: list[Op] = []
    after = source
    for name, symbols in groups:
        by_glob = [s for s in symbols if not needs_pin(sit, s, globbable)]
        pinned = [s for s in symbols if needs_pin(sit, s, globbable)]
        body = copy.deepcopy(raw_body)
        selector = dict(raw_selector)
        if by_glob:
            patterns = globs_for(symbols, domain, cover=by_glob)
            selector[SYMBOL_KEY] = patterns[0] if len(patterns) == 1 else patterns
        else:
            # pins only: the selector names exactly the pinned tickers, so it reads as what the
            # shard holds and catches nothing of its source (a copy of a symbol-constrained
            # selector would tie with it: an overlap)
            selector.pop(PREFIX_KEY, None)
            selector[SYMBOL_KEY] = sorted(pinned) if len(pinned) > 1 else pinned[0]
        body["selector"] = selector
        ops.append(AddShard(name, body, after))
        after = name
        pins.extend(Pin(s, name) for s in sorted(pinned))
    return ops + pins


def planned_moves(
    sit: Situation, moves: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    assignment = dict(sit.layout.assignment)
    moved: dict[str, tuple[str, str]] = {}
    for symbol, target in sorted(moves.items()):
        source = assignment[symbol]
        if source != target:
            moved[symbol] = (source, target)
            assignment[symbol] = target
    return assignment, moved


def order_with(sit: Situation, inserted: Mapping[str, list[str]]) -> list[str]:
    order: list[str] = []
    for shard in sit.env.shards:
        order.append(shard)
        order.extend(inserted.get(shard, []))
    return order
