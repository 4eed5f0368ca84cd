"""Resolution: every symbol lands in exactly one shard, or every problem is reported.

1. a pin in `assignments` wins;
2. else the matching shard whose selector is strictly more specific than every other
   match (a carve-out) wins;
3. anything else is an orphan (no shard) or an overlap (several, none more specific).
"""

from __future__ import annotations

import random
import textwrap
from collections.abc import Mapping
from fnmatch import fnmatchcase

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmd_infra.core.environment import Environment, parse_environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.resolution import (
    Layout,
    layout_of,
    resolve,
    resolve_with_problems,
    validate_document,
)
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.selectors import Selector, parse_selector_text

FILE = "env.yaml"

# A sample with tier shards *and* category shards. BTCUSD and ETHUSD are tier 1 and
# crypto, so both tier1 and crypto claim them and neither is more specific.
TIERS_AND_CATEGORIES = textwrap.dedent(
    """\
    name: kalshi-prod
    feed: kalshi
    schema: trade:v1
    symbols:
      BTCUSD:
        tier: 1
        category: crypto
      ETHUSD:
        tier: 1
        category: crypto
      INXD-25-B4000:
        tier: 2
        category: financials
    shards:
      tier1:
        selector:
          tier: 1
        replicas: 2
        resources:
          cpu: "500m"
          memory: "512Mi"
      tier2:
        selector:
          tier: 2
        replicas: 1
        resources:
          cpu: "250m"
          memory: "256Mi"
      crypto:
        selector:
          category: crypto
        replicas: 1
    """
)


def env_of(shards: str, symbols: str, extra: str = "") -> Environment:
    text = "name: t\nfeed: kalshi\nsymbols:\n"
    text += textwrap.indent(textwrap.dedent(symbols), "  ")
    text += "shards:\n" + textwrap.indent(textwrap.dedent(shards), "  ")
    text += textwrap.dedent(extra)
    return parse_environment(text, FILE)


def layout(env: Environment) -> dict[str, str]:
    return layout_of(env).assignment


def refusal(env: Environment) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        layout_of(env)
    return [str(p) for p in caught.value.problems]


TIERS = """\
tier1: {selector: {tier: 1}, replicas: 2}
tier2: {selector: {tier: 2}, replicas: 1}
"""
SYMBOLS = """\
BTCUSD: {tier: 1, category: crypto}
BTCEUR: {tier: 1, category: crypto}
ETHUSD: {tier: 1, category: crypto}
SOLUSD: {tier: 1, category: crypto}
INXD-25-B4000: {tier: 2, category: financials}
KXHIGHNY-24DEC05-B43.5: {tier: 2, category: climate}
"""


def test_each_symbol_lands_in_the_shard_its_selector_matches() -> None:
    assert layout(env_of(TIERS, SYMBOLS)) == {
        "BTCEUR": "tier1",
        "BTCUSD": "tier1",
        "ETHUSD": "tier1",
        "INXD-25-B4000": "tier2",
        "KXHIGHNY-24DEC05-B43.5": "tier2",
        "SOLUSD": "tier1",
    }


def test_the_layout_lists_each_shards_symbols_sorted() -> None:
    result = layout_of(env_of(TIERS, SYMBOLS))
    assert result.symbols_of("tier1") == ["BTCEUR", "BTCUSD", "ETHUSD", "SOLUSD"]
    assert result.symbols_of("tier2") == ["INXD-25-B4000", "KXHIGHNY-24DEC05-B43.5"]
    assert result.symbols_of("nope") == []
    assert (result.env, result.feed) == ("t", "kalshi")


def test_the_seed_sample_is_rejected_as_ambiguous_for_btcusd_and_ethusd() -> None:
    env = parse_environment(TIERS_AND_CATEGORIES, FILE)
    with pytest.raises(ConfigError) as caught:
        layout_of(env)
    found = caught.value.problems
    assert [p.path for p in found] == ["symbols.BTCUSD", "symbols.ETHUSD"]
    for p, symbol, line in zip(found, ["BTCUSD", "ETHUSD"], [5, 8], strict=True):
        assert p.file == FILE and p.line == line
        assert f"overlap: symbol {symbol!r} matches shards tier1, crypto" in p.message
    assert "INXD" not in str(caught.value)


# -- selectors ---------------------------------------------------------------------------------


def test_every_key_of_a_selector_must_match() -> None:
    shards = """\
    crypto1: {selector: {tier: 1, category: crypto}, replicas: 1}
    rest: {selector: {tier: 2}, replicas: 1}
    """
    assert set(layout(env_of(shards, SYMBOLS)).values()) == {"crypto1", "rest"}


