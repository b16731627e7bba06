"""CloudEvents 1.0 binary-mode attributes of an event, for the Kafka and the HTTP (webhook) bindings.

Every Kafka record and webhook POST carries, beside its unchanged JSON payload:

    specversion  1.0
    id           the event's `event_id`
    source       the FaceSpace API the event came from: `--api-url`, normalised (`source_uri`)
    type         one per schema: `facespace.sighting/v1` -> `one.automa.facespace.sighting.v1`
    time         `seen_at` / `observed_at`; absent for events without one (dead letters)
    subject      the camera id; absent when empty or not a CloudEvents String (control characters)
    dataschema   the schema file's `$id` (`urn:facespace-bridge:schema:sighting/v1`)

`datacontenttype` is the `content-type` header both bindings already send (`application/json`).
The source is the same for tail, backfill and replay, and an id repeats only for the same
event, so source + id deduplicate as the CloudEvents spec says.

Renderings: Kafka headers `ce_<name>` with UTF-8 values as they are (the Kafka binding
encodes header values as UTF-8, with no escaping); HTTP headers `ce-<name>` with values
percent-encoded as the HTTP binding requires (space, `"`, `%` and everything outside
printable ASCII, byte by byte of the UTF-8, upper-case hex), so `Door #2` is `Door%20#2`.

The Kafka rendering runs once per record: what depends only on the schema and the camera is
built once and cached; per event only `id` and `time` are added (bench/cloudevents_headers.py).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import click
import httpx

from facespace_bridge.events import Event
from facespace_bridge.schemas import SchemaNotFoundError, load_schema

SPECVERSION = "1.0"
# Event types are named in reverse-DNS form under the FaceSpace service's domain (automa.one).
TYPE_PREFIX = "one.automa."

_DEFAULT_PORTS = {"http": 80, "https": 443}
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# The HTTP binding leaves printable ASCII (U+0021-U+007E) as it is, except `"` and `%`.
_HTTP_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
_HTTP_AS_IS = re.compile("[" + re.escape(_HTTP_SAFE) + "]*")
# What the CloudEvents String type forbids: control characters, surrogates, noncharacters.
_NOT_A_CE_STRING = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(chr(plane << 16 | 0xFFFE) + chr(plane << 16 | 0xFFFF) for plane in range(17))
    + "]"
)
# Camera ids are cached per schema; a flood of distinct ids must not grow memory without bound.
_MAX_CAMERAS = 100_000

OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--cloudevents/--no-cloudevents",
        default=True,
        show_default=True,
        help="The CloudEvents attributes: ce_ Kafka headers, ce- webhook headers.",
    ),
]


# -- the attribute values ------------------------------------------------------------------------


def source_uri(api_url: str) -> str:
    """The CloudEvents `source` of events read from the FaceSpace API at `api_url`.

    Normalised so that spellings of one API give one source: scheme and host lower-case
    (an international host in its ASCII form), no default port, dot segments resolved,
    percent-escapes upper-case and unreserved characters unescaped, no trailing `/`.
    Credentials, query and fragment are dropped: a source is published with every event.
    Raises ValueError for anything but an http(s) URL with a host.
    """
    # The messages do not repeat the URL: it may hold a password.
    try:
        url = httpx.URL(api_url.strip())
    except (httpx.InvalidURL, TypeError, ValueError):
        raise ValueError("not a valid URL") from None
    scheme = url.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not url.raw_host:
        raise ValueError("not an http(s) URL with a host")
    if url.port is not None and not 0 < url.port < 65536:
        raise ValueError(f"port {url.port} is out of range")
    host = url.raw_host.decode("ascii").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    port = "" if url.port in (None, _DEFAULT_PORTS[scheme]) else f":{url.port}"
    path = url.raw_path.decode("ascii").partition("?")[0]
    path = _PERCENT_ESCAPE.sub(_normal_escape, path).rstrip("/")
    return f"{scheme}://{host}{port}{path}"


def _normal_escape(match: re.Match[str]) -> str:
    char = chr(int(match[1], 16))
    return char if char in _UNRESERVED else f"%{match[1].upper()}"


def event_type(schema: str) -> str:
    """`facespace.sighting/v1` -> `one.automa.facespace.sighting.v1`."""
    return TYPE_PREFIX + schema.replace("/", ".")


@functools.cache
def dataschema(schema: str) -> str | None:
    """The `$id` of the schema file a schema id names; None for a schema we have no file of."""
    try:
        schema_id = load_schema(schema).get("$id")
    except SchemaNotFoundError:
        return None
    return schema_id if isinstance(schema_id, str) and schema_id else None


def subject(camera_id: str) -> str | None:
    """The camera id as `subject`, or None when it is empty or holds characters a CloudEvents
    String may not (control characters such as CR/LF, lone surrogates, noncharacters): such an
    id is left out rather than altered; the payload and the Kafka key still carry it."""
    if not camera_id or _NOT_A_CE_STRING.search(camera_id):
        return None
    return camera_id


def percent_encoded(value: str) -> str:
    """A header value as the HTTP binding writes it: `Euro € 😀` -> `Euro%20%E2%82%AC%20%F0%9F%98%80`."""
    if _HTTP_AS_IS.fullmatch(value):  # ids and times: nothing to escape, and a match is cheaper
        return value
    return quote(value, safe=_HTTP_SAFE)


# -- the renderings ------------------------------------------------------------------------------

KafkaHeaders = list[tuple[str, bytes]]
# The Kafka headers of the attributes that change with every event; `CloudEvents.kafka_fixed`
# gives the others, which a sink may keep per schema and camera.
KAFKA_ID, KAFKA_TIME = "ce_id", "ce_time"


@dataclass(slots=True)
class _SchemaHeaders:
    """What the headers of one schema's events share, and per camera what they add to it."""

    kafka: tuple[tuple[str, bytes], ...]
    http: dict[str, str]
    kafka_by_camera: dict[str, tuple[tuple[str, bytes], ...]] = field(default_factory=dict)
    http_by_camera: dict[str, dict[str, str]] = field(default_factory=dict)

    def kafka_for(self, camera_id: str) -> tuple[tuple[str, bytes], ...]:
        cameras = self.kafka_by_camera
        if len(cameras) >= _MAX_CAMERAS:
            cameras.clear()
        camera = subject(camera_id)
        fixed = self.kafka if camera is None else (*self.kafka, ("ce_subject", camera.encode()))
        cameras[camera_id] = fixed
        return fixed

    def http_for(self, camera_id: str) -> dict[str, str]:
        cameras = self.http_by_camera
        if len(cameras) >= _MAX_CAMERAS:
            cameras.clear()
        camera = subject(camera_id)
        fixed = self.http if camera is None else {**self.http, "ce-subject": percent_encoded(camera)}
        cameras[camera_id] = fixed
        return fixed


