"""The naive script of bench/kafka_replay.py: what a user of the original `facespace` client
writes to put a range of history into Kafka, with nothing of the bridge's (no numbering, ids,
schemas, validation, checkpoints or bounded memory).

    FACESPACE_API_KEY=... python bench/_naive_seed.py API_URL START END BOOTSTRAP TOPIC

`LogsAPI(...).get_logs_range(START, END)` (the original's times, e.g. `23/10/23` `24/10/23`:
one request, the whole reply in memory), then confluent-kafka `produce(topic,
json.dumps(entry), key=camera)` per entry and one `flush()`. `facespace` 0.1.2 is not on PyPI,
so the client is the project's `facespace_bridge.client.LogsAPI`, which keeps the original's
constructor and methods; `base_url` is the one argument the original does not have. A full
producer queue is waited out with `poll()` (without it the script would fail past librdkafka's
100,000 queued messages). Prints `published N`.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from confluent_kafka import Producer

from facespace_bridge.client import LogsAPI


def main() -> None:
    api_url, start, end, bootstrap, topic = sys.argv[1:6]
    client = LogsAPI(api_key=os.environ["FACESPACE_API_KEY"], base_url=api_url, timeout=600)
    logs = client.get_logs_range(start_time=start, end_time=end)
    client.close()
    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False})
    published = 0
    for camera, entries in logs.items():
        for entry in entries:
            while True:
                try:
                    producer.produce(topic, json.dumps(entry), key=camera, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
            published += 1
    left = producer.flush(300)
    if left or failures:
        raise SystemExit(f"{left} records not delivered, {len(failures)} failed: {failures[:1]}")
    print(f"published {published}")


if __name__ == "__main__":
    main()
