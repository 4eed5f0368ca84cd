"""A Kalshi exchange on loopback for tests, benchmarks and local mode.

- `markets`: the market model and the data it generates (WebSocket bodies, REST objects);
- `ws`: the WebSocket v2 server (commands, subscriptions, paced generation);
- `rest`: the REST API (markets, events, series);
- `faults`: the fault switches and the `/_sim/*` control paths;
- `exchange`: `KalshiSimulator`, which composes them on one port;
- `command`: the `ssmd run simulator` process.
"""

from .exchange import KalshiSimulator
from .markets import Market, MarketBook

__all__ = ["KalshiSimulator", "Market", "MarketBook"]
