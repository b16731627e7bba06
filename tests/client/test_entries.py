"""Entry parsing: odd names parse, bad entries are reported with a reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from facespace_bridge.client import BadEntry, LogEntry, format_entry, parse_entry
from facespace_bridge.client.entries import Second, read_listing, second_of
from facespace_bridge.events import parse_rfc3339

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


# -- the one split and the one cache of seconds ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Alice @ 10:20:30 23/10/23", ("Alice", "2023-10-23T10:20:30Z")),
        ("  Jean @ Paul  @ 00:00:00 01/01/00", ("Jean @ Paul", "2000-01-01T00:00:00Z")),
        ("Zoë @ 23:59:59 31/12/99", ("Zoë", "2099-12-31T23:59:59Z")),
        (" @ 10:20:30 23/10/23", None),  # no name: parse_entry says why
        ("Alice @ 10:20:30  23/10/23", None),  # not canonical: parse_entry reads it
        ("Alice@10:20:30 23/10/23", None),
        ("Alice @ 10:20:60 23/10/23", None),
        ("Alice @ 10:60:00 23/10/23", None),
        ("Alice @ 24:00:00 23/10/23", None),
        ("Alice @ 10:20:30 29/02/23", None),
        ("Alice @ 10:20:30 29/02/24", ("Alice", "2024-02-29T10:20:30Z")),
        ("Alice @ 10:2x:30 23/10/23", None),
        ("Alice @ 10:20:3x 23/10/23", None),
        ("Alice @ 10:20:30 23-10-23", None),
        (42, None),
        (None, None),
    ],
)
def test_read_listing_gives_the_name_and_second_of_the_canonical_form_only(
    raw: object, canonical: tuple[str, str] | None
) -> None:
    (found,) = read_listing([raw])
    assert (None if found is None else (found[0], found[1].text)) == canonical
    if found is not None:
        assert found[1] == Second.of(parse_rfc3339(canonical[1]))  # type: ignore[index]


@pytest.mark.parametrize(
    ("stamp", "seen_at"),
    [
        ("10:20:30 31/02/23", None),
        ("25:00:00 01/01/23", None),
        ("١٠:20:30 23/10/23", datetime(2023, 10, 23, 10, 20, 30, tzinfo=timezone.utc)),  # Arabic-Indic digits
        ("1:20:30 23/10/23", datetime(2023, 10, 23, 1, 20, 30, tzinfo=timezone.utc)),  # not canonical, valid
    ],
)
def test_second_of_refuses_what_is_not_a_canonical_stamp(stamp: str, seen_at: datetime | None) -> None:
    assert second_of(stamp) is None
    entry = parse_entry("C", f"Alice @ {stamp}")  # the slow path decides, with a reason when bad
    assert (entry.seen_at if isinstance(entry, LogEntry) else None) == seen_at


def test_second_of_agrees_with_a_datetime_and_is_read_once() -> None:
    at = datetime(2023, 10, 23, 10, 20, 30, tzinfo=timezone.utc)
    second = second_of("10:20:30 23/10/23")
    assert second == Second.of(at) == Second(at, "2023-10-23T10:20:30Z", b"2023-10-23T10:20:30Z")
    assert second_of("10:20:30 23/10/23") is second  # cached: every reader shares it
    entry = parse_entry("C", "Alice @ 10:20:30 23/10/23")
    assert isinstance(entry, LogEntry) and entry.seen_at is second.at


def test_second_of_a_datetime_drops_sub_seconds_and_converts_to_utc() -> None:
    from datetime import timedelta

    at = datetime(2023, 10, 23, 5, 20, 30, 999_999, tzinfo=timezone(timedelta(hours=-5)))
    assert Second.of(at).text == "2023-10-23T10:20:30Z"
    with pytest.raises(ValueError, match="naive"):
        Second.of(datetime(2023, 10, 23))
