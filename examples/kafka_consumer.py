"""Read facespace.sightings and keep each sighting once, however often it was delivered.

The bridge delivers at least once: after a crash, or a replay of a range that was already
published, the same sighting arrives again, with the same `event_id` and the same bytes
(docs/delivery.md). So a consumer deduplicates on `event_id`. Here the deduplication is
durable: a SQLite table with `event_id` as its primary key, and the consumer commits its
Kafka offsets only after the database commit. A crash between the two re-reads a few
records, which the primary key turns into no-ops: each sighting is stored exactly once.

    pip install aiokafka          # already there with facespace-bridge
    python examples/kafka_consumer.py --bootstrap-servers localhost:9092 --db sightings.db

Prints each new sighting, oldest first within each batch it reads, then a line
`-- N stored, M duplicates skipped`: how many sightings the database holds from this run,
and how many arrived again and were recognised by their `event_id`. Two sightings of one
person at one camera in the same second are two sightings (two `event_id`s): both print.
Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sqlite3

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, KafkaError

SCHEMA = """
CREATE TABLE IF NOT EXISTS sightings (
    event_id  TEXT PRIMARY KEY,
    camera_id TEXT NOT NULL,
    person    TEXT NOT NULL,
    seen_at   TEXT NOT NULL
)
"""


def store(db: sqlite3.Connection, payloads: list[dict]) -> list[dict]:
    """Insert the batch in one transaction; returns the sightings that were new."""
    new = []
    with db:  # commits, or rolls back on error
        for payload in payloads:
            cursor = db.execute(
                "INSERT OR IGNORE INTO sightings VALUES (?, ?, ?, ?)",
                (payload["event_id"], payload["camera_id"], payload["person"], payload["seen_at"]),
            )
            if cursor.rowcount:
                new.append(payload)
    return new


async def consume(args: argparse.Namespace) -> None:
    db = sqlite3.connect(args.db)
    db.execute(SCHEMA)
    consumer = AIOKafkaConsumer(
        args.topic,
        bootstrap_servers=args.bootstrap_servers,
        group_id=args.group_id,
        enable_auto_commit=False,  # offsets move only after the rows are committed
        auto_offset_reset="earliest",
    )
    library_log = logging.getLogger("aiokafka")
    library_log.setLevel(logging.CRITICAL)  # a failed start is said once, below, not per attempt
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        db.close()
        why = "no broker answered" if isinstance(exc, KafkaConnectionError) else str(exc)
        where = f"{args.topic} from {args.bootstrap_servers}"
        raise SystemExit(f"kafka_consumer.py: cannot read {where}: {why}") from None
    finally:
        library_log.setLevel(logging.NOTSET)
    stored = duplicates = 0
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            payloads = [
                json.loads(record.value)
                for records in batches.values()
                for record in records
                if record.value is not None
            ]
            if not payloads:
                continue
            sightings = [p for p in payloads if p["schema"].startswith("facespace.sighting/")]
            new = store(db, sightings)
            await consumer.commit()
            stored += len(new)
            duplicates += len(sightings) - len(new)
            # One camera's sightings stay in one partition; partitions are read side by side: sort
            # to print in time order.
            for payload in sorted(new, key=lambda p: (p["seen_at"], p["camera_id"])):
                print(f"{payload['seen_at']}  {payload['camera_id']:<12} {payload['person']}")
            print(f"-- {stored} stored, {duplicates} duplicates skipped", flush=True)
    finally:
        await consumer.stop()
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap-servers", default="localhost:9092")
    parser.add_argument("--topic", default="facespace.sightings")
    parser.add_argument("--group-id", default="sightings-to-sqlite")
    parser.add_argument("--db", default="sightings.db", help="SQLite file (created if missing)")
    try:
        asyncio.run(consume(parser.parse_args()))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
