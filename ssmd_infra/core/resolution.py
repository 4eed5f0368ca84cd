"""Resolution: every symbol of a feed lands in exactly one shard.

1. a pin in `assignments` wins;
2. else the shards whose selectors match; if several match and one selector's constraints
   are a strict superset of every other match's, it wins (carve-outs);
3. anything else is an error — orphan (no shard) or overlap (ambiguous) — and *all* of them
   are reported in one run.

Linear in symbols × shards, made fast by caching the attribute-only part of the match per
distinct attribute combination and indexing plain-prefix symbol globs, so 100k symbols ×
100 shards resolve in well under a second (bench/resolve.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssmd_infra.core.environment import (
    Environment,
    environment_from_data,
    environment_path,
    load_environment,
)
from ssmd_infra.core.errors import ConfigError, Problem
from ssmd_infra.core.secmaster import SymbolSource, merge_symbols
from ssmd_infra.core.selectors import SYMBOL_KEY, Selector
from ssmd_infra.core.yamlsource import SourceMap, load_yaml


@dataclass(frozen=True)
class Layout:
    """The outcome of resolution: symbol → shard, and each shard's sorted symbols."""

    env: str
    feed: str
    assignment: dict[str, str]
    by_shard: dict[str, list[str]] = field(default_factory=dict)

    def symbols_of(self, shard: str) -> list[str]:
        return self.by_shard.get(shard, [])

    def moves_from(self, previous: Layout) -> dict[str, tuple[str | None, str | None]]:
        """Symbols whose shard differs between `previous` and this layout."""
        moves: dict[str, tuple[str | None, str | None]] = {}
        for symbol in sorted(set(previous.assignment) | set(self.assignment)):
            old, new = previous.assignment.get(symbol), self.assignment.get(symbol)
            if old != new:
                moves[symbol] = (old, new)
        return moves


def compile_selectors(env: Environment) -> list[Selector]:
    selectors, problems = _compile(env)
    ConfigError.collect(problems)
    return selectors


def _compile(env: Environment) -> tuple[list[Selector], list[Problem]]:
    problems: list[Problem] = []
    selectors = []
    for name, shard in env.shards.items():
        try:
            selectors.append(Selector.build(name, shard.selector))
        except ValueError as exc:
            problems.append(_problem(env, ("shards", name, "selector"), str(exc)))
    return selectors, problems


def _problem(env: Environment, path: tuple[str, ...], message: str) -> Problem:
    if env.source is not None:
        return env.source.problem(path, message)
    return Problem(message, file=env.file, path=".".join(path))


class _Matcher:
    """Matches one symbol against all selectors, with per-attribute-combination caching."""

    def __init__(self, selectors: list[Selector]) -> None:
        self._selectors = selectors
        keys = sorted({k for s in selectors for k, _ in s.attributes})
        self._keys = keys
        self._cache: dict[tuple[str | None, ...], tuple[list[Selector], _SymbolIndex]] = {}
        self._indexes: dict[tuple[str, ...], _SymbolIndex] = {}

    def __call__(self, symbol: str, attrs: Mapping[str, str]) -> list[Selector]:
        combo = tuple(map(attrs.get, self._keys))
        entry = self._cache.get(combo)
        if entry is None:
            candidates = [s for s in self._selectors if s.matches_attributes(attrs)]
            by_symbol = [s for s in candidates if s.symbol is not None]
            key = tuple(s.shard for s in by_symbol)
            index = self._indexes.get(key)
            if index is None:  # combinations often share their symbol selectors
                index = self._indexes[key] = _SymbolIndex(by_symbol)
            entry = ([s for s in candidates if s.symbol is None], index)
            self._cache[combo] = entry
        unconditional, index = entry
        if not index:
            return unconditional
        extra = index.match(symbol)
        return unconditional + extra if extra else unconditional


