"""The runtime's one backoff rule and its one read-pacing grid."""

from __future__ import annotations

import random

import pytest

from runtime.backoff import Backoff
from runtime.pacing import next_tick


def test_the_ceiling_doubles_per_attempt_up_to_the_maximum() -> None:
    backoff = Backoff(0.25, 2.0)
    assert [backoff.ceiling(n) for n in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert backoff.ceiling(10_000) == 2.0  # no overflow however long the outage


def test_each_delay_is_jittered_over_the_upper_half_of_its_ceiling() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    for attempt in range(8):
        ceiling = backoff.ceiling(attempt)
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not a constant


def test_replicas_with_their_own_generators_spread_out() -> None:
    first, second = Backoff(1.0, 8.0), Backoff(1.0, 8.0)
    assert [first.delay(3) for _ in range(5)] != [second.delay(3) for _ in range(5)]


@pytest.mark.parametrize(("initial", "maximum"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_a_nonsensical_backoff_is_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(initial, maximum)


def test_the_pacing_grid_is_the_next_multiple_of_the_interval() -> None:
    assert next_tick(10.0011, 0.004) == pytest.approx(10.004)
    assert next_tick(10.004, 0.004) == pytest.approx(10.008)  # on a tick: the next one
    assert next_tick(0.0, 0.25) == pytest.approx(0.25)
