"""Measured per-symbol message rates: what every plan starts from.

The connectors keep them in Redis; `ssmd shard rates --save FILE` stores them as YAML so a
plan can be made from a chosen day's figures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssmd_infra.planning.errors import PlanError


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
