"""Entry parsing: odd names parse, bad entries are reported with a reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from facespace_bridge.client import BadEntry, LogEntry, format_entry, parse_entry

SEEN = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("raw", "person"),
    [
        ("Alice @ 00:05:22 23/10/23", "Alice"),
        ("Bob @ Home @ 00:05:22 23/10/23", "Bob @ Home"),
        ("Zoë Ñúñez-李 @ 00:05:22 23/10/23", "Zoë Ñúñez-李"),
        ("  Mary   Ann  @ 00:05:22 23/10/23", "Mary   Ann"),
        ("Eve@00:05:22 23/10/23", "Eve"),
        ("Eve  @  00:05:22   23/10/23  ", "Eve"),
        ("@ @ 00:05:22 23/10/23", "@"),
    ],
)
def test_names_parse(raw: str, person: str) -> None:
    entry = parse_entry("Camera1", raw)
    assert entry == LogEntry("Camera1", person, SEEN, raw)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("Alice 00:05:22 23/10/23", "not '<Name>"),
        (" @ 00:05:22 23/10/23", "not '<Name>"),
        ("Alice @ 00:05:22 31/02/23", "impossible timestamp"),
        ("Alice @ 25:05:22 23/10/23", "impossible timestamp"),
        ("Alice @ 00:05 23/10/23", "not '<Name>"),
        (42, "entry is int"),
        (None, "entry is NoneType"),
    ],
)
def test_bad_entries_are_reported_not_raised(raw: object, reason: str) -> None:
    entry = parse_entry("Camera1", raw)
    assert isinstance(entry, BadEntry)
    assert entry.raw == raw and entry.camera_id == "Camera1"
    assert reason in entry.reason


def test_format_and_parse_round_trip() -> None:
    raw = format_entry("Dana O'Neil @ Work", SEEN)
    assert raw == "Dana O'Neil @ Work @ 00:05:22 23/10/23"
    assert parse_entry("C", raw) == LogEntry("C", "Dana O'Neil @ Work", SEEN, raw)
