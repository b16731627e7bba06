"""End-to-end presence latency over MQTT: from a presence change in the simulator to the retained
message at a subscriber on `facespace/<camera>/presence` (target: p99 <= refresh + 25 ms).

    .venv/bin/python bench/mqtt_presence_latency.py [--samples 200] [--refresh 0.1]

1. Starts Mosquitto and the simulator in its own process with a frozen clock, so
   `/recognition` answers the same until the clock moves. The same world is built here
   (same seed and config; it is deterministic), so this process knows every presence
   transition in advance.
2. Runs `facespace-bridge run --broker mqtt --refresh R --presence-timeout 0
   --no-ha-discovery` and a paho subscriber on `facespace/+/presence`.
3. Per sample: jumps the simulator's clock (`POST /admin/clock {"now": ...}`) to the next
   second at which some camera's set of people changes; the change is taken to happen when
   that request is sent (so a latency includes the admin request's round trip, reported
   below: an over-estimate by at most that). The latency of each camera that changed is the
   arrival, at the subscriber, of a presence message with exactly the new set of people.
   Then a random pause of up to 2 x R, so changes fall at random phases of the poll.

Why `--presence-timeout 0`: with it the published presence is exactly the last poll's
answer, so every change, arrival or departure, is published by the first poll that sees
it. With the default (30 s) arrivals take the very same path (published by the first poll
that sees them) but a departure is held back 30 s on purpose, to ride out recognition
flicker: that is debouncing, not latency. Arrivals and departures are reported separately.

The poll interval is reported beside the figures: R as configured, and as measured from
the simulator's count of `/recognition` requests over the run.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import API_KEY, CLI, admin, admin_url, child_env, start_simulator, stop, wait_until

from facespace_bridge.embedded import MqttBroker
from facespace_bridge.simulator import World, WorldConfig

NOW = datetime(2023, 10, 25, 12, tzinfo=timezone.utc)
SLACK = 0.025  # the target: p99 <= refresh + 25 ms
WAIT = 5.0  # longest wait for one change's message


@dataclass
class Arrivals:
    """Presence messages seen by the subscriber: (camera, people) -> arrival times."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: dict[tuple[str, frozenset[str]], list[float]] = field(default_factory=dict)

    def on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        now = time.perf_counter()
        fields = orjson.loads(message.payload)
        key = (fields["camera_id"], frozenset(fields["people"]))
        with self.lock:
            self.seen.setdefault(key, []).append(now)

    def first_after(self, key: tuple[str, frozenset[str]], moment: float) -> float | None:
        with self.lock:
            return next((t for t in self.seen.get(key, []) if t >= moment), None)


def world_config(cameras: int, people: int, visits: float) -> WorldConfig:
    return WorldConfig(
        seed=3, cameras=cameras, people=people, visits_per_hour=visits, history_hours=2, now=NOW, speed=0.0
    )


