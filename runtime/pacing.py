"""The read-pacing grid shared by every paced socket reader of a runtime process.

A paced reader (the Kalshi WebSocket transport, the NATS connection) reads its socket at
most once per `interval`, at multiples of `interval` on the event loop's clock. Because the
grid is the same for all of them, the exchange socket and the NATS acknowledgements of one
process are served in the same wake-up: on a small machine the wake-up itself costs as much
CPU as parsing dozens of messages (docs/BENCHMARKS.md, "Connector").
"""

from __future__ import annotations

import math


def next_tick(now: float, interval: float) -> float:
    """The next multiple of `interval` after `now` (a tolerance keeps a time that is a
    multiple up to float rounding from being answered with itself)."""
    return (math.floor(now / interval + 1e-6) + 1) * interval
