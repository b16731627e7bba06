"""facespace_bridge/cloudevents.py: the attribute values, and both renderings as the CloudEvents
SDK reads them (its Kafka and HTTP bindings, binary mode). The sinks' end-to-end cases, against
a real broker and a real HTTP server, are in tests/sinks/."""

from __future__ import annotations

from datetime import datetime, timezone

import click
import orjson
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from facespace_bridge import cloudevents
from facespace_bridge.client.entries import LogEntry
from facespace_bridge.cloudevents import (
    CloudEvents,
    dataschema,
    event_type,
    percent_encoded,
    source_from_config,
    source_uri,
)
from facespace_bridge.events import Event, deadletter_event, presence_event, sighting_event
from facespace_bridge.schemas import catalogue, schema_root

SOURCE = "http://127.0.0.1:8123/facespace"
SEEN = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
# Camera ids the HTTP binding must percent-encode: space, quotes, percent, '#', non-ASCII.
HOSTILE_CAMERAS = ["Door #2", '"Front" 100% ~ok~', "李小龍", "Café 😀 /a?b=c&d;e", "\u00a0nbsp\u2028sep"]


def sighting(camera: str = "Camera1", person: str = "Alice Example") -> Event:
    return sighting_event(LogEntry(camera, person, SEEN, f"{person} @ ..."), 0)


def kafka_message(event: Event, ce: CloudEvents) -> ce_kafka.KafkaMessage:
    headers = ce.kafka_headers(event, [("content-type", b"application/json")])
    assert len({name for name, _ in headers}) == len(headers)  # no header twice
    return ce_kafka.KafkaMessage(headers=dict(headers), key=event.camera_id.encode(), value=event.payload)


def http_message(event: Event, ce: CloudEvents) -> ce_http.HTTPMessage:
    return ce_http.HTTPMessage(
        headers={"content-type": "application/json", **ce.http_headers(event)}, body=event.payload
    )


# -- source --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_url", "source"),
    [
        ("https://visionapi.automa.one/facespace", "https://visionapi.automa.one/facespace"),
        ("http://127.0.0.1:8123/facespace", "http://127.0.0.1:8123/facespace"),
        # case, default port, trailing slash, credentials, query and fragment
        (
            "HTTPS://User:S3cret@VisionAPI.Automa.ONE:443/facespace/?key=k-123#top",
            "https://visionapi.automa.one/facespace",
        ),
        ("http://example.com:80/", "http://example.com"),
        ("http://example.com:8080", "http://example.com:8080"),
        ("  http://[::1]:8123/a/./b/../facespace//  ", "http://[::1]:8123/a/facespace"),
        # IDN host in its ASCII form; escapes upper-case; unreserved characters unescaped
        ("https://bücher.example/p%7e%41/%c3%a9%2f", "https://xn--bcher-kva.example/p~A/%C3%A9%2F"),
        ("https://example.com/é x", "https://example.com/%C3%A9%20x"),
    ],
)
def test_source_is_the_api_url_normalised_without_credentials_or_query(api_url: str, source: str) -> None:
    assert source_uri(api_url) == source


@pytest.mark.parametrize(
    "api_url", ["ftp://example.com/x", "http:///facespace", "not a url", "", "http://h:99999"]
)
def test_source_of_a_url_that_is_not_http_with_a_host_is_an_error(api_url: str) -> None:
    with pytest.raises(ValueError):
        source_uri(api_url)


def test_source_from_config() -> None:
    assert source_from_config({"api_url": "HTTP://Example.com/facespace/"}) == "http://example.com/facespace"
    assert source_from_config({"api_url": SOURCE, "cloudevents": False}) is None
    assert source_from_config({}) is None  # a sink built outside the CLI, without an API URL
    with pytest.raises(click.BadParameter) as raised:
        source_from_config({"api_url": "ftp://user:hunter2@example.com/"})
    assert raised.value.param_hint == "--api-url"
    assert "hunter2" not in raised.value.format_message()


# -- type and dataschema -------------------------------------------------------------------------


def test_type_and_dataschema_of_every_schema() -> None:
    schemas = [version for versions in catalogue().values() for version in versions]
    assert {s.schema_id for s in schemas} >= {
        "facespace.sighting/v1",
        "facespace.presence/v1",
        "facespace.deadletter/v1",
    }
    for schema in schemas:
        document = orjson.loads((schema_root() / schema.name / f"v{schema.version}.json").read_bytes())
        assert dataschema(schema.schema_id) == document["$id"]
        assert event_type(schema.schema_id) == f"one.automa.facespace.{schema.name}.v{schema.version}"
    assert event_type("facespace.sighting/v1") == "one.automa.facespace.sighting.v1"
    assert dataschema("facespace.sighting/v1") == "urn:facespace-bridge:schema:sighting/v1"
    assert dataschema("facespace.nosuch/v1") is None


# -- the Kafka rendering -------------------------------------------------------------------------


def test_a_sighting_read_by_the_sdk_kafka_binding() -> None:
    event = sighting("Camera1")
    parsed = ce_kafka.from_binary(kafka_message(event, CloudEvents(SOURCE)), JSONFormat())
    assert parsed.get_attributes() == {
        "specversion": "1.0",
        "id": event.event_id,
        "source": SOURCE,
        "type": "one.automa.facespace.sighting.v1",
        "dataschema": "urn:facespace-bridge:schema:sighting/v1",
        "subject": "Camera1",
        "time": SEEN,
        "datacontenttype": "application/json",
        "partitionkey": "Camera1",  # the SDK's reading of the record key
    }
    assert parsed.get_data() == orjson.loads(event.payload)


