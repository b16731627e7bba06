"""Events: what the bridge publishes. Sighting / Presence / DeadLetter payloads and their ids.

See DESIGN §3. Every payload is canonical orjson bytes that validate against the
schema file its `schema` field names; the same sighting always gives the same bytes.

Canonical means: keys in the fixed order the builders write them, compact orjson
output, timestamps as `YYYY-MM-DDTHH:MM:SSZ` (UTC, seconds), no ingest time.

Event ids are the first 32 hex digits (128 bits) of sha256 over the compact JSON text
(UTF-8, non-ASCII unescaped) of an array that starts with the event kind:

    sighting    ["sighting", camera_id, person, seen_at, k]
    presence    ["presence", camera_id, observed_at, people]
    deadletter  ["deadletter", camera_id, raw, reason]

A JSON array is an unambiguous encoding (no separator a name could contain), and the
kind keeps ids of different kinds apart. The schema version is left out on purpose, so
a new schema version does not change ids.

Every builder validates its payload (about 1 µs, bench/validators.py); a payload that
fails comes back as a dead letter naming the reason — never as an exception.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from facespace_bridge.client.entries import BadEntry, LogEntry
from facespace_bridge.schemas import SCHEMA_ID, errors_against

log = logging.getLogger(__name__)

SIGHTING_SCHEMA = "facespace.sighting/v1"
PRESENCE_SCHEMA = "facespace.presence/v1"
DEADLETTER_SCHEMA = "facespace.deadletter/v1"

EVENT_ID_HEX_DIGITS = 32


@dataclass(frozen=True, slots=True)
class Event:
    """One publishable event, already serialised and validated."""

    schema: str  # e.g. "facespace.sighting/v1", names schemas/sighting/v1.json
    event_id: str  # deterministic: consumers deduplicate on it
    camera_id: str  # the partition key: one camera's events stay in order ("" when unknown)
    payload: bytes  # canonical orjson bytes of `fields`
    fields: Mapping[str, Any]  # the decoded payload, for sinks that route on fields (MQTT)

    @property
    def kind(self) -> str:
        """`sighting`, `presence` or `deadletter`."""
        return schema_kind(self.schema)


_KINDS: dict[str, str] = {}


def schema_kind(schema: str) -> str:
    """The kind of events of a schema: `facespace.sighting/v1` -> `sighting`."""
    kind = _KINDS.get(schema)  # asked for every event on the hot path: cached
    if kind is None:
        kind = _KINDS[schema] = schema.split("/", 1)[0].removeprefix("facespace.")
    return kind


# -- time ------------------------------------------------------------------------------------------


# Timestamps repeat a lot (one second holds many sightings; a listing is sorted): cache the text.
_TEXT_CACHE: dict[datetime, str] = {}
_TEXT_CACHE_MAX = 65_536


def seen_at_text(dt: datetime) -> str:
    """RFC 3339 in UTC with `Z`, second resolution (sub-seconds are dropped, not rounded)."""
    text = _TEXT_CACHE.get(dt)
    if text is None:
        text = _utc_text(dt)
        if len(_TEXT_CACHE) >= _TEXT_CACHE_MAX:
            _TEXT_CACHE.clear()
        _TEXT_CACHE[dt] = text
    return text


def _utc_text(dt: datetime) -> str:
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {dt.isoformat()}: event times must be timezone-aware")
    if offset:
        dt = dt.astimezone(timezone.utc)
    return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}Z"


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 timestamp (`Z`/`z` or an offset; fractions allowed) as an aware UTC datetime.

    Raises ValueError for anything else, including a timestamp without an offset.
    """
    stamp = text.strip()
    if stamp[-1:] in ("Z", "z"):
        stamp = stamp[:-1] + "+00:00"
    if len(stamp) < 11 or stamp[10] not in "Tt ":
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    stamp = stamp[:10] + "T" + stamp[11:]
    # Python 3.10's fromisoformat takes only 3 or 6 fraction digits: pad or cut to 6.
    head, dot, rest = stamp.partition(".")
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        stamp = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}") from None
    if parsed.utcoffset() is None:
        raise ValueError(f"RFC 3339 timestamp without an offset: {text!r}")
    return parsed.astimezone(timezone.utc)