def test_a_list_matches_any_of_its_items() -> None:
    shards = """\
    a: {selector: {category: [crypto, financials]}, replicas: 1}
    b: {selector: {category: climate}, replicas: 1}
    """
    got = layout(env_of(shards, SYMBOLS))
    assert got["INXD-25-B4000"] == got["BTCUSD"] == "a"
    assert got["KXHIGHNY-24DEC05-B43.5"] == "b"


@pytest.mark.parametrize(
    "carve", ["{prefix: BTC}", '{prefix: "BTC*"}', '{symbol: "BTC*"}', '{symbol: "BTC???"}']
)
def test_the_seed_prefix_forms_and_symbol_globs_select_by_name(carve: str) -> None:
    shards = f"""\
    btc: {{selector: {carve}, replicas: 1}}
    other: {{selector: {{symbol: "[!B]*"}}, replicas: 1}}
    """
    got = layout(env_of(shards, SYMBOLS))
    assert got["BTCUSD"] == got["BTCEUR"] == "btc"
    assert got["ETHUSD"] == got["KXHIGHNY-24DEC05-B43.5"] == "other"


def test_a_glob_applies_to_attributes_too() -> None:
    shards = """\
    c: {selector: {category: "c*"}, replicas: 1}
    f: {selector: {category: "f?nancials"}, replicas: 1}
    """
    got = layout(env_of(shards, SYMBOLS))
    assert got["KXHIGHNY-24DEC05-B43.5"] == got["BTCUSD"] == "c"  # climate, crypto
    assert got["INXD-25-B4000"] == "f"


@pytest.mark.parametrize(
    ("selector", "attribute"),
    [("1", '"1"'), ('"1"', "1"), ("true", '"true"'), ('"2.5"', "2.5")],
)
def test_numbers_and_strings_compare_as_written(selector: str, attribute: str) -> None:
    env = env_of(f"s: {{selector: {{x: {selector}}}, replicas: 1}}\n", f"SYM: {{x: {attribute}}}\n")
    assert layout(env) == {"SYM": "s"}


def test_a_symbol_without_the_attribute_does_not_match() -> None:
    env = env_of("s: {selector: {tier: 1}, replicas: 1}\n", "A: {tier: 1}\nB: {category: x}\n")
    assert refusal(env) == [
        f"{FILE}:5:3: symbols.B: orphan: symbol 'B' matches no shard's selector"
    ]


def test_prefix_and_symbol_together_are_refused() -> None:
    env = env_of("s: {selector: {prefix: A, symbol: B}, replicas: 1}\n", "A: {}\n")
    problem, orphan = refusal(env)  # the shard claims nothing, so A is an orphan too
    assert "shards.s.selector" in problem
    assert "constrains the symbol twice" in problem
    assert "orphan: symbol 'A'" in orphan


def test_selector_text_form_matches_the_yaml_form() -> None:
    assert parse_selector_text("tier=1,prefix=BTC*") == {"tier": "1", "prefix": "BTC*"}
    assert parse_selector_text("category=crypto|fin") == {"category": ["crypto", "fin"]}
    for bad in ["", "tier", "tier=", "=1", "a=1,a=2", "a=1|"]:
        with pytest.raises(ValueError):
            parse_selector_text(bad)
    sel = Selector.build("x", {"tier": "1", "prefix": "BTC"})
    assert sel.describe() == "symbol=BTC*,tier=1"


# -- carve-outs: the most specific selector wins -------------------------------------------------


CARVE = """\
tier1: {selector: {tier: 1}, replicas: 2}
tier1a: {selector: {tier: 1, prefix: "BTC*"}, replicas: 2}
tier2: {selector: {tier: 2}, replicas: 1}
"""


def test_a_carve_out_takes_its_symbols_from_the_broader_shard() -> None:
    got = layout(env_of(CARVE, SYMBOLS))
    assert got["BTCUSD"] == got["BTCEUR"] == "tier1a"
    assert got["ETHUSD"] == got["SOLUSD"] == "tier1"


def test_carve_outs_nest() -> None:
    shards = (
        CARVE + 'btcusd: {selector: {tier: 1, prefix: "BTC*", category: crypto}, replicas: 1}\n'
    )
    got = layout(env_of(shards, SYMBOLS))
    assert got["BTCUSD"] == got["BTCEUR"] == "btcusd"
    assert got["ETHUSD"] == "tier1"


def test_the_order_of_shards_in_the_file_does_not_matter() -> None:
    reordered = "\n".join(reversed(CARVE.strip().splitlines())) + "\n"
    assert layout(env_of(reordered, SYMBOLS)) == layout(env_of(CARVE, SYMBOLS))


