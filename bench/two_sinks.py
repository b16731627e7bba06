"""`replay --broker kafka --broker mqtt` against each sink alone, in one run (target: two sinks
>= 80 % of the slower one alone).

    .venv/bin/python bench/two_sinks.py [--count 300000] [--rounds 1] [--client librdkafka]

1. Starts Tansu (memory storage), Mosquitto and the simulator (its own process) with a frozen
   world of about `--count` sightings in 48 hours (10 cameras, 40 people), every hour of it
   generated before the first run.
2. Rows, each a `facespace-bridge replay` of the whole range at the sinks' default settings
   (`--kafka-client CLIENT` where this build has the flag): `--broker kafka`, `--broker mqtt`,
   and both. Wall time from spawn to exit (the summary comes once every event is acknowledged
   by every sink), CPU seconds (wait4) and peak RSS (VmHWM).
3. Every run is counted by the brokers' own tools: the Kafka topic's size (Fetch high
   watermark), and `mosquitto_sub` subscribed to `<prefix>/+/sighting` before the run
   (distinct event ids); both must equal the world's ground truth. Each run has its own topic
   and MQTT topic prefix; its topics are deleted after it.
With `--rounds N` the order of the rows is reversed every other round.

Not a timed test: it prints figures side by side.
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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    CLI,
    Probe,
    admin,
    child_env,
    kafka_client_flags,
    run_measured,
    start_simulator,
    stop,
    topic_size,
    usable_clients,
)

from facespace_bridge.embedded import MqttBroker, TansuBroker

START = datetime(2023, 10, 23, tzinfo=timezone.utc)
HOURS = 48
END = START + timedelta(hours=HOURS)
CAMERAS = 10
PARTITIONS = 3
RUN_TIMEOUT = 900.0
TARGET = 0.80  # both sinks >= 80 % of the slower one alone
ROWS = {"kafka": ("kafka",), "mqtt": ("mqtt",), "kafka + mqtt": ("kafka", "mqtt")}


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    cpu: float
    hwm_mb: float
    broker_cpu: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class SightingCounter:
    """`mosquitto_sub` on the run's sighting topics: what reached the broker, counted by the
    broker's own client rather than trusted from the publisher."""

    def __init__(self, broker: MqttBroker, prefix: str, count: int) -> None:
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-t", f"{prefix}/+/sighting",
             "-q", "1", "-C", str(count), "-W", str(int(RUN_TIMEOUT)),
             "-i", f"bench-two-sinks-{os.getpid()}-{time.monotonic_ns()}"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.lines: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        time.sleep(0.5)  # subscribed before anything is published

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
        self.proc.wait()

    def distinct(self, timeout: float = 60.0) -> int:
        self._reader.join(timeout)
        if self._reader.is_alive():
            stop(self.proc)
            self._reader.join(10)
        return len({orjson.loads(line)["event_id"] for line in self.lines if line.strip()})


async def delete_topics(bootstrap: str, prefix: str) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        gone = [t for t in await client.list_topics() if t.startswith(prefix)]
        if gone:
            await client.delete_topics(gone)
    finally:
        await client.close()


