"""The simulated markets: their moving state and every object the exchange sends about them.

One `MarketBook` owns the markets and the random source, and produces both the WebSocket
`msg` bodies (trade, ticker, orderbook snapshot/delta) and the REST objects (market, event,
series). Field names, types and value formats follow Kalshi's current v2 contract: prices as
dollar strings (`"0.5600"`), contract counts as fixed-point strings (`"10.00"`), times as
RFC 3339 in REST, `ts` (seconds) and `ts_ms` on WebSocket messages. The integer-cent fields
Kalshi has retired are not sent.

Per-market state is bounded: an order book has at most 99 price levels per side.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from ssmd_infra.core.errors import SsmdError

from ..contract import MARKET_STATUS_FILTERS, MARKET_STATUSES

_encode = msgspec.json.encode

# Every simulated market opens and closes at these times unless its attributes say otherwise
# (`close_ts`: Unix seconds), so the close-time filters of GET /markets have something to sort.
OPEN_TS = 1_735_689_600  # 2025-01-01T00:00:00Z
DEFAULT_CLOSE_TS = 1_830_297_599  # 2027-12-31T23:59:59Z
CREATED_TS = 1_733_011_200  # 2024-12-01T00:00:00Z
BOOK_LEVELS = 5  # price levels per side seeded into a fresh book


def dollars(cents: int) -> str:
    """A price in cents as Kalshi's fixed-point dollar string."""
    return f"{cents / 100:.4f}"


def fp(count: int) -> str:
    """A contract count as Kalshi's fixed-point string (two decimals)."""
    return f"{count}.00"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_of(ticker: str) -> str:
    """Kalshi's convention: the event is the ticker without its last `-` part."""
    parts = ticker.split("-")
    return "-".join(parts[:-1]) if len(parts) >= 3 else ticker


def series_of(ticker: str) -> str:
    return ticker.split("-", 1)[0]


def lifecycle_status(ticker: str, status: str) -> str:
    """A market object's `status` from a lifecycle value or a filter value (`open` → `active`)."""
    if status in MARKET_STATUSES:
        return status
    selected = MARKET_STATUS_FILTERS.get(status)
    if selected is None:
        raise SsmdError(
            f"market {ticker!r}: unknown status {status!r} (one of "
            f"{', '.join(sorted(MARKET_STATUSES | set(MARKET_STATUS_FILTERS)))})"
        )
    return min(selected)


@dataclass(slots=True)
class Market:
    """One simulated market and its moving state."""

    ticker: str
    event_ticker: str
    series_ticker: str
    category: str  # the series' category
    event_category: str  # the event's own (deprecated on Kalshi, sometimes empty)
    status: str = "active"
    close_ts: int = DEFAULT_CLOSE_TS
    updated_ts: int = CREATED_TS
    price: int = 50  # last trade, cents
    volume: int = 0
    open_interest: int = 0
    market_id: str = ""
    yes_book: dict[int, int] = field(default_factory=dict)  # price (cents) → resting count
    no_book: dict[int, int] = field(default_factory=dict)
    last_ticker: bytes = b""  # the last ticker body, for the identical-payload fault

    def __post_init__(self) -> None:
        self.market_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"kalshi-sim:{self.ticker}"))

    def best_yes_bid(self) -> int:
        return max((p for p, n in self.yes_book.items() if n > 0), default=max(1, self.price - 1))

    def best_yes_ask(self) -> int:
        no_bid = max((p for p, n in self.no_book.items() if n > 0), default=None)
        return 100 - no_bid if no_bid is not None else min(99, self.price + 1)


