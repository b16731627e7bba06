"""`facespace-bridge check` beside a running bridge: a side client that disturbs nothing.

Checked against real parts: Mosquitto's own log says whose session was replaced, a
subscriber on the bridge's availability topic sees every value it takes, and a real Home
Assistant shows whether any entity changed state (unavailable and back, say).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant as Discovery
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.homeassistant import HomeAssistant, State
from tests.fixtures.mqtt import MqttBroker, MqttCollector, publish_marker
from tests.sinks.mqtt._helpers import Bridge, registry_of

pytestmark = pytest.mark.timeout(180)

BRIDGE_ID = "facespace-bridge-facespace"  # the default client id for --topic-prefix facespace
STATE = "facespace/bridge/state"


async def test_check_beside_a_running_bridge_disturbs_nothing(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    ha = home_assistant
    # A frozen world: nothing the bridge shows changes unless something disturbs it. Its now
    # lies more than --away-after (600 s) in the past, so no tracker's away timer is pending:
    # one going off during `check` would change a state that `check` did not touch.
    sim = simulator_factory(
        now=datetime.now(timezone.utc) - timedelta(minutes=15),
        speed=0.0, cameras=2, people=3, history_hours=1, visits_per_hour=30,
    )  # fmt: skip
    bridge = Bridge(sim, mqtt_broker, tmp_path)
    try:
        # Everyone the bridge announces (in view, or in the last day of history) as entities.
        people = {p for _, p, _ in sim.world.entries()} | {
            p for ps in sim.world.present().values() for p in ps
        }
        configs = Discovery(TopicLayout("facespace")).configs(sim.world.cameras(), sorted(people))
        expected = {orjson.loads(config)["unique_id"] for config in configs.values()}

        async def settled() -> bool:
            registry = await registry_of(ha)
            states = await ha.states()
            return (
                bridge.running()
                and registry.keys() == expected
                and all(states[entity].state != "unavailable" for entity in registry.values())
            )

        await ha.wait_until(settled, 60, "every entity of the bridge, available")
        entities = sorted((await registry_of(ha)).values())

        def shown(states: dict[str, State]) -> dict[str, tuple[str, str]]:
            return {e: (states[e].state, states[e].last_changed) for e in entities}

        before = shown(await ha.states())
        while True:  # until what the bridge published at start has all reached Home Assistant
            await ha.mqtt_synced()
            now = shown(await ha.states())
            if now == before:
                break
            before = now
        marker = f"facespace-tests/marker/{uuid.uuid4().hex}"
        with MqttCollector(mqtt_broker, [STATE, marker]) as collector:
            check = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "facespace_bridge", "check", *bridge.options],
                env=bridge.env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert check.returncode == 0, check.stdout + check.stderr
            assert "ok   mqtt: connected" in check.stdout
            # Whatever the check published reached the broker before it exited, so before this.
            await asyncio.to_thread(publish_marker, mqtt_broker, marker)
            await collector.wait_topic(marker)
            states = [m.payload for m in collector.on(STATE)]
        assert states == [b"online"], states  # the retained value, and never another

        broker_log = mqtt_broker.log.read_text()
        assert f"as {BRIDGE_ID}-check " in broker_log  # the check connected, with its own id
        assert f"Client {BRIDGE_ID} already connected" not in broker_log  # the bridge kept its session
        assert broker_log.count(f"as {BRIDGE_ID} ") == 1  # the bridge connected once, and only once
        bridge.running()
        assert "lost MQTT connection" not in bridge.log.read_text()

        await ha.mqtt_synced()  # Home Assistant has seen whatever reached the broker before now
        after = shown(await ha.states())
        # Unavailable and back would leave the same state with a later last_changed.
        assert {e: (before[e], after[e]) for e in entities if after[e] != before[e]} == {}
    finally:
        await bridge.stop()
