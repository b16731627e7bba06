"""What reaches Home Assistant's event entities when the bridge starts with an hour of history,
and how many retained discovery configs each discovery form publishes.

    .venv/bin/python bench/ha_history_events.py [--seconds 45] [--bridge-root DIR]

1. Mosquitto and the simulator (its own process) on the real clock: 3 cameras, 8 people,
   1,800 visits per camera-hour, 2 hours of history.
2. `facespace-bridge run --broker mqtt --backfill-from <1 h ago> --tail-interval 1`, as a new
   user starts it, for `--seconds`; a subscriber counts every message on
   `facespace/person/+/sighting` (the topics of the per-person `event` entities, each message
   of which fires the entity and every automation on it) by the age of its sighting at the
   bridge's start, and the data topics `facespace/+/sighting`.
3. `replay --broker mqtt` of the same hour: the same count.
4. The retained configs for the simulator's default world (4 cameras, 20 people) in each form.

`--bridge-root DIR` runs the bridge of another checkout (e.g. a `git worktree` of an older
commit) for a before/after comparison; the count of step 2 is what differs.
Not a timed test: it prints figures.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _bridge_harness import child_env, start_simulator, stop  # noqa: E402

from facespace_bridge.embedded import MqttBroker  # noqa: E402
from facespace_bridge.simulator._world import World, WorldConfig  # noqa: E402
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant, HomeAssistantSettings  # noqa: E402
from facespace_bridge.sinks.mqtt.topics import TopicLayout  # noqa: E402


class Counter:
    """Counts messages on the event and data topics, by the age of their sighting."""

    def __init__(self, broker: MqttBroker, started: datetime) -> None:
        self.started = started
        self.events_old = self.events_recent = self.data = 0
        self.lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
        self.client.on_message = self.on_message
        self.client.connect(broker.host, broker.port)
        self.client.subscribe([("facespace/person/+/sighting", 1), ("facespace/+/sighting", 1)])
        self.client.loop_start()

    def on_message(self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage) -> None:
        with self.lock:
            if message.topic.split("/")[1] != "person":
                self.data += 1
                return
            seen_at = datetime.fromisoformat(orjson.loads(message.payload)["seen_at"].replace("Z", "+00:00"))
            if seen_at < self.started - timedelta(minutes=10):
                self.events_old += 1
            else:
                self.events_recent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run_bridge(args: list[str], root: Path, api_url: str, seconds: float, log: Path) -> None:
    env = child_env(api_url) | {"PYTHONPATH": str(root)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facespace_bridge", *args], env=env, stdout=out, stderr=out, cwd=root
        )
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=45.0, help="how long the bridge runs")
    parser.add_argument("--bridge-root", type=Path, default=HERE.parent, help="checkout whose bridge runs")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ha-history-"))
    (work / "mqtt").mkdir()
    broker = MqttBroker(work / "mqtt").start()
    flags = ["--cameras", "3", "--people", "8", "--visits-per-hour", "1800", "--history-hours", "2"]
    simulator, api_url = start_simulator(flags)
    rows = []
    try:
        for name, command in [
            ("run --backfill-from <1 h ago>", ["run", "--checkpoint", str(work / "checkpoint.json")]),
            ("replay of the same hour", ["replay"]),
        ]:
            started = datetime.now(timezone.utc)
            hour_ago = (started - timedelta(hours=1)).strftime("%H:%M %d/%m/%y")
            if command[0] == "run":
                command += ["--backfill-from", hour_ago, "--tail-interval", "1"]
            else:
                command += ["--start-time", hour_ago, "--end-time", started.strftime("%H:%M %d/%m/%y")]
            command += ["--broker", "mqtt", "--mqtt-url", broker.url]
            counter = Counter(broker, started)
            run_bridge(command, options.bridge_root, api_url, options.seconds, work / f"{command[0]}.log")
            time.sleep(1)
            counter.close()
            rows.append((name, counter.data, counter.events_old, counter.events_recent))
    finally:
        stop(simulator)
        broker.stop()

    print(f"\nbridge from {options.bridge_root}, {options.seconds:g} s each, {datetime.now():%Y-%m-%d %H:%M}")
    print(
        "\n| run | data-topic sightings | event-entity messages, sighting > 10 min before start "
        "| same, newer |"
    )
    print("|---|---:|---:|---:|")
    for name, data, old, recent in rows:
        print(f"| {name} | {data:,} | {old:,} | {recent:,} |")

    world = World(WorldConfig())
    cameras, people = world.cameras(), world.people()
    print(f"\nretained discovery configs, default world ({len(cameras)} cameras, {len(people)} people):")
    print("\n| --ha-discovery-mode | configs | bytes |\n|---|---:|---:|")
    for mode in ("entity", "device"):
        discovery = HomeAssistant(TopicLayout("facespace"), HomeAssistantSettings(mode=mode))
        configs = discovery.configs(cameras, people)
        print(f"| {mode} | {len(configs)} | {sum(map(len, configs.values())):,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
