"""µs per event of the CloudEvents headers, beside what the Kafka sink's headers cost without them.

    .venv/bin/python bench/cloudevents_headers.py [--events N] [--cameras N] [--repeat N] [--kafka]

Rows, each over the same stream of real sighting events (`sighting_event`, N cameras, a
new second every few events, distinct ids):

- Kafka headers as the sink builds them without CloudEvents (`--no-cloudevents`): the
  schema's cached headers plus `event-id` -- the baseline;
- the same with the CloudEvents headers, as `publish` builds them by default
  (`CloudEvents.kafka_headers(event, route_headers)` plus `event-id`), and
  `kafka_headers(event)` alone;
- appending the record to an aiokafka batch (its C record builder) with either header
  list: the serialisation of the extra headers, paid once per record as well;
- `CloudEvents.http_headers`, the webhook's (per POST, beside an HTTP round trip).

Best of `--repeat` runs of the whole stream; wall-clock µs per event on this machine.
`--kafka` also publishes the stream through `KafkaSink` into Tansu (started here, memory
storage, each run into a fresh topic deleted afterwards), with each client (librdkafka,
aiokafka), with and without the headers in turn, in batches of 1,000 events as the
publisher hands them over, until every batch is acknowledged: events/s of the whole sink.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.producer.message_accumulator import BatchBuilder

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' broker launcher

from facespace_bridge.client.entries import LogEntry  # noqa: E402
from facespace_bridge.cloudevents import CloudEvents, source_uri  # noqa: E402
from facespace_bridge.events import Event, sighting_event  # noqa: E402
from facespace_bridge.sinks.kafka import KafkaSettings, create_sink  # noqa: E402
from facespace_bridge.sources.listing import BATCH_EVENTS  # noqa: E402
from tests.fixtures.kafka import start_tansu  # noqa: E402

API_URL = "https://visionapi.automa.one/facespace"
START = datetime(2023, 10, 23, tzinfo=timezone.utc)
BATCH_BYTES = 256 * 1024  # the aiokafka sink's default batch size
CLIENTS = ("librdkafka", "aiokafka")


def make_events(count: int, cameras: int) -> list[Event]:
    events = []
    for n in range(count):
        entry = LogEntry(f"Camera{n % cameras}", f"Person {n % 97}", START + timedelta(seconds=n // 8), "")
        events.append(sighting_event(entry, 0))
    return events


def per_event_us(run: Callable[[list[Event]], object], events: list[Event], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        run(events)
        best = min(best, time.perf_counter() - began)
    return best / len(events) * 1e6


async def sink_rate(
    bootstrap: str, topic: str, events: list[Event], source: str | None, client: str
) -> float:
    """Events/s of `events` published through the sink in batches of BATCH_EVENTS, as the
    publisher hands them over, until every batch is acknowledged."""
    sink = create_sink(
        KafkaSettings(
            bootstrap_servers=bootstrap, client=client, sighting_topic=topic, cloudevents_source=source
        )
    )
    await sink.start()
    try:
        await (await sink.publish(events[:1]))  # topic created, partitions known
        began = time.perf_counter()
        acks = [await sink.publish(events[i : i + BATCH_EVENTS]) for i in range(0, len(events), BATCH_EVENTS)]
        await asyncio.gather(*acks)  # raises if any batch was not acknowledged
        return len(events) / (time.perf_counter() - began)
    finally:
        await sink.close()
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])  # Tansu's memory storage slows down as it fills
        finally:
            await admin.close()


def kafka_rates(events: list[Event], repeat: int) -> None:
    logging.getLogger("facespace_bridge.sinks.kafka").setLevel(logging.ERROR)  # Tansu's idempotence warning
    source = source_uri(API_URL)
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch, start_tansu(Path(scratch), relay=False) as broker:
        for n in range(repeat):
            for client in CLIENTS:
                for name, ce_source in (("without", None), ("with", source)):
                    topic = f"bench.cloudevents.{client}.{name}.{n}"
                    rate = asyncio.run(sink_rate(broker.bootstrap, topic, events, ce_source, client))
                    rates.setdefault((client, name), []).append(rate)
    print(f"\nKafkaSink into Tansu, {len(events):,} events in batches of {BATCH_EVENTS:,}, best of {repeat}:")
    for (client, name), values in rates.items():
        best = max(values)
        print(f"  {client:<10} {name:<7} CloudEvents  {best:>9,.0f} events/s  {1e6 / best:6.2f} µs/event")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events in the stream (default 200000)")
    parser.add_argument("--cameras", type=int, default=10, help="distinct camera ids (default 10)")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best counts (default 5)")
    parser.add_argument("--kafka", action="store_true", help="also publish through KafkaSink into Tansu")
    args = parser.parse_args()

    events = make_events(args.events, args.cameras)
    cloudevents = CloudEvents(source_uri(API_URL))
    kafka_headers, http_headers = cloudevents.kafka_headers, cloudevents.http_headers
    # What KafkaSink._route caches per schema.
    route_headers = [("content-type", b"application/json"), ("schema", events[0].schema.encode())]

    def without(events: list[Event]) -> None:
        for event in events:
            [*route_headers, ("event-id", event.event_id.encode())]

    def with_cloudevents(events: list[Event]) -> None:
        for event in events:  # as KafkaSink.publish does
            headers = kafka_headers(event, route_headers)
            headers.append(("event-id", event.event_id.encode()))

    def ce_only(events: list[Event]) -> None:
        for event in events:
            kafka_headers(event)

    def webhook(events: list[Event]) -> None:
        for event in events:
            http_headers(event)

    def append(headers_of: Callable[[Event], list[tuple[str, bytes]]]) -> Callable[[list[Event]], None]:
        # Header lists built beforehand: this row is the record builder's own cost.
        built = {event.event_id: headers_of(event) for event in events}

        def run(events: list[Event]) -> None:
            batch = BatchBuilder(BATCH_BYTES, 0)
            for event in events:
                headers = built[event.event_id]
                if batch.append(timestamp=None, key=b"Camera1", value=event.payload, headers=headers) is None:
                    batch = BatchBuilder(BATCH_BYTES, 0)
                    batch.append(timestamp=None, key=b"Camera1", value=event.payload, headers=headers)

        return run

    def plain(event: Event) -> list[tuple[str, bytes]]:
        return [*route_headers, ("event-id", event.event_id.encode())]

    def full(event: Event) -> list[tuple[str, bytes]]:
        return [*kafka_headers(event, route_headers), ("event-id", event.event_id.encode())]

    sample = events[0]
    print(f"{len(events):,} sightings, {args.cameras} cameras, best of {args.repeat}")
    print(f"headers of one record: {len(plain(sample))} without, {len(full(sample))} with CloudEvents;")
    print(
        f"header bytes (names + values): {sum(len(k) + len(v) for k, v in plain(sample))} without, "
        f"{sum(len(k) + len(v) for k, v in full(sample))} with; payload {len(sample.payload)} bytes"
    )
    rows = [
        ("Kafka headers, no CloudEvents (baseline)", per_event_us(without, events, args.repeat)),
        ("Kafka headers with CloudEvents (the default)", per_event_us(with_cloudevents, events, args.repeat)),
        ("  of which CloudEvents.kafka_headers", per_event_us(ce_only, events, args.repeat)),
        ("batch append, headers without CloudEvents", per_event_us(append(plain), events, args.repeat)),
        ("batch append, headers with CloudEvents", per_event_us(append(full), events, args.repeat)),
        ("CloudEvents.http_headers (webhook)", per_event_us(webhook, events, args.repeat)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'step':<{width}}  µs/event")
    for name, us in rows:
        print(f"{name:<{width}}  {us:8.3f}")
    if args.kafka:
        kafka_rates(events, args.repeat)


if __name__ == "__main__":
    main()
