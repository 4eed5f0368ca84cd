"""Kalshi's open markets as a secmaster source (`secmaster.source: kalshi`).

`GET {base}/events?status=open&with_nested_markets=true` is walked page by page (200 events
a page; `cursor` is a string, `""` on the last page): each event carries its series ticker,
its category and its markets, so the ~29k open markets of Kalshi's ~5k open events cost
tens of requests, not one per event. Selectors want a market's `category`, `series` and
`event`; the event's category is deprecated on Kalshi and may be empty, in which case the
series is looked up (`GET {base}/series/{series}`) once and kept in a bounded LRU cache
(series do not change category). Nested markets are filtered by the same `status` (an open
event can hold a market that already closed).

Kalshi rate-limits per key (the basic tier allows about 20 reads/s), so every request takes
a token from a token bucket (default 10/s, leaving room for the key's other users), is
retried with exponential backoff and jitter on 429 (honouring `Retry-After`), 5xx,
timeouts and connection errors, and a request that still fails after the retry budget is a
`KalshiRestError` naming the URL and the last failure. 400/401/403 are not retried: they
cannot get better by waiting. Everything is bounded: pages (`max_pages`, and a repeated
cursor is an error), the series cache (`cache_size`), concurrent lookups (`concurrency`).

`symbols()` is synchronous because its callers are: the connector resolves in a worker
thread (`asyncio.to_thread`), the CLI and the Pulumi program are plain functions. It runs
one short-lived event loop per listing; async callers can `await fetch()` instead. Merging
with the environment's manual symbols is `ssmd_infra.core.secmaster.merge_symbols`, not here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from runtime.backoff import Backoff
from ssmd_infra.core.errors import SsmdError

from .auth import KalshiSigner
from .contract import EVENT_STATUS_FILTERS, EVENTS_PAGE_MAX, MARKET_STATUS_FILTERS

log = logging.getLogger(__name__)

DEFAULT_RATE = 10.0  # requests/s: half of Kalshi's basic-tier read limit
DEFAULT_BURST = 5
PAGE_LIMIT = EVENTS_PAGE_MAX  # Kalshi's maximum events page: fewest requests per listing
MAX_PAGES = 300  # 60k events, ~10× Kalshi's open ones: a runaway listing ends in an error
DEFAULT_CACHE_SIZE = 20_000  # series: more than Kalshi has
MAX_ATTEMPTS = 6
RETRY_AFTER_MAX = 60.0
ATTRIBUTE_FIELDS = ("status", "market_type")  # market fields kept as attributes, besides
# category/series/event

K = TypeVar("K")
V = TypeVar("V")


class KalshiRestError(SsmdError):
    """The Kalshi REST API could not be read (refused, or still failing after the retries)."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class TokenBucket:
    """`rate` requests per second on average, at most `burst` back to back.

    Thread-safe and loop-agnostic (it only reads a clock), so one bucket paces every listing
    a source makes, whichever thread and event loop runs it.
    """

    def __init__(
        self, rate: float, burst: int = 1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise SsmdError(f"Kalshi REST rate must be > 0 requests/s, got {rate}")
        if burst < 1:
            raise SsmdError(f"Kalshi REST burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how long to wait before using it (0 if it is there now).

        Tokens may go negative: a caller that must wait has its token reserved, so callers
        are served in order and the long-run rate never exceeds `rate`.
        """
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    async def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            await asyncio.sleep(wait)


class LruCache(Generic[K, V]):
    """At most `maxsize` entries; the least recently used goes first. Thread-safe."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise SsmdError(f"cache size must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass(slots=True)
class RestStats:
    """Counters since the source was built (for logs and tests)."""

    requests: int = 0  # HTTP requests sent, retries included
    retries: int = 0
    pages: int = 0  # event pages
    events: int = 0  # events listed
    series_lookups: int = 0  # series fetched (cache misses)
    listings: int = 0


class _Missing(Exception):
    """404 on a series: the lookup has no answer (not an outage)."""


class KalshiRestSource:
    """Open Kalshi markets with `category`, `series`, `event` (+ `status`, `market_type`).

    `base_url` is the REST root including `/trade-api/v2` (the connector's
    `--kalshi-rest-url`). With a `signer` every request is signed (Kalshi's market data is
    public, but a signed request counts against the key's own, usually higher, limit).
    """

    def __init__(
        self,
        base_url: str,
        *,
        signer: KalshiSigner | None = None,
        status: str = "open",
        page_limit: int = PAGE_LIMIT,
        max_pages: int = MAX_PAGES,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_initial: float = 0.5,
        backoff_max: float = 20.0,
        retry_after_max: float = RETRY_AFTER_MAX,
        timeout: float = 15.0,
        cache_size: int = DEFAULT_CACHE_SIZE,
        concurrency: int = 4,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SsmdError(f"Kalshi REST URL must be http(s)://host/..., got {base_url!r}")
        if not 1 <= page_limit <= PAGE_LIMIT:
            raise SsmdError(f"page_limit must be 1..{PAGE_LIMIT}, got {page_limit}")
        if status and status not in EVENT_STATUS_FILTERS:
            raise SsmdError(
                f"Kalshi listing status must be one of {', '.join(sorted(EVENT_STATUS_FILTERS))} "
                f"(or empty for all), got {status!r}"
            )
        if max_pages < 1 or max_attempts < 1 or concurrency < 1:
            raise SsmdError("max_pages, max_attempts and concurrency must be >= 1")
        self.base_url = base_url.rstrip("/")
        self._base_path = parts.path.rstrip("/")  # what is signed: the path, without a query
        self.signer = signer
        self.status = status
        self._market_statuses = MARKET_STATUS_FILTERS[status] if status else None
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.max_attempts = max_attempts
        self.backoff = Backoff(backoff_initial, backoff_max)
        self.retry_after_max = retry_after_max
        self.timeout = timeout
        self.concurrency = concurrency
        self.bucket = TokenBucket(rate, burst)
        self.series: LruCache[str, str] = LruCache(cache_size)
        self.stats = RestStats()

    def __repr__(self) -> str:
        return f"KalshiRestSource({self.base_url!r}, status={self.status!r})"

    # -- the SymbolSource interface ---------------------------------------------------------

    def symbols(self) -> list[tuple[str, dict[str, object]]]:
        """Every listed market with its attributes; blocks (run it off the event loop)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.fetch())
        raise SsmdError(
            "KalshiRestSource.symbols() blocks: call it in a worker thread "
            "(asyncio.to_thread) or `await fetch()` from async code"
        )

    async def fetch(self) -> list[tuple[str, dict[str, object]]]:
        """The listing, in the exchange's order, each ticker once."""
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            markets, events = await self._list_events(http)
            categories = await self._categories(http, events.values())
        out = [
            (ticker, self._attributes(market, events, categories))
            for ticker, market in markets.items()
        ]
        self.stats.listings += 1
        log.info(
            "kalshi secmaster: %d %s markets in %d events (%d requests so far, %d retries)",
            len(out),
            self.status or "listed",
            len(events),
            self.stats.requests,
            self.stats.retries,
        )
        return out

    # -- listing ----------------------------------------------------------------------------

    async def _list_events(
        self, http: aiohttp.ClientSession
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(ticker → market, event ticker → event) of the whole listing."""
        markets: dict[str, dict[str, Any]] = {}
        events: dict[str, dict[str, Any]] = {}
        cursor = ""
        seen: set[str] = set()
        wanted = self._market_statuses
        for _ in range(self.max_pages):
            params = {"limit": str(self.page_limit), "with_nested_markets": "true"}
            if self.status:
                params["status"] = self.status
            if cursor:
                params["cursor"] = cursor
            body = await self._get(http, "/events", params)
            page = body.get("events")
            next_cursor = body.get("cursor") or ""
            if not isinstance(page, list) or not isinstance(next_cursor, str):
                raise KalshiRestError(
                    f"{self.base_url}/events: unexpected answer (no `events` list or a "
                    f"non-string `cursor`)"
                )
            self.stats.pages += 1
            for event in page:
                ticker = event.get("event_ticker") if isinstance(event, dict) else None
                if not isinstance(ticker, str) or not ticker:
                    continue
                events[ticker] = event
                self.stats.events += 1
                for market in event.get("markets") or ():
                    symbol = market.get("ticker") if isinstance(market, dict) else None
                    if not isinstance(symbol, str) or not symbol:
                        continue
                    if wanted is not None and market.get("status") not in wanted:
                        continue
                    markets[symbol] = {**market, "event_ticker": ticker}
            if not next_cursor:
                return markets, events
            if next_cursor in seen:
                raise KalshiRestError(
                    f"{self.base_url}/events: the cursor repeated after {len(seen) + 1} pages"
                )
            seen.add(next_cursor)
            cursor = next_cursor
        raise KalshiRestError(
            f"{self.base_url}/events: more than {self.max_pages} pages of {self.page_limit} "
            f"events; the listing is incomplete (raise max_pages if Kalshi really lists "
            f"that many)"
        )

    # -- series -----------------------------------------------------------------------------

    async def _categories(
        self, http: aiohttp.ClientSession, events: Iterable[Mapping[str, Any]]
    ) -> dict[str, str]:
        """series ticker → category, for the series of events that carry no category of their
        own: from the cache, else looked up, `concurrency` requests at a time."""
        found: dict[str, str] = {}
        missing: list[str] = []
        for event in events:
            series = str(event.get("series_ticker") or "")
            if not series or event.get("category") or series in found or series in missing:
                continue
            cached = self.series.get(series)
            if cached is not None:
                found[series] = cached
            else:
                missing.append(series)
        pending = iter(missing)

        async def worker() -> None:
            for series in pending:  # a shared iterator: each series taken once
                found[series] = await self._series_category(http, series)

        workers = [
            asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(missing)))
        ]
        try:
            await asyncio.gather(*workers)
        finally:  # one failed: stop the others before the session closes under them
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return found

    async def _series_category(self, http: aiohttp.ClientSession, series_ticker: str) -> str:
        self.stats.series_lookups += 1
        try:
            body = await self._get(http, f"/series/{quote(series_ticker, safe='')}")
        except _Missing:
            return ""
        series = body.get("series")
        category = str(series.get("category") or "") if isinstance(series, dict) else ""
        self.series.put(series_ticker, category)
        return category

    @staticmethod
    def _attributes(
        market: Mapping[str, Any],
        events: Mapping[str, Mapping[str, Any]],
        series_categories: Mapping[str, str],
    ) -> dict[str, object]:
        """Attributes for selectors; missing ones are left out so the env's defaults fill them."""
        attrs: dict[str, object] = {}
        event_ticker = str(market.get("event_ticker") or "")
        event = events.get(event_ticker, {})
        series = str(event.get("series_ticker") or "")
        category = str(event.get("category") or "") or series_categories.get(series, "")
        if category:
            attrs["category"] = category
        if series:
            attrs["series"] = series
        if event_ticker:
            attrs["event"] = event_ticker
        for name in ATTRIBUTE_FIELDS:
            value = market.get(name)
            if isinstance(value, str) and value:
                attrs[name] = value
        return attrs

    # -- HTTP -------------------------------------------------------------------------------

    async def _get(
        self, http: aiohttp.ClientSession, path: str, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """GET a JSON object, paced and retried; `_Missing` on 404 for a series."""
        url = self.base_url + path
        last = ""
        for attempt in range(self.max_attempts):
            if attempt:
                self.stats.retries += 1
            await self.bucket.acquire()
            headers = self.signer.headers("GET", self._base_path + path) if self.signer else {}
            self.stats.requests += 1
            retry_after: float | None = None
            try:
                async with http.get(url, params=params, headers=headers) as response:
                    status = response.status
                    if status == 200:
                        body = await response.json(content_type=None)
                        if isinstance(body, dict):
                            return body
                        last = "the answer is not a JSON object"
                    elif status == 404 and path.startswith("/series/"):
                        raise _Missing(path)
                    elif status == 429 or status >= 500:
                        last = f"HTTP {status}"
                        if status == 429:
                            retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    else:
                        text = (await response.text())[:200]
                        what = "refused the credentials" if status in (401, 403) else "refused"
                        raise KalshiRestError(f"Kalshi {what}: GET {url} → HTTP {status}: {text}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if attempt + 1 < self.max_attempts:
                await asyncio.sleep(self._delay(attempt, retry_after))
        raise KalshiRestError(
            f"GET {url} failed {self.max_attempts} times, giving up (last: {last})"
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's `Retry-After` when it gave one, else the runtime's backoff."""
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        return self.backoff.delay(attempt)
