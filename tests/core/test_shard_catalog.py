"""The shard catalog: a shard's pods hold their own shard only, and the catalog gives them
the other shards' selectors and pins, so live markets resolve as the whole environment does."""

from __future__ import annotations

import pytest

from ssmd_infra.core.environment import parse_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.resolution import resolve
from ssmd_infra.core.shard_catalog import render_catalog, with_catalog

WHOLE = """\
name: cat
feed: kalshi
secmaster: {source: kalshi}
assignments: {ETH-PINNED: btc}
shards:
  tier1: {selector: {tier: 1}, replicas: 2}
  btc: {selector: {tier: 1, symbol: "BTC*"}, replicas: 2}
"""
# what tier1's pods get: tier1 alone (the Pulumi program writes this from WHOLE)
TIER1_ONLY = """\
name: cat
feed: kalshi
secmaster: {source: kalshi}
shards:
  tier1: {selector: {tier: 1}, replicas: 2}
"""
LIVE = {
    "BTC-NEW": {"tier": "1"},
    "ETH-NEW": {"tier": "1"},
    "ETH-PINNED": {"tier": "1"},
}


def test_alone_a_shard_would_capture_what_a_carve_out_and_a_pin_take_away() -> None:
    own = parse_environment(TIER1_ONLY, "tier1/environment.yaml")
    assert resolve(own, LIVE).symbols_of("tier1") == ["BTC-NEW", "ETH-NEW", "ETH-PINNED"]


def test_with_the_catalog_the_shard_resolves_as_the_whole_environment() -> None:
    whole = parse_environment(WHOLE, "cat.yaml")
    own = parse_environment(TIER1_ONLY, "tier1/environment.yaml")
    merged = with_catalog(own, "tier1", render_catalog(whole), "shards.json")
    assert sorted(merged.shards) == ["btc", "tier1"]
    assert merged.assignments == {"ETH-PINNED": "btc"}
    assert resolve(merged, LIVE).symbols_of("tier1") == ["ETH-NEW"]
    assert resolve(merged, LIVE).symbols_of("btc") == resolve(whole, LIVE).symbols_of("btc")


def test_the_shards_own_definition_wins_over_the_catalogs() -> None:
    """Pods run with what they were rolled with; a newer catalog only adds the others."""
    whole = parse_environment(
        WHOLE.replace("tier1: {selector: {tier: 1}", "tier1: {selector: {tier: 9}"), "cat.yaml"
    )
    own = parse_environment(TIER1_ONLY, "tier1/environment.yaml")
    merged = with_catalog(own, "tier1", render_catalog(whole), "shards.json")
    assert merged.shards["tier1"].selector == {"tier": "1"}


def test_the_catalog_renders_stably() -> None:
    whole = parse_environment(WHOLE, "cat.yaml")
    assert render_catalog(whole) == render_catalog(parse_environment(WHOLE, "again.yaml"))


def test_a_catalog_of_another_environment_or_malformed_is_refused_with_the_file() -> None:
    own = parse_environment(TIER1_ONLY, "tier1/environment.yaml")
    other = parse_environment(WHOLE.replace("name: cat", "name: dog"), "dog.yaml")
    with pytest.raises(
        ConfigError, match=r"shards\.json: the shard catalog is of environment 'dog'"
    ):
        with_catalog(own, "tier1", render_catalog(other), "shards.json")
    with pytest.raises(ConfigError, match=r"shards\.json: invalid shard catalog at shards"):
        with_catalog(
            own, "tier1", '{"environment": "cat", "shards": 3, "assignments": {}}', "shards.json"
        )
