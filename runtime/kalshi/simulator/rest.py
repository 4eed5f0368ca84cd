"""The simulator's REST API: markets, events (optionally with nested markets), series.

Query parameters are checked the way Kalshi checks them and a bad one is a 400 with Kalshi's
error body, `{"error": {"code", "message", "details"}}`, naming the parameter:

- `GET /markets`: `limit` 1..1000 (default 100), `cursor` (opaque; `""` on the last page),
  `status` (`unopened`, `open`, `paused`, `closed`, `settled`), `tickers` (comma-separated),
  `event_ticker`, `series_ticker`, `min_close_ts`/`max_close_ts` (Unix seconds; only with
  no status or `status=closed`).
- `GET /events`: `limit` 1..200 (default 200), `cursor`, `status` (`unopened`, `open`,
  `closed`, `settled`: an event matches when one of its markets does), `series_ticker`,
  `with_nested_markets` (`true`: each event carries its `markets`).
- `GET /markets/{ticker}`, `GET /events/{event_ticker}`, `GET /series/{series_ticker}`;
  404 with the same error body when absent.

Market data is public on Kalshi: a request is only checked when it carries a signature.
The REST fault switches (a queued failure status, refused auth) apply before anything else.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from ..contract import (
    EVENT_STATUS_FILTERS,
    EVENTS_PAGE_DEFAULT,
    EVENTS_PAGE_MAX,
    MARKET_STATUS_FILTERS,
    MARKETS_PAGE_DEFAULT,
    MARKETS_PAGE_MAX,
    REST_PREFIX,
)
from .faults import Faults
from .markets import Market, MarketBook

SIGNATURE_HEADER = "kalshi-access-signature"


def error_response(status: int, code: str, message: str, details: str = "") -> web.Response:
    """Kalshi's error body."""
    return web.json_response(
        {"error": {"code": code, "message": message, "details": details}}, status=status
    )


class _BadRequest(Exception):
    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


