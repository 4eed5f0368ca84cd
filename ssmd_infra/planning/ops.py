"""Edit operations of a plan on the environment file: add a shard, pin or unpin a symbol.

A plan is a list of these. `apply_ops_to_data` applies them to the file as plain data (to
check a plan without touching a file); `ssmd_infra.planning.plans` applies the same operations
to the file text with the round-trip editor, keeping comments and order.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ssmd_infra.planning.errors import PlanError


@dataclass(frozen=True)
class AddShard:
    """Add shard `shard` (its YAML body as plain data) right after shard `after`."""

    shard: str
    body: dict[str, Any]
    after: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"op": "add_shard", "shard": self.shard, "after": self.after, "body": self.body}

    def describe(self) -> str:
        return f"+ shard {self.shard}: selector {yaml_flow_line(self.body.get('selector', {}))}"


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


def yaml_flow_line(value: Any) -> str:
    """`{tier: 1, symbol: [BTC*, ETH*]}`: a selector as one readable YAML flow line."""
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {yaml_flow_line(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_flow_line(v) for v in value) + "]"
    return str(value)
