"""Shard selectors: which symbols a shard claims.

Every key must match (AND). A value matches by equality of the text the YAML wrote, a list
matches any of its items, a string with `*`, `?` or `[` is a glob. The symbol's own name is
the attribute `symbol`; `prefix: BTC*` (or `prefix: BTC`), the older spelling, is a glob on it.

A selector's *constraints* are the set of (key, allowed values) pairs; one selector is more
specific than another when its constraints are a strict superset — `tier=1, symbol=BTC*`
beats `tier=1`. That is how carve-out shards work.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import translate

SYMBOL_KEY = "symbol"
PREFIX_KEY = "prefix"
_GLOB_CHARS = frozenset("*?[")

Constraint = tuple[str, tuple[str, ...]]


def is_glob(text: str) -> bool:
    return any(c in _GLOB_CHARS for c in text)


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """Allowed values of one attribute: exact texts, plain prefixes (`BTC*`), other globs."""

    exact: frozenset[str]
    prefixes: tuple[str, ...]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def build(cls, values: Sequence[str]) -> ValueMatcher:
        exact, prefixes, patterns = set(), [], []
        for value in values:
            if not is_glob(value):
                exact.add(value)
            elif value.endswith("*") and not is_glob(value[:-1]):
                prefixes.append(value[:-1])
            else:
                patterns.append(re.compile(translate(value), re.DOTALL))
        return cls(frozenset(exact), tuple(sorted(prefixes)), tuple(patterns))

    def __call__(self, value: str) -> bool:
        if value in self.exact:
            return True
        if any(value.startswith(p) for p in self.prefixes):
            return True
        return any(p.match(value) for p in self.patterns)


@dataclass(frozen=True, slots=True)
class Selector:
    """A compiled selector of one shard."""

    shard: str
    constraints: frozenset[Constraint]
    attributes: tuple[tuple[str, ValueMatcher], ...]  # non-symbol keys
    symbol: ValueMatcher | None

    @classmethod
    def build(cls, shard: str, spec: Mapping[str, str | Sequence[str]]) -> Selector:
        merged: dict[str, list[str]] = {}
        for key, raw in spec.items():
            values = [raw] if isinstance(raw, str) else list(raw)
            if key == PREFIX_KEY:
                key = SYMBOL_KEY
                values = [v if is_glob(v) else f"{v}*" for v in values]
            if key in merged:  # `symbol` and `prefix` both given: both must hold
                raise ValueError(
                    f"selector of shard {shard!r} constrains the symbol twice "
                    f"({PREFIX_KEY!r} and {SYMBOL_KEY!r}); use one"
                )
            merged[key] = values
        constraints = frozenset((k, tuple(sorted(set(v)))) for k, v in merged.items())
        attributes = tuple(
            (k, ValueMatcher.build(v)) for k, v in sorted(merged.items()) if k != SYMBOL_KEY
        )
        symbol = ValueMatcher.build(merged[SYMBOL_KEY]) if SYMBOL_KEY in merged else None
        return cls(shard, constraints, attributes, symbol)

    def matches_attributes(self, attrs: Mapping[str, str]) -> bool:
        for key, matcher in self.attributes:
            value = attrs.get(key)
            if value is None or not matcher(value):
                return False
        return True

    def matches(self, symbol: str, attrs: Mapping[str, str]) -> bool:
        if self.symbol is not None and not self.symbol(symbol):
            return False
        return self.matches_attributes(attrs)

    def more_specific_than(self, other: Selector) -> bool:
        return self.constraints > other.constraints

    def describe(self) -> str:
        """`tier=1,symbol=BTC*|ETH*` — the form `ssmd shard create --selector` takes."""
        parts = []
        for key, values in sorted(self.constraints):
            parts.append(f"{key}={'|'.join(values)}")
        return ",".join(parts) if parts else "(everything)"


def parse_selector_text(text: str) -> dict[str, str | list[str]]:
    """`tier=1,prefix=BTC*` or `category=crypto|fin` into the YAML selector mapping."""
    out: dict[str, str | list[str]] = {}
    if not text.strip():
        raise ValueError("empty selector: give at least one key=value")
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"selector part {part!r} is not key=value")
        if key in out:
            raise ValueError(f"selector key {key!r} given twice")
        items = [v.strip() for v in value.split("|")]
        if any(not v for v in items):
            raise ValueError(f"selector part {part!r} has an empty alternative")
        out[key] = items[0] if len(items) == 1 else items
    return out