def _int(query: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise _BadRequest(name, f"{name} must be an integer, got {raw!r}") from None


def _limit(query: Mapping[str, str], default: int, maximum: int) -> int:
    limit = _int(query, "limit", default)
    assert limit is not None
    if not 1 <= limit <= maximum:
        raise _BadRequest("limit", f"limit must be 1..{maximum}, got {limit}")
    return limit


def _offset(query: Mapping[str, str]) -> int:
    cursor = query.get("cursor") or ""
    if not cursor:
        return 0
    try:
        offset = int(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("cursor", f"cursor {cursor!r} is not one this server gave") from None
    if offset < 0:
        raise _BadRequest("cursor", f"cursor {cursor!r} is not one this server gave")
    return offset


def _page(items: list[Any], offset: int, limit: int) -> tuple[list[Any], str]:
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else ""
    return page, cursor


def _status(query: Mapping[str, str], allowed: Iterable[str]) -> frozenset[str] | None:
    """The market statuses a `status` filter selects; None: no filter."""
    status = query.get("status") or ""
    if not status:
        return None
    allowed = sorted(allowed)
    if status not in allowed:
        raise _BadRequest("status", f"status must be one of {', '.join(allowed)}; got {status!r}")
    return MARKET_STATUS_FILTERS[status]


def _flag(query: Mapping[str, str], name: str) -> bool:
    raw = (query.get(name) or "false").lower()
    if raw not in ("true", "false"):
        raise _BadRequest(name, f"{name} must be true or false, got {raw!r}")
    return raw == "true"


class RestApi:
    """The REST handlers of one simulator."""

    def __init__(
        self,
        book: MarketBook,
        faults: Faults,
        authorize: Callable[[web.Request], bool | None],
    ) -> None:
        self.book = book
        self.faults = faults
        self._authorize = authorize
        self.requests = 0
        self.verified = 0  # signed requests whose signature verified
        self.auth_failures = 0

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(REST_PREFIX + "/markets", self._guard(self.markets)),
            web.get(REST_PREFIX + "/markets/{ticker}", self._guard(self.market)),
            web.get(REST_PREFIX + "/events", self._guard(self.events)),
            web.get(REST_PREFIX + "/events/{event_ticker}", self._guard(self.event)),
            web.get(REST_PREFIX + "/series/{series_ticker}", self._guard(self.series)),
        ]

    def _guard(
        self, handler: Callable[[web.Request], web.Response]
    ) -> Callable[[web.Request], Any]:
        async def guarded(request: web.Request) -> web.Response:
            self.requests += 1
            status = self.faults.next_rest_failure()
            if status is not None:
                headers = {"Retry-After": "0"} if status == 429 else None
                response = error_response(
                    status,
                    "too_many_requests" if status == 429 else "internal_server_error",
                    f"simulated HTTP {status}",
                )
                if headers:
                    response.headers.update(headers)
                return response
            signed = SIGNATURE_HEADER in {k.lower() for k in request.headers}
            verdict = self._authorize(request) if signed or self.faults.refuse_auth else None
            if verdict is False:
                self.auth_failures += 1
                return error_response(401, "authentication_error", "invalid signature")
            if signed and verdict:
                self.verified += 1
            try:
                return handler(request)
            except _BadRequest as bad:
                return error_response(400, "invalid_parameters", str(bad), bad.parameter)

        return guarded

    # -- markets ----------------------------------------------------------------------------

    def markets(self, request: web.Request) -> web.Response:
        query = request.query
        limit = _limit(query, MARKETS_PAGE_DEFAULT, MARKETS_PAGE_MAX)
        offset = _offset(query)
        statuses = _status(query, MARKET_STATUS_FILTERS)
        min_close = _int(query, "min_close_ts")
        max_close = _int(query, "max_close_ts")
        if (min_close is not None or max_close is not None) and query.get("status") not in (
            None,
            "",
            "closed",
        ):
            raise _BadRequest(
                "status", "min_close_ts/max_close_ts combine only with no status or status=closed"
            )
        tickers = {t for t in (query.get("tickers") or "").split(",") if t}
        event = query.get("event_ticker") or None
        series = query.get("series_ticker") or None

        def keep(m: Market) -> bool:
            return (
                (statuses is None or m.status in statuses)
                and (not tickers or m.ticker in tickers)
                and (event is None or m.event_ticker == event)
                and (series is None or m.series_ticker == series)
                and (min_close is None or m.close_ts >= min_close)
                and (max_close is None or m.close_ts <= max_close)
            )

        markets = self.book.markets
        selected = [markets[t] for t in sorted(tickers or markets) if t in markets]
        page, cursor = _page([m for m in selected if keep(m)], offset, limit)
        return web.json_response(
            {"markets": [self.book.market_json(m) for m in page], "cursor": cursor}
        )

    def market(self, request: web.Request) -> web.Response:
        ticker = request.match_info["ticker"]
        market = self.book.markets.get(ticker)
        if market is None:
            return error_response(404, "not_found", f"market {ticker} not found")
        return web.json_response({"market": self.book.market_json(market)})

    # -- events and series ------------------------------------------------------------------

    def _by_event(self) -> dict[str, list[Market]]:
        out: dict[str, list[Market]] = {}
        for _, market in sorted(self.book.markets.items()):
            out.setdefault(market.event_ticker, []).append(market)
        return out

    def events(self, request: web.Request) -> web.Response:
        query = request.query
        limit = _limit(query, EVENTS_PAGE_DEFAULT, EVENTS_PAGE_MAX)
        offset = _offset(query)
        statuses = _status(query, EVENT_STATUS_FILTERS)
        nested = _flag(query, "with_nested_markets")
        series = query.get("series_ticker") or None
        min_close = _int(query, "min_close_ts")
        selected = [
            (ticker, markets)
            for ticker, markets in sorted(self._by_event().items())
            if (statuses is None or any(m.status in statuses for m in markets))
            and (series is None or markets[0].series_ticker == series)
            and (min_close is None or any(m.close_ts > min_close for m in markets))
        ]
        page, cursor = _page(selected, offset, limit)
        events = []
        for ticker, markets in page:
            event = self.book.event_json(ticker, markets)
            if nested:
                event["markets"] = [self.book.market_json(m) for m in markets]
            events.append(event)
        return web.json_response({"events": events, "cursor": cursor})

    def event(self, request: web.Request) -> web.Response:
        event_ticker = request.match_info["event_ticker"]
        markets = self._by_event().get(event_ticker)
        if not markets:
            return error_response(404, "not_found", f"event {event_ticker} not found")
        event = self.book.event_json(event_ticker, markets)
        listed = [self.book.market_json(m) for m in markets]
        if _flag(request.query, "with_nested_markets"):
            event["markets"] = listed
        return web.json_response({"event": event, "markets": listed})

    def series(self, request: web.Request) -> web.Response:
        series_ticker = request.match_info["series_ticker"]
        market = next(
            (m for m in self.book.markets.values() if m.series_ticker == series_ticker), None
        )
        if market is None:
            return error_response(404, "not_found", f"series {series_ticker} not found")
        return web.json_response({"series": self.book.series_json(series_ticker, market)})