def next_change(
    world: World, at: datetime, current: dict[str, frozenset[str]], limit: int = 3600
) -> tuple[datetime, dict[str, frozenset[str]]]:
    """The first second after `at` whose presence differs from `current`, and the cameras that
    changed with their new sets."""
    for step in range(1, limit + 1):
        moment = at + timedelta(seconds=step)
        present = {camera: frozenset(names) for camera, names in world.present(moment).items()}
        changed = {camera: names for camera, names in present.items() if names != current.get(camera)}
        if changed:
            return moment, changed
    raise SystemExit(f"no presence change within {limit} s of {at}")


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def recognition_requests(api_url: str) -> int:
    stats = admin(api_url, "GET", "stats")["requests"]
    return sum(
        count for path, codes in stats.items() if path.endswith("recognition") for count in codes.values()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=200, help="clock jumps (each changes >= 1 camera)")
    parser.add_argument("--refresh", type=float, default=0.1, help="the bridge's --refresh")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--visits-per-hour", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1, help="seed of the pauses between changes")
    options = parser.parse_args()
    config = world_config(options.cameras, options.people, options.visits_per_hour)
    world = World(config)
    pauses = random.Random(options.seed)

    arrivals = Arrivals()
    latencies: dict[str, list[float]] = {"arrival": [], "departure only": []}
    round_trips: list[float] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        broker = MqttBroker(workdir)
        simulator: subprocess.Popen[str] | None = None
        bridge: subprocess.Popen[bytes] | None = None
        watcher = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-presence-latency")
        # One kept-alive connection: the clock jump's round trip is part of every latency.
        session = httpx.Client(headers={"x-api-key": API_KEY}, timeout=10)
        try:
            broker.start()
            simulator, api_url = start_simulator([
                "--seed", str(config.seed), "--cameras", str(config.cameras), "--people", str(config.people),
                "--visits-per-hour", str(config.visits_per_hour),
                "--history-hours", str(config.history_hours), "--now", NOW.isoformat(), "--speed", "0",
            ])  # fmt: skip
            clock_url = f"{admin_url(api_url)}/clock"
            watcher.on_message = arrivals.on_message
            watcher.connect(broker.host, broker.port)
            watcher.subscribe("facespace/+/presence", qos=1)
            watcher.loop_start()

            log_path = workdir / "bridge.log"
            with open(log_path, "wb") as log_file:
                bridge = subprocess.Popen(
                    [*CLI, "run", "--broker", "mqtt", "--mqtt-url", broker.url,
                     "--refresh", str(options.refresh), "--presence-timeout", "0", "--no-ha-discovery",
                     "--checkpoint", str(workdir / "checkpoint.json"), "--log-level", "warning"],
                    env=child_env(api_url), stdout=log_file, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )  # fmt: skip
            at = NOW
            current = {camera: frozenset(names) for camera, names in world.present(at).items()}
            # Ready when the retained presence of every camera at the start has arrived.
            wait_until(
                lambda: bridge is not None
                and (bridge.poll() is not None or all(arrivals.first_after(k, 0) for k in current.items())),
                60, 0.05, "the initial presence of every camera",
            )  # fmt: skip
            if bridge.poll() is not None:
                raise SystemExit(f"the bridge exited {bridge.returncode}: {log_path.read_text()[-2000:]}")
            time.sleep(1.0)
            requests_before, began = recognition_requests(api_url), time.perf_counter()
            for _ in range(options.samples):
                at, changed = next_change(world, at, current)
                sent = time.perf_counter()
                session.post(clock_url, json={"now": at.isoformat()}).raise_for_status()
                round_trips.append(time.perf_counter() - sent)
                for camera, people in changed.items():
                    kind = "arrival" if people - current.get(camera, frozenset()) else "departure only"
                    key = (camera, people)
                    deadline = sent + WAIT
                    while (
                        arrived := arrivals.first_after(key, sent)
                    ) is None and time.perf_counter() < deadline:
                        time.sleep(0.0005)
                    if arrived is None:
                        raise SystemExit(
                            f"no presence message for {camera} {sorted(people)} within {WAIT:g} s"
                        )
                    latencies[kind].append(arrived - sent)
                    current[camera] = people
                time.sleep(pauses.uniform(0, 2 * options.refresh))
            elapsed = time.perf_counter() - began
            polls = recognition_requests(api_url) - requests_before
        finally:
            if bridge is not None:
                code = stop(bridge)
                if code not in (0, None):
                    print(f"the bridge exited {code} at SIGTERM", file=sys.stderr)
            session.close()
            watcher.disconnect()
            watcher.loop_stop()
            stop(simulator)
            broker.stop()

    every = [*latencies["arrival"], *latencies["departure only"]]
    print(f"\nMQTT presence latency, {options.samples} clock jumps, {len(every)} camera changes; "
          f"--refresh {options.refresh:g} --presence-timeout 0 --no-ha-discovery\n")  # fmt: skip
    print("| changes | n | p50 ms | p99 ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in (("all", every), *latencies.items()):
        if values:
            print(f"| {name} | {len(values)} | {1000 * statistics.median(values):.1f} "
                  f"| {1000 * nearest_rank(values, 0.99):.1f} | {1000 * max(values):.1f} |")  # fmt: skip
    measured = f"{1000 * elapsed / polls:.1f} ms measured ({polls} /recognition requests in {elapsed:.1f} s)"
    print(f"\npoll interval: {1000 * options.refresh:.0f} ms configured, {measured}")
    trip = statistics.median(round_trips)
    print(f"clock jump round trip (included in each latency): median {1000 * trip:.1f} ms, "
          f"max {1000 * max(round_trips):.1f} ms")  # fmt: skip
    p99 = nearest_rank(every, 0.99)
    limit = options.refresh + SLACK
    verdict = "met" if p99 <= limit else "MISSED"
    print(f"p99 {1000 * p99:.1f} ms (target <= refresh + 25 ms = {1000 * limit:.0f} ms): {verdict}")


if __name__ == "__main__":
    main()
