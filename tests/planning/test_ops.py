"""Plan operations applied to plain data match the file the round-trip editor writes."""

from __future__ import annotations

import yaml
from planning_support import (
    PROD,
    SEED_TIER1,
    sit_of,
)

from ssmd_infra.core.environment import load_environment
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.planning.ops import apply_ops_to_data
from ssmd_infra.planning.plans import raw_document, render
from ssmd_infra.planning.split import split


def test_ops_on_plain_data_match_the_rendered_file() -> None:
    env = load_environment(PROD)
    sit = sit_of(env, {"tier1": SEED_TIER1})
    proposal = split(sit, "tier1", 2)
    data = apply_ops_to_data(raw_document(env), proposal.ops)
    rendered = yaml.safe_load(render(PROD.read_text(), proposal.ops))
    assert data["shards"] == rendered["shards"]
    assert merge_symbols(env)  # the repository's file itself is untouched
    assert PROD.read_text().count("tier1a") == 0
