"""Kalshi's own clients against a live simulator; run by `tests/runtime/kalshi/test_contract.py`.

Runs under the Python >= 3.13 virtualenv `.venv-contract/` (scripts/setup.sh builds it with
the pinned `kalshi-python-sync` and `pykalshi`), not under the project's interpreter. Every
REST answer is parsed by the official SDK's generated models (a field the SDK requires that
is missing, or a value of the wrong type or outside its enum, raises here); error bodies
are parsed with its `ErrorResponse` model. `pykalshi` reads the WebSocket `trade` and
`ticker` channels. Prints one JSON report on stdout for the test to judge.

usage: python kalshi_clients.py REST_URL WS_URL KEY_ID PRIVATE_KEY_PEM_PATH TICKER
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
import threading
import time
from typing import Any

import kalshi_python_sync
from kalshi_python_sync.exceptions import ApiException
from kalshi_python_sync.models.error_response import ErrorResponse
from pykalshi import KalshiClient as PyKalshiClient
from pykalshi.feed import TickerMessage, TradeMessage

PAGE = 1000


def sdk_client(rest_url: str, key_id: str, pem: str) -> kalshi_python_sync.KalshiClient:
    config = kalshi_python_sync.Configuration(host=rest_url)
    config.api_key_id = key_id
    config.private_key_pem = pem
    return kalshi_python_sync.KalshiClient(config)


def list_markets(markets_api: kalshi_python_sync.MarketApi) -> dict[str, Any]:
    tickers: list[str] = []
    sizes: list[int] = []
    cursor: str | None = None
    while True:
        page = markets_api.get_markets(limit=PAGE, cursor=cursor, status="open")
        sizes.append(len(page.markets))
        tickers += [m.ticker for m in page.markets]
        if not page.cursor:
            break
        cursor = page.cursor
    return {"tickers": tickers, "page_sizes": sizes}


def list_events(events_api: kalshi_python_sync.EventsApi) -> dict[str, Any]:
    events = 0
    nested: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = events_api.get_events(
            limit=200, cursor=cursor, status="open", with_nested_markets=True
        )
        pages += 1
        events += len(page.events)
        for event in page.events:
            nested += [m.ticker for m in event.markets or []]
        if not page.cursor:
            break
        cursor = page.cursor
    return {"events": events, "pages": pages, "nested_tickers": nested}


def error_of(call: Any) -> dict[str, Any]:
    try:
        call()
    except ApiException as exc:
        body = json.loads(exc.body or "{}")
        parsed = ErrorResponse.from_dict(body["error"])
        assert parsed is not None
        return {"status": exc.status, "error": parsed.to_dict()}
    raise AssertionError("the call succeeded; an error was expected")


def read_feed(
    rest_url: str, ws_url: str, key_id: str, key_path: str, ticker: str
) -> dict[str, Any]:
    client = PyKalshiClient(api_key_id=key_id, private_key_path=key_path, api_base=rest_url)
    feed = client.feed()
    feed._ws_url = ws_url  # pykalshi knows only Kalshi's own hosts
    kinds: dict[str, list[str]] = {"trade": [], "ticker": []}
    samples: dict[str, dict[str, Any]] = {}
    enough = threading.Event()

    def on(channel: str, model: type) -> Any:
        def handle(message: Any) -> None:
            kinds[channel].append(type(message).__name__)
            if isinstance(message, model):
                samples.setdefault(channel, message.model_dump(exclude_none=True))
            if all(len(v) >= 20 for v in kinds.values()):
                enough.set()

        return handle

    feed.on("trade", on("trade", TradeMessage))
    feed.on("ticker", on("ticker", TickerMessage))
    feed.subscribe("trade", market_ticker=ticker)
    feed.subscribe("ticker", market_tickers=[ticker])
    feed.start()
    try:
        enough.wait(timeout=60)
    finally:
        feed.stop()
        client.close()
    return {"kinds": kinds, "samples": samples}


def main() -> None:
    rest_url, ws_url, key_id, key_path, ticker = sys.argv[1:6]
    with open(key_path) as f:
        pem = f.read()
    client = sdk_client(rest_url, key_id, pem)
    markets_api = kalshi_python_sync.MarketApi(client)
    events_api = kalshi_python_sync.EventsApi(client)
    started = time.monotonic()
    report: dict[str, Any] = {
        "versions": {
            name: importlib.metadata.version(name) for name in ("kalshi-python-sync", "pykalshi")
        },
        "markets": list_markets(markets_api),
        "one_market": markets_api.get_market(ticker).market.ticker,
        "filtered": [m.ticker for m in markets_api.get_markets(tickers=ticker).markets],
        "closed": [m.ticker for m in markets_api.get_markets(status="closed", limit=PAGE).markets],
        "one_event": [
            m.ticker
            for m in events_api.get_event(
                ticker.rsplit("-", 1)[0], with_nested_markets=True
            ).event.markets
            or []
        ],
        "events": list_events(events_api),
        "series": markets_api.get_series(ticker.split("-")[0]).series.to_dict(),
        "errors": {
            "limit": error_of(lambda: markets_api.get_markets(limit=5000)),
            "status": error_of(lambda: markets_api.get_markets(status="bogus")),
            "market": error_of(lambda: markets_api.get_market("NO-SUCH-MARKET")),
            "series": error_of(lambda: markets_api.get_series("NOSUCHSERIES")),
        },
        "feed": read_feed(rest_url, ws_url, key_id, key_path, ticker),
    }
    report["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
