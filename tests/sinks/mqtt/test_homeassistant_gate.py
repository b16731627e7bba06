"""The Home Assistant event gate (sinks/mqtt/homeassistant.py): history never fires a person's
`event` entity, live sightings do, a replay fires none; the retained last-seen state still
moves forward. Real Mosquitto, the simulator on the real clock, the CLI in a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
import pytest

from facespace_bridge.client import LogEntry
from facespace_bridge.embedded import free_port
from facespace_bridge.events import parse_rfc3339, sighting_event
from facespace_bridge.sinks import Role
from facespace_bridge.sinks.mqtt import from_config
from tests.fixtures.mqtt import MqttBroker, MqttCollector, retained_async
from tests.sinks.mqtt._helpers import ha_for, sink_for

pytestmark = pytest.mark.timeout(120)

EVENT_FEED = "facespace/person/+/sighting"


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


async def test_only_live_sightings_fire_and_history_still_moves_last_seen(mqtt_broker: MqttBroker) -> None:
    live = sighting_event(LogEntry("Camera1", "Alice", now() - timedelta(seconds=30), "raw"), 0)
    old = sighting_event(LogEntry("Camera1", "Bob", now() - timedelta(minutes=20), "raw"), 0)
    with MqttCollector(mqtt_broker, EVENT_FEED) as feed:
        async with sink_for(mqtt_broker, ha=ha_for(event_max_age=300)) as sink:
            await (await sink.publish([old, live]))
            await sink.flush()
            assert sink.details() == {"reconnects": 0, "ha_events_held_back": 1}
            held = await retained_async(mqtt_broker, "facespace/person/+")
        await feed.wait_topic("facespace/person/Alice/sighting")
        await asyncio.sleep(0.5)  # anything else would have arrived by now
        assert [m.topic for m in feed.snapshot()] == ["facespace/person/Alice/sighting"]
    assert held["facespace/person/Bob"] == old.payload  # last seen moves, nothing fires


async def test_a_replay_fires_nothing_and_leaves_home_assistant_and_availability_alone(
    mqtt_broker: MqttBroker,
) -> None:
    config = {"mqtt_url": mqtt_broker.url, "ha_event_max_age": 300.0}
    live = sighting_event(LogEntry("Camera1", "Alice", now(), "raw"), 0)
    with MqttCollector(mqtt_broker, "#") as everything:
        async with from_config(config, role=Role.REPLAY) as sink:
            assert sink.extensions == [] and sink.connection.client_id == "facespace-bridge-facespace-replay"
            await (await sink.publish([live]))
            await sink.flush()
        await everything.wait_topic("facespace/Camera1/sighting")  # the data topic carries it
        await asyncio.sleep(0.5)
    # Data and last seen only: no event entity, no discovery config, no tracker, and no
    # `online`/`offline` of its own on the bridge's availability (a bridge may be running).
    topics = {m.topic for m in everything.snapshot()}
    assert topics == {"facespace/Camera1/sighting", "facespace/person/Alice"}


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


async def test_a_one_hour_backfill_fires_nothing_but_the_live_tail_does(
    simulator_factory, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    # A household's first start: an hour of history, busy cameras, the real clock.
    sim = simulator_factory(
        now=None, speed=1.0, camera_ids=None, cameras=3, people=8, visits_per_hour=1800, history_hours=2
    )
    started = now()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE_", "MQTT_"))}
    env |= {"FACESPACE_API_URL": sim.base_url, "FACESPACE_API_KEY": sim.api_key, "MQTT_URL": mqtt_broker.url}
    args = [
        sys.executable, "-m", "facespace_bridge", "run", "--broker", "mqtt",
        "--backfill-from", (started - timedelta(hours=1)).isoformat(), "--tail-interval", "1",
        "--checkpoint", str(tmp_path / "checkpoint.json"), "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1",
    ]  # fmt: skip
    with (
        MqttCollector(mqtt_broker, EVENT_FEED) as feed,
        MqttCollector(mqtt_broker, "facespace/+/sighting") as data,
    ):
        proc = start(args, env, tmp_path / "bridge.log")
        try:
            # The backfill is done, and the tail has published live sightings for a while.
            await data.wait_for(lambda ms: len(ms) > 2000, 60, "the backfill on the data topics")
            await feed.wait_for(lambda ms: len(ms) >= 3, 60, "live sightings firing the event entities")
            async with httpx.AsyncClient() as client:
                metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    fired = [parse_rfc3339(orjson.loads(m.payload)["seen_at"]) for m in feed.snapshot()]
    assert all(seen_at >= started - timedelta(minutes=10) for seen_at in fired), min(fired)
    held_back = next(
        line for line in metrics.splitlines() if line.startswith("facespace_bridge_ha_events_held_back_total")
    )
    assert float(held_back.split()[-1]) > 1000  # the hour of history, kept from Home Assistant
    assert "Traceback" not in (tmp_path / "bridge.log").read_text()
