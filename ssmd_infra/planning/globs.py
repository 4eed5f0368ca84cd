"""Carve-out globs on natural ticker boundaries, and the known symbols they could catch.

Globs sit on natural ticker boundaries: the series before a `-` (`KXHIGHNY-*`), or the root
of a pair without dashes (`BTC*` for `BTCUSD`). A glob is used only when it matches no known
symbol outside its group (the *domain* of the shard it is cut from); otherwise a longer
boundary, and finally the exact ticker.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from ssmd_infra.core.selectors import PREFIX_KEY, SYMBOL_KEY, Selector, is_glob
from ssmd_infra.planning.situation import Situation

# Quote currencies of pair tickers without dashes: `BTCUSD` has the root `BTC`.
QUOTE_SUFFIXES = ("USDT", "USDC", "USD", "EUR", "GBP", "JPY")


def natural_prefixes(symbol: str) -> list[str]:
    """Ticker boundaries a glob may stop at, shortest first (never the whole ticker).

    `KXHIGHNY-24DEC05-B43.5` → `KXHIGHNY-`, `KXHIGHNY-24DEC05-`; `BTCUSD` → `BTC`.
    """
    out: list[str] = []
    if "-" in symbol:
        for index, char in enumerate(symbol):
            if char == "-" and 0 < index < len(symbol) - 1:
                out.append(symbol[: index + 1])
    else:
        for quote in QUOTE_SUFFIXES:
            if symbol.endswith(quote) and len(symbol) >= len(quote) + 2:
                out.append(symbol[: -len(quote)])
                break
    return [p for p in out if not is_glob(p)]


class Domain:
    """The known symbols a carve-out glob could catch, sorted for prefix-range counting."""

    def __init__(self, symbols: Iterable[str]) -> None:
        self._sorted = sorted(set(symbols))

    def count(self, prefix: str, among: Sequence[str] | None = None) -> int:
        """How many symbols of the domain (or of sorted `among`) start with `prefix`."""
        items = self._sorted if among is None else among
        lo = bisect.bisect_left(items, prefix)
        hi = bisect.bisect_left(items, prefix + "\U0010ffff")
        return hi - lo


def domain_of(sit: Situation, shard: str) -> Domain:
    """Every known symbol whose attributes satisfy `shard`'s selector, whatever shard it is in:
    a glob that caught one outside its group would steal it or make an overlap."""
    selector = Selector.build(shard, sit.env.shards[shard].selector)
    return Domain(s for s, attrs in sit.universe.items() if selector.matches_attributes(attrs))


def globs_for(
    group: Iterable[str], domain: Domain, cover: Iterable[str] | None = None
) -> list[str]:
    """The fewest readable patterns selecting `cover` (default: all of `group`) and nothing
    in `domain` outside `group`.

    Per symbol, the shortest natural prefix whose every domain match is in the group, else
    the exact ticker; patterns covered by a shorter chosen glob are dropped.
    """
    members = sorted(set(group))
    chosen: set[str] = set()
    for symbol in sorted(set(members if cover is None else cover)):
        pattern = symbol
        for prefix in natural_prefixes(symbol):
            if domain.count(prefix) == domain.count(prefix, members):
                pattern = prefix + "*"
                break
        chosen.add(pattern)
    kept: list[str] = []
    globbed: set[str] = set()  # prefixes of the kept globs
    for pattern in sorted(chosen, key=lambda p: (len(p), p)):
        body = pattern.removesuffix("*")
        if any(body[:i] in globbed for i in range(1, len(body) + 1)):
            continue  # a shorter glob already selects it
        kept.append(pattern)
        if pattern.endswith("*"):
            globbed.add(body)
    return sorted(kept)


def can_carve_with_globs(sit: Situation, shard: str) -> bool:
    """Whether carve-outs of `shard` can be made with a `symbol:` glob list."""
    selector = sit.env.shards[shard].selector
    return SYMBOL_KEY not in selector and PREFIX_KEY not in selector


def needs_pin(sit: Situation, symbol: str, globbable: bool) -> bool:
    return not globbable or symbol in sit.env.assignments or is_glob(symbol)
