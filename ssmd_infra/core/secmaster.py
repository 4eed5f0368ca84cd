"""Where symbols and their attributes come from.

A *source* yields (symbol, attributes). The environment's own `symbols` mapping is the
`manual` source; the Kalshi REST source lives in the runtime. Merge rule: manual attributes
override the secmaster's, configured defaults fill the ones still missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from ssmd_infra.core.environment import Environment, attribute_text

Attributes = dict[str, str]


class SymbolSource(Protocol):
    """Anything that can list symbols with attributes."""

    def symbols(self) -> Iterable[tuple[str, Mapping[str, object]]]: ...


class ManualSource:
    """The environment file's own `symbols` mapping."""

    def __init__(self, env: Environment) -> None:
        self._env = env

    def symbols(self) -> Iterator[tuple[str, Mapping[str, object]]]:
        yield from self._env.symbols.items()


class InMemorySource:
    """A fixed list, for tests and for saved secmaster snapshots."""

    def __init__(self, items: Mapping[str, Mapping[str, object]]) -> None:
        self._items = dict(items)

    def symbols(self) -> Iterator[tuple[str, Mapping[str, object]]]:
        yield from self._items.items()


def merge_symbols(env: Environment, secmaster: SymbolSource | None = None) -> dict[str, Attributes]:
    """The symbol universe of `env`: secmaster symbols (with defaults) overlaid by manual ones."""
    defaults = env.secmaster.defaults
    universe: dict[str, Attributes] = {}
    if secmaster is not None:
        for symbol, attrs in secmaster.symbols():
            merged = dict(defaults)
            merged.update({k: attribute_text(v) for k, v in attrs.items() if v is not None})
            universe[symbol] = merged
    for symbol, attrs in env.symbols.items():
        base = universe.get(symbol)
        if base is None:
            base = dict(defaults)
        universe[symbol] = {**base, **attrs}
    return universe