# -- ids and serialisation -------------------------------------------------------------------------


def _event_id(parts: list[Any]) -> str:
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:EVENT_ID_HEX_DIGITS]


def _finish(schema: str, event_id: str, camera_id: str, fields: dict[str, Any]) -> Event:
    """Serialise and validate; a payload that fails becomes a dead letter with the reason."""
    try:
        payload = orjson.dumps(fields)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return deadletter_event(camera_id, fields, f"cannot serialise: {exc}", "validation", schema)
    errors = errors_against(schema, fields)
    if errors:
        return deadletter_event(camera_id, payload.decode(), "; ".join(errors), "validation", schema)
    return Event(schema, event_id, camera_id, payload, fields)


# -- sightings -------------------------------------------------------------------------------------


def sighting_event(entry: LogEntry, k: int, source: str = "logs") -> Event:
    """The sighting event of a parsed `/logs` entry.

    `k` counts earlier identical (camera, person, second) entries in the API's order (see
    `OccurrenceCounter`). Keep `source` at "logs" for tail, backfill and replay alike, so the
    bytes of one sighting do not depend on how it was read.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    seen_at = seen_at_text(entry.seen_at)
    try:
        event_id = _event_id(["sighting", entry.camera_id, entry.person, seen_at, k])
    except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a name: not UTF-8
        return deadletter_event(entry.camera_id, entry.raw, f"cannot encode: {exc}", source, SIGHTING_SCHEMA)
    fields = {
        "schema": SIGHTING_SCHEMA,
        "event_id": event_id,
        "camera_id": entry.camera_id,
        "person": entry.person,
        "seen_at": seen_at,
        "source": source,
    }
    return _finish(SIGHTING_SCHEMA, event_id, entry.camera_id, fields)


class OccurrenceCounter:
    """Assigns `k` to the entries of one listing (one window of `/logs`), in the API's order.

    k is how many identical (camera, person, second) entries came before in the listing.
    Use one counter per listing: windows are minute-aligned, so a second never spans two
    listings, and a resume in the middle of a second re-reads the whole second, so its k
    values come out the same as the first time. Entries need not be sorted by time.
    """

    def __init__(self) -> None:
        # A plain dict: Counter's __missing__ would run in Python for almost every entry.
        self._seen: dict[tuple[str, str, datetime], int] = {}

    def number(self, entry: LogEntry) -> int:
        """k of this entry; counts it for the entries that follow."""
        key = (entry.camera_id, entry.person, entry.seen_at)
        k = self._seen.get(key, 0)
        self._seen[key] = k + 1
        return k


def number_sightings(entries: Iterable[LogEntry]) -> Iterator[tuple[LogEntry, int]]:
    """Each entry of one listing with its k."""
    counter = OccurrenceCounter()
    for entry in entries:
        yield entry, counter.number(entry)


def listing_events(entries: Iterable[LogEntry | BadEntry], source: str = "logs") -> Iterator[Event]:
    """The events of one listing: a sighting per good entry, a dead letter per bad one, in order."""
    counter = OccurrenceCounter()
    for entry in entries:
        if isinstance(entry, BadEntry):
            yield deadletter_event(entry.camera_id, entry.raw, entry.reason, source)
        else:
            yield sighting_event(entry, counter.number(entry), source)


# -- presence --------------------------------------------------------------------------------------


def _sorted_names(names: Iterable[str]) -> list[str]:
    return sorted(set(names))


def presence_event(
    camera_id: str,
    people: Iterable[str],
    arrived: Iterable[str],
    departed: Iterable[str],
    observed_at: datetime,
) -> Event:
    """A camera's presence: everyone seen now, who arrived and who left since its last event.

    Name lists are deduplicated and sorted, so the payload does not depend on set order.
    """
    observed = seen_at_text(observed_at)
    people, arrived, departed = list(people), list(arrived), list(departed)
    try:
        people_sorted = _sorted_names(people)
        arrived_sorted = _sorted_names(arrived)
        departed_sorted = _sorted_names(departed)
    except TypeError:  # a name that is not a string (unhashable or unorderable) came from the API
        raw = {"people": people, "arrived": arrived, "departed": departed, "observed_at": observed}
        return deadletter_event(camera_id, raw, "presence names must be strings", "realtime", PRESENCE_SCHEMA)
    try:
        event_id = _event_id(["presence", camera_id, observed, people_sorted])
    except orjson.JSONEncodeError as exc:  # a name or camera id that is not valid UTF-8
        raw = {"people": people, "arrived": arrived, "departed": departed, "observed_at": observed}
        return deadletter_event(camera_id, raw, f"cannot encode: {exc}", "realtime", PRESENCE_SCHEMA)
    fields = {
        "schema": PRESENCE_SCHEMA,
        "event_id": event_id,
        "camera_id": camera_id,
        "people": people_sorted,
        "arrived": arrived_sorted,
        "departed": departed_sorted,
        "observed_at": observed,
    }
    return _finish(PRESENCE_SCHEMA, event_id, camera_id, fields)


# -- dead letters ----------------------------------------------------------------------------------


def _raw_text(raw: object) -> str:
    """The raw input as text: strings as they are, anything else JSON-encoded (repr as a last resort)."""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, (bytes, bytearray)):
        return bytes(raw).decode("utf-8", "backslashreplace")
    try:
        return orjson.dumps(raw, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except (orjson.JSONEncodeError, TypeError):
        return repr(raw)


def _utf8(text: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8 (nor by orjson); keep them visible as escapes.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def deadletter_event(
    camera_id: str | None,
    raw: object,
    reason: str,
    source: str,
    failed_schema: str | None = None,
) -> Event:
    """A dead letter: input that could not become an event, kept with the reason. Never raises."""
    camera = None if camera_id is None else _utf8(str(camera_id))
    raw_text = _utf8(_raw_text(raw))
    reason_text = _utf8(" ".join(str(reason).split())) or "no reason given"
    source_text = _utf8(str(source)) or "unknown"
    if failed_schema is not None and SCHEMA_ID.fullmatch(str(failed_schema)) is None:
        # Not a schema id we could name in the field: keep it in the reason instead.
        reason_text = f"{reason_text} (schema {failed_schema!r})"
        failed_schema = None
    event_id = _event_id(["deadletter", camera, raw_text, reason_text])
    fields: dict[str, Any] = {
        "schema": DEADLETTER_SCHEMA,
        "event_id": event_id,
        "camera_id": camera,
        "source": source_text,
        "raw": raw_text,
        "reason": reason_text,
    }
    if failed_schema is not None:
        fields["failed_schema"] = failed_schema
    payload = orjson.dumps(fields)
    errors = errors_against(DEADLETTER_SCHEMA, fields)
    if errors:  # cannot happen with the fields above; say so loudly rather than loop
        log.error("dead letter %s does not validate: %s", event_id, "; ".join(errors))
    return Event(DEADLETTER_SCHEMA, event_id, camera or "", payload, fields)


# -- the gate --------------------------------------------------------------------------------------


def checked(event: Event) -> Event:
    """The event if its payload validates against the schema it names, else a dead letter.

    Validates the bytes that will be sent (not `fields`), and that they name `event.schema`.
    Never raises.
    """
    try:
        fields = orjson.loads(event.payload)
    except orjson.JSONDecodeError as exc:
        return deadletter_event(
            event.camera_id or None, event.payload, f"not JSON: {exc}", "validation", event.schema
        )
    if not isinstance(fields, dict):
        errors = ["payload is not a JSON object"]
    elif fields.get("schema") != event.schema:
        errors = [f"payload names schema {fields.get('schema')!r}, the event {event.schema!r}"]
    else:
        errors = errors_against(event.schema, fields)
    if not errors:
        return event
    # deadletter_event's own output always validates, so this never loops.
    return deadletter_event(
        event.camera_id or None, _raw_text(event.payload), "; ".join(errors), "validation", event.schema
    )
