"""Event builders: canonical payloads, deterministic ids, dead letters."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest

from facespace_bridge.client.entries import BadEntry, LogEntry, parse_entry
from facespace_bridge.events import (
    DEADLETTER_SCHEMA,
    PRESENCE_SCHEMA,
    SIGHTING_SCHEMA,
    Event,
    deadletter_event,
    parse_rfc3339,
    presence_event,
    seen_at_text,
    sighting_event,
)
from facespace_bridge.schemas import validate
from facespace_bridge.sources.listing import number_listing

UTC = timezone.utc
T = datetime(2023, 10, 23, 0, 5, 22, tzinfo=UTC)


def _entry(person: str = "Alice", camera: str = "Camera1", at: datetime = T) -> LogEntry:
    return LogEntry(camera, person, at, f"{person} @ {at:%H:%M:%S %d/%m/%y}")


def _expected_id(*parts: object) -> str:
    """The documented id: sha256 of the compact UTF-8 JSON array, first 32 hex digits.

    Computed with the standard library's json, independently of the builders' orjson.
    """
    text = json.dumps(list(parts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _compact(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# -- time --------------------------------------------------------------------------------------------


def test_seen_at_text_is_utc_z_at_second_resolution() -> None:
    assert seen_at_text(T) == "2023-10-23T00:05:22Z"
    assert seen_at_text(T.replace(microsecond=999_999)) == "2023-10-23T00:05:22Z"  # dropped, not rounded
    plus_two = timezone(timedelta(hours=2))
    assert seen_at_text(datetime(2023, 10, 23, 2, 5, 22, tzinfo=plus_two)) == "2023-10-23T00:05:22Z"
    assert seen_at_text(datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)) == "0999-01-02T03:04:05Z"


def test_seen_at_text_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        seen_at_text(datetime(2023, 10, 23, 0, 5, 22))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-10-23T00:05:22Z", T),
        ("2023-10-23t00:05:22z", T),
        ("2023-10-23 00:05:22Z", T),
        ("2023-10-23T02:05:22+02:00", T),
        ("2023-10-23T00:05:22.5Z", T.replace(microsecond=500_000)),
        ("2023-10-23T00:05:22.123456789Z", T.replace(microsecond=123_456)),
    ],
)
def test_parse_rfc3339(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected and parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["2023-10-23T00:05:22", "yesterday", "", "2023-13-45T99:00:00Z", "2023-10-23"]
)
def test_parse_rfc3339_rejects_what_is_not_rfc3339(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339(text)


def test_seen_at_round_trips() -> None:
    for hours in range(0, 24 * 400, 37):
        dt = T + timedelta(hours=hours, seconds=hours % 60)
        assert parse_rfc3339(seen_at_text(dt)) == dt


# -- sightings ---------------------------------------------------------------------------------------


def test_sighting_payload_is_the_documented_structure() -> None:
    event = sighting_event(_entry("Alice"), 0)
    event_id = _expected_id("sighting", "Camera1", "Alice", "2023-10-23T00:05:22Z", 0)
    expected = {
        "schema": "facespace.sighting/v1",
        "event_id": event_id,
        "camera_id": "Camera1",
        "person": "Alice",
        "seen_at": "2023-10-23T00:05:22Z",
        "source": "logs",
    }
    assert event.payload == _compact(expected)  # key order and bytes, not just equal dicts
    assert dict(event.fields) == expected
    assert (event.schema, event.event_id, event.camera_id, event.kind) == (
        SIGHTING_SCHEMA,
        event_id,
        "Camera1",
        "sighting",
    )
    assert validate(event.payload) == []


@pytest.mark.parametrize(
    "person",
    [
        "Bob @ Home",
        "Zoë Ångström",
        "李小龙",
        "Ann  Marie",
        "emoji 😀",
        'quote " and \\ backslash',
        "tab\there",
    ],
)
def test_odd_names_give_valid_payloads_with_the_documented_id(person: str) -> None:
    event = sighting_event(_entry(person, camera="Hall / Door #2"), 1)
    assert event.kind == "sighting", event.fields
    assert event.fields["person"] == person
    assert event.event_id == _expected_id("sighting", "Hall / Door #2", person, "2023-10-23T00:05:22Z", 1)
    assert orjson.loads(event.payload) == event.fields


def test_name_with_at_sign_is_parsed_and_kept_whole() -> None:
    entry = parse_entry("Camera1", "Bob @ Home @ 00:05:22 23/10/23")
    assert isinstance(entry, LogEntry)
    event = sighting_event(entry, 0)
    assert event.fields["person"] == "Bob @ Home"
    assert event.event_id != sighting_event(_entry("Bob"), 0).event_id


def test_spacing_of_the_raw_entry_does_not_change_the_payload() -> None:
    # The raw text is not part of the payload: the same sighting gives the same bytes.
    tidy = parse_entry("Camera1", "Alice @ 00:05:22 23/10/23")
    loose = parse_entry("Camera1", "  Alice   @  00:05:22   23/10/23 ")
    assert isinstance(tidy, LogEntry) and isinstance(loose, LogEntry)
    assert sighting_event(tidy, 0).payload == sighting_event(loose, 0).payload


def test_id_encoding_is_unambiguous() -> None:
    # Splitting the same characters differently between fields must not collide.
    a = sighting_event(_entry("b c", camera="a"), 0)
    b = sighting_event(_entry("c", camera="a b"), 0)
    c = sighting_event(_entry("a", camera="Camera1"), 11)
    d = sighting_event(_entry("a", camera="Camera1"), 1)
    assert len({a.event_id, b.event_id, c.event_id, d.event_id}) == 4


def test_same_entry_same_id_and_bytes_across_builds() -> None:
    first = sighting_event(_entry("Zoë"), 2)
    second = sighting_event(LogEntry("Camera1", "Zoë", datetime(2023, 10, 23, 0, 5, 22, tzinfo=UTC), "x"), 2)
    assert first == second
    assert first.payload == second.payload


_CHILD = """
import sys
from datetime import datetime, timezone
from facespace_bridge.client.entries import parse_entry
from facespace_bridge.sources.listing import number_listing
raws = ["Zoë @ 00:05:22 23/10/23", "Bob @ Home @ 00:05:22 23/10/23", "Zoë @ 00:05:22 23/10/23", "??"]
for batch in number_listing({"Cam 1": raws}, None, None):
    for event in batch.events:
        sys.stdout.buffer.write(event.payload + b"\\n")
