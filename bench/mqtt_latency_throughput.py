"""MQTT: sighting throughput at QoS 1 into Mosquitto, the sink against its ceilings.
(Presence latency: bench/mqtt_presence_latency.py.)

    .venv/bin/python bench/mqtt_latency_throughput.py [--count N] [--repeats R]

Throughput: the same N sighting payloads, in the same run, against one fresh Mosquitto:
  * `mosquitto_pub -l -q 1` (C, libmosquitto): the ceiling;
  * a bare paho-mqtt loop (publish all at QoS 1, wait for every PUBACK): paho's ceiling,
    with 20 and with 1,000 messages in flight;
  * the MqttSink (`publish` + wait for every ack), Home Assistant discovery off (the
    per-person event feed doubles the messages; a row with it on is shown too).
Every run is counted at a subscriber (`mosquitto_sub -C N`, distinct event ids): a
publisher that exits 0 having sent only part is reported, not trusted. The time is from
the first publish to the subscriber's last message. Median of R rounds; each round runs
every row once, so load from other processes on a shared machine spreads evenly.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo's tests/ for the broker

from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, sighting_event
from facespace_bridge.sinks.mqtt import MqttSettings, MqttSink, TopicLayout
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant, HomeAssistantSettings
from tests.fixtures.mqtt import MqttBroker

CAMERA = "Camera1"


def make_events(count: int) -> list[Event]:
    t0 = datetime(2023, 10, 23, tzinfo=timezone.utc)
    people = [f"Person{i}" for i in range(10)]
    return [
        sighting_event(LogEntry(CAMERA, people[i % 10], t0 + timedelta(seconds=i // 10), "raw"), 0)
        for i in range(count)
    ]


class Counter:
    """`mosquitto_sub` (C) counting what arrives: never the bottleneck, never trusting the sender."""

    def __init__(self, broker: MqttBroker, topic: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [
                "mosquitto_sub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-t",
                topic,
                "-q",
                "1",
                "-C",
                str(count),
                "-W",
                "120",
                "-i",
                f"bench-counter-{os.getpid()}-{time.monotonic_ns()}",
            ],
            stdout=subprocess.PIPE,
        )
        self.lines: list[bytes] = []
        self.ended = 0.0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.3)  # let it subscribe before anything is published

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            self.ended = time.perf_counter()
        self.proc.wait()

    def finish(self) -> int:
        self._reader.join(130)
        return len({orjson.loads(line)["event_id"] for line in self.lines if line.strip()})


def run_mosquitto_pub(broker: MqttBroker, events: list[Event], topic: str) -> float:
    with tempfile.NamedTemporaryFile("wb", suffix=".lines", delete=False) as handle:
        handle.write(b"\n".join(e.payload for e in events) + b"\n")
    start = time.perf_counter()
    with open(handle.name, "rb") as lines:
        code = subprocess.run(
            ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-t", topic, "-q", "1", "-l"],
            stdin=lines,
            check=False,
        ).returncode
    os.unlink(handle.name)
    if code:
        print(f"  mosquitto_pub exited {code}", file=sys.stderr)
    return start


def run_paho(broker: MqttBroker, events: list[Event], topic: str, inflight: int) -> float:
    done = threading.Event()
    acked = [0]

    def on_publish(*_: object) -> None:
        acked[0] += 1
        if acked[0] == len(events):
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{inflight}")
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(broker.host, broker.port)
    client.loop_start()
    start = time.perf_counter()
    for event in events:
        client.publish(topic, event.payload, qos=1)
    done.wait(120)
    client.disconnect()
    client.loop_stop()
    return start


def run_sink(broker: MqttBroker, events: list[Event], prefix: str, inflight: int, ha: bool) -> float:
    async def main() -> float:
        # With Home Assistant on, every sighting also feeds its person's event entity (the
        # history gate opened wide: these sightings are from 2023), so two messages each.
        gate_open = HomeAssistantSettings(event_max_age=1e12)
        extensions = [HomeAssistant(TopicLayout(prefix), gate_open)] if ha else []
        settings = MqttSettings(
            url=broker.url,
            topic_prefix=prefix,
            max_inflight=inflight,
            client_id=f"bench-sink-{prefix.replace('/', '-')}",
        )
        sink = MqttSink(settings, extensions=extensions)
        await sink.start()
        if ha:
            await sink.announce([CAMERA], sorted({e.fields["person"] for e in events}))
        start = time.perf_counter()
        acks = [await sink.publish([e]) for e in events]
        for ack in acks:
            await ack
        await sink.close()
        return start

    return asyncio.run(main())


def throughput(count: int, repeats: int) -> list[tuple[str, float, str]]:
    events = make_events(count)
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as workdir:
        broker = MqttBroker(Path(workdir))
        broker.start()
        try:
            methods: list[tuple[str, Callable[[str], float], str]] = [
                ("mosquitto_pub -l -q 1", lambda t: run_mosquitto_pub(broker, events, t), "t"),
                ("bare paho loop, 20 in flight", lambda t: run_paho(broker, events, t, 20), "t"),
                ("bare paho loop, 1000 in flight", lambda t: run_paho(broker, events, t, 1000), "t"),
                ("MqttSink, 20 in flight", lambda p: run_sink(broker, events, p, 20, False), "p"),
                ("MqttSink, 100 in flight (default)", lambda p: run_sink(broker, events, p, 100, False), "p"),
                (
                    "MqttSink, HA discovery on (2 msgs/sighting)",
                    lambda p: run_sink(broker, events, p, 100, True),
                    "p",
                ),
            ]
            rates: dict[str, list[float]] = {name: [] for name, _, _ in methods}
            notes: dict[str, set[str]] = {name: set() for name, _, _ in methods}
            # Round-robin: the machine is shared, so every row sees the same spread of load.
            for attempt in range(repeats):
                for index, (name, run, kind) in enumerate(methods):
                    base = f"bench/m{index}r{attempt}"
                    topic = f"{base}/{CAMERA}/sighting"
                    counter = Counter(broker, topic, count)
                    start = run(topic if kind == "t" else base)
                    arrived = counter.finish()
                    if arrived < count:
                        notes[name].add(f"only {arrived}/{count} arrived")
                    rates[name].append(arrived / (counter.ended - start) if counter.ended > start else 0.0)
                    print(f"  {name}: {rates[name][-1]:,.0f} sightings/s", file=sys.stderr)
            for name, _, _ in methods:
                rows.append((name, statistics.median(rates[name]), "; ".join(sorted(notes[name]))))
        finally:
            broker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = throughput(args.count, args.repeats)
    ceiling = dict((n, r) for n, r, _ in rows)
    pub = ceiling["mosquitto_pub -l -q 1"]
    paho20 = ceiling["bare paho loop, 20 in flight"]
    runs = f"median of {args.repeats}"
    print(f"\nQoS 1, {args.count:,} sightings (~180 bytes), {runs}, counted at a subscriber\n")
    print("| publisher | sightings/s | vs bare paho (20) | vs mosquitto_pub | note |")
    print("|---|---:|---:|---:|---|")
    for name, rate, note in rows:
        print(f"| {name} | {rate:,.0f} | {rate / paho20:.0%} | {rate / pub:.0%} | {note} |")


if __name__ == "__main__":
    main()
