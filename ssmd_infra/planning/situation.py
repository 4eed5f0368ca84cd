"""The situation a plan starts from: environment, symbols, where they resolve, their rates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.resolution import Layout, resolve
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.selectors import PREFIX_KEY, SYMBOL_KEY, is_glob
from ssmd_infra.planning.rates import Rates

HEADROOM = 0.8  # a shard's target: its autoscaling capacity at full scale, 20 % to spare


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
