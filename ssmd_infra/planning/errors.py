"""The error of a plan that cannot be made."""

from __future__ import annotations

from ssmd_infra.core.errors import SsmdError


class PlanError(SsmdError):
    """The operator asked for a plan that cannot be made (bad strategy, shard, N, rates)."""