def test_two_carve_outs_that_are_not_nested_overlap() -> None:
    shards = CARVE + "crypto1: {selector: {tier: 1, category: crypto}, replicas: 1}\n"
    found = refusal(env_of(shards, SYMBOLS))
    assert len(found) == 2  # BTCEUR and BTCUSD; ETH and SOL go to crypto1 (more specific)
    assert all("matches shards tier1, tier1a, crypto1" in p for p in found)


def test_a_narrower_value_is_not_more_specific() -> None:
    """Specificity is about constraints (key, values), not about which values are narrower:
    `tier: [1, 2]` and `tier: 1` are different constraints, so both claim a tier-1 symbol."""
    shards = "wide: {selector: {tier: [1, 2]}, replicas: 1}\nnarrow: {selector: {tier: 1}, replicas: 1}\n"
    found = refusal(env_of(shards, "A: {tier: 1}\nB: {tier: 2}\n"))
    assert len(found) == 1 and "symbol 'A' matches shards wide, narrow" in found[0]


# -- pins --------------------------------------------------------------------------------------


def test_a_pin_wins_over_the_selectors() -> None:
    env = env_of(CARVE, SYMBOLS, "assignments:\n  ETHUSD: tier1a\n  BTCUSD: tier2\n")
    got = layout(env)
    assert got["ETHUSD"] == "tier1a"
    assert got["BTCUSD"] == "tier2"
    assert got["BTCEUR"] == "tier1a"


def test_a_pin_settles_an_overlap() -> None:
    env = parse_environment(
        TIERS_AND_CATEGORIES + "assignments: {BTCUSD: crypto, ETHUSD: tier1}\n", FILE
    )
    assert layout(env)["BTCUSD"] == "crypto"
    assert layout(env)["ETHUSD"] == "tier1"


def test_a_pin_of_a_missing_symbol_is_refused() -> None:
    env = env_of(TIERS, SYMBOLS, "assignments:\n  DOGEUSD: tier1\n")
    assert refusal(env) == [
        f"{FILE}:14:3: assignments.DOGEUSD: pin of symbol 'DOGEUSD', which is not a known symbol"
    ]


def test_a_pin_of_a_symbol_only_the_secmaster_knows_is_kept_offline() -> None:
    """A Kalshi-backed environment knows only its manual symbols offline: a pin of another
    symbol may be valid at run time, so it is not an error then."""
    env = env_of(
        TIERS,
        SYMBOLS,
        "assignments:\n  DOGEUSD: tier1\nsecmaster: {source: kalshi, defaults: {tier: 2}}\n",
    )
    assert "DOGEUSD" not in layout(env)
    at_run_time = resolve(env, {**merge_symbols(env), "DOGEUSD": {"tier": "2"}})
    assert at_run_time.assignment["DOGEUSD"] == "tier1"


# -- all problems at once ----------------------------------------------------------------------


def test_every_orphan_and_overlap_is_reported_in_one_run() -> None:
    shards = """\
    tier1: {selector: {tier: 1}, replicas: 1}
    crypto: {selector: {category: crypto}, replicas: 1}
    """
    env = env_of(shards, SYMBOLS, "assignments: {NOPE: tier1}\n")
    found = refusal(env)
    assert len(found) == 7
    assert "pin of symbol 'NOPE'" in found[0]
    assert [p.split("symbol ")[1].split(" ")[0] for p in found[1:3]] == [
        "'INXD-25-B4000'",
        "'KXHIGHNY-24DEC05-B43.5'",
    ]
    assert all("orphan" in p for p in found[1:3])
    assert all("overlap" in p and "tier1, crypto" in p for p in found[3:])


def test_resolve_with_problems_keeps_what_did_resolve() -> None:
    env = parse_environment(TIERS_AND_CATEGORIES, FILE)
    result, found = resolve_with_problems(env, merge_symbols(env))
    assert result.assignment == {"INXD-25-B4000": "tier2"}
    assert len(found) == 2


def test_validate_document_collects_load_and_resolution_problems() -> None:
    report = validate_document(TIERS_AND_CATEGORIES, FILE)
    assert not report.ok and report.env is not None and report.layout is not None
    assert len(report.problems) == 2
    report = validate_document(TIERS_AND_CATEGORIES + "colour: x\n", FILE)
    assert report.env is None and report.layout is None
    assert [p.path for p in report.problems] == ["colour"]


