"""Resharding proposals from measured per-symbol message rates: split a shard, or rebalance.

Pure (no I/O, no NATS, no Pulumi): the input is the environment, its YAML as plain data, the
symbol universe and the measured rates; the output is a `Proposal` — edit operations on the
environment file, the layout they should produce, and the estimated msg/s of every shard.
`ssmd_infra.planning.plans` turns a proposal into a stored, verified plan.

How new boundaries are expressed, in order of preference (the seed's `tier1a` style):

1. **Carve-outs.** A new shard gets the selector of the shard it is cut from plus a
   `symbol:` list of globs (`{tier: 1, symbol: [BTC*, ETH*]}`). Its constraints are a strict
   superset of the original's, so resolution gives it those symbols; the original shard keeps
   its selector and therefore everything else, including markets listed after the roll.
   Globs sit on natural ticker boundaries: the series before a `-` (`KXHIGHNY-*`), or the root
   of a pair without dashes (`BTC*` for `BTCUSD`). A glob is used only when it matches no known
   symbol outside its group; otherwise a longer boundary, and finally the exact ticker.
2. **Pins** (`assignments`) only where a glob cannot separate: the symbol is already pinned,
   the source shard's selector already constrains `symbol` (a carve-out of a carve-out would
   not be more specific), the ticker contains glob characters, or — in `rebalance` — the symbol
   moves into an existing shard whose selector its attributes do not match.

**split-S:N** partitions S's symbols into N groups by longest-processing-time (LPT): units
(symbols sharing a glob) are sorted by rate, heaviest first, and each goes to the least-loaded
group. Bounds (Graham): the heaviest group is at most `mean + (1 - 1/N) * largest unit`, and
at most `(4/3 - 1/(3N))` times the best possible partition of those units. Units are coarse for
readability; while the imbalance exceeds the tolerance (default 10 %) the heaviest unit is cut
along the next ticker boundary, down to single tickers. A single ticker heavier than the mean
is a floor no partition can beat; the plan reports the imbalance either way. The group with
the most symbols keeps the shard's name and selector (fewest symbols move).

**rebalance** brings every shard under its target: `--target-rate`, else the shard's own
`autoscaling.message_rate × replicas × HEADROOM` (0.8: what its autoscaler can carry at full
scale with 20 % to spare). From each shard over target it moves the fewest symbols whose rates
cover the excess (the largest first; the last one is the smallest that suffices — a minimal
count), into existing shards with room (worst fit: most headroom first, pinned), else into new
carve-outs of the overloaded shard (first fit decreasing). A ticker alone above the target
cannot be fixed by moving it; it stays and the plan says so (it needs replicas, not a move).
"""

from __future__ import annotations

import bisect
import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import SsmdError
from ssmd_infra.core.resolution import Layout, resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.selectors import PREFIX_KEY, SYMBOL_KEY, Selector, is_glob
from ssmd_infra.core.subjects import SHARD_NAME

HEADROOM = 0.8
DEFAULT_TOLERANCE = 0.10
DEFAULT_SPLIT_WAYS = 2
# Quote currencies of pair tickers without dashes: `BTCUSD` has the root `BTC`.
QUOTE_SUFFIXES = ("USDT", "USDC", "USD", "EUR", "GBP", "JPY")


class PlanError(SsmdError):
    """The operator asked for a plan that cannot be made (bad strategy, shard, N, rates)."""


# ----------------------------------------------------------------------------- strategy


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


# ----------------------------------------------------------------------------- rates


