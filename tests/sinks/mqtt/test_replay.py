"""`facespace-bridge replay --broker mqtt` end to end: the simulator over HTTP, the CLI in a
subprocess, a real Mosquitto, counted against the simulator's ground truth."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from datetime import datetime, timezone

import orjson
import pytest

from facespace_bridge.events import parse_rfc3339
from facespace_bridge.schemas import validate
from facespace_bridge.simulator import SimulatorServer
from facespace_bridge.sinks.mqtt.topics import camera_segment, person_segment
from tests.fixtures.mqtt import MqttBroker, MqttCollector, retained_async

pytestmark = pytest.mark.timeout(120)

DAY_START = datetime(2023, 10, 23, tzinfo=timezone.utc)
DAY_LAST_SECOND = datetime(2023, 10, 23, 23, 59, 59, tzinfo=timezone.utc)


async def replay(sim: SimulatorServer, broker: MqttBroker, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE_", "MQTT_"))}
    env.update(FACESPACE_API_URL=sim.base_url, FACESPACE_API_KEY=sim.api_key, MQTT_URL=broker.url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "facespace_bridge", "replay", "--broker", "mqtt",
        "--start-time", "23/10/23", "--end-time", "23/10/23", *args,
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_replay_into_mqtt_delivers_the_ground_truth(
    simulator: SimulatorServer, mqtt_broker: MqttBroker
) -> None:
    truth = Counter(simulator.world.entries(DAY_START, DAY_LAST_SECOND))
    total = sum(truth.values())
    assert total > 500
    with MqttCollector(mqtt_broker, "facespace/+/sighting") as collector:
        code, _out, err = await replay(simulator, mqtt_broker, "--no-ha-discovery")
        assert code == 0, err
        assert "Traceback" not in err
        got = await collector.wait_for(lambda ms: len(ms) >= total, 30, "every sighting")
    payloads = [orjson.loads(m.payload) for m in got]
    assert Counter((p["camera_id"], p["person"], parse_rfc3339(p["seen_at"])) for p in payloads) == truth
    assert all(validate(m.payload) == [] for m in got)
    for message, payload in zip(got, payloads, strict=True):
        assert message.topic == f"facespace/{camera_segment(payload['camera_id'])}/sighting"
    # Each person's retained topic holds their latest sighting of the range.
    held = await retained_async(mqtt_broker, "facespace/person/+")
    latest: dict[str, datetime] = {}
    for _camera, person, seen_at in truth:
        latest[person] = max(latest.get(person, seen_at), seen_at)
    assert {t: parse_rfc3339(orjson.loads(v)["seen_at"]) for t, v in held.items()} == {
        f"facespace/person/{person_segment(p)}": at for p, at in latest.items()
    }
