"""Events: what the bridge publishes. Sighting / Presence / DeadLetter payloads and their ids.

See docs/architecture.md (step 3 of "The data path", and "Contracts and where they live")
and docs/schemas.md. Every payload is canonical orjson bytes that validate against the
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

Every payload is validated before it leaves; one that fails comes back as a dead letter
naming the reason — never as an exception. Sightings, the bulk of the traffic, are built
by `SightingEncoder` from parts that repeat (a camera, a person, a second) and validated
per part: see its docstring for why that is the same as validating every payload.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from facespace_bridge.client.entries import LogEntry, Second
from facespace_bridge.schemas import SCHEMA_ID, errors_against

log = logging.getLogger(__name__)

SIGHTING_SCHEMA = "facespace.sighting/v1"
PRESENCE_SCHEMA = "facespace.presence/v1"
# Under --pseudonymize (docs/privacy.md): the versions that say so, `"pseudonymous": true`. Names
# as the API gives them keep v1, so their payloads, ids and CloudEvents types stay what they were.
PSEUDONYMOUS_SIGHTING_SCHEMA = "facespace.sighting/v2"
PSEUDONYMOUS_PRESENCE_SCHEMA = "facespace.presence/v2"
DEADLETTER_SCHEMA = "facespace.deadletter/v1"

EVENT_ID_HEX_DIGITS = 32


@dataclass(slots=True)
class Event:
    """One publishable event, already serialised and validated. Treat it as immutable (it is
    not frozen only because a frozen dataclass costs twice as much to build, once per event)."""

    schema: str  # e.g. "facespace.sighting/v1", names schemas/sighting/v1.json
    event_id: str  # deterministic: consumers deduplicate on it
    camera_id: str  # the partition key: one camera's events stay in order ("" when unknown)
    payload: bytes  # canonical orjson bytes
    time: str | None = None  # when it happened (seen_at / observed_at, RFC 3339); None for dead letters
    # What sinks route and keep state by, beside the payload, so that none decodes it:
    seen_at: datetime | None = None  # `time` as an aware UTC datetime
    person: str | None = None  # a sighting's person
    people: tuple[str, ...] | None = None  # a presence's people (sorted)
    source: str | None = None  # a dead letter's source (`logs`, `realtime`, `validation`, ...)

    @property
    def kind(self) -> str:
        """`sighting`, `presence` or `deadletter`."""
        return schema_kind(self.schema)

    @property
    def fields(self) -> dict[str, Any]:
        """The decoded payload (decoded on each call: read it once; sinks read the attributes
        above instead)."""
        fields: dict[str, Any] = orjson.loads(self.payload)
        return fields


_KINDS: dict[str, str] = {}


def schema_kind(schema: str) -> str:
    """The kind of events of a schema: `facespace.sighting/v1` -> `sighting`."""
    kind = _KINDS.get(schema)  # asked for every event on the hot path: cached
    if kind is None:
        kind = _KINDS[schema] = schema.split("/", 1)[0].removeprefix("facespace.")
    return kind


# -- time ------------------------------------------------------------------------------------------


def seen_at_text(dt: datetime) -> str:
    """RFC 3339 in UTC with `Z`, second resolution (sub-seconds are dropped, not rounded)."""
    return Second.of(dt).text


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


def _finish(event: Event, fields: dict[str, Any]) -> Event:
    """`event` (built without its payload) with `fields` serialised as its payload and
    validated; a payload that fails becomes a dead letter with the reason."""
    schema, camera_id = event.schema, event.camera_id
    try:
        payload = orjson.dumps(fields)
    except (orjson.JSONEncodeError, TypeError) as exc:
        return deadletter_event(camera_id, fields, f"cannot serialise: {exc}", "validation", schema)
    errors = errors_against(schema, fields)
    if errors:
        return deadletter_event(camera_id, payload.decode(), "; ".join(errors), "validation", schema)
    event.payload = payload
    return event


# -- sightings -------------------------------------------------------------------------------------

# The sighting payload, in the canonical key order, around the parts that vary.
_SOURCE = "logs"  # tail, backfill and replay alike: the bytes do not depend on how a sighting was read
_PSEUDONYMOUS = b',"pseudonymous":true'  # the last key of a pseudonymous payload
_K_TEXT = tuple(f'",{k}]'.encode() for k in range(64))  # the id's end after seen_at, for the usual k
_CACHE_MAX = 65_536  # entries per cache; cleared when full (names and seconds repeat, memory stays flat)


@dataclass(frozen=True, slots=True)
class SightingPair:
    """The cached parts of one (camera, person)'s sightings."""

    camera_id: str
    person: str
    id_head: bytes  # b'["sighting",<camera>,<person>,"'
    middle: bytes  # b'","camera_id":<camera>,"person":<person>,"seen_at":"'