def test_a_shard_that_gets_no_symbols_is_a_warning_not_an_error() -> None:
    text = TIERS_AND_CATEGORIES.replace(
        "category: crypto\n    replicas", "category: none\n    replicas"
    )
    report = validate_document(text, FILE)
    assert report.ok, report.problems
    assert [p.path for p in report.warnings] == ["shards.crypto"]
    assert "gets no symbols" in report.warnings[0].message


# -- determinism and the optimised matcher -----------------------------------------------------


def test_resolution_is_deterministic_whatever_the_universe_order() -> None:
    env = env_of(CARVE, SYMBOLS)
    universe = merge_symbols(env)
    first = resolve(env, universe)
    items = list(universe.items())
    for seed in range(5):
        random.Random(seed).shuffle(items)
        again = resolve(env, dict(items))
        assert list(again.assignment.items()) == list(first.assignment.items())
        assert again.by_shard == first.by_shard


def test_moves_between_two_layouts() -> None:
    before = Layout("e", "f", {"A": "x", "B": "x", "C": "y"})
    after = Layout("e", "f", {"A": "x", "B": "y", "D": "y"})
    assert after.moves_from(before) == {"B": ("x", "y"), "C": ("y", None), "D": (None, "y")}


def _reference(
    selectors: Mapping[str, Mapping[str, str | list[str]]],
    universe: Mapping[str, Mapping[str, str]],
) -> dict[str, str | None]:
    """The rule as written, one symbol and one selector at a time, with plain fnmatch."""

    def matches(spec: Mapping[str, str | list[str]], symbol: str, attrs: Mapping[str, str]) -> bool:
        for key, raw in spec.items():
            values = [raw] if isinstance(raw, str) else raw
            if key == "prefix":
                key, values = "symbol", [v if "*" in v else v + "*" for v in values]
            actual = symbol if key == "symbol" else attrs.get(key)
            if actual is None or not any(fnmatchcase(actual, v) for v in values):
                return False
        return True

    def constraints(spec: Mapping[str, str | list[str]]) -> set[tuple[str, tuple[str, ...]]]:
        out = set()
        for key, raw in spec.items():
            values = [raw] if isinstance(raw, str) else raw
            if key == "prefix":
                key, values = "symbol", [v if "*" in v else v + "*" for v in values]
            out.add((key, tuple(sorted(set(values)))))
        return out

    result: dict[str, str | None] = {}
    for symbol, attrs in universe.items():
        hits = [name for name, spec in selectors.items() if matches(spec, symbol, attrs)]
        winner = [
            h
            for h in hits
            if all(h == o or constraints(selectors[h]) > constraints(selectors[o]) for o in hits)
        ]
        result[symbol] = winner[0] if len(winner) == 1 else None
    return result


_values = st.sampled_from(["1", "2", "3", "a", "b"])
_symbol_globs = st.sampled_from(["A*", "AB*", "B*", "*C", "A?C", "ABC", "[AB]*", "*"])
_spec = st.fixed_dictionaries(
    {},
    optional={
        "tier": st.one_of(_values, st.lists(_values, min_size=1, max_size=3, unique=True)),
        "cat": st.one_of(_values, st.lists(_values, min_size=1, max_size=2, unique=True)),
        "symbol": st.one_of(
            _symbol_globs, st.lists(_symbol_globs, min_size=1, max_size=2, unique=True)
        ),
    },
).filter(bool)
_attrs = st.fixed_dictionaries({}, optional={"tier": _values, "cat": _values})


@settings(max_examples=100, deadline=None)
@given(
    specs=st.lists(_spec, min_size=1, max_size=6),
    universe=st.dictionaries(st.text("ABCD", min_size=1, max_size=4), _attrs, max_size=25),
)
def test_the_fast_matcher_agrees_with_the_rule_as_written(
    specs: list[dict[str, str | list[str]]], universe: dict[str, dict[str, str]]
) -> None:
    selectors = {f"s{i}": spec for i, spec in enumerate(specs)}
    lines = "".join(
        f"s{i}: {{selector: {_flow(spec)}, replicas: 1}}\n" for i, spec in enumerate(specs)
    )
    env = env_of(lines, "X: {}\n")
    result, _problems = resolve_with_problems(env, universe)
    expected = _reference(selectors, universe)
    assert result.assignment == {s: shard for s, shard in sorted(expected.items()) if shard}


def _flow(spec: Mapping[str, str | list[str]]) -> str:
    def quote(v: str) -> str:
        return '"' + v + '"'

    parts = []
    for key, raw in spec.items():
        value = quote(raw) if isinstance(raw, str) else "[" + ", ".join(map(quote, raw)) + "]"
        parts.append(f"{key}: {value}")
    return "{" + ", ".join(parts) + "}"
