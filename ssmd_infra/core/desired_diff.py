"""What changes in the desired state between two versions of an environment.

This is the plan's own account of a change when `pulumi preview` cannot run (no Pulumi CLI):
shards added or removed, their replicas and resources, streams created, updated, replaced or
deleted, and the symbols that move. It is computed from the same builders both backends use —
`streams.stream_specs` for the streams, and `stream_rules.spec_differences` /
`stream_rules.replacement_reasons` for what the server can change in place — so it cannot
disagree with what `pulumi up` or the local roll will do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ssmd_infra.core.environment import Environment, Shard
from ssmd_infra.core.resolution import Layout
from ssmd_infra.core.stream_rules import describe_differences, replacement_reasons, spec_differences
from ssmd_infra.core.streams import StreamSpec, stream_specs

# What `pulumi up` creates for every shard (ssmd_infra.pulumi.components / manifests).
SHARD_OBJECTS = "connector Deployment, HPA, PDB, archiver StatefulSet + Service, ConfigMap"


@dataclass(frozen=True)
class ShardChange:
    shard: str
    action: str  # add | remove | change
    details: tuple[str, ...] = ()

    def line(self) -> str:
        mark = {"add": "+", "remove": "-", "change": "~"}[self.action]
        text = f"{mark} shard {self.shard}"
        return f"{text}: {'; '.join(self.details)}" if self.details else text


@dataclass(frozen=True)
class StreamChange:
    stream: str
    action: str  # create | update | replace | delete
    detail: str = ""

    def line(self) -> str:
        mark = {"create": "+", "update": "~", "replace": "+-", "delete": "-"}[self.action]
        text = f"{mark} stream {self.stream}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True)
class DesiredDiff:
    shards: tuple[ShardChange, ...]
    streams: tuple[StreamChange, ...]
    moves: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.shards or self.streams or self.moves)

    @property
    def replaced(self) -> list[str]:
        return [c.stream for c in self.streams if c.action == "replace"]

    def lines(self) -> list[str]:
        out = [c.line() for c in self.shards]
        out.extend(c.line() for c in self.streams)
        if self.moves:
            out.append(f"{len(self.moves)} symbol(s) move")
        return out or ["no changes"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shards": [
                {"shard": c.shard, "action": c.action, "details": list(c.details)}
                for c in self.shards
            ],
            "streams": [
                {"stream": c.stream, "action": c.action, "detail": c.detail} for c in self.streams
            ],
            "symbols_moved": len(self.moves),
        }


def _resources(shard: Shard) -> str:
    r = shard.resources
    if r.requests == r.limits:
        return f"{r.requests.cpu}/{r.requests.memory}"
    return f"requests {r.requests.cpu}/{r.requests.memory}, limits {r.limits.cpu}/{r.limits.memory}"


def _shard_details(old: Shard, new: Shard) -> list[str]:
    details = []
    if old.replicas != new.replicas or old.min_replicas != new.min_replicas:
        details.append(
            f"replicas {old.min_replicas}..{old.replicas} → {new.min_replicas}..{new.replicas}"
        )
    if old.resources != new.resources:
        details.append(f"resources {_resources(old)} → {_resources(new)}")
    if old.autoscaling != new.autoscaling:
        details.append(
            f"autoscaling cpu {old.autoscaling.cpu_utilization}% / "
            f"{old.autoscaling.message_rate} msg/s → cpu {new.autoscaling.cpu_utilization}% / "
            f"{new.autoscaling.message_rate} msg/s"
        )
    if old.buffer != new.buffer:
        details.append(
            f"buffer {old.buffer.capacity} {old.buffer.drop_policy} → "
            f"{new.buffer.capacity} {new.buffer.drop_policy}"
        )
    if old.selector != new.selector:
        details.append("selector changed")
    return details


def _stream_changes(old: list[StreamSpec], new: list[StreamSpec]) -> list[StreamChange]:
    before = {s.name: s for s in old}
    after = {s.name: s for s in new}
    changes = []
    for name, spec in after.items():
        current = before.get(name)
        if current is None:
            changes.append(StreamChange(name, "create"))
            continue
        diffs = spec_differences(current, spec)
        if not diffs:
            continue
        reasons = replacement_reasons(current, spec)
        if reasons:
            changes.append(
                StreamChange(
                    name,
                    "replace",
                    f"{'; '.join(reasons)} — replacing deletes its stored messages",
                )
            )
        else:
            changes.append(StreamChange(name, "update", describe_differences(diffs)))
    for name in before:
        if name not in after:
            changes.append(
                StreamChange(
                    name,
                    "delete",
                    "pulumi up deletes it with its stored messages (archive first); "
                    "the local runner keeps it",
                )
            )
    return changes


def desired_diff(
    old_env: Environment, old_layout: Layout, new_env: Environment, new_layout: Layout
) -> DesiredDiff:
    """Everything that differs between deploying `old_env` and deploying `new_env`."""
    moves = new_layout.moves_from(old_layout)
    gained: dict[str, int] = {}
    lost: dict[str, int] = {}
    for old, new in moves.values():
        if old is not None:
            lost[old] = lost.get(old, 0) + 1
        if new is not None:
            gained[new] = gained.get(new, 0) + 1
    shards: list[ShardChange] = []
    for name, spec in new_env.shards.items():
        if name not in old_env.shards:
            shards.append(
                ShardChange(
                    name,
                    "add",
                    (
                        f"{len(new_layout.symbols_of(name))} symbols",
                        f"replicas {spec.min_replicas}..{spec.replicas}, {_resources(spec)}",
                        SHARD_OBJECTS,
                    ),
                )
            )
            continue
        details = _shard_details(old_env.shards[name], spec)
        if gained.get(name) or lost.get(name):
            details.append(
                f"symbols {len(old_layout.symbols_of(name))} → {len(new_layout.symbols_of(name))} "
                f"(+{gained.get(name, 0)} -{lost.get(name, 0)}; its ConfigMap changes, its pods roll)"
            )
        if details:
            shards.append(ShardChange(name, "change", tuple(details)))
    for name in old_env.shards:
        if name not in new_env.shards:
            shards.append(
                ShardChange(name, "remove", (f"{len(old_layout.symbols_of(name))} symbols",))
            )
    streams = _stream_changes(stream_specs(old_env), stream_specs(new_env))
    return DesiredDiff(tuple(shards), tuple(streams), moves)