class MarketBook:
    """The markets of one simulator, keyed by ticker, and the generator of their data."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.markets: dict[str, Market] = {}

    def add(self, ticker: str, attrs: Mapping[str, object] | None = None) -> Market:
        """A market (or a change of its attributes); `event`, `series`, `category`,
        `event_category` (default: `category`), `status`, `close_ts` are used."""
        attrs = attrs or {}
        category = str(attrs.get("category") or "Unknown")
        event = str(attrs.get("event") or event_of(ticker))
        close = attrs.get("close_ts")
        try:
            close_ts = int(str(close)) if close is not None else DEFAULT_CLOSE_TS
        except ValueError:
            raise SsmdError(
                f"market {ticker!r}: close_ts must be Unix seconds, got {close!r}"
            ) from None
        market = Market(
            ticker=ticker,
            event_ticker=event,
            series_ticker=str(attrs.get("series") or series_of(event)),
            category=category,
            event_category=str(attrs.get("event_category", category)),
            status=lifecycle_status(ticker, str(attrs.get("status") or "active")),
            close_ts=close_ts,
            price=self.rng.randint(5, 95),
        )
        self._seed_book(market)
        self.markets[ticker] = market
        return market

    def add_synthetic(self, count: int) -> None:
        """`count` generated markets, 100 per series, spread over four categories."""
        for i in range(count):
            series = f"KXSYN{i // 100:03d}"
            event = f"{series}-25DEC31"
            self.add(
                f"{event}-B{i % 100}.5",
                {
                    "category": ("crypto", "economics", "climate", "sports")[i % 4],
                    "series": series,
                    "event": event,
                    "close_ts": DEFAULT_CLOSE_TS - (i % 100) * 86_400,
                },
            )

    def set_status(self, ticker: str, status: str, now: float) -> None:
        market = self.markets.get(ticker)
        if market is None:
            raise SsmdError(f"unknown market {ticker!r}")
        market.status = lifecycle_status(ticker, status)
        market.updated_ts = int(now)

    # -- WebSocket bodies -----------------------------------------------------------------

    def trade(self, market: Market, now: float) -> tuple[bytes, str]:
        """A public trade: the body and its `trade_id`."""
        rng = self.rng
        market.price = min(99, max(1, market.price + rng.choice((-2, -1, 0, 0, 1, 2))))
        count = rng.randint(1, 500)
        market.volume += count
        trade_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        side = rng.choice(("yes", "no"))
        body = {
            "trade_id": trade_id,
            "market_ticker": market.ticker,
            "yes_price_dollars": dollars(market.price),
            "no_price_dollars": dollars(100 - market.price),
            "count_fp": fp(count),
            "taker_side": side,
            "ts": int(now),
            "ts_ms": int(now * 1000),
        }
        return _encode(body), trade_id

    def ticker(self, market: Market, now: float, *, identical: bool = False) -> bytes:
        """A ticker update; with `identical`, the previous one again, byte for byte."""
        if identical and market.last_ticker:
            return market.last_ticker
        rng = self.rng
        market.price = min(99, max(1, market.price + rng.choice((-1, 0, 0, 1))))
        market.open_interest = max(0, market.open_interest + rng.randint(-20, 40))
        market.volume += rng.randint(1, 50)  # volume only grows: no two updates are identical
        bid, ask = market.best_yes_bid(), market.best_yes_ask()
        body = {
            "market_ticker": market.ticker,
            "market_id": market.market_id,
            "price_dollars": dollars(market.price),
            "yes_bid_dollars": dollars(bid),
            "yes_ask_dollars": dollars(ask),
            "yes_bid_size_fp": fp(market.yes_book.get(bid, 0)),
            "yes_ask_size_fp": fp(market.no_book.get(100 - ask, 0)),
            "last_trade_size_fp": fp(rng.randint(1, 100)),
            "volume_fp": fp(market.volume),
            "open_interest_fp": fp(market.open_interest),
            "dollar_volume": market.volume * market.price // 100,
            "dollar_open_interest": market.open_interest * market.price // 100,
            "ts": int(now),
            "ts_ms": int(now * 1000),
        }
        market.last_ticker = _encode(body)
        return market.last_ticker

    def book_snapshot(self, market: Market) -> bytes:
        """The whole book: `[price_dollars, count_fp]` levels per side, best last."""
        body = {
            "market_ticker": market.ticker,
            "market_id": market.market_id,
            "yes_dollars_fp": _levels(market.yes_book),
            "no_dollars_fp": _levels(market.no_book),
        }
        return _encode(body)

    def book_delta(self, market: Market, now: float) -> bytes:
        """A change of one price level, applied to the book (a level never goes below 0)."""
        rng = self.rng
        side = rng.choice(("yes", "no"))
        book = market.yes_book if side == "yes" else market.no_book
        mid = market.price if side == "yes" else 100 - market.price
        price = min(99, max(1, mid - rng.randint(1, BOOK_LEVELS)))
        resting = book.get(price, 0)
        delta = (
            rng.randint(1, 200) if resting == 0 or rng.random() < 0.6 else -rng.randint(1, resting)
        )
        if resting + delta:
            book[price] = resting + delta
        else:
            book.pop(price, None)
        body = {
            "market_ticker": market.ticker,
            "market_id": market.market_id,
            "price_dollars": dollars(price),
            "delta_fp": f"{delta}.00",
            "side": side,
            "ts": int(now),
            "ts_ms": int(now * 1000),
        }
        return _encode(body)

    def _seed_book(self, market: Market) -> None:
        rng = self.rng
        for i in range(1, BOOK_LEVELS + 1):
            if market.price - i >= 1:
                market.yes_book[market.price - i] = rng.randint(1, 500)
            if 100 - market.price - i >= 1:
                market.no_book[100 - market.price - i] = rng.randint(1, 500)

    # -- REST objects ---------------------------------------------------------------------

    def market_json(self, m: Market) -> dict[str, Any]:
        """The v2 `Market` object (every field Kalshi's SDK requires, none it retired)."""
        bid, ask = m.best_yes_bid(), m.best_yes_ask()
        close_time = rfc3339(m.close_ts)
        return {
            "ticker": m.ticker,
            "event_ticker": m.event_ticker,
            "market_type": "binary",
            "title": f"Will {m.ticker} resolve yes?",
            "subtitle": "",
            "yes_sub_title": "Yes",
            "no_sub_title": "No",
            "created_time": rfc3339(CREATED_TS),
            "updated_time": rfc3339(m.updated_ts),
            "open_time": rfc3339(OPEN_TS),
            "close_time": close_time,
            "expected_expiration_time": close_time,
            "expiration_time": close_time,
            "latest_expiration_time": close_time,
            "settlement_timer_seconds": 300,
            "status": m.status,
            "yes_bid_dollars": dollars(bid),
            "yes_bid_size_fp": fp(m.yes_book.get(bid, 0)),
            "yes_ask_dollars": dollars(ask),
            "yes_ask_size_fp": fp(m.no_book.get(100 - ask, 0)),
            "no_bid_dollars": dollars(100 - ask),
            "no_ask_dollars": dollars(100 - bid),
            "last_price_dollars": dollars(m.price),
            "previous_yes_bid_dollars": dollars(bid),
            "previous_yes_ask_dollars": dollars(ask),
            "previous_price_dollars": dollars(m.price),
            "volume_fp": fp(m.volume),
            "volume_24h_fp": fp(m.volume),
            "open_interest_fp": fp(m.open_interest),
            "notional_value_dollars": "1.0000",
            "result": "",
            "can_close_early": True,
            "expiration_value": "",
            "settlement_bounds_type": "default",
            "rules_primary": f"Resolves yes if {m.ticker} settles yes.",
            "rules_secondary": "",
            "strike_type": "custom",
            "custom_strike": {},
            "price_level_structure": "linear_cent",
            "price_ranges": [{"start": "0.0000", "end": "1.0000", "step": "0.0100"}],
        }

    def event_json(self, event_ticker: str, markets: Iterable[Market]) -> dict[str, Any]:
        """The v2 event object of `markets` (all of one event), without nested markets."""
        first = next(iter(markets))
        return {
            "event_ticker": event_ticker,
            "series_ticker": first.series_ticker,
            "title": event_ticker,
            "sub_title": "",
            "collateral_return_type": "",
            "mutually_exclusive": False,
            "category": first.event_category,
            "strike_period": "",
            "product_metadata": {},
            "settlement_sources": [],
        }

    def series_json(self, series_ticker: str, market: Market) -> dict[str, Any]:
        return {
            "ticker": series_ticker,
            "frequency": "daily",
            "title": series_ticker,
            "category": market.category,
            "categories": [market.category],
            "tags": [],
            "settlement_sources": [],
            "contract_url": "",
            "contract_terms_url": "",
            "fee_type": "quadratic",
            "fee_multiplier": 1,
            "additional_prohibitions": [],
            "product_metadata": {},
        }


def _levels(book: Mapping[int, int]) -> list[list[str]]:
    return [[dollars(p), fp(n)] for p, n in sorted(book.items()) if n > 0]
