"""A tail or backfill gives each sighting the same id a replay does (DESIGN §3)."""

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.client import parse_entry
from facespace_bridge.events import listing_events
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
