"""The Kafka sink against a real broker (tests/fixtures/kafka.py), on both client libraries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime, timezone

import orjson
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat

from facespace_bridge.client.entries import LogEntry
from facespace_bridge.events import Event, deadletter_event, presence_event, sighting_event
from facespace_bridge.sinks.base import SinkError
from facespace_bridge.sinks.kafka import from_config
from tests.fixtures.kafka import Record, free_port
from tests.sinks.kafka.conftest import of_kind, sighting, sink_for


async def test_records_carry_key_headers_ingest_time_and_exact_payload(
    client, kafka, kafka_topic, read_topic
):
    events = [sighting("Camera1", 0), sighting("Cam é/2", 1)]
    before = int(time.time() * 1000)
    async with sink_for(kafka, kafka_topic, client) as sink:
        acks = [await sink.publish([event]) for event in events]
        await asyncio.gather(*acks)
    after = int(time.time() * 1000)

    records = await read_topic(kafka_topic)
    assert sorted((r.key, r.value) for r in records) == sorted(
        (e.camera_id.encode(), e.payload) for e in events
    )
    for record in records:
        payload = orjson.loads(record.value)
        assert record.headers == {
            "content-type": b"application/json",
            "schema": b"facespace.sighting/v1",
            "event-id": payload["event_id"].encode(),
        }
        assert before <= record.timestamp <= after  # ingest time, not seen_at (2023)


async def test_each_kind_goes_to_its_topic(client, kafka, kafka_topic, read_topic):
    async with sink_for(kafka, kafka_topic, client) as sink:
        for kind in ("sighting", "presence", "deadletter"):
            await (await sink.publish([of_kind(kind)]))
    for topic, schema in [
        (kafka_topic, b"facespace.sighting/v1"),
        (f"{kafka_topic}.presence", b"facespace.presence/v1"),
        (f"{kafka_topic}.deadletter", b"facespace.deadletter/v1"),
    ]:
        records = await read_topic(topic)
        assert [r.headers["schema"] for r in records] == [schema]


async def test_missing_topic_is_created_and_existing_topic_used_as_it_is(client, kafka, kafka_topic):
    existing = f"{kafka_topic}.existing"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(existing, 1, 1)])
        async with sink_for(kafka, kafka_topic, client, partitions=5) as sink:
            await (await sink.publish([sighting("Camera1", 0)]))
        async with sink_for(kafka, existing, client, partitions=5) as sink:
            await (await sink.publish([sighting("Camera1", 0)]))
        described = {
            t["topic"]: len(t["partitions"]) for t in await admin.describe_topics([kafka_topic, existing])
        }
    finally:
        await admin.close()
    assert described == {kafka_topic: 5, existing: 1}


async def test_each_camera_stays_in_order_in_one_partition(client, kafka, kafka_topic, read_topic):
    cameras = [f"Camera{i}" for i in range(6)]
    async with sink_for(
        kafka, kafka_topic, client, kafka_max_in_flight=50, kafka_linger_ms=0, partitions=3
    ) as sink:
        acks = [await sink.publish([sighting(camera, n)]) for n in range(300) for camera in cameras]
        await asyncio.gather(*acks)

    partitions: dict[str, set[int]] = defaultdict(set)
    sequence: dict[str, list[str]] = defaultdict(list)
    for record in await read_topic(kafka_topic):  # (partition, offset) order
        camera = record.key.decode()
        partitions[camera].add(record.partition)
        sequence[camera].append(orjson.loads(record.value)["event_id"])
    # One partition per camera, and the one the Java client's default partitioner picks.
    assert dict(partitions) == {camera: {(murmur2(camera.encode()) & 0x7FFFFFFF) % 3} for camera in cameras}
    assert sequence == {camera: [f"{camera}-{n:06d}" for n in range(300)] for camera in cameras}


async def test_idempotence_follows_the_broker_with_one_warning(client, kafka, kafka_topic, caplog):
    caplog.set_level(logging.WARNING, logger="facespace_bridge.sinks.kafka")
    async with sink_for(kafka, kafka_topic, client) as sink:
        await (await sink.publish([sighting("Camera1", 0)]))
        assert sink.idempotent is kafka.supports_idempotence[client]
    warnings = [r for r in caplog.records if "idempotent" in r.getMessage()]
    assert len(warnings) == (0 if kafka.supports_idempotence[client] else 1)
    if kafka.kind == "tansu":  # known facts, not just the probe agreeing with itself
        # Tansu answers InitProducerId v3+ (librdkafka's) and fails v0 (aiokafka's).
        assert kafka.supports_idempotence == {"librdkafka": True, "aiokafka": False}
        assert not kafka.supports_transactions


async def test_publish_waits_for_a_slot_while_the_broker_does_not_ack(client, kafka, kafka_topic, read_topic):
    if not kafka.can_interrupt:
        pytest.skip(kafka.why_not_interruptible())
    events = [sighting("Camera1", n) for n in range(3)]
    async with sink_for(kafka, kafka_topic, client, kafka_max_in_flight=2, kafka_linger_ms=0) as sink:
        await (await sink.publish([sighting("Camera1", 99)]))  # topic created, metadata known
        with kafka.unavailable():
            first = [await sink.publish([events[0]]), await sink.publish([events[1]])]
            third = asyncio.ensure_future(sink.publish([events[2]]))
            await asyncio.sleep(0.5)
            # Nothing can be acknowledged while the broker is down, so no slot is free.
            assert not third.done()
            assert not any(asyncio.ensure_future(ack).done() for ack in first)
        await asyncio.wait_for(asyncio.gather(*first, await third), 60)
    values = [r.value for r in await read_topic(kafka_topic)]
    assert sorted(values) == sorted([sighting("Camera1", 99).payload] + [e.payload for e in events])


async def test_start_retries_until_the_broker_comes_back(client, kafka, kafka_topic, read_topic):
    if not kafka.can_interrupt:
        pytest.skip(kafka.why_not_interruptible())
    sink = sink_for(kafka, kafka_topic, client, kafka_connect_timeout=20.0)
    outage = asyncio.ensure_future(kafka.outage(1.5))
    await asyncio.sleep(0)  # the outage begins before the sink connects
    try:
        await sink.start()
        await (await sink.publish([sighting("Camera1", 0)]))
    finally:
        await outage
        await sink.close()
    assert len(await read_topic(kafka_topic)) == 1


async def test_a_cancelled_publish_holds_up_neither_flush_nor_close(client, kafka, kafka_topic):
    """A stop may cancel a publish half-way (here while its topic is being created): what was
    handed over of the batch still settles, and flush and close return."""
    sink = sink_for(kafka, kafka_topic, client)
    await sink.start()
    try:
        publishing = asyncio.create_task(sink.publish([sighting("Camera1", n) for n in range(3)]))
        await asyncio.sleep(0)  # it runs up to its first wait: creating the topic
        publishing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await publishing
        await asyncio.wait_for(sink.flush(), 60)  # (a guard against waiting for ever, not a timing)
    finally:
        await asyncio.wait_for(sink.close(), 60)


async def test_unreachable_broker_gives_up_with_one_line_and_one_log_line_per_retry(client, caplog):
    caplog.set_level(logging.WARNING, logger="facespace_bridge.sinks.kafka")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    sink = from_config({"bootstrap_servers": address, "kafka_connect_timeout": 1.5, "kafka_client": client})
    with pytest.raises(SinkError) as raised:
        await sink.start()
    message = str(raised.value)
    assert "\n" not in message and address in message and "unreachable after 1.5 s" in message
    retries = [r for r in caplog.records if "not reachable" in r.getMessage()]
    attempts = int(message.split("(")[1].split(" attempts")[0])
    assert attempts >= 2 and len(retries) == attempts - 1
    assert all(address in r.getMessage() for r in retries)
    # From the first warning on, the user knows when it stops trying.
    assert all(r.getMessage().endswith("giving up at 1.5 s (--kafka-connect-timeout)") for r in retries)


async def test_a_record_larger_than_a_batch_is_sent_whole(client, kafka, kafka_topic, read_topic):
    big = sighting("Camera1", 1)
    big = Event(big.schema, big.event_id, big.camera_id, big.payload + b" " * 50_000, big.time)
    small = [sighting("Camera1", n) for n in range(2, 40)]
    async with sink_for(kafka, kafka_topic, client, kafka_batch_size=1024) as sink:
        acks = [await sink.publish([e]) for e in [sighting("Camera1", 0), big, *small]]
        await asyncio.gather(*acks)
    values = [r.value for r in await read_topic(kafka_topic)]
    assert values == [sighting("Camera1", 0).payload, big.payload, *(e.payload for e in small)]


async def test_records_the_broker_never_takes_fail_their_acks_and_the_flush(client, kafka, kafka_topic):
    if not kafka.can_interrupt:
        pytest.skip(kafka.why_not_interruptible())
    sink = sink_for(kafka, kafka_topic, client)
    sink.settings = replace(sink.settings, delivery_timeout_ms=1500)
    await sink.start()
    try:
        await (await sink.publish([sighting("Camera1", 0)]))
        assert sink.connected
        with kafka.unavailable():
            acks = [await sink.publish([sighting("Camera1", n)]) for n in range(1, 4)]
            results = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), 60)
            assert all(isinstance(r, SinkError) for r in results)
            assert sink.failed == 3
            assert not sink.connected and sink.last_error is not None
            with pytest.raises(SinkError, match="3 records were not acknowledged"):
                await sink.flush()
        # The publisher sends a failed batch again until it is acknowledged: once the broker is
        # back, it is. (librdkafka's idempotent producer on Tansu fails once more: Tansu refuses
        # the epoch bump by which librdkafka resumes after timed-out records; the sink then
        # publishes with a new producer.)
        for _attempt in range(3):
            with contextlib.suppress(SinkError):
                await asyncio.wait_for(await sink.publish([sighting("Camera1", n) for n in range(1, 4)]), 60)
                break
        assert sink.connected
    finally:
        with contextlib.suppress(SinkError):  # close() flushes, and reports the failures again
            await sink.close()


# -- CloudEvents (facespace_bridge/cloudevents.py), read back by the CloudEvents SDK -------------

API_URL = "HTTP://bridge:pa55word@FaceSpace.Example:80/facespace/?key=k-123"
CE_SOURCE = "http://facespace.example/facespace"  # API_URL normalised, without credentials or query
HOSTILE_CAMERA = 'Door #2 "east" 100% 李小龍 😀'


def cloudevent_of(record: Record) -> BaseCloudEvent:
    message = ce_kafka.KafkaMessage(headers=record.headers, key=record.key, value=record.value or b"")
    return ce_kafka.from_binary(message, JSONFormat())


async def test_records_are_cloudevents_the_sdk_reads_back(client, kafka, kafka_topic, read_topic):
    seen_at = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
    events = {
        "sighting": sighting_event(LogEntry(HOSTILE_CAMERA, "Mary Ann", seen_at, ""), 0),
        "presence": presence_event("Camera2", ["Bob"], ["Bob"], [], seen_at),
        "deadletter": deadletter_event(None, "Alice @ 25:61:00 23/10/23", "bad time", "logs"),
    }
    async with sink_for(kafka, kafka_topic, client, api_url=API_URL) as sink:
        await asyncio.gather(*[await sink.publish([event]) for event in events.values()])

    topics = {"sighting": kafka_topic, "presence": f"{kafka_topic}.presence"}
    topics["deadletter"] = f"{kafka_topic}.deadletter"
    for kind, event in events.items():
        (record,) = await read_topic(topics[kind])
        assert record.value == event.payload  # the value bytes do not change
        # The bridge's own headers are still there, beside the ce_ ones.
        assert record.headers["content-type"] == b"application/json"
        assert record.headers["schema"] == event.schema.encode()
        assert record.headers["event-id"] == event.event_id.encode()
        assert b"pa55word" not in b"".join(record.headers.values())
        assert b"k-123" not in b"".join(record.headers.values())

        parsed = cloudevent_of(record)
        assert parsed.get_specversion() == "1.0"
        assert parsed.get_id() == event.event_id
        assert parsed.get_source() == CE_SOURCE
        assert parsed.get_type() == f"one.automa.facespace.{kind}.v1"
        assert parsed.get_dataschema() == f"urn:facespace-bridge:schema:{kind}/v1"
        assert parsed.get_datacontenttype() == "application/json"
        assert parsed.get_data() == orjson.loads(event.payload)
        if kind == "deadletter":  # no time, no camera: neither header is sent
            assert "ce_time" not in record.headers and "ce_subject" not in record.headers
        else:
            assert parsed.get_time() == seen_at
            assert parsed.get_subject() == event.camera_id
    assert cloudevent_of((await read_topic(kafka_topic))[0]).get_subject() == HOSTILE_CAMERA


async def test_no_cloudevents_sends_no_ce_headers(client, kafka, kafka_topic, read_topic):
    event = sighting("Camera1", 0)
    async with sink_for(kafka, kafka_topic, client, api_url=API_URL, cloudevents=False) as sink:
        await (await sink.publish([event]))
    (record,) = await read_topic(kafka_topic)
    assert record.headers == {
        "content-type": b"application/json",
        "schema": b"facespace.sighting/v1",
        "event-id": event.event_id.encode(),
    }
    assert record.value == event.payload


async def test_both_clients_write_the_same_keys_partitions_and_headers(kafka, kafka_topic, read_topic):
    """A camera's records land in the same partition whichever client wrote them (murmur2 of
    the key, the Java client's choice), with the same key, value and headers."""
    seen_at = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
    events = [sighting_event(LogEntry(f"Cam {i} é/#", f"P{i % 3}", seen_at, ""), i) for i in range(40)]
    events += [presence_event("Camera2", ["Bob"], ["Bob"], [], seen_at)]
    written: dict[str, list[tuple]] = {}
    for client in ("librdkafka", "aiokafka"):
        topic = f"{kafka_topic}.{client}"
        async with sink_for(kafka, topic, client, api_url=API_URL, partitions=4) as sink:
            await asyncio.gather(*[await sink.publish(events[i : i + 7]) for i in range(0, len(events), 7)])
        records = [*await read_topic(topic), *await read_topic(f"{topic}.presence")]
        written[client] = sorted(
            (r.partition, r.key, r.value, sorted(r.headers.items())) for r in records if r.key
        )
        assert {(r.key, r.partition) for r in records if r.key} == {
            (e.camera_id.encode(), (murmur2(e.camera_id.encode()) & 0x7FFFFFFF) % 4) for e in events
        }
    assert len(written["librdkafka"]) == len(events)
    assert written["librdkafka"] == written["aiokafka"]


