"""What an edit of the environment deletes for good: the rule behind `--allow-data-loss`.

A shard that disappears (removed, or renamed: a rename is a removal plus an addition) takes
its stream with it — the messages stored there are gone — and leaves its archive volume
behind, no longer managed (the Pulumi program retains it on delete). Both the CLI (before it
writes the file) and the day roll (to unprotect exactly those resources) use this one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from ssmd_infra.core.environment import Environment
from ssmd_infra.core.subjects import internal_stream
from ssmd_infra.core.workload import archive_claim_name


@dataclass(frozen=True)
class ShardRemoval:
    """A shard of `before` that `after` no longer has, and the data it held."""

    shard: str
    stream: str
    archive_claim: str

    def describe(self) -> str:
        return (
            f"shard {self.shard}: stream {self.stream} is deleted with every message it "
            f"stores; its archive volume {self.archive_claim} is left in the cluster, "
            f"unmanaged"
        )


def removed_shards(before: Environment, after: Environment) -> list[ShardRemoval]:
    """Every shard of `before` that `after` drops, in `before`'s order."""
    return [
        ShardRemoval(shard, internal_stream(shard), archive_claim_name(shard))
        for shard in before.shards
        if shard not in after.shards
    ]