class _SymbolIndex:
    """Symbol-constrained selectors, looked up by the literal start of each value.

    Every value of a symbol constraint starts with literal text (`BTC` of `BTC*`,
    `KXHIGHNY-2` of `KXHIGHNY-2?DEC*`, all of an exact name), so a symbol is only checked
    against the selectors registered under one of its own prefixes: a dict lookup per
    distinct literal length instead of a glob per selector. A plain `PREFIX*` hit needs no
    further check; other values are confirmed with the full matcher. Values that start with
    a wildcard are checked for every symbol.
    """

    def __init__(self, selectors: list[Selector]) -> None:
        self._by_prefix: dict[str, list[tuple[Selector, bool]]] = {}
        self._always: list[Selector] = []
        lengths = set()
        for sel in selectors:
            values = dict(sel.constraints)[SYMBOL_KEY]
            literals = [(v, _literal_prefix(v)) for v in values]
            if any(not literal for _, literal in literals):
                self._always.append(sel)
                continue
            for value, literal in literals:
                certain = value == literal + "*"  # `PREFIX*`: starting with it is matching
                self._by_prefix.setdefault(literal, []).append((sel, certain))
                lengths.add(len(literal))
        self._lengths = sorted(lengths)
        self._count = len(selectors)

    def __bool__(self) -> bool:
        return self._count > 0

    def match(self, symbol: str) -> list[Selector]:
        found: list[Selector] = []
        size = len(symbol)
        for length in self._lengths:
            if length > size:
                break
            hits = self._by_prefix.get(symbol[:length])
            if hits:
                for sel, certain in hits:
                    if any(f is sel for f in found):
                        continue
                    if certain or (sel.symbol is not None and sel.symbol(symbol)):
                        found.append(sel)
        for sel in self._always:
            if sel.symbol is not None and sel.symbol(symbol):
                found.append(sel)
        return found


def _literal_prefix(glob: str) -> str:
    """The text of `glob` before its first wildcard (`*`, `?` or `[`)."""
    for i, char in enumerate(glob):
        if char in "*?[":
            return glob[:i]
    return glob


def _winner(matches: list[Selector]) -> Selector | None:
    if len(matches) == 1:
        return matches[0]
    for candidate in matches:
        if all(candidate is other or candidate.more_specific_than(other) for other in matches):
            return candidate
    return None


def resolve(
    env: Environment, universe: Mapping[str, Mapping[str, str]], *, complete_universe: bool = True
) -> Layout:
    """Assign every symbol of `universe` to one shard of `env`, or raise with every problem.

    `complete_universe` says whether `universe` holds every symbol the environment can see;
    only then is a pin of an unknown symbol an error (offline, a Kalshi-backed environment
    knows only its manual symbols).
    """
    layout, problems = resolve_with_problems(env, universe, complete_universe=complete_universe)
    ConfigError.collect(problems)
    return layout


def resolve_with_problems(
    env: Environment, universe: Mapping[str, Mapping[str, str]], *, complete_universe: bool = True
) -> tuple[Layout, list[Problem]]:
    """Like `resolve`, but returns the problems next to the layout of every symbol that did
    resolve (orphans and overlaps are left out of it) instead of raising."""
    selectors, problems = _compile(env)
    order = {name: i for i, name in enumerate(env.shards)}
    match = _Matcher(selectors)
    assignment: dict[str, str] = {}
    orphans: list[str] = []
    overlaps: list[tuple[str, list[str]]] = []
    pins = env.assignments
    for symbol in sorted(universe):
        pinned = pins.get(symbol)
        if pinned is not None and pinned in order:
            assignment[symbol] = pinned
            continue
        matches = match(symbol, universe[symbol])
        winner = _winner(matches)
        if winner is not None:
            assignment[symbol] = winner.shard
        elif not matches:
            orphans.append(symbol)
        else:
            overlaps.append((symbol, sorted((m.shard for m in matches), key=order.__getitem__)))
    if complete_universe:
        for symbol in pins:
            if symbol not in universe:
                problems.append(
                    _problem(
                        env,
                        ("assignments", symbol),
                        f"pin of symbol {symbol!r}, which is not a known symbol",
                    )
                )
    for symbol in orphans:
        problems.append(
            _problem(
                env, ("symbols", symbol), f"orphan: symbol {symbol!r} matches no shard's selector"
            )
        )
    for symbol, shards in overlaps:
        listed = ", ".join(shards)
        problems.append(
            _problem(
                env,
                ("symbols", symbol),
                f"overlap: symbol {symbol!r} matches shards {listed} and no selector is more "
                f"specific than the others; narrow a selector or pin it in `assignments`",
            )
        )
    by_shard: dict[str, list[str]] = {name: [] for name in env.shards}
    for symbol, shard in assignment.items():  # symbols were visited sorted
        by_shard[shard].append(symbol)
    layout = Layout(env=env.name, feed=env.feed, assignment=assignment, by_shard=by_shard)
    return layout, problems


