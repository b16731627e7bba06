"""The Kafka sink's tests run on both client libraries (`--kafka-client`)."""

from __future__ import annotations

import orjson
import pytest

from facespace_bridge.events import Event
from facespace_bridge.kafka import CLIENTS
from facespace_bridge.sinks.kafka import KafkaSink, from_config
from tests.fixtures.kafka import KafkaBroker


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """The client library of the sink under test."""
    return request.param


def sighting(camera: str, n: int) -> Event:
    fields = {
        "schema": "facespace.sighting/v1",
        "event_id": f"{camera}-{n:06d}",
        "camera_id": camera,
        "person": "Alice",
        "seen_at": f"2023-10-23T00:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "source": "logs",
    }
    return Event(fields["schema"], fields["event_id"], camera, orjson.dumps(fields), fields.get("seen_at"))


def of_kind(kind: str, camera: str = "Camera1") -> Event:
    fields = {"schema": f"facespace.{kind}/v1", "event_id": f"{kind}-1", "camera_id": camera}
    return Event(fields["schema"], fields["event_id"], camera, orjson.dumps(fields), fields.get("seen_at"))


def sink_for(kafka: KafkaBroker, topic: str, client: str, **options: object) -> KafkaSink:
    config = {
        "bootstrap_servers": kafka.bootstrap,
        "kafka_client": client,
        "topic": topic,
        "presence_topic": f"{topic}.presence",
        "deadletter_topic": f"{topic}.deadletter",
        "kafka_connect_timeout": 10.0,
        **options,
    }
    return from_config(config)