@dataclass(frozen=True)
class Rates:
    """Measured msg/s per symbol, grouped by the shard whose connector measured it."""

    env: str
    by_shard: dict[str, dict[str, float]]
    source: str
    measured_at: str | None = None

    @property
    def flat(self) -> dict[str, float]:
        """symbol → msg/s; a symbol seen in two shards (mid-handoff) counts its higher rate."""
        out: dict[str, float] = {}
        for shard in sorted(self.by_shard):
            for symbol, rate in self.by_shard[shard].items():
                out[symbol] = max(out.get(symbol, 0.0), float(rate))
        return out

    @property
    def total(self) -> float:
        return sum(self.flat.values())

    def shard_of(self) -> dict[str, str]:
        """symbol → the shard it was measured in (first by name when seen twice)."""
        out: dict[str, str] = {}
        for shard in sorted(self.by_shard):
            for symbol in self.by_shard[shard]:
                out.setdefault(symbol, shard)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "source": self.source,
            "measured_at": self.measured_at,
            "shards": {s: dict(sorted(r.items())) for s, r in sorted(self.by_shard.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> Rates:
        """A saved rates file (`ssmd shard rates --save`); `PlanError` when malformed."""
        shards = data.get("shards") if isinstance(data, Mapping) else None
        if not isinstance(shards, Mapping):
            raise PlanError(
                f"{source}: not a rates file (expected `shards: {{shard: {{symbol: msg/s}}}}`, "
                f"as written by `ssmd shard rates ENV --save FILE`)"
            )
        by_shard: dict[str, dict[str, float]] = {}
        for shard, rates in shards.items():
            if not isinstance(rates, Mapping):
                raise PlanError(f"{source}: shards.{shard} must map symbol → msg/s")
            parsed: dict[str, float] = {}
            for symbol, rate in rates.items():
                try:
                    value = float(rate)
                except (TypeError, ValueError):
                    raise PlanError(
                        f"{source}: shards.{shard}.{symbol}: rate must be a number, got {rate!r}"
                    ) from None
                if value < 0 or value != value:
                    raise PlanError(f"{source}: shards.{shard}.{symbol}: rate must be ≥ 0")
                parsed[str(symbol)] = value
            by_shard[str(shard)] = parsed
        measured = data.get("measured_at")
        return cls(
            env=str(data.get("env", "")),
            by_shard=by_shard,
            source=source,
            measured_at=None if measured is None else str(measured),
        )


# ----------------------------------------------------------------------------- edit operations


@dataclass(frozen=True)
class AddShard:
    """Add shard `shard` (its YAML body as plain data) right after shard `after`."""

    shard: str
    body: dict[str, Any]
    after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": "add_shard", "shard": self.shard, "after": self.after, "body": self.body}

    def describe(self) -> str:
        return f"+ shard {self.shard}: selector {flow(self.body.get('selector', {}))}"


@dataclass(frozen=True)
class Pin:
    """Pin `symbol` to `shard` in `assignments` (replacing any pin it had)."""

    symbol: str
    shard: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": "pin", "symbol": self.symbol, "shard": self.shard}

    def describe(self) -> str:
        return f"~ pin {self.symbol} → {self.shard}"


@dataclass(frozen=True)
class Unpin:
    """Remove the pin of `symbol` from `assignments`."""

    symbol: str

    def to_dict(self) -> dict[str, Any]:
        return {"op": "unpin", "symbol": self.symbol}

    def describe(self) -> str:
        return f"- pin {self.symbol}"


Op = AddShard | Pin | Unpin


def op_from_dict(data: Mapping[str, Any]) -> Op:
    kind = data.get("op")
    if kind == "add_shard":
        return AddShard(str(data["shard"]), dict(data["body"]), data.get("after"))
    if kind == "pin":
        return Pin(str(data["symbol"]), str(data["shard"]))
    if kind == "unpin":
        return Unpin(str(data["symbol"]))
    raise ValueError(f"unknown plan operation {kind!r}")


def apply_ops_to_data(data: Mapping[str, Any], ops: Sequence[Op]) -> dict[str, Any]:
    """The environment document (plain data) after `ops`; the round-trip editor does the same
    on the file text. Used to check a plan without touching any file."""
    out = copy.deepcopy(dict(data))
    for op in ops:
        if isinstance(op, AddShard):
            shards = dict(out.get("shards") or {})
            if op.shard in shards:
                raise PlanError(f"shard {op.shard!r} already exists")
            items = list(shards.items())
            index = len(items)
            if op.after is not None and op.after in shards:
                index = [k for k, _ in items].index(op.after) + 1
            items.insert(index, (op.shard, copy.deepcopy(op.body)))
            out["shards"] = dict(items)
        elif isinstance(op, Pin):
            pins = dict(out.get("assignments") or {})
            pins[op.symbol] = op.shard
            out["assignments"] = pins
        else:
            pins = dict(out.get("assignments") or {})
            pins.pop(op.symbol, None)
            out["assignments"] = pins
    return out


def flow(value: Any) -> str:
    """`{tier: 1, symbol: [BTC*, ETH*]}`: a selector as one readable YAML flow line."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return str(value)


# ----------------------------------------------------------------------------- the situation


@dataclass(frozen=True)
class Situation:
    """What a plan starts from: the environment, the symbols, where they are, their rates."""

    env: Environment
    raw: dict[str, Any]  # the environment file as plain data, for copying bodies as written
    universe: dict[str, dict[str, str]]
    layout: Layout
    rates: dict[str, float]  # every symbol of the layout; 0 where nothing was measured
    measured: frozenset[str]
    notes: tuple[str, ...] = ()

    def rate_of(self, shard: str) -> float:
        return sum(self.rates[s] for s in self.layout.symbols_of(shard))

    def capacity(self, shard: str, target_rate: float | None, headroom: float = HEADROOM) -> float:
        """The shard's target: `--target-rate`, else message_rate × replicas × headroom."""
        if target_rate is not None:
            return target_rate
        spec = self.env.shards[shard]
        return spec.autoscaling.message_rate * spec.replicas * headroom


def implied_attributes(selector: Mapping[str, Any]) -> dict[str, str]:
    """Attributes a symbol must have to match `selector` (first exact value of each key)."""
    out: dict[str, str] = {}
    for key, value in selector.items():
        if key in (SYMBOL_KEY, PREFIX_KEY):
            continue
        values = value if isinstance(value, list) else [value]
        exact = [str(v) for v in values if not is_glob(str(v))]
        if exact:
            out[key] = exact[0]
    return out


def situation(env: Environment, raw: Mapping[str, Any], rates: Rates) -> Situation:
    """Resolve the environment over its symbols plus the measured ones.

    An environment whose symbols come from the Kalshi secmaster knows only its manual symbols
    offline; a measured symbol it does not know is added with the secmaster defaults and the
    attributes its measuring shard's selector implies, and resolved like any other (so the
    estimate follows what the environment would do, and the plan is verified on it). For a
    manual environment the file is the whole universe: a measured symbol it does not list is
    ignored and counted in the notes.
    """
    universe = merge_symbols(env)
    notes: list[str] = []
    flat = rates.flat
    complete = env.secmaster.source == "manual"
    unknown = sorted(s for s in flat if s not in universe)
    if unknown and complete:
        notes.append(
            f"{len(unknown)} measured symbol(s) are not in the environment and are ignored "
            f"(e.g. {', '.join(unknown[:3])})"
        )
    elif unknown:
        measured_in = rates.shard_of()
        for symbol in unknown:
            shard = env.shards.get(measured_in[symbol])
            attrs = dict(env.secmaster.defaults)
            if shard is not None:
                attrs.update(implied_attributes(shard.selector))
            universe[symbol] = attrs
    layout = resolve(env, universe, complete_universe=complete)
    if not complete and unknown:
        measured_in = rates.shard_of()
        elsewhere = [s for s in unknown if layout.assignment.get(s) != measured_in[s]]
        if elsewhere:
            notes.append(
                f"{len(elsewhere)} measured symbol(s) resolve to another shard than the one "
                f"that measured them (their attributes are not in the file; e.g. {elsewhere[0]})"
            )
    per_symbol = {s: flat.get(s, 0.0) for s in layout.assignment}
    measured = frozenset(s for s in layout.assignment if s in flat)
    missing = len(per_symbol) - len(measured)
    if missing:
        notes.append(f"{missing} symbol(s) have no measured rate and count as 0 msg/s")
    return Situation(env, dict(raw), universe, layout, per_symbol, measured, tuple(notes))


# ----------------------------------------------------------------------------- globs


def natural_prefixes(symbol: str) -> list[str]:
    """Ticker boundaries a glob may stop at, shortest first (never the whole ticker).

    `KXHIGHNY-24DEC05-B43.5` → `KXHIGHNY-`, `KXHIGHNY-24DEC05-`; `BTCUSD` → `BTC`.
    """
    out: list[str] = []
    if "-" in symbol:
        for index, char in enumerate(symbol):
            if char == "-" and 0 < index < len(symbol) - 1:
                out.append(symbol[: index + 1])
    else:
        for quote in QUOTE_SUFFIXES:
            if symbol.endswith(quote) and len(symbol) >= len(quote) + 2:
                out.append(symbol[: -len(quote)])
                break
    return [p for p in out if not is_glob(p)]


class _Domain:
    """The known symbols a carve-out glob could catch, sorted for prefix-range counting."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self._sorted = sorted(set(symbols))

    def count(self, prefix: str, among: Sequence[str] | None = None) -> int:
        """How many symbols of the domain (or of sorted `among`) start with `prefix`."""
        items = self._sorted if among is None else among
        lo = bisect.bisect_left(items, prefix)
        hi = bisect.bisect_left(items, prefix + "\U0010ffff")
        return hi - lo


def _domain(sit: Situation, shard: str) -> _Domain:
    """Every known symbol whose attributes satisfy `shard`'s selector, whatever shard it is in:
    a glob that caught one outside its group would steal it or make an overlap."""
    selector = Selector.build(shard, sit.env.shards[shard].selector)
    return _Domain(s for s, attrs in sit.universe.items() if selector.matches_attributes(attrs))


def globs_for(
    group: Iterable[str], domain: _Domain, cover: Iterable[str] | None = None
) -> list[str]:
    """The fewest readable patterns selecting `cover` (default: all of `group`) and nothing
    in `domain` outside `group`.

    Per symbol, the shortest natural prefix whose every domain match is in the group, else
    the exact ticker; patterns covered by a shorter chosen glob are dropped.
    """
    members = sorted(set(group))
    chosen: set[str] = set()
    for symbol in sorted(set(members if cover is None else cover)):
        pattern = symbol
        for prefix in natural_prefixes(symbol):
            if domain.count(prefix) == domain.count(prefix, members):
                pattern = prefix + "*"
                break
        chosen.add(pattern)
    kept: list[str] = []
    globbed: set[str] = set()  # prefixes of the kept globs
    for pattern in sorted(chosen, key=lambda p: (len(p), p)):
        body = pattern.removesuffix("*")
        if any(body[:i] in globbed for i in range(1, len(body) + 1)):
            continue  # a shorter glob already selects it
        kept.append(pattern)
        if pattern.endswith("*"):
            globbed.add(body)
    return sorted(kept)


def _globbable(sit: Situation, shard: str) -> bool:
    """Whether carve-outs of `shard` can be made with a `symbol:` glob list."""
    selector = sit.env.shards[shard].selector
    return SYMBOL_KEY not in selector and PREFIX_KEY not in selector


def _needs_pin(sit: Situation, symbol: str, globbable: bool) -> bool:
    return not globbable or symbol in sit.env.assignments or is_glob(symbol)


# ----------------------------------------------------------------------------- proposals


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


def _estimates(
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


def _new_names(
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
    # `tier1` → `tier1a` (the seed's carve-out style); `crypto` → `crypto-b` (it is "a")
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


def _carve_ops(
    sit: Situation, source: str, groups: Sequence[tuple[str, Sequence[str]]]
) -> list[Op]:
    """Operations that move each group of `source`'s symbols into its new shard."""
    raw_shards = sit.raw.get("shards") or {}
    raw_body = copy.deepcopy(dict(raw_shards.get(source) or {}))
    raw_selector = dict(raw_body.get("selector") or sit.env.shards[source].selector)
    globbable = _globbable(sit, source)
    domain = _domain(sit, source) if globbable else _Domain(())
    ops: list[Op] = []
    pins: list[Op] = []
    after = source
    for name, symbols in groups:
        by_glob = [s for s in symbols if not _needs_pin(sit, s, globbable)]
        pinned = [s for s in symbols if _needs_pin(sit, s, globbable)]
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


def _planned(
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


def _order_with(sit: Situation, inserted: Mapping[str, list[str]]) -> list[str]:
    order: list[str] = []
    for shard in sit.env.shards:
        order.append(shard)
        order.extend(inserted.get(shard, []))
    return order


# ----------------------------------------------------------------------------- split


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
    sit: Situation, symbols: Sequence[str], level: int, domain: _Domain | None
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


def _refine(sit: Situation, unit: _Unit, domain: _Domain | None) -> list[_Unit]:
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
    globbable = _globbable(sit, shard)
    domain = _domain(sit, shard) if globbable else None
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
    new_names = _new_names(sit, shard, ways - 1, names)
    moves = {s: name for name, group in zip(new_names, carved, strict=True) for s in group}
    ops = _carve_ops(sit, shard, list(zip(new_names, carved, strict=True)))
    assignment, moved = _planned(sit, moves)
    capacity = {s: sit.capacity(s, target_rate) for s in sit.env.shards}
    capacity.update({n: capacity[shard] for n in new_names})
    order = _order_with(sit, {shard: new_names})
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
        estimates=_estimates(sit, assignment, order, set(new_names), capacity),
        balance=balance,
        notes=tuple(notes),
        capacities=capacity,
    )


# ----------------------------------------------------------------------------- rebalance


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
        fresh = _new_names(sit, source, len(bins), given, taken=set(new_names_all))
        groups = list(zip(fresh, [sorted(b) for b in bins], strict=True))
        ops.extend(_carve_ops(sit, source, groups))
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
    assignment, moved = _planned(sit, moves)
    if not over:
        notes.append("every shard is under its target: nothing to move")
    order = _order_with(sit, inserted)
    return Proposal(
        strategy="rebalance",
        ops=tuple(ops),
        assignment=assignment,
        moves=moved,
        estimates=_estimates(sit, assignment, order, new_set, capacity),
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


_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")