class CloudEvents:
    """The CloudEvents headers of events from one FaceSpace API (`source`, see `source_uri`).

    `kafka_headers(event)` and `http_headers(event)` return a new list / dict each call (the
    caller may add to it). One instance per sink; not shared between threads.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._schemas: dict[str, _SchemaHeaders] = {}

    def attributes(self, event: Event) -> dict[str, str]:
        """The attributes of `event` by name, as plain strings (what both renderings encode)."""
        found = {**self._shared(event.schema), "id": event.event_id}
        camera = subject(event.camera_id)
        if camera is not None:
            found["subject"] = camera
        if event.time:
            found["time"] = event.time
        return found

    def _shared(self, schema: str) -> dict[str, str]:
        """The attributes every event of `schema` has alike."""
        shared = {"specversion": SPECVERSION, "source": self.source, "type": event_type(schema)}
        schema_uri = dataschema(schema)
        if schema_uri is not None:
            shared["dataschema"] = schema_uri
        return shared

    def _schema(self, schema: str) -> _SchemaHeaders:
        shared = self._shared(schema)
        headers = _SchemaHeaders(
            kafka=tuple((f"ce_{name}", value.encode()) for name, value in shared.items()),
            http={f"ce-{name}": percent_encoded(value) for name, value in shared.items()},
        )
        self._schemas[schema] = headers
        return headers

    def kafka_fixed(self, schema: str, camera_id: str) -> tuple[tuple[str, bytes], ...]:
        """The `ce_` headers every Kafka record of `schema` from `camera_id` has alike (all but
        `KAFKA_ID` and `KAFKA_TIME`); cached."""
        headers = self._schemas.get(schema) or self._schema(schema)
        return headers.kafka_by_camera.get(camera_id) or headers.kafka_for(camera_id)

    def kafka_headers(self, event: Event, head: Iterable[tuple[str, bytes]] = ()) -> KafkaHeaders:
        """The `ce_` headers of a Kafka record, after `head` (the sink's own headers, such as
        `content-type`: one list instead of two)."""
        fixed = self.kafka_fixed(event.schema, event.camera_id)
        time = event.time
        if time:
            return [*head, *fixed, (KAFKA_ID, event.event_id.encode()), (KAFKA_TIME, time.encode())]
        return [*head, *fixed, (KAFKA_ID, event.event_id.encode())]

    def http_headers(self, event: Event) -> dict[str, str]:
        """The `ce-` headers of a webhook POST (the poster adds `content-type`)."""
        schema = self._schemas.get(event.schema) or self._schema(event.schema)
        fixed = schema.http_by_camera.get(event.camera_id) or schema.http_for(event.camera_id)
        headers = {**fixed, "ce-id": percent_encoded(event.event_id)}
        if event.time:
            headers["ce-time"] = percent_encoded(event.time)
        return headers


# -- configuration -------------------------------------------------------------------------------


def source_from_config(config: Mapping[str, Any]) -> str | None:
    """The `source` for the sinks from parsed CLI options (`api_url`, `cloudevents`); None
    when the headers are off: `--no-cloudevents`, or a config without an API URL (a sink built
    outside the CLI). A bad `--api-url` is bad input (click.BadParameter)."""
    if not config.get("cloudevents", True):
        return None
    api_url = config.get("api_url")
    if not api_url:
        return None
    try:
        return source_uri(str(api_url))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--api-url") from None
