"""Facts of Kalshi's published Trade API v2 that our client and our simulator both rely on.

One place for them, so the simulator cannot drift from what the client expects: paths,
page limits, the `status` filter values of the listings and the market statuses each one
selects, the WebSocket channels (public or private) and the WebSocket error codes.

The simulator follows Kalshi Trade API v2 as described by Kalshi's official Python SDK
`kalshi-python-sync` 3.34.0 (generated from Kalshi's OpenAPI document); the contract test
(`tests/runtime/kalshi/test_contract.py`) holds it to that SDK.
"""

from __future__ import annotations

from enum import IntEnum

WS_PATH = "/trade-api/ws/v2"
REST_PREFIX = "/trade-api/v2"

MARKETS_PAGE_MAX = 1000  # GET /markets: `limit` 1..1000, default 100
MARKETS_PAGE_DEFAULT = 100
EVENTS_PAGE_MAX = 200  # GET /events: `limit` 1..200, default 200
EVENTS_PAGE_DEFAULT = 200

# The `status` filter of GET /markets and GET /events → the market statuses it selects (a
# market object's `status` is one of the lifecycle values, not a filter value).
MARKET_STATUS_FILTERS: dict[str, frozenset[str]] = {
    "unopened": frozenset({"initialized"}),
    "open": frozenset({"active"}),
    "paused": frozenset({"inactive"}),
    "closed": frozenset({"closed"}),
    "settled": frozenset({"determined", "disputed", "amended", "finalized"}),
}
EVENT_STATUS_FILTERS = frozenset({"unopened", "open", "closed", "settled"})
MARKET_STATUSES = frozenset().union(*MARKET_STATUS_FILTERS.values())

# Channels anyone may subscribe without signing the connection, and those that need it.
PUBLIC_CHANNELS = frozenset({"ticker", "ticker_v2", "trade", "market_lifecycle_v2", "multivariate"})
PRIVATE_CHANNELS = frozenset(
    {"orderbook_delta", "fill", "market_positions", "communications", "order_group_updates"}
)


class WsError(IntEnum):
    """Kalshi's WebSocket `error` codes (`{"type":"error","id":N,"msg":{"code":C,"msg":...}}`)."""

    UNABLE_TO_PROCESS = 1
    PARAMS_REQUIRED = 2
    CHANNELS_REQUIRED = 3
    SIDS_REQUIRED = 4
    UNKNOWN_COMMAND = 5
    UNKNOWN_SID = 7
    UNKNOWN_CHANNEL = 8
    AUTH_REQUIRED = 9
    INVALID_PARAMETER = 11
    ONE_SID_REQUIRED = 12
    UNSUPPORTED_ACTION = 13
    MARKET_LIMIT_EXCEEDED = 26

    @property
    def text(self) -> str:
        return _WS_ERROR_TEXT[self]


_WS_ERROR_TEXT = {
    WsError.UNABLE_TO_PROCESS: "Unable to process message",
    WsError.PARAMS_REQUIRED: "Params required",
    WsError.CHANNELS_REQUIRED: "Channels required",
    WsError.SIDS_REQUIRED: "Subscription IDs required",
    WsError.UNKNOWN_COMMAND: "Unknown command",
    WsError.UNKNOWN_SID: "Unknown subscription ID",
    WsError.UNKNOWN_CHANNEL: "Unknown channel name",
    WsError.AUTH_REQUIRED: "Authentication required",
    WsError.INVALID_PARAMETER: "Invalid parameter",
    WsError.ONE_SID_REQUIRED: "Exactly one subscription ID is required",
    WsError.UNSUPPORTED_ACTION: "Unsupported action",
    WsError.MARKET_LIMIT_EXCEEDED: "Subscription market limit exceeded",
}