def replay(
    api_url: str, tansu: TansuBroker, mqtt: MqttBroker, sinks: tuple[str, ...], name: str, run_id: str,
    client: str, truth: int,
) -> Run:  # fmt: skip
    topic = f"bench.{run_id}"
    command = [*CLI, "replay", "--start-time", iso(START), "--end-time", iso(END - timedelta(seconds=1)),
               "--no-progress", "--log-level", "warning"]  # fmt: skip
    for sink in sinks:
        command += ["--broker", sink]
    if "kafka" in sinks:
        command += ["--bootstrap-servers", tansu.bootstrap, *kafka_client_flags(client), "--topic", topic,
                    "--deadletter-topic", f"{topic}.deadletter", "--partitions", str(PARTITIONS)]  # fmt: skip
    if "mqtt" in sinks:
        command += ["--mqtt-url", mqtt.url, "--topic-prefix", run_id]
    assert tansu.proc is not None and mqtt.proc is not None
    probes = {"Tansu": Probe(tansu.proc.pid), "Mosquitto": Probe(mqtt.proc.pid)}
    before = {name: probe.cpu() for name, probe in probes.items()}
    counter = SightingCounter(mqtt, run_id, truth) if "mqtt" in sinks else None
    measured = run_measured(command, child_env(api_url), RUN_TIMEOUT)
    done = measured.finished
    if done.code != 0:
        raise SystemExit(f"{name} exited {done.code}: {measured.stdout}{measured.stderr[-3000:]}")
    broker_cpu = {name: probe.cpu() - before[name] for name, probe in probes.items()}
    published = int(measured.stdout.split()[1])
    counts = {"the replay's summary": published}
    if "kafka" in sinks:
        counts["the Kafka topic"] = asyncio.run(topic_size(tansu.bootstrap, topic))
        asyncio.run(delete_topics(tansu.bootstrap, topic))
    if counter is not None:
        counts["mosquitto_sub"] = counter.distinct()
    wrong = {where: n for where, n in counts.items() if n != truth}
    if wrong:
        raise SystemExit(f"{name}: truth {truth:,} sightings, but {wrong}")
    return Run(name, published, done.seconds, done.cpu, done.hwm_mb, broker_cpu)


def table(runs: list[Run], slower: float) -> str:
    lines = [
        "| `replay --broker` | events | s | events/s | of the slower alone | CPU µs/event | peak RSS MiB "
        "| Tansu CPU s | Mosquitto CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} | {100 * r.rate / slower:.0f} % "
            f"| {1e6 * r.cpu / r.events:.1f} | {r.hwm_mb:.0f} | {r.broker_cpu['Tansu']:.1f} "
            f"| {r.broker_cpu['Mosquitto']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300_000, help="about this many sightings")
    parser.add_argument("--rounds", type=int, default=1, help="every row once per round")
    parser.add_argument("--client", default="librdkafka", help="the bridge's Kafka client (--kafka-client)")
    options = parser.parse_args()
    client = usable_clients([options.client])[0]

    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        tansu = TansuBroker(workdir / "tansu")
        mqtt = MqttBroker(workdir)
        (workdir / "tansu").mkdir()
        simulator = None
        try:
            tansu.start()
            tansu.wait_for_metadata()
            mqtt.start()
            visits = options.count / (CAMERAS * HOURS)
            simulator, api_url = start_simulator([
                "--seed", "11", "--cameras", str(CAMERAS), "--people", "40", "--history-hours", str(HOURS),
                "--visits-per-hour", str(visits), "--now", iso(END), "--speed", "0",
            ])  # fmt: skip
            # The admin API's end is inclusive, like --end-time: the replays' range is [START, END - 1 s].
            last = iso(END - timedelta(seconds=1))
            truth = admin(api_url, "GET", f"truth?start={iso(START)}&end={last}&count_only=1")["count"]
            print(f"Tansu at {tansu.bootstrap}, Mosquitto at {mqtt.url}; {truth:,} sightings; "
                  f"Kafka client: {client}", file=sys.stderr)  # fmt: skip
            for round_index in range(options.rounds):
                order = list(ROWS) if round_index % 2 == 0 else list(ROWS)[::-1]
                for name in order:
                    run_id = f"two{round_index}{name.replace(' + ', '').replace(' ', '')}"
                    run = replay(api_url, tansu, mqtt, ROWS[name], name, run_id, client, truth)
                    runs.append(run)
                    print(f"  {name}: {run.rate:,.0f} events/s", file=sys.stderr)
        finally:
            stop(simulator)
            mqtt.stop()
            tansu.stop()

    rates = {name: statistics.median(r.rate for r in runs if r.name == name) for name in ROWS}
    slower_name = min(("kafka", "mqtt"), key=lambda name: rates[name])
    print(f"\nKafka client {client}; sinks at their defaults; median of {options.rounds} round(s)\n")
    print(table(runs, rates[slower_name]))
    share = rates["kafka + mqtt"] / rates[slower_name]
    verdict = "met" if share >= TARGET else "MISSED"
    print(f"\nkafka + mqtt = {100 * share:.0f} % of {slower_name} alone, the slower one "
          f"(target >= {100 * TARGET:.0f} %): {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
