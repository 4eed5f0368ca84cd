"""The secmaster: where symbols and their attributes come from, and how sources merge.

The environment's own `symbols` are the manual source. Merge rule: manual attributes
override the secmaster's; the configured defaults fill whatever is still missing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator, Mapping

from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.resolution import layout_of, resolve
from ssmd_infra.core.secmaster import InMemorySource, ManualSource, merge_symbols

ENV = textwrap.dedent(
    """\
    name: t
    feed: kalshi
    secmaster:
      source: kalshi
      defaults: {tier: 2, status: open}
    symbols:
      BTCUSD: {tier: 1, category: crypto}
      MANUALONLY: {category: custom}
    shards:
      tier1: {selector: {tier: 1}, replicas: 2}
      tier2: {selector: {tier: 2}, replicas: 1}
    """
)


def env() -> Environment:
    return parse_environment(ENV, "env.yaml")


KALSHI = InMemorySource(
    {
        "BTCUSD": {"tier": 3, "category": "crypto-kalshi", "series": "BTC"},
        "INXD-25-B4000": {"category": "financials", "tier": None},
        "KXHIGHNY-24DEC05-B43.5": {"category": "climate", "tier": 1, "closing": True},
    }
)


def test_manual_attributes_override_the_secmasters() -> None:
    universe = merge_symbols(env(), KALSHI)
    assert universe["BTCUSD"] == {
        "tier": "1",  # manual beats the secmaster's 3
        "category": "crypto",  # manual beats the secmaster's
        "series": "BTC",  # only the secmaster says it: kept
        "status": "open",  # neither says it: the default
    }


def test_defaults_fill_only_what_is_missing() -> None:
    universe = merge_symbols(env(), KALSHI)
    assert universe["INXD-25-B4000"] == {"tier": "2", "status": "open", "category": "financials"}
    assert universe["KXHIGHNY-24DEC05-B43.5"]["tier"] == "1"  # the secmaster's own value wins


def test_manual_symbols_get_the_defaults_too() -> None:
    assert merge_symbols(env())["MANUALONLY"] == {
        "tier": "2",
        "status": "open",
        "category": "custom",
    }


def test_attribute_values_become_text_as_written() -> None:
    universe = merge_symbols(env(), KALSHI)
    assert universe["KXHIGHNY-24DEC05-B43.5"]["closing"] == "true"
    assert all(isinstance(v, str) for attrs in universe.values() for v in attrs.values())


def test_the_universe_is_manual_symbols_plus_the_secmasters() -> None:
    assert set(merge_symbols(env())) == {"BTCUSD", "MANUALONLY"}
    assert set(merge_symbols(env(), KALSHI)) == {
        "BTCUSD",
        "MANUALONLY",
        "INXD-25-B4000",
        "KXHIGHNY-24DEC05-B43.5",
    }


def test_the_manual_source_yields_the_files_symbols() -> None:
    assert dict(ManualSource(env()).symbols()) == {
        "BTCUSD": {"tier": "1", "category": "crypto"},
        "MANUALONLY": {"category": "custom"},
    }


def test_the_merged_universe_resolves() -> None:
    layout = layout_of(env(), KALSHI)
    assert layout.symbols_of("tier1") == ["BTCUSD", "KXHIGHNY-24DEC05-B43.5"]
    assert layout.symbols_of("tier2") == ["INXD-25-B4000", "MANUALONLY"]


def test_any_object_with_a_symbols_method_is_a_source() -> None:
    class Generated:
        def symbols(self) -> Iterator[tuple[str, Mapping[str, object]]]:
            for i in range(3):
                yield f"GEN-{i}", {"tier": 1}

    layout = resolve(env(), merge_symbols(env(), Generated()))
    assert layout.symbols_of("tier1") == ["BTCUSD", "GEN-0", "GEN-1", "GEN-2"]
