"""The one backoff rule (facespace_bridge/backoff.py)."""

from __future__ import annotations

import pytest

from facespace_bridge.backoff import Backoff


def test_doubles_from_first_up_to_longest_and_starts_over_after_a_success() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.failed() for _ in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    backoff.succeeded()
    assert backoff.failed() == 1.0


def test_a_first_delay_below_one_second_still_doubles() -> None:
    backoff = Backoff(0.2, 1.0)
    assert [backoff.failed() for _ in range(4)] == pytest.approx([0.2, 0.4, 0.8, 1.0])


def test_bad_bounds_are_refused() -> None:
    for first, longest in [(0, 1), (2, 1), (-1, 5)]:
        with pytest.raises(ValueError):
            Backoff(first, longest)
