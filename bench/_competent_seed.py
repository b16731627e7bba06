"""The competent script of bench/kafka_replay.py: what an engineer who needs the bridge's very
records writes by hand on the original `facespace` client, with none of the bridge's code.

    FACESPACE_API_KEY=... python bench/_competent_seed.py API_URL START END BOOTSTRAP TOPIC

`LogsAPI(...).get_logs_range(START, END)` (one request, the whole reply in memory), then per
entry: the name and the stamp split off (`rsplit(" @ ", 1)`), the stamp's RFC 3339 text
(cached per stamp: a sorted listing repeats them), k = how many identical (camera, person,
second) entries came before it, the event id (sha256 of the compact JSON array
`["sighting", camera, person, seen_at, k]`, 32 hex digits), the payload (orjson of the same
six fields in the same order) and the same ten headers (`content-type`, `schema`, the seven
CloudEvents `ce_` attributes in binary mode, `event-id`); confluent-kafka `produce()` with a
delivery callback and `poll(0)` per record, `flush()` at the end. bench/kafka_replay.py checks
that its topic then holds exactly the replay's records (keys, values, headers).

`facespace` 0.1.2 does not install here (not on the package index this machine reaches), so
the client is the project's `facespace_bridge.client.LogsAPI`, which keeps the original's
constructor and methods; `base_url` is the one argument the original does not have. Prints
`published N`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from typing import Any

import orjson
from confluent_kafka import Producer

from facespace_bridge.client import LogsAPI

SCHEMA = "facespace.sighting/v1"


def main() -> None:
    api_url, start, end, bootstrap, topic = sys.argv[1:6]
    client = LogsAPI(api_key=os.environ["FACESPACE_API_KEY"], base_url=api_url, timeout=600)
    logs = client.get_logs_range(start_time=start, end_time=end)
    client.close()

    constant = [
        ("content-type", b"application/json"),
        ("schema", SCHEMA.encode()),
        ("ce_specversion", b"1.0"),
        ("ce_source", api_url.rstrip("/").encode()),
        ("ce_type", b"one.automa.facespace.sighting.v1"),
        ("ce_dataschema", b"urn:facespace-bridge:schema:sighting/v1"),
    ]
    rfc3339: dict[str, str] = {}  # "HH:MM:SS DD/MM/YY" -> "20YY-MM-DDTHH:MM:SSZ"
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False})
    published = 0
    for camera, entries in logs.items():
        key = camera.encode()
        subject = ("ce_subject", key)
        seen_before: Counter[tuple[str, str]] = Counter()
        for entry in entries:
            person, stamp = entry.rsplit(" @ ", 1)
            person = person.strip()
            seen_at = rfc3339.get(stamp)
            if seen_at is None:
                seen_at = rfc3339[stamp] = f"20{stamp[15:17]}-{stamp[12:14]}-{stamp[9:11]}T{stamp[:8]}Z"
            k = seen_before[person, seen_at]
            seen_before[person, seen_at] = k + 1
            ids = orjson.dumps(["sighting", camera, person, seen_at, k])
            event_id = hashlib.sha256(ids).hexdigest()[:32]
            payload = orjson.dumps(
                {
                    "schema": SCHEMA,
                    "event_id": event_id,
                    "camera_id": camera,
                    "person": person,
                    "seen_at": seen_at,
                    "source": "logs",
                }
            )
            id_bytes = event_id.encode()
            headers = [
                *constant,
                subject,
                ("ce_id", id_bytes),
                ("ce_time", seen_at.encode()),
                ("event-id", id_bytes),
            ]
            while True:
                try:
                    producer.produce(topic, payload, key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: serve delivery reports
                    producer.poll(0.05)
            producer.poll(0)
            published += 1
    left = producer.flush(300)
    if left or failures:
        raise SystemExit(f"{left} records not delivered, {len(failures)} failed: {failures[:1]}")
    print(f"published {published}")


if __name__ == "__main__":
    main()