"""


def test_bytes_are_identical_in_separate_processes() -> None:
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}  # set order must not leak into payloads
        done = subprocess.run(
            [sys.executable, "-c", _CHILD], capture_output=True, check=True, env=env, timeout=60
        )
        outputs.add(done.stdout)
    assert len(outputs) == 1
    lines = outputs.pop().splitlines()
    assert len(lines) == 4
    raws = ["Zoë @ 00:05:22 23/10/23", "Bob @ Home @ 00:05:22 23/10/23", "Zoë @ 00:05:22 23/10/23", "??"]
    here = [e.payload for b in number_listing({"Cam 1": raws}, None, None) for e in b.events]
    assert lines == here


def test_negative_k_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        sighting_event(_entry(), -1)


def test_invalid_sighting_becomes_a_dead_letter() -> None:
    event = sighting_event(LogEntry("Camera1", "", T, " @ 00:05:22 23/10/23"), 0)
    assert event.kind == "deadletter"
    assert event.fields["source"] == "validation"
    assert event.fields["failed_schema"] == SIGHTING_SCHEMA
    assert "/person" in event.fields["reason"]
    assert orjson.loads(event.fields["raw"])["person"] == ""
    assert validate(event.payload) == []


# -- presence ----------------------------------------------------------------------------------------


def test_presence_payload_is_sorted_and_deterministic() -> None:
    at = T + timedelta(microseconds=250)
    event = presence_event("Camera1", {"Bob", "Alice", "Zoë"}, ["Zoë", "Alice"], frozenset({"Carl"}), at)
    expected = {
        "schema": "facespace.presence/v1",
        "event_id": _expected_id("presence", "Camera1", "2023-10-23T00:05:22Z", ["Alice", "Bob", "Zoë"]),
        "camera_id": "Camera1",
        "people": ["Alice", "Bob", "Zoë"],
        "arrived": ["Alice", "Zoë"],
        "departed": ["Carl"],
        "observed_at": "2023-10-23T00:05:22Z",
    }
    assert event.payload == _compact(expected)
    assert (event.schema, event.kind, event.camera_id) == (PRESENCE_SCHEMA, "presence", "Camera1")
    again = presence_event("Camera1", ["Zoë", "Bob", "Alice", "Bob"], {"Alice", "Zoë"}, ["Carl"], T)
    assert again.payload == event.payload


def test_presence_of_an_empty_camera_is_valid() -> None:
    event = presence_event("Camera1", [], [], ["Alice"], T)
    assert event.kind == "presence" and event.fields["people"] == []


@pytest.mark.parametrize("people", [["Alice", 1], [["nested"]], [None]])
def test_presence_with_names_that_are_not_strings_is_a_dead_letter(people: list[Any]) -> None:
    event = presence_event("Camera1", people, [], [], T)
    assert event.kind == "deadletter", event.fields
    assert event.fields["camera_id"] == "Camera1"
    assert validate(event.payload) == []


# -- dead letters ------------------------------------------------------------------------------------


def test_dead_letter_of_a_bad_entry() -> None:
    bad = parse_entry("Camera1", "Alice at noon")
    assert isinstance(bad, BadEntry)
    event = deadletter_event(bad.camera_id, bad.raw, bad.reason, source="logs")
    expected = {
        "schema": DEADLETTER_SCHEMA,
        "event_id": _expected_id("deadletter", "Camera1", "Alice at noon", bad.reason),
        "camera_id": "Camera1",
        "source": "logs",
        "raw": "Alice at noon",
        "reason": bad.reason,
    }
    assert event.payload == _compact(expected)
    assert (event.kind, event.camera_id) == ("deadletter", "Camera1")
    assert validate(event.payload) == []


def test_dead_letter_json_encodes_raws_that_are_not_strings() -> None:
    event = deadletter_event("Camera1", {"name": ["A", 1]}, "entry is dict, not a string", "logs")
    assert event.fields["raw"] == '{"name":["A",1]}'
    assert deadletter_event("Camera1", 42, "why", "logs").fields["raw"] == "42"
    assert deadletter_event("Camera1", None, "why", "logs").fields["raw"] == "null"


@pytest.mark.parametrize(
    ("camera_id", "raw", "reason", "failed_schema"),
    [
        (None, "x", "why", None),
        ("Camera1", "lone \ud800 surrogate", "line one\nline two", None),
        ("Camera1", b"\xff\xfe bytes", "", "facespace.sighting/v1"),
        ("Camera1", object(), "why", "not a schema id"),
        ("Cam\udfff", {1: {2}}, "why", None),
    ],
)
def test_dead_letters_always_validate(
    camera_id: str | None, raw: object, reason: str, failed_schema: str | None
) -> None:
    event = deadletter_event(camera_id, raw, reason, "logs", failed_schema)
    assert validate(event.payload) == [], event.fields
    assert "\n" not in event.fields["reason"]
    assert event.camera_id == (event.fields["camera_id"] or "")


def test_dead_letter_without_camera_is_null_in_the_payload() -> None:
    event = deadletter_event(None, "x", "why", "realtime")
    assert event.fields["camera_id"] is None and event.camera_id == ""


def test_dead_letter_keeps_a_bad_failed_schema_in_the_reason() -> None:
    event = deadletter_event("C", "x", "why", "validation", "nonsense")
    assert "failed_schema" not in event.fields
    assert event.fields["reason"] == "why (schema 'nonsense')"


def test_every_second_the_api_can_name_gives_a_valid_seen_at() -> None:
    # The encoder validates pairs, not seconds: a second's text must be valid by construction,
    # whichever way it was made (from a datetime, or sliced from the API's stamp).
    import random

    from facespace_bridge.client.entries import Second, second_of
    from facespace_bridge.events import SIGHTINGS, SightingPair

    rng = random.Random(3)
    start = datetime(2000, 1, 1, tzinfo=UTC)
    span = int((datetime(2100, 1, 1, tzinfo=UTC) - start).total_seconds())
    moments = [start, datetime(2099, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2024, 2, 29, tzinfo=UTC)]
    moments += [start + timedelta(seconds=rng.randrange(span)) for _ in range(2000)]
    pair = SIGHTINGS.pair("Camera1", "Alice")
    assert isinstance(pair, SightingPair)
    for moment in moments:
        second = second_of(f"{moment:%H:%M:%S %d/%m/%y}")
        text = seen_at_text(moment)
        assert second == Second.of(moment) == Second(moment, text, text.encode())
        event = SIGHTINGS.event(pair, second, 0)
        assert validate(event.payload) == [], moment
        assert orjson.loads(event.payload)["seen_at"] == seen_at_text(moment)


# -- what sinks read without decoding ---------------------------------------------------------------


def _attributes_from_payload(event: Event) -> dict[str, Any]:
    """What the event's attributes must say, read back from its payload."""
    fields = event.fields
    when = fields.get("seen_at", fields.get("observed_at"))
    return {
        "time": when,
        "seen_at": None if when is None else parse_rfc3339(when),
        "person": fields.get("person"),
        "people": None if "people" not in fields else tuple(fields["people"]),
        "source": fields["source"] if event.kind == "deadletter" else None,
    }


@pytest.mark.parametrize(
    "event",
    [
        sighting_event(_entry("Zoë", at=T), 3),
        sighting_event(_entry("Alice", "Camera 2", T + timedelta(days=400)), 0),
        presence_event("Camera1", {"Bob", "Alice"}, ["Alice"], [], T + timedelta(microseconds=999_999)),
        presence_event("Camera1", [], [], ["Alice"], T.astimezone(timezone(timedelta(hours=-5)))),
        deadletter_event("Camera1", "Alice at noon", "not an entry", "logs"),
        deadletter_event(None, {"people": [1]}, "names must be strings", "realtime"),
        sighting_event(LogEntry("Camera1", "", T, " @ 00:05:22 23/10/23"), 0),  # a dead letter
        presence_event("Camera1", [None], [], [], T),  # a dead letter
    ],
    ids=lambda event: event.kind,
)
def test_event_attributes_say_what_the_payload_says(event: Event) -> None:
    # Sinks route and keep state by these (the MQTT sink, Home Assistant, the dead-letter
    # metric) instead of decoding the payload: they must agree with it.
    attributes = {name: getattr(event, name) for name in ("time", "seen_at", "person", "people", "source")}
    assert attributes == _attributes_from_payload(event)