class SightingEncoder:
    """Builds sighting events; the parts of a payload and of its id that repeat are made once.

    A payload is `{"schema", "event_id", "camera_id", "person", "seen_at", "source"}` in that
    order; `pseudonymous=True` (the names it is given are pseudonyms, docs/privacy.md) makes
    `facespace.sighting/v2` payloads that end with `"pseudonymous": true`. Every value but the
    id comes from the (camera, person) pair or from the second, and the id is sha256 over
    `["sighting", camera, person, seen_at, k]` -- so a pair's bytes are encoded once (a
    second's are `client.entries.Second.utf8`, cached with the stamp it was read from) and each
    event is two concatenations and one hash.

    Validation per part: the sighting schema constrains each property on its own (no keyword
    relates two properties; tests/test_schemas.py checks that this stays so), so a payload is
    valid exactly when each of its values is. The schema, source and id are valid by
    construction, and so is the time (a `Second`'s text; tests/test_events.py validates it
    over the whole range the API's two-digit years can name): what remains is the
    pair, validated once in a whole payload with a known-good second, and a pair the schema
    rejects turns into a dead letter.
    """

    def __init__(self, *, pseudonymous: bool = False) -> None:
        self.pseudonymous = pseudonymous
        self.schema = PSEUDONYMOUS_SIGHTING_SCHEMA if pseudonymous else SIGHTING_SCHEMA
        self._head = b'{"schema":"' + self.schema.encode() + b'","event_id":"'
        said = _PSEUDONYMOUS if pseudonymous else b""
        self._tail = b'","source":"' + _SOURCE.encode() + b'"' + said + b"}"
        self._pairs: dict[str, dict[str, SightingPair | str]] = {}  # camera -> person -> parts or why not
        self._pair_count = 0

    def pairs(self, camera_id: str) -> dict[str, SightingPair | str]:
        """The camera's cached pairs by person (look a person up here first; `pair` fills it)."""
        found = self._pairs.get(camera_id)
        if found is None:
            if self._pair_count >= _CACHE_MAX:
                self._pairs.clear()
                self._pair_count = 0
            found = self._pairs[camera_id] = {}
        return found

    def pair(self, camera_id: str, person: str) -> SightingPair | str:
        """The parts of (camera, person), or why its sightings cannot be published."""
        pairs = self.pairs(camera_id)
        found = pairs.get(person)
        if found is None:
            found = pairs[person] = self._new_pair(camera_id, person)
            self._pair_count += 1
        return found

    def event(self, pair: SightingPair, second: Second, k: int) -> Event:
        """The sighting of `pair` at `second`, the k-th earlier identical one in its listing."""
        utf8 = second.utf8
        k_text = _K_TEXT[k] if k < 64 else f'",{k}]'.encode()
        event_id = hashlib.sha256(pair.id_head + utf8 + k_text).hexdigest()[:EVENT_ID_HEX_DIGITS]
        payload = b"".join((self._head, event_id.encode(), pair.middle, utf8, self._tail))
        camera_id, person = pair.camera_id, pair.person
        return Event(self.schema, event_id, camera_id, payload, second.text, second.at, person)

    def _new_pair(self, camera_id: str, person: str) -> SightingPair | str:
        try:
            camera_json, person_json = orjson.dumps(camera_id), orjson.dumps(person)
        except orjson.JSONEncodeError as exc:  # e.g. a lone surrogate in a name: not UTF-8
            return f"cannot encode: {exc}"
        pair = SightingPair(
            camera_id,
            person,
            b'["sighting",' + camera_json + b"," + person_json + b',"',
            b'","camera_id":' + camera_json + b',"person":' + person_json + b',"seen_at":"',
        )
        return self._checked(pair, _REFERENCE_SECOND) or pair

    def _checked(self, pair: SightingPair, second: Second) -> str | None:
        """Why the payload of `pair` at `second` is invalid, or None."""
        fields = orjson.loads(self.event(pair, second, 0).payload)
        errors = errors_against(self.schema, fields)
        return "; ".join(errors) if errors else None


