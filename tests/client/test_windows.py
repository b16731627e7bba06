"""Window planning: spans aim at the target, shrink at once, grow geometrically, stay whole minutes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from facespace_bridge.client._windows import GROWTH, WindowPlanner

MIN = timedelta(minutes=1)


def test_shrinks_to_the_observed_rate_when_a_window_was_too_big() -> None:
    planner = WindowPlanner(target=1000, span=60 * MIN)
    planner.observed(60 * MIN, entries=6000, body_bytes=6000 * 40)
    assert planner.span == 10 * MIN


def test_grows_geometrically_when_empty_or_sparse() -> None:
    planner = WindowPlanner(target=1000, span=10 * MIN)
    planner.observed(10 * MIN, entries=0, body_bytes=2)
    assert planner.span == 10 * GROWTH * MIN
    planner.observed(planner.span, entries=1, body_bytes=40)
    assert planner.span == 10 * GROWTH * GROWTH * MIN  # capped growth, not the 1000× the rate suggests


def test_aims_at_the_target_when_the_rate_is_known() -> None:
    planner = WindowPlanner(target=1000, span=10 * MIN)
    planner.observed(10 * MIN, entries=500, body_bytes=500 * 40)
    assert planner.span == 20 * MIN


def test_never_below_one_whole_minute() -> None:
    planner = WindowPlanner(target=10, span=timedelta(seconds=30))
    assert planner.span == MIN
    planner.observed(MIN, entries=100_000, body_bytes=4_000_000)
    assert planner.span == MIN
    planner.observed(7 * MIN, entries=20, body_bytes=800)
    assert planner.span % MIN == timedelta(0)


def test_refused_replies_shrink_by_their_announced_size_or_by_eight() -> None:
    planner = WindowPlanner(target=1000, span=800 * MIN, bytes_per_entry=50)
    planner.refused(800 * MIN, body_bytes=50 * 80_000)  # 80k entries in 800 min: 10 min for 1000
    assert planner.span == 10 * MIN
    planner.refused(800 * MIN, body_bytes=None)
    assert planner.span == 100 * MIN
    assert planner.oversized == 2


def test_byte_cap_follows_the_observed_entry_size() -> None:
    planner = WindowPlanner(target=1000, bytes_per_entry=40)
    small = planner.byte_cap
    planner.observed(10 * MIN, entries=100, body_bytes=100 * 400)
    assert planner.byte_cap > small


def test_target_must_be_positive() -> None:
    with pytest.raises(ValueError, match="target"):
        WindowPlanner(target=0)