def knows_every_symbol(env: Environment, secmaster: SymbolSource | None = None) -> bool:
    """Whether the universe of `env` is complete without asking an outside secmaster."""
    return secmaster is not None or env.secmaster.source == "manual"


def layout_of(env: Environment, secmaster: SymbolSource | None = None) -> Layout:
    """The layout of `env`'s own universe (manual symbols, plus `secmaster`'s when given):
    merge, then resolve, raising `ConfigError` with every orphan and overlap."""
    return resolve(
        env,
        merge_symbols(env, secmaster),
        complete_universe=knows_every_symbol(env, secmaster),
    )


def load_layout(
    ref: str | Path, secmaster: SymbolSource | None = None
) -> tuple[Environment, Layout]:
    """The one load → merge → resolve entry point: the environment named or pointed to by
    `ref` (as the CLI's ENV argument) and the shard of every symbol it knows."""
    env = load_environment(ref)
    return env, layout_of(env, secmaster)


@dataclass
class Validation:
    """Everything `ssmd shard validate` reports about one environment file.

    `problems` make the file invalid (exit 1); `warnings` do not. `env` is None when the file
    did not even load; `layout` then is None too. Further checks (resources against a budget,
    NATS mappings, a plan's result) append to `problems` with the same `Problem` type.
    """

    file: str
    env: Environment | None
    layout: Layout | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_document(
    text: str | bytes, file: str, secmaster: SymbolSource | None = None
) -> Validation:
    """Load, check and resolve one environment document, collecting every problem."""
    try:
        data, source = load_yaml(text, file)
    except ConfigError as exc:
        return Validation(file, None, None, list(exc.problems))
    return validate_loaded(data, source, secmaster)


def validate_loaded(
    data: Any, source: SourceMap, secmaster: SymbolSource | None = None
) -> Validation:
    """`validate_document` of a document already loaded by `load_yaml`."""
    file = source.file
    try:
        env = environment_from_data(data, source)
    except ConfigError as exc:
        return Validation(file, None, None, list(exc.problems))
    universe = merge_symbols(env, secmaster)
    layout, problems = resolve_with_problems(
        env, universe, complete_universe=knows_every_symbol(env, secmaster)
    )
    # an empty shard is worth a warning only when nothing else is wrong: an overlap
    # empties the shards it involves
    warnings = [] if problems else environment_warnings(env, layout)
    return Validation(file, env, layout, problems, warnings)


def environment_warnings(env: Environment, layout: Layout) -> list[Problem]:
    """Legal but suspicious: a shard that no known symbol resolves to."""
    warnings: list[Problem] = []
    complete = knows_every_symbol(env)
    for name in env.shards:
        if not layout.symbols_of(name):
            hint = "" if complete else " among the manual symbols (the secmaster may add some)"
            warnings.append(
                _problem(env, ("shards", name), f"shard {name!r} gets no symbols{hint}")
            )
    return warnings


def validate_environment(ref: str | Path, secmaster: SymbolSource | None = None) -> Validation:
    """`validate_document` of the environment named or pointed to by `ref` (as the CLI's ENV).

    An unknown name or an unreadable file raises `ConfigError`: there is no document.
    """
    path = environment_path(str(ref))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {exc.strerror}") from None
    return validate_document(data, str(path), secmaster)
