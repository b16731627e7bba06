"""`facespace-bridge --broker mqtt` end to end: the real CLI, real Mosquitto, the simulator.

Home Assistant entities for every camera and every person known from the history exist
before their first event; every sighting arrives; presence is retained; a SIGKILL leaves
the Last Will `offline`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson

from facespace_bridge.schemas import validate
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.mqtt import MqttCollector, retained_async


async def test_run_to_mqtt_announces_publishes_and_leaves_its_will(simulator_factory, mqtt_broker, tmp_path):
    sim = simulator_factory(now=None, speed=1.0, camera_ids=None, cameras=3, people=8, history_hours=3,
                            visits_per_hour=120)  # fmt: skip
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=20)
    env = {**os.environ, "FACESPACE_API_KEY": sim.api_key, "FACESPACE_API_URL": sim.base_url}
    args = [
        sys.executable, "-m", "facespace_bridge", "--broker", "mqtt", "--mqtt-url", mqtt_broker.url,
        "--backfill-from", start.isoformat(), "--checkpoint", str(tmp_path / "checkpoint.json"),
        "--tail-interval", "0.5", "--refresh", "0.3",
    ]  # fmt: skip
    with MqttCollector(mqtt_broker, ["facespace/+/sighting"], persistent=True, client_id="e2e") as collector:
        log = open(tmp_path / "bridge.log", "wb")  # noqa: ASYNC230 - before the child starts
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)  # noqa: ASYNC220
        try:
            t0 = None
            while t0 is None:
                await asyncio.sleep(0.2)
                assert proc.poll() is None, (tmp_path / "bridge.log").read_text()
                state = orjson.loads((tmp_path / "checkpoint.json").read_bytes()) if (
                    tmp_path / "checkpoint.json").exists() else {}  # fmt: skip
                if state.get("backfill", {}) and state["backfill"]["complete"]:
                    t0 = datetime.fromisoformat(state["backfill"]["t0"].replace("Z", "+00:00"))
            expected = Counter(sim.world.entries(start, t0 - timedelta(seconds=1)))
            messages = await collector.wait_for(
                lambda ms: len(ms) >= sum(expected.values()), timeout=30, what="every backfilled sighting"
            )
            got = Counter()
            for message in messages:
                payload = orjson.loads(message.payload)
                assert validate(payload) == []
                got[(payload["camera_id"], payload["person"],
                     datetime.fromisoformat(payload["seen_at"].replace("Z", "+00:00")))] += 1  # fmt: skip
            assert not expected - got

            # Discovery for everyone the history of the last 24 h knows, announced at start.
            known_people = {person for _, person, _ in sim.world.entries(datetime.now(timezone.utc)
                                                                          - timedelta(hours=24))}  # fmt: skip
            discovery = HomeAssistant(TopicLayout("facespace"))
            wanted = set(discovery.configs(sim.world.cameras(), sorted(known_people)))
            held = await retained_async(mqtt_broker, "homeassistant/#")
            assert wanted <= set(held), sorted(wanted - set(held))[:5]
            state_topics = await retained_async(mqtt_broker, "facespace/#")
            assert state_topics["facespace/bridge/state"] == b"online"
            for camera in sim.world.cameras():
                assert validate(state_topics[f"facespace/{camera}/presence"]) == []
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.close()
    await asyncio.sleep(0.5)
    after = await retained_async(mqtt_broker, "facespace/bridge/state")
    assert after["facespace/bridge/state"] == b"offline"  # the Last Will