async def test_broker_passwords_never_reach_the_logs(client, kafka, kafka_topic, monkeypatch, caplog, capfd):
    """SASL against a broker that does not speak it: every library logs at debug level, and
    neither the SASL password nor the TLS key password shows up anywhere."""
    secrets = ("sasl-pw-Zq81xv", "key-pw-Lm42rt")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "bridge")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", secrets[0])
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", secrets[1])
    caplog.set_level(logging.DEBUG)
    sink = sink_for(
        kafka, kafka_topic, client,
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN", kafka_connect_timeout=3.0,
    )  # fmt: skip
    assert sink.settings.kafka.sasl_password == secrets[0]
    with pytest.raises(SinkError) as raised:
        await sink.start()
    await sink.close()
    captured = capfd.readouterr()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records, "nothing was logged: the test proves nothing"
    for secret in secrets:
        assert secret not in logged and secret not in str(raised.value)
        assert secret not in captured.out + captured.err


@pytest.mark.parametrize("cloudevents", [True, False])
async def test_a_record_head_gives_the_headers_cloudevents_says_for_every_kind(
    client: str, cloudevents: bool
) -> None:
    """The hot loops build headers from what a schema's and camera's records share (`record_head`):
    the same headers as the CloudEvents rendering of each event, in the same order."""
    from facespace_bridge.cloudevents import CloudEvents, source_uri

    config = {"bootstrap_servers": "127.0.0.1:9", "kafka_client": client, "topic": "t", "api_url": API_URL}
    sink = from_config({**config, "cloudevents": cloudevents})
    seen_at = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
    events = [
        sighting_event(LogEntry("Cam 1 é/#", "Zoë", seen_at, ""), 2),
        sighting_event(LogEntry("Cam 1 é/#", "Bob", seen_at, ""), 0),  # the same head, another event
        presence_event("Camera2", ["Bob"], ["Bob"], [], seen_at),
        deadletter_event("Camera\r\n3", "junk", "why", "logs"),  # no time, no subject
    ]
    for event in events:
        head = sink.record_head(event)
        assert head is sink.record_head(event)  # made once per schema and camera
        assert (head.topic, head.key) == (sink.settings.topics[event.kind], event.camera_id.encode())
        own = [("content-type", b"application/json"), ("schema", event.schema.encode())]
        if cloudevents:
            own = CloudEvents(source_uri(API_URL)).kafka_headers(event, own)
        assert head.headers_of(event) == [*own, ("event-id", event.event_id.encode())]