def test_presence_time_is_observed_at_and_a_dead_letter_has_no_time() -> None:
    ce = CloudEvents(SOURCE)
    presence = presence_event("Camera2", ["Bob"], ["Bob"], [], SEEN)
    headers = dict(ce.kafka_headers(presence))
    assert headers["ce_time"] == b"2023-10-23T00:05:22Z"
    assert headers["ce_type"] == b"one.automa.facespace.presence.v1"

    letter = deadletter_event(None, "garbage", "not an entry", "logs")
    headers = dict(ce.kafka_headers(letter))
    assert "ce_time" not in headers and "ce_subject" not in headers  # no time, no camera
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": letter.event_id.encode(),
        "ce_source": SOURCE.encode(),
        "ce_type": b"one.automa.facespace.deadletter.v1",
        "ce_dataschema": b"urn:facespace-bridge:schema:deadletter/v1",
    }
    assert "time" not in ce.attributes(letter)


@pytest.mark.parametrize("camera", HOSTILE_CAMERAS)
def test_kafka_header_values_are_utf8_as_they_are(camera: str) -> None:
    event = sighting(camera)
    headers = dict(CloudEvents(SOURCE).kafka_headers(event))
    assert headers["ce_subject"] == camera.encode("utf-8")
    parsed = ce_kafka.from_binary(kafka_message(event, CloudEvents(SOURCE)), JSONFormat())
    assert parsed.get_subject() == camera


# -- the HTTP rendering --------------------------------------------------------------------------


def test_percent_encoding_is_the_http_bindings() -> None:
    # The HTTP binding's own example, and the characters it singles out.
    assert percent_encoded("Euro € 😀") == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    assert percent_encoded('a "b" 100%') == "a%20%22b%22%20100%25"
    assert percent_encoded("Door #2/x?y=z&~") == "Door%20#2/x?y=z&~"
    assert percent_encoded("2023-10-23T00:05:22Z") == "2023-10-23T00:05:22Z"


@pytest.mark.parametrize("camera", HOSTILE_CAMERAS)
def test_hostile_camera_ids_round_trip_through_the_sdk_http_binding(camera: str) -> None:
    event = sighting(camera)
    message = http_message(event, CloudEvents(SOURCE))
    for name, value in message.headers.items():
        assert value.isascii() and value.isprintable() and " " not in value and '"' not in value, (
            name,
            value,
        )
    parsed = ce_http.from_http(message, JSONFormat())
    assert parsed.get_subject() == camera
    assert parsed.get_id() == event.event_id
    assert parsed.get_time() == SEEN
    assert parsed.get_data() == orjson.loads(event.payload)


# -- subject ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "camera", ["", "Cam\r\nX-Injected: 1", "tab\there", "del\x7f", "c1\x85", "nonchar\ufffe"]
)
def test_no_subject_for_an_empty_camera_or_one_a_cloudevents_string_cannot_hold(camera: str) -> None:
    fields = {"schema": "facespace.presence/v1", "observed_at": "2023-10-23T00:05:22Z"}
    event = Event("facespace.presence/v1", "0" * 32, camera, orjson.dumps(fields), fields["observed_at"])
    ce = CloudEvents(SOURCE)
    assert "ce_subject" not in dict(ce.kafka_headers(event))
    assert "ce-subject" not in ce.http_headers(event)
    assert "subject" not in ce.attributes(event)
    assert all("\r" not in v and "\n" not in v for v in ce.http_headers(event).values())


def test_a_lone_surrogate_camera_id_has_no_subject() -> None:
    event = Event("facespace.deadletter/v1", "1" * 32, "bad\udcff", b"{}")
    assert "ce_subject" not in dict(CloudEvents(SOURCE).kafka_headers(event))


# -- the caches ------------------------------------------------------------------------------------


def test_each_call_returns_a_new_list_and_dict() -> None:
    ce, event = CloudEvents(SOURCE), sighting()
    first = ce.kafka_headers(event, [("content-type", b"application/json")])
    first.append(("mine", b"x"))
    assert ("mine", b"x") not in ce.kafka_headers(event)
    headers = ce.http_headers(event)
    headers["mine"] = "x"
    assert "mine" not in ce.http_headers(event)


def test_a_flood_of_camera_ids_keeps_the_cache_bounded_and_the_headers_right(monkeypatch) -> None:
    monkeypatch.setattr(cloudevents, "_MAX_CAMERAS", 3)
    ce = CloudEvents(SOURCE)
    for n in range(10):
        event = sighting(f"Camera{n}")
        assert dict(ce.kafka_headers(event))["ce_subject"] == f"Camera{n}".encode()
        assert ce.http_headers(event)["ce-subject"] == f"Camera{n}"
    cached = ce._schemas["facespace.sighting/v1"]
    assert len(cached.kafka_by_camera) <= 3 and len(cached.http_by_camera) <= 3


def test_both_renderings_carry_the_same_attributes() -> None:
    ce = CloudEvents(SOURCE)
    for event in (
        sighting("Door #2"),
        presence_event("李小龍", ["A"], [], [], SEEN),
        deadletter_event("", 1, "x", "y"),
    ):
        from_kafka = ce_kafka.from_binary(kafka_message(event, ce), JSONFormat()).get_attributes()
        from_http = ce_http.from_http(http_message(event, ce), JSONFormat()).get_attributes()
        from_kafka.pop("partitionkey")
        if "time" not in ce.attributes(event):  # the SDK fills in "now" for an event without a time
            from_kafka.pop("time"), from_http.pop("time")
        expected = {**ce.attributes(event), "datacontenttype": "application/json"}
        if "time" in expected:
            expected["time"] = SEEN
        assert from_kafka == from_http == expected