# The known-good second a new pair is validated with (see SightingEncoder).
_REFERENCE_SECOND = Second.of(datetime(2000, 1, 1, tzinfo=timezone.utc))

SIGHTINGS = SightingEncoder()  # shared: every reader of /logs builds its sightings with it
PSEUDONYMOUS_SIGHTINGS = SightingEncoder(pseudonymous=True)  # ... and with --pseudonymize, this one


def sighting_event(entry: LogEntry, k: int) -> Event:
    """The sighting event of a parsed `/logs` entry, `k` earlier identical (camera, person,
    second) entries before it in its listing; a dead letter when it cannot be published."""
    if k < 0:
        raise ValueError(f"k must be >= 0, not {k}")
    pair, second = SIGHTINGS.pair(entry.camera_id, entry.person), Second.of(entry.seen_at)
    if type(pair) is SightingPair:
        return SIGHTINGS.event(pair, second, k)
    return unpublishable_sighting(entry.camera_id, entry.person, entry.seen_at, k, entry.raw)


def unpublishable_sighting(
    camera_id: str, person: str, seen_at: datetime, k: int, raw: object, encoder: SightingEncoder = SIGHTINGS
) -> Event:
    """The dead letter of a sighting whose pair `encoder` refused (a name that is not UTF-8,
    a value its schema rejects), with the reason: the entry's raw text when it cannot even be encoded,
    else the payload that failed."""
    seen = Second.of(seen_at)
    schema = encoder.schema
    try:
        event_id = _event_id(["sighting", camera_id, person, seen.text, k])
    except orjson.JSONEncodeError as exc:
        return deadletter_event(camera_id, raw, f"cannot encode: {exc}", _SOURCE, schema)
    fields: dict[str, Any] = {
        "schema": schema,
        "event_id": event_id,
        "camera_id": camera_id,
        "person": person,
        "seen_at": seen.text,
        "source": _SOURCE,
    }
    if encoder.pseudonymous:
        fields["pseudonymous"] = True
    event = Event(schema, event_id, camera_id, b"", seen.text, seen.at, person)
    return _finish(event, fields)


# -- presence --------------------------------------------------------------------------------------


def _sorted_names(names: Iterable[str]) -> list[str]:
    return sorted(set(names))


def presence_event(
    camera_id: str,
    people: Iterable[str],
    arrived: Iterable[str],
    departed: Iterable[str],
    observed_at: datetime,
    *,
    pseudonymous: bool = False,
) -> Event:
    """A camera's presence: everyone seen now, who arrived and who left since its last event.

    Name lists are deduplicated and sorted, so the payload does not depend on set order.
    `pseudonymous`: the names are pseudonyms (`facespace.presence/v2`, `"pseudonymous": true`).
    """
    schema = PSEUDONYMOUS_PRESENCE_SCHEMA if pseudonymous else PRESENCE_SCHEMA
    second = Second.of(observed_at)
    observed = second.text
    people, arrived, departed = list(people), list(arrived), list(departed)
    try:
        people_sorted = _sorted_names(people)
        arrived_sorted = _sorted_names(arrived)
        departed_sorted = _sorted_names(departed)
    except TypeError:  # a name that is not a string (unhashable or unorderable) came from the API
        raw = {"people": people, "arrived": arrived, "departed": departed, "observed_at": observed}
        return deadletter_event(camera_id, raw, "presence names must be strings", "realtime", schema)
    try:
        event_id = _event_id(["presence", camera_id, observed, people_sorted])
    except orjson.JSONEncodeError as exc:  # a name or camera id that is not valid UTF-8
        raw = {"people": people, "arrived": arrived, "departed": departed, "observed_at": observed}
        return deadletter_event(camera_id, raw, f"cannot encode: {exc}", "realtime", schema)
    fields: dict[str, Any] = {
        "schema": schema,
        "event_id": event_id,
        "camera_id": camera_id,
        "people": people_sorted,
        "arrived": arrived_sorted,
        "departed": departed_sorted,
        "observed_at": observed,
    }
    if pseudonymous:
        fields["pseudonymous"] = True
    event = Event(schema, event_id, camera_id, b"", observed, second.at, people=tuple(people_sorted))
    return _finish(event, fields)


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
    return Event(DEADLETTER_SCHEMA, event_id, camera or "", payload, source=source_text)
