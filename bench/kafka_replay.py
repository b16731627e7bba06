"""`facespace-bridge replay` into Kafka (Tansu) against two ceilings, in one run.

    .venv/bin/python bench/kafka_replay.py [--sightings 1000000] [--small 500000] [--tune]

1. Starts Tansu (memory storage, no relay) and the simulator (`facespace-bridge simulate`,
   a separate process) with a frozen world of about `--sightings` sightings in one range.
2. Runs `facespace-bridge replay` as a subprocess over a small range and the full range;
   events/s from its wall time, CPU seconds and peak RSS from the kernel (wait4 rusage).
   The published count is checked against the world's ground truth.
3. Reads the full range's records back (key, value, headers) and sends those identical
   pre-serialised records to fresh topics of the same broker with
   - a bare aiokafka loop: `send()` with about 1,000 sends in flight, linger 0, acks=all;
   - a confluent-kafka (librdkafka) loop: `produce()` + `poll(0)`, acks=all.
4. `--tune` also runs the sink's settings matrix (linger, batch size, in-flight bound) on
   the same records: how the sink's defaults were chosen.

Not a timed test: it prints figures side by side. The 2 cores are shared by the replay,
the simulator and the broker, as they would be on a small host.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' broker launcher

from facespace_bridge.events import Event  # noqa: E402
from facespace_bridge.simulator import World, WorldConfig  # noqa: E402
from facespace_bridge.sinks.kafka import KafkaSettings, KafkaSink  # noqa: E402
from tests.fixtures.kafka import Record, read_all, start_tansu  # noqa: E402

CLI = [sys.executable, "-m", "facespace_bridge"]
API_KEY = "bench-key"
NOW = datetime(2023, 10, 26, tzinfo=timezone.utc)
START = datetime(2023, 10, 23, tzinfo=timezone.utc)
CAMERAS = 10
HOURS = 48  # the full range; visits per hour are sized to give --sightings in it
PARTITIONS = 3


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    cpu: float | None = None
    rss_mb: float | None = None
    broker_cpu: float | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def world_config(sightings: int) -> WorldConfig:
    return WorldConfig(
        seed=11,
        cameras=CAMERAS,
        people=40,
        history_hours=(NOW - START).total_seconds() / 3600,
        visits_per_hour=sightings / (CAMERAS * HOURS),
        now=NOW,
        speed=0.0,
    )


def start_simulator(config: WorldConfig) -> tuple[subprocess.Popen[str], str]:
    from facespace_bridge.simulator import SimulatorProcess

    simulator = SimulatorProcess(
        API_KEY, seed=config.seed, cameras=config.cameras, people=config.people,
        history_hours=config.history_hours, visits_per_hour=config.visits_per_hour, now=NOW, speed=0,
    ).start()  # fmt: skip
    assert simulator.proc is not None
    return simulator.proc, simulator.base_url


# Measures its child: the kernel carries a process's peak RSS across fork+exec, so the child
# of a big parent would report the parent's size. This launcher is small and imports nothing.
_LAUNCHER = """
import json, os, sys, time
began = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"code": os.waitstatus_to_exitcode(status), "seconds": time.perf_counter() - began,
               "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}, out)
