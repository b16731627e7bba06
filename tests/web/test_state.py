"""The page's state on its own: what the history read, presence and acknowledged batches make
of it, what it keeps (bounded), and what a snapshot and an update say."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from facespace_bridge.client import LogEntry
from facespace_bridge.events import presence_event, sighting_event
from facespace_bridge.sinks.base import LastSeen
from facespace_bridge.sources.base import Batch
from facespace_bridge.web.state import HOURS, PageState

pytestmark = pytest.mark.timeout(30)

NOW = datetime(2023, 10, 25, 12, 30, 0, tzinfo=timezone.utc)
STATUS: dict[str, Any] = {
    "state": "RUNNING",
    "problems": [],
    "sinks": {},
    "sources": {},
    "cameras": {"Door": {"position": "2023-10-25T12:29:00Z", "count": 1, "lag_seconds": 3.0}},
    "backfill": None,
}


class Clocks:
    def __init__(self) -> None:
        self.wall = NOW.timestamp()
        self.mono = 1000.0


def state_at(recent: int = 300) -> tuple[PageState, Clocks]:
    clocks = Clocks()
    return PageState(600.0, recent=recent, clock=lambda: clocks.wall, monotonic=lambda: clocks.mono), clocks


def entry(camera: str, person: str, minutes_ago: float) -> LogEntry:
    at = (NOW - timedelta(minutes=minutes_ago)).replace(microsecond=0)
    return LogEntry(camera, person, at, f"{person} @ ...")


def batch(*entries: LogEntry) -> Batch:
    events = [sighting_event(e, 0) for e in entries]
    positions: dict[str, tuple[datetime, int]] = {}
    for e in entries:
        positions[e.camera_id] = max(positions.get(e.camera_id, (e.seen_at, 1)), (e.seen_at, 1))
    return Batch(events, positions)


def chart_counts(state: PageState) -> dict[str, int]:
    chart = state.snapshot(STATUS)["chart"]
    return {camera: sum(counts) for camera, counts in chart["cameras"].items()}


async def test_the_history_read_fills_chart_sightings_and_last_seen_and_is_not_counted_twice() -> None:
    state, _ = state_at()
    history = [entry("Door", "Ann", 90), entry("Door", "Bob", 30), entry("Yard", "Ann", 5)]
    for item in history:
        state.history_entry(item)
    state.history_done(
        {"Ann": LastSeen(history[2].seen_at, "Yard"), "Bob": LastSeen(history[1].seen_at, "Door")}
    )
    assert chart_counts(state) == {"Door": 2, "Yard": 1}
    snapshot = state.snapshot(STATUS)
    assert [(s["person"], s["camera"]) for s in snapshot["sightings"]] == [
        ("Ann", "Door"),
        ("Bob", "Door"),
        ("Ann", "Yard"),
    ]
    people = {p["name"]: p for p in snapshot["people"]}
    assert people["Ann"]["camera"] == "Yard" and people["Ann"]["home"] is True  # 5 min < away_after
    assert people["Bob"]["home"] is False and people["Bob"]["seen_at"] == "2023-10-25T12:00:00Z"  # 30 min
    assert snapshot["cameras"]["Door"]["last_hour"] == 1 and snapshot["cameras"]["Yard"]["last_hour"] == 1

    # A backfill or the tail's look-back publishes them again: skipped whole, by the positions.
    state.acknowledged(batch(*history[:2]))
    state.acknowledged(batch(history[2]))
    assert chart_counts(state) == {"Door": 2, "Yard": 1}
    # A batch with one old and one new sighting: only the new one counts.
    new = entry("Door", "Cid", 1)
    state.acknowledged(batch(history[1], new))
    assert chart_counts(state) == {"Door": 3, "Yard": 1}
    assert state.snapshot(STATUS)["sightings"][-1]["person"] == "Cid"
    state.close()


async def test_a_camera_the_history_did_not_have_counts_everything_recent() -> None:
    state, _ = state_at()
    state.history_entry(entry("Door", "Ann", 10))
    state.history_done({})
    state.acknowledged(batch(entry("Gate", "Bob", 20)))  # older than Door's newest, other camera
    assert chart_counts(state) == {"Door": 1, "Gate": 1}
    state.close()


async def test_what_it_keeps_is_bounded() -> None:
    state, clocks = state_at(recent=50)
    for minute in range(0, 30 * 60, 7):  # 30 hours, every 7 minutes, 4 cameras
        state.acknowledged(batch(*(entry(f"Cam{c}", f"P{minute % 13}", 30 * 60 - minute) for c in range(4))))
    assert len(state.recent) == 50
    assert len(state.minutes) <= 4 * (HOURS + 1) * 60
    # Sightings older than the chart's span plus an hour are not counted at all.
    assert min(minute for _, minute in state.minutes) >= "2023-10-24T11:30"
    chart = state.snapshot(STATUS)["chart"]
    assert len(chart["hours"]) == HOURS and chart["hours"][-1] == "2023-10-25T12:00:00Z"
    # A day later, with no sighting since, the old minutes are pruned.
    clocks.wall += 2 * 86400
    clocks.mono += 120
    state.tick(STATUS)
    assert state.minutes == {}
    state.close()


async def test_updates_say_only_what_changed_and_snapshots_leave_them_alone() -> None:
    state, _ = state_at()
    state.presence_now({"Door": ["Ann"]})
    first = state.update(STATUS)
    assert {"bridge", "cameras", "chart"} <= first.keys()
    assert state.update(STATUS) == {"type": "update"}  # nothing changed
    state.acknowledged(batch(entry("Door", "Ann", 1)))
    state.snapshot(STATUS)  # another page connecting changes nothing of the others' updates
    second = state.update(STATUS)
    assert [s["person"] for s in second["sightings"]] == ["Ann"]
    assert [p["name"] for p in second["people"]] == ["Ann"]
    assert "chart" in second and second["cameras"]["Door"]["last_hour"] == 1
    presence = presence_event("Door", ["Ann", "Bob"], ["Bob"], [], NOW)
    state.presence(Batch([presence], {}))
    third = state.update(STATUS)
    assert third["cameras"]["Door"]["in_view"] == ["Ann", "Bob"]
    assert {p["name"] for p in third["people"]} == {"Ann", "Bob"} and "sightings" not in third
    state.close()


async def test_a_backfill_gets_a_rate_and_the_time_left() -> None:
    state, clocks = state_at()
    status = {
        **STATUS,
        "backfill": {"from": "a", "to": "b", "done": False, "position": None, "progress": 0.0},
    }
    for step in range(11):
        state.acknowledged_events = step * 5000  # 10,000 events/s
        status["backfill"]["progress"] = step * 0.05  # 10 % a second
        state.tick(status)
        clocks.mono += 0.5
    backfill = state.snapshot(status)["bridge"]["backfill"]
    assert backfill["rate"] == pytest.approx(10_000)
    assert backfill["seconds_left"] == 5  # 50 % left at 10 %/s
    status["backfill"] = {**status["backfill"], "done": True, "progress": 1.0}
    state.tick(status)
    assert state.snapshot(status)["bridge"]["backfill"]["rate"] is None
    state.close()


async def test_a_forgotten_person_leaves_people_sightings_and_in_view_but_not_the_counts() -> None:
    state, _ = state_at()
    jose = unicodedata.normalize("NFD", "José")  # as the API sends it; forgotten as typed (NFC)
    history = [entry("Door", jose, 50), entry("Door", "Ann", 40), entry("Yard", jose, 30)]
    for item in history:
        state.history_entry(item)
    state.history_done(
        {jose: LastSeen(history[2].seen_at, "Yard"), "Ann": LastSeen(history[1].seen_at, "Door")}
    )
    state.presence_now({"Door": ["Ann", jose], "Yard": [jose]})
    state.acknowledged(batch(entry("Door", "Ann", 1), entry("Yard", jose, 1)))
    before = state.snapshot(STATUS)
    state.update(STATUS)  # an open page has everything so far

    state.forget(frozenset({"José", "Nobody"}))
    after = state.snapshot(STATUS)
    assert [p["name"] for p in after["people"]] == ["Ann"]
    assert after["people"][0] == next(p for p in before["people"] if p["name"] == "Ann")
    assert [s for s in after["sightings"]] == [s for s in before["sightings"] if s["person"] == "Ann"]
    assert {c: v["in_view"] for c, v in after["cameras"].items()} == {"Door": ["Ann"], "Yard": []}
    assert after["chart"] == before["chart"] and chart_counts(state) == {"Door": 3, "Yard": 2}
    assert after["cameras"]["Yard"]["last_hour"] == before["cameras"]["Yard"]["last_hour"] == 2
    # An open page is told once, by the name it shows, with the cameras' new lists.
    update = state.update(STATUS)
    assert update["forgotten"] == [jose]
    assert update["cameras"]["Door"]["in_view"] == ["Ann"] and "people" not in update
    assert "forgotten" not in state.update(STATUS)

    # Seen again: back, and an open page gets only the new sighting (none it had before).
    state.acknowledged(batch(entry("Door", jose, 0.5)))
    again = state.update(STATUS)
    assert [(s["person"], s["seen_at"]) for s in again["sightings"]] == [(jose, "2023-10-25T12:29:30Z")]
    assert [p["name"] for p in again["people"]] == [jose] and "forgotten" not in again
    # Forgotten with sightings not yet pushed, and seen again within one update: the page drops
    # them, then takes them back, with the new sightings only (none pushed before, none of theirs
    # from before the forget).
    state.acknowledged(batch(entry("Door", "Ann", 0.4), entry("Yard", jose, 0.4)))
    state.forget(frozenset({"José"}))
    state.acknowledged(batch(entry("Door", jose, 0.25)))
    both = state.update(STATUS)
    assert both["forgotten"] == [jose] and [p["name"] for p in both["people"]] == ["Ann", jose]
    assert [(s["person"], s["seen_at"]) for s in both["sightings"]] == [
        ("Ann", "2023-10-25T12:29:36Z"),
        (jose, "2023-10-25T12:29:45Z"),
    ]
    # Forgotten before any of their new sightings was pushed: none is.
    state.acknowledged(batch(entry("Yard", jose, 0.1)))
    state.forget(frozenset({"José"}))
    assert "sightings" not in state.update(STATUS)
    state.forget(frozenset({"Nobody"}))  # nobody it holds: nothing to tell
    assert "forgotten" not in state.update(STATUS)
    state.close()
