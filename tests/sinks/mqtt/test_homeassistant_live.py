"""The bridge against a real Home Assistant (tests/fixtures/homeassistant.py): every discovery
config it publishes becomes an entity, the states follow what the simulator shows, Home
Assistant logs no complaint, and the Last Will makes the entities unavailable. Also what
the fixture itself promises: automations it counts, services, a restart that keeps the
registry."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.simulator import SimulatorServer
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.homeassistant import HomeAssistant, State
from tests.fixtures.mqtt import MqttBroker

pytestmark = pytest.mark.timeout(240)


def start_bridge(sim: SimulatorServer, broker: MqttBroker, tmp_path: Path) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "facespace_bridge", "run", "--broker", "mqtt",
        "--mqtt-url", broker.url, "--api-url", sim.base_url,
        "--checkpoint", str(tmp_path / "checkpoint.json"),
        "--refresh", "0.2", "--tail-interval", "0.5", "--presence-timeout", "1",
    ]  # fmt: skip
    env = {**os.environ, "FACESPACE_API_KEY": sim.api_key}
    with open(tmp_path / "bridge.log", "wb") as log:
        return subprocess.Popen(args, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


async def until_states(ha: HomeAssistant, wanted: dict[str, str], what: str, timeout: float = 30.0) -> None:
    def wrong(states: dict[str, State]) -> dict[str, tuple[str | None, str]]:
        return {
            entity: (states[entity].state if entity in states else None, state)
            for entity, state in wanted.items()
            if entity not in states or states[entity].state != state
        }

    try:
        await ha.wait_for(lambda states: not wrong(states), timeout, what)
    except AssertionError:
        raise AssertionError(f"{what}: (shown, wanted) {wrong(await ha.states())}") from None


def publish(broker: MqttBroker, messages: list[tuple[str, bytes, bool]]) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        for topic, payload, retain in messages:
            client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_home_assistant_shows_what_the_simulator_sees(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    ha = home_assistant
    # The real time, frozen: who is in view changes only when the test moves the clock. Odd
    # names too: cameras and people with `/`, `#`, `+`, `@`, quotes, accents, CJK.
    sim = simulator_factory(
        now=None, speed=0.0, people=8, history_hours=6, visits_per_hour=60, odd_names=True
    )
    cameras = sim.world.cameras()
    present = sim.world.present()
    # The bridge announces everyone in view and in the last day of history.
    people = sorted(
        {person for _, person, _ in sim.world.entries()} | {p for ps in present.values() for p in ps}
    )
    discovery = HomeAssistant(TopicLayout("facespace"))
    configs: dict[str, dict[str, Any]] = {
        orjson.loads(payload)["unique_id"]: orjson.loads(payload)
        for payload in discovery.configs(cameras, people).values()
    }
    (connection_id,) = (u for u, config in configs.items() if "availability" not in config)
    people_ids = {
        c: orjson.loads(p)["unique_id"] for c in cameras for p in discovery.camera_configs(c).values()
    }

    def occupancy_id(camera: str, person: str) -> str:
        (payload,) = discovery.occupancy_config(camera, person).values()
        return str(orjson.loads(payload)["unique_id"])

    def shown_by(seen: dict[str, list[str]]) -> dict[str, str]:
        """The state of each entity (by unique id) while the cameras see `seen`."""
        wanted = {connection_id: "on"}
        for camera in cameras:
            wanted[people_ids[camera]] = str(len(seen.get(camera, [])))
            for person in people:
                wanted[occupancy_id(camera, person)] = "on" if person in seen.get(camera, []) else "off"
        return wanted

    bridge = start_bridge(sim, mqtt_broker, tmp_path)
    try:
        # Every config the bridge publishes is an entity in Home Assistant's registry, and nothing else.
        async def registered() -> bool:
            assert bridge.poll() is None, (tmp_path / "bridge.log").read_text()
            return {e["unique_id"] for e in await ha.entity_registry("mqtt")} == set(configs)

        await ha.wait_until(registered, 60, "every discovered entity in the registry")
        registry = {e["unique_id"]: e for e in await ha.entity_registry("mqtt")}
        # Home Assistant picks the entity ids: the states are looked up through its registry.
        entity_of = {unique_id: entry["entity_id"] for unique_id, entry in registry.items()}
        for unique_id, config in configs.items():
            assert entity_of[unique_id].split(".")[0] == config["default_entity_id"].split(".")[0]
        devices = {d["id"]: d for d in await ha.device_registry()}
        names = {devices[e["device_id"]]["name"] for e in registry.values()}
        assert names == {"FaceSpace bridge", *cameras, *people}
        (bridge_device,) = (d for d in devices.values() if d["name"] == "FaceSpace bridge")
        for unique_id, entry in registry.items():
            if unique_id != connection_id:
                assert devices[entry["device_id"]]["via_device_id"] == bridge_device["id"]

        def by_entity(wanted: dict[str, str]) -> dict[str, str]:
            return {entity_of[unique_id]: state for unique_id, state in wanted.items()}

        await until_states(ha, by_entity(shown_by(present)), "the states of who is in view")
        states = await ha.states()
        for camera in cameras:
            assert sorted(states[entity_of[people_ids[camera]]].attributes["people"]) == sorted(
                present[camera]
            )

        # A sighting: the person's last camera, last seen and sighting event follow it.
        person = people[0]
        seen_at = sim.insert("Camera2", person)
        last_camera, last_seen, sighting = (
            next(
                entity_of[u]
                for u, config in configs.items()
                if u.startswith("facespace_person_")
                and u.endswith(suffix)
                and config["device"]["name"] == person
            )
            for suffix in ("_last_camera", "_last_seen", "_sighting")
        )

        def follows_the_sighting(states: dict[str, State]) -> bool:
            return (
                states[last_camera].state == "Camera2"
                and timestamp(states[last_seen].state) == seen_at
                and states[sighting].attributes.get("seen_at") is not None
                and timestamp(states[sighting].attributes["seen_at"]) == seen_at
            )

        states = await ha.wait_for(follows_the_sighting, 30, f"{person}'s sighting at Camera2")
        assert states[sighting].attributes["event_type"] == "sighting"
        assert states[sighting].attributes["camera_id"] == "Camera2"

        # Time passes until someone arrives or leaves: Home Assistant follows.
        for _ in range(60):
            sim.advance(30)
            if sim.world.present() != present:
                break
        changed = sim.world.present()
        assert changed != present
        await until_states(ha, by_entity(shown_by(changed)), "the states after people came and went")

        assert ha.problems() == [], "\n".join(map(str, ha.problems()))
    finally:
        bridge.send_signal(signal.SIGKILL)
        await asyncio.to_thread(bridge.wait)

    # The Last Will: the bridge's connection shows off, everything else unavailable.
    gone = {entity: "unavailable" for entity in entity_of.values()} | {entity_of[connection_id]: "off"}
    await until_states(ha, gone, "unavailable after the bridge was killed", timeout=20)
    assert ha.problems() == [], "\n".join(map(str, ha.problems()))


async def test_the_fixture_counts_automation_runs_and_keeps_its_registry_across_a_restart(
    home_assistant: HomeAssistant, mqtt_broker: MqttBroker
) -> None:
    ha = home_assistant
    await ha.counting_automation("ping", [{"trigger": "mqtt", "topic": "tests/ping"}])
    # A hand-written config: this is about the fixture, not about the bridge's payloads.
    probe = {"name": "Probe", "unique_id": "tests_probe", "state_topic": "tests/probe"}
    await asyncio.to_thread(
        publish,
        mqtt_broker,
        [("tests/ping", b"1", False)] * 3
        + [
            ("homeassistant/sensor/tests/probe/config", orjson.dumps(probe), True),
            ("tests/probe", b"42", True),
        ],
    )

    async def fired(times: int) -> bool:
        return await ha.times_fired("ping") == times

    await ha.wait_until(lambda: fired(3), what="three runs of the automation")
    # A service call: Home Assistant publishes, its own automation counts it.
    await ha.call_service("mqtt", "publish", {"topic": "tests/ping", "payload": "from home assistant"})
    await ha.wait_until(lambda: fired(4), what="the run the service call caused")
    (entry,) = await ha.entity_registry("mqtt")
    await ha.wait_for(lambda states: states[entry["entity_id"]].state == "42", what="the probe's state")

    await ha.restart()
    assert await ha.entity_registry("mqtt") == [entry]
    await ha.wait_for(
        lambda states: states[entry["entity_id"]].state == "42", what="the state after a restart"
    )
    assert await ha.times_fired("ping") == 4
    await asyncio.to_thread(publish, mqtt_broker, [("tests/ping", b"1", False)])
    await ha.wait_until(lambda: fired(5), what="a run after the restart")
    assert ha.problems() == [], "\n".join(map(str, ha.problems()))