"""


def replay(api_url: str, bootstrap: str, topic: str, end: datetime, broker_pid: int | None) -> Run:
    """One `facespace-bridge replay` subprocess; wall time, CPU and peak RSS from its rusage."""
    env = {**os.environ, "FACESPACE_API_KEY": API_KEY, "FACESPACE_API_URL": api_url}
    last = (end - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")  # the end is inclusive
    args = [
        *CLI, "replay", "--start-time", START.strftime("%Y-%m-%dT%H:%M:%SZ"), "--end-time", last,
        "--broker", "kafka", "--bootstrap-servers", bootstrap, "--topic", topic,
        "--partitions", str(PARTITIONS), "--no-progress", "--log-level", "warning",
    ]  # fmt: skip
    broker = psutil.Process(broker_pid) if broker_pid else None
    broker_before = sum(broker.cpu_times()[:2]) if broker else 0.0
    with tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch) / "rusage.json"
        result = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(figures), *args], env=env, capture_output=True, text=True
        )
        usage = json.loads(figures.read_text()) if figures.exists() else {"code": result.returncode}
    if usage["code"] != 0:
        raise SystemExit(f"replay failed ({usage['code']}): {result.stdout}{result.stderr}")
    published = int(result.stdout.split()[1])
    return Run(
        f"replay {published:,}",
        published,
        usage["seconds"],
        cpu=usage["cpu"],
        rss_mb=usage["rss_mb"],
        broker_cpu=(sum(broker.cpu_times()[:2]) - broker_before) if broker else None,
    )


def ground_truth(config: WorldConfig, ends: list[datetime]) -> list[int]:
    """Sightings in [START, end) per end, counted in a separate process so that this one stays
    small (the world's bucket cache is hundreds of MB)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_count, config, ends).result()


def _count(config: WorldConfig, ends: list[datetime]) -> list[int]:
    world = World(config)
    return [world.count(START, end - timedelta(seconds=1)) for end in ends]


async def delete_topic(bootstrap: str, topic: str) -> None:
    """Tansu's memory storage slows down as it fills (a bare loop: 118k/s on an empty broker,
    87k/s after 1.2M records), so every run starts from an empty broker."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


async def create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()


Wire = list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]


def as_wire(records: list[Record]) -> Wire:
    return [(r.key, r.value, list(r.headers.items())) for r in records]


class CpuTimer:
    """CPU seconds of this process and of the broker over a block."""

    def __init__(self, broker_pid: int | None) -> None:
        self.broker = psutil.Process(broker_pid) if broker_pid else None

    def __enter__(self) -> CpuTimer:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self._cpu = usage.ru_utime + usage.ru_stime
        self._broker = sum(self.broker.cpu_times()[:2]) if self.broker else 0.0
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = usage.ru_utime + usage.ru_stime - self._cpu
        self.broker_cpu = (sum(self.broker.cpu_times()[:2]) - self._broker) if self.broker else None


async def bare_aiokafka(
    bootstrap: str, topic: str, wire: Wire, timer: CpuTimer, in_flight: int = 1000
) -> None:
    """Times only the send loop: the topic exists and the producer knows its partitions."""
    await create_topic(bootstrap, topic)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"warm-up")
        with timer:
            pending: deque[asyncio.Future[object]] = deque()
            for key, value, headers in wire:
                if len(pending) >= in_flight:
                    await pending.popleft()
                pending.append(await producer.send(topic, value, key=key, headers=headers))
            for future in pending:
                await future
    finally:
        await producer.stop()


def confluent(bootstrap: str, topic: str, wire: Wire, timer: CpuTimer) -> None:
    """Times only the produce loop and the final flush (every delivery report back)."""
    from confluent_kafka import Producer

    asyncio.run(create_topic(bootstrap, topic))
    failures: list[object] = []

    def delivered(error: object, _message: object) -> None:
        if error is not None:
            failures.append(error)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False})
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    with timer:
        for key, value, headers in wire:
            while True:
                try:
                    producer.produce(topic, value, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: serve delivery reports
                    producer.poll(0.05)
            producer.poll(0)
        left = producer.flush(120)
    del producer
    if left or failures:
        raise SystemExit(f"confluent-kafka: {left} records not delivered, {len(failures)} failed")


async def sink_rate(bootstrap: str, topic: str, events: list[Event], **settings: int) -> float:
    sink = KafkaSink(KafkaSettings(bootstrap_servers=bootstrap, topics={"sighting": topic}, **settings))
    await sink.start()
    try:
        await (await sink.publish(events[0]))  # topic created, partitions known
        began = time.perf_counter()
        for event in events:
            await sink.publish(event)
        await sink.flush()
        return len(events) / (time.perf_counter() - began)
    finally:
        await sink.close()


def tune(bootstrap: str, wire: Wire, limit: int) -> None:
    events = [
        Event("facespace.sighting/v1", dict(h)["event-id"].decode(), (k or b"").decode(), v or b"", {})
        for k, v, h in wire[:limit]
    ]
    matrix = [
        {"linger_ms": linger, "batch_size": batch, "max_in_flight": in_flight}
        for linger in (0, 5)
        for batch in (16_384, 65_536, 262_144)
        for in_flight in (1000, 4000, 16000)
    ]
    logging.getLogger("facespace_bridge.sinks.kafka").setLevel(logging.ERROR)  # Tansu's idempotence warning
    print(f"\nsink settings, {len(events):,} pre-serialised events, events/s (best of 2):")
    for n, settings in enumerate(matrix):
        rates = [
            asyncio.run(sink_rate(bootstrap, f"bench.tune.{n}.{r}", events, **settings)) for r in range(2)
        ]
        print(f"  linger {settings['linger_ms']:>2} ms  batch {settings['batch_size']:>7,}  "
              f"in flight {settings['max_in_flight']:>5,}:  {max(rates):>9,.0f}")  # fmt: skip


def check(run: Run, truth: int, stored: int) -> None:
    if not run.events == truth == stored:
        raise SystemExit(f"{run.name}: replay said {run.events}, truth {truth}, topic holds {stored}")


def table(runs: list[Run], ceiling: float) -> str:
    lines = [
        "| run | events | s | events/s | % of bare aiokafka | CPU s | peak RSS MB | broker CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        cpu = f"{r.cpu:.1f}" if r.cpu is not None else ""
        rss = f"{r.rss_mb:.0f}" if r.rss_mb is not None else ""
        broker = f"{r.broker_cpu:.1f}" if r.broker_cpu is not None else ""
        lines.append(
            f"| {r.name} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} | {100 * r.rate / ceiling:.0f}% "
            f"| {cpu} | {rss} | {broker} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sightings", type=int, default=1_000_000, help="about this many in the full range")
    parser.add_argument("--small", type=int, default=500_000, help="about this many in the small range")
    parser.add_argument("--tune", action="store_true", help="also run the sink's settings matrix")
    options = parser.parse_args()

    config = world_config(options.sightings)
    full_end = START + timedelta(hours=HOURS)
    small_end = START + timedelta(hours=HOURS * options.small / options.sightings)
    truth_small, truth_full = ground_truth(config, [small_end, full_end])

    with tempfile.TemporaryDirectory() as scratch, start_tansu(Path(scratch), relay=False) as broker:
        bootstrap = broker.bootstrap
        simulator, api_url = start_simulator(config)
        try:
            print(f"Tansu at {bootstrap}; simulator at {api_url}; {truth_full:,} sightings in {HOURS} h")
            runs = [replay(api_url, bootstrap, "bench.replay.small", small_end, broker.pid)]
            # Read back: proof of the count (the Fetch high watermark, see tests/fixtures/kafka.py).
            stored = len(asyncio.run(read_all(bootstrap, "bench.replay.small", timeout=600)))
            check(runs[0], truth_small, stored)
            asyncio.run(delete_topic(bootstrap, "bench.replay.small"))
            runs.append(replay(api_url, bootstrap, "bench.replay.full", full_end, broker.pid))
        finally:
            simulator.terminate()
            simulator.wait(10)
        # The very records the replay wrote, for the ceilings.
        wire = as_wire(asyncio.run(read_all(bootstrap, "bench.replay.full", timeout=600)))
        # A million records in this heap would make every cyclic GC pass of the loops below
        # walk them (the bare loop: 88k/s -> 110k/s frozen): keep them out of the ceilings.
        gc.collect()
        gc.freeze()
        check(runs[1], truth_full, len(wire))
        asyncio.run(delete_topic(bootstrap, "bench.replay.full"))

        bare = CpuTimer(broker.pid)
        asyncio.run(bare_aiokafka(bootstrap, "bench.ceiling.aiokafka", wire, bare))
        runs.append(Run("bare aiokafka loop", len(wire), bare.seconds, bare.cpu, None, bare.broker_cpu))
        asyncio.run(delete_topic(bootstrap, "bench.ceiling.aiokafka"))
        rd = CpuTimer(broker.pid)
        confluent(bootstrap, "bench.ceiling.confluent", wire, rd)
        runs.append(Run("confluent-kafka loop", len(wire), rd.seconds, rd.cpu, None, rd.broker_cpu))
        asyncio.run(delete_topic(bootstrap, "bench.ceiling.confluent"))

        ceiling = runs[2].rate
        print()
        print(table(runs, ceiling))
        target = runs[1].rate / ceiling
        verdict = "met" if target >= 0.6 else "MISSED"
        growth = runs[1].events / runs[0].events
        print(f"\nreplay / bare aiokafka = {100 * target:.0f}% (target >= 60%): {verdict}")
        rss = f"peak RSS {runs[0].rss_mb:.0f} MB -> {runs[1].rss_mb:.0f} MB"
        print(f"{rss} for {growth:.1f}x the range (target < 200 MB, flat)")
        if options.tune:
            tune(bootstrap, wire, 200_000)


if __name__ == "__main__":
    main()
