"""The one reconnect/retry delay rule of the runtime: capped exponential backoff with jitter.

Used by the NATS connection (`runtime/nats/connection.py`), the Kalshi WebSocket client and
the Kalshi REST source. Attempt `n` (0 for the first retry) waits a random time in the upper
half of `min(maximum, initial * 2**n)`: the ceiling doubles per failure up to `maximum`, and
the jitter spreads the replicas of a shard that lost the same server at the same moment, so
they do not all come back in one burst.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays for successive failed attempts; `initial` and `maximum` in seconds."""

    initial: float
    maximum: float
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum, got {self.initial} and {self.maximum}"
            )

    def ceiling(self, attempt: int) -> float:
        """The longest delay of attempt `attempt` (0-based): the capped exponential."""
        return min(self.maximum, self.initial * 2.0 ** min(max(attempt, 0), 62))

    def delay(self, attempt: int) -> float:
        """How long to wait before attempt `attempt`, jittered over the ceiling's upper half."""
        ceiling = self.ceiling(attempt)
        return self.rng.uniform(ceiling / 2, ceiling)
