"""The ceilings of bench/kafka_replay.py: bare producer loops over pre-serialised records, each
run in a process of its own by that script.

    python bench/_kafka_loops.py LOOP RECORDS BOOTSTRAP TOPIC

LOOP is `librdkafka` (confluent-kafka `produce()` + `poll(0)`, no headers), `librdkafka-headers`
(the same with the records' headers) or `aiokafka` (`send()` with at most 1,000 sends in
flight, awaiting the oldest, linger 0, headers). RECORDS is a pickle of `(key, value, headers)`
tuples. Both libraries run with their defaults apart from `acks=all` (and no idempotence, which
Tansu does not grant). The topic must exist.

Prints one JSON line: events, loop seconds and CPU seconds (the send loop up to the last
delivery report, after a warm-up send), RSS before the loop and the peak after it (MiB). The
records are loaded and frozen out of the garbage collector first, so the loop's figures are
the loop's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import re
import resource
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

Wire = list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]


def _status_mib(field: str) -> float:
    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    return int(found.group(1)) / 1024 if found else 0.0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread: librdkafka's too
    return usage.ru_utime + usage.ru_stime


def librdkafka(bootstrap: str, topic: str, records: Wire, with_headers: bool) -> tuple[float, float]:
    from confluent_kafka import Producer

    failures: list[Any] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False})
    producer.produce(topic, b"warm-up", on_delivery=delivered)
    producer.flush(30)
    produce, poll = producer.produce, producer.poll
    began, cpu = time.perf_counter(), _cpu()
    for key, value, headers in records:
        while True:
            try:
                if with_headers:
                    produce(topic, value, key, headers=headers, on_delivery=delivered)
                else:
                    produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:  # librdkafka's queue is full: serve delivery reports
                poll(0.05)
        poll(0)
    left = producer.flush(300)
    seconds, cpu = time.perf_counter() - began, _cpu() - cpu
    if left or failures:
        raise SystemExit(f"librdkafka: {left} records not delivered, {len(failures)} failed: {failures[:1]}")
    return seconds, cpu


async def aiokafka(bootstrap: str, topic: str, records: Wire, in_flight: int = 1000) -> tuple[float, float]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        began, cpu = time.perf_counter(), _cpu()
        pending: deque[asyncio.Future[Any]] = deque()
        for key, value, headers in records:
            if len(pending) >= in_flight:
                await pending.popleft()
            pending.append(await producer.send(topic, value, key=key, headers=headers))
        for future in pending:
            await future
        return time.perf_counter() - began, _cpu() - cpu
    finally:
        await producer.stop()


def main() -> None:
    loop, records_path, bootstrap, topic = sys.argv[1:5]
    records: Wire = pickle.loads(Path(records_path).read_bytes())
    gc.collect()
    gc.freeze()  # a million records in the heap would make every collection of the loop walk them
    rss_before = _status_mib("VmRSS")
    if loop == "aiokafka":
        seconds, cpu = asyncio.run(aiokafka(bootstrap, topic, records))
    elif loop in ("librdkafka", "librdkafka-headers"):
        seconds, cpu = librdkafka(bootstrap, topic, records, with_headers=loop == "librdkafka-headers")
    else:
        raise SystemExit(f"unknown loop {loop!r}")
    print(json.dumps({"events": len(records), "seconds": seconds, "cpu": cpu,
                      "rss_before_mb": rss_before, "hwm_mb": _status_mib("VmHWM")}))  # fmt: skip


if __name__ == "__main__":
    main()
