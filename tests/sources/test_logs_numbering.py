"""A tail or backfill gives each sighting the same id a replay does (DESIGN §3)."""

import random
from datetime import datetime, timedelta, timezone

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.client import BadEntry, LogEntry, parse_entry
from facespace_bridge.events import deadletter_event, listing_events, sighting_event
from facespace_bridge.sources.logs import LogsSource, _Numbering

LISTING = [
    parse_entry("Cam", raw)
    for raw in [
        "Alice @ 10:00:01 01/02/23",
        "Bob @ 10:00:01 01/02/23",
        "Alice @ 10:00:01 01/02/23",  # the same person twice in one second: k = 1
        "not an entry",
        "Alice @ 10:00:02 01/02/23",
    ]
] + [parse_entry("Other", "Alice @ 10:00:01 01/02/23")]


def test_source_numbering_matches_the_replay_listing():
    source = LogsSource(client=None)  # type: ignore[arg-type] - _fresh needs no client
    items = list(source._fresh(LISTING, _Numbering(), Checkpoint()))
    replayed = list(listing_events(LISTING))
    assert [event.event_id for event, _ in items] == [e.event_id for e in replayed]
    assert [event.payload for event, _ in items] == [e.payload for e in replayed]


def test_positions_count_entries_per_camera_and_second():
    numbering = _Numbering()
    numbers = [numbering.number(e) for e in LISTING if not hasattr(e, "reason")]
    assert [(k, count) for k, (_, count) in numbers] == [(0, 1), (0, 2), (1, 3), (0, 1), (0, 1)]


def _fresh_per_entry(entries, resume):
    """The backfill's selection written plainly, one entry at a time (the reference)."""
    numbering = _Numbering()
    for entry in entries:
        floor = resume.position(entry.camera_id)
        if isinstance(entry, BadEntry):
            at = numbering.last(entry.camera_id)
            if at is None or floor is None or at >= floor:
                yield deadletter_event(entry.camera_id, entry.raw, entry.reason, "logs").event_id, at or floor
            continue
        k, position = numbering.number(entry)
        if floor is None or position > floor:
            yield sighting_event(entry, k).event_id, position


def test_fresh_numbers_runs_like_one_entry_at_a_time_in_any_order():
    # Runs of a camera's second, cameras interleaved, seconds going back, junk between them,
    # resume positions before, inside and after the listing: the run-wise numbering of the
    # backfill must select and place exactly what the per-entry numbering does.
    rng = random.Random(5)
    base = datetime(2023, 2, 1, 10, 0, tzinfo=timezone.utc)
    for trial in range(200):
        entries: list[LogEntry | BadEntry] = []
        for _ in range(rng.randrange(1, 60)):
            camera = rng.choice("ABC")
            if rng.random() < 0.1:
                entries.append(BadEntry(camera, "junk", "does not parse"))
                continue
            seen_at = base + timedelta(seconds=rng.randrange(6))
            for _ in range(rng.randrange(1, 4)):
                entries.append(LogEntry(camera, rng.choice(["Al", "Bo"]), seen_at, "raw"))
        if trial % 3 == 0:  # the usual shape: per camera, in time order
            entries.sort(key=lambda e: (e.camera_id, getattr(e, "seen_at", base)))

        def moment(lo: int, hi: int) -> datetime:
            return base + timedelta(seconds=rng.randrange(lo, hi))

        cameras = {c: Position(moment(-1, 7), rng.randrange(3)) for c in "AB"}
        resume = Checkpoint(cameras=cameras, through=moment(-1, 3) if trial % 2 else None)
        numbering = _Numbering()
        source = LogsSource(client=None)  # type: ignore[arg-type]
        fresh = [(event.event_id, at) for event, at in source._fresh(entries, numbering, resume)]
        assert fresh == list(_fresh_per_entry(entries, resume)), trial
        reference = _Numbering()
        for entry in entries:
            if isinstance(entry, LogEntry):
                reference.number(entry)
        assert numbering.newest() == reference.newest()
