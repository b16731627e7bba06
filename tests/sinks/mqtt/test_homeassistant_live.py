"""The bridge against a real Home Assistant (tests/fixtures/homeassistant.py), the oracle for
everything the Home Assistant extension publishes: every discovery config becomes an entity
in both discovery forms, the states follow what the simulator shows, device trackers go
home and not_home and a Home Assistant person follows them, history never runs an
automation while live sightings do, switching forms keeps entity ids, Home Assistant logs no
complaint, and the Last Will makes the entities unavailable. Also what the fixture itself
promises: automations it counts, services, a restart that keeps the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant as Discovery
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistantSettings
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.homeassistant import HomeAssistant, LogRecord, State
from tests.fixtures.mqtt import MqttBroker, MqttCollector, free_port
from tests.sinks.mqtt._helpers import Bridge, registry_of

pytestmark = pytest.mark.timeout(300)


def entities(configs: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Each entity's config by unique id, in either discovery form, with its device."""
    found: dict[str, dict[str, Any]] = {}
    for topic, payload in configs.items():
        config = orjson.loads(payload)
        if topic.split("/")[1] == "device":
            for component in config["cmps"].values():
                found[component["unique_id"]] = {**component, "device": config["dev"]}
        else:
            found[config["unique_id"]] = {**config, "p": topic.split("/")[1]}
    return found


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


def unexpected(problems: Iterable[LogRecord], allowed: Iterable[str] = ()) -> list[str]:
    return [str(p) for p in problems if not any(a in p.message for a in allowed)]


@pytest.mark.parametrize("mode", ["entity", "device"])
async def test_home_assistant_shows_what_the_simulator_sees(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path, mode: str
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
    discovery = Discovery(TopicLayout("facespace"), HomeAssistantSettings(mode=mode))
    configs = entities(discovery.configs(cameras, people))
    (connection_id,) = (u for u, config in configs.items() if "availability" not in config)

    def of(kind: str, name: str) -> str:
        """The unique id of a camera's people count or a person's tracker, by device name."""
        suffix = {"people": "_people", "tracker": "_presence"}[kind]
        (unique_id,) = (u for u, c in configs.items() if c["device"]["name"] == name and u.endswith(suffix))
        return unique_id

    def occupancy_id(camera: str, person: str) -> str:
        (unique_id,) = (
            u for u, c in configs.items() if c["device"]["name"] == person and c["name"] == f"At {camera}"
        )
        return unique_id

    def shown_by(seen: dict[str, list[str]]) -> dict[str, str]:
        """The state of each entity (by unique id) while the cameras see `seen`."""
        wanted = {connection_id: "on"}
        for camera in cameras:
            wanted[of("people", camera)] = str(len(seen.get(camera, [])))
            for person in people:
                wanted[occupancy_id(camera, person)] = "on" if person in seen.get(camera, []) else "off"
        for person in {p for ps in seen.values() for p in ps}:
            wanted[of("tracker", person)] = "home"
        return wanted

    bridge = Bridge(sim, mqtt_broker, tmp_path, "--ha-discovery-mode", mode, "--away-after", "3")
    try:
        # Every config the bridge publishes is an entity in Home Assistant's registry, and nothing else.
        async def registered() -> bool:
            return bridge.running() and (await registry_of(ha)).keys() == configs.keys()

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
            assert sorted(states[entity_of[of("people", camera)]].attributes["people"]) == sorted(
                present[camera]
            )

        # A household member whose phone is not tracked: a Home Assistant person with the
        # bridge's device tracker follows them.
        member = next(p for ps in present.values() for p in ps)
        tracker = entity_of[of("tracker", member)]
        created = await ha.ws("person/create", name="Household member", device_trackers=[tracker])
        person_entity = f"person.{created['id']}"
        await until_states(ha, {tracker: "home", person_entity: "home"}, f"{member} home")
        attributes = (await ha.states())[tracker].attributes
        assert attributes["source_type"] == "router" and attributes["cameras"]

        # A sighting: the person's last camera, last seen and sighting event follow it.
        person = people[0]
        seen_at = sim.insert(cameras[1], person)
        last_camera, last_seen, sighting = (
            entity_of[
                next(u for u, c in configs.items() if c["device"]["name"] == person and u.endswith(suffix))
            ]
            for suffix in ("_last_camera", "_last_seen", "_sighting")
        )

        def follows_the_sighting(states: dict[str, State]) -> bool:
            return (
                states[last_camera].state == cameras[1]
                and timestamp(states[last_seen].state) == seen_at
                and states[sighting].attributes.get("seen_at") is not None
                and timestamp(states[sighting].attributes["seen_at"]) == seen_at
            )

        states = await ha.wait_for(follows_the_sighting, 30, f"{person}'s sighting at {cameras[1]}")
        assert states[sighting].attributes["event_type"] == "sighting"
        assert states[sighting].attributes["camera_id"] == cameras[1]

        # Time passes until the household member has left every camera: Home Assistant follows,
        # and --away-after (3 s) later their tracker, and the person, say not_home.
        for _ in range(1000):  # (at most 230 steps at 15,000 random times of day)
            sim.advance(30)
            if all(member not in ps for ps in sim.world.present().values()):
                break
        changed = sim.world.present()
        assert all(member not in ps for ps in changed.values())
        await until_states(ha, by_entity(shown_by(changed)), "the states after people came and went")
        await until_states(ha, {tracker: "not_home", person_entity: "not_home"}, f"{member} away", 20)

        assert unexpected(ha.problems()) == []
    finally:
        await bridge.kill()

    # The Last Will: the bridge's connection shows off, everything else unavailable.
    gone = {entity: "unavailable" for entity in entity_of.values()} | {entity_of[connection_id]: "off"}
    await until_states(ha, gone, "unavailable after the bridge was killed", timeout=20)
    assert unexpected(ha.problems()) == []


async def test_history_never_runs_an_automation_and_a_live_sighting_does(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    ha = home_assistant
    # A household's first start: an hour of history, busy cameras, the real clock.
    sim = simulator_factory(now=None, speed=1.0, cameras=3, people=8, visits_per_hour=1800, history_hours=2)
    people = sim.world.people()
    # The household set the bridge up yesterday and wrote an automation on every person's
    # event entity ("tell me when someone is at the door"), and a second one that counts only
    # runs for history: sightings more than --ha-event-max-age (300 s) older than today's start.
    bridge = Bridge(sim, mqtt_broker, tmp_path, "--checkpoint", str(tmp_path / "yesterday.json"))
    try:

        async def discovered() -> bool:
            registry = await registry_of(ha)
            return bridge.running() and sum(e.startswith("event.") for e in registry.values()) == len(people)

        await ha.wait_until(discovered, 60, "every person's event entity")
    finally:
        await bridge.stop()
    sightings = sorted(e for e in (await registry_of(ha)).values() if e.startswith("event."))
    started = datetime.now(timezone.utc)
    # As docs/mqtt.md recommends: not on the bridge going away and coming back.
    trigger = [
        {"trigger": "state", "entity_id": sightings, "not_from": ["unavailable"], "not_to": ["unavailable"]}
    ]
    history = (
        "{{ as_datetime(trigger.to_state.attributes.seen_at) < as_datetime('"
        + (started - timedelta(seconds=301)).isoformat()  # seen_at has whole seconds
        + "') }}"
    )
    await ha.counting_automation("someone_seen", trigger)
    await ha.counting_automation(
        "history_seen", trigger, [{"condition": "template", "value_template": history}]
    )

    # Today it starts again with an hour to catch up on (a fresh start with --backfill-from
    # here; a restart after downtime takes the same path).
    port = free_port()
    backfill_from = (started - timedelta(hours=1)).isoformat()
    with MqttCollector(mqtt_broker, "facespace/+/sighting") as data:
        bridge = Bridge(
            sim, mqtt_broker, tmp_path, "--backfill-from", backfill_from, "--tail-interval", "1",
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
        )  # fmt: skip
        try:
            async with httpx.AsyncClient() as client:

                async def backfilled() -> bool:
                    try:
                        status = (await client.get(f"http://127.0.0.1:{port}/status")).json()
                    except httpx.TransportError:  # not serving yet
                        return bridge.running() and False
                    return bridge.running() and bool(status["backfill"]["done"])

                await ha.wait_until(backfilled, 90, "the one-hour backfill")
            assert len(data.snapshot()) > 2000  # the hour went out on the data topics

            async def fired_live() -> bool:
                return await ha.times_fired("someone_seen") >= 1

            await ha.wait_until(fired_live, 60, "a live sighting running the automation")
            await asyncio.sleep(2)  # whatever else was on its way
            assert await ha.times_fired("history_seen") == 0
        finally:
            await bridge.stop()
    assert unexpected(ha.problems()) == []


async def test_switching_discovery_forms_keeps_entity_ids(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path
) -> None:
    ha = home_assistant
    sim = simulator_factory(now=None, speed=0.0, people=4, history_hours=2, visits_per_hour=30)
    cameras, people = sim.world.cameras(), sorted({p for _, p, _ in sim.world.entries()})
    expected = set(entities(Discovery(TopicLayout("facespace")).configs(cameras, people)))

    runs: list[str] = []

    async def run(mode: str) -> dict[str, str]:
        """Run the bridge in `mode` until Home Assistant shows its entities; their ids."""
        migrating = bool(runs) and runs[-1] != mode
        runs.append(mode)
        bridge = Bridge(sim, mqtt_broker, tmp_path, "--ha-discovery-mode", mode)
        try:

            async def settled() -> bool:
                registry = await registry_of(ha)
                if not bridge.running() or registry.keys() != expected:
                    return False
                if migrating and "configs moved to the" not in bridge.log.read_text():
                    return False
                states = await ha.states()
                return all(states[entity].state != "unavailable" for entity in registry.values())

            await ha.wait_until(settled, 60, f"the {mode} form's entities")
            return await registry_of(ha)
        finally:
            await bridge.stop()

    first = await run("entity")
    # What users do: rename an entity. The migration must keep that too.
    some = sorted(first.values())[0]
    renamed = some.replace(".", ".renamed_", 1)
    await ha.ws("config/entity_registry/update", entity_id=some, new_entity_id=renamed)
    first = {u: (renamed if e == some else e) for u, e in first.items()}
    assert await run("device") == first
    assert await run("entity") == first  # and back
    assert len(await ha.entity_registry("mqtt")) == len(expected)  # no duplicates either way
    # A rollback clears each device config after its entities moved back; Home Assistant says
    # it had nothing left to remove for it. Nothing else.
    assert unexpected(ha.problems(), ["No device components to cleanup"]) == []


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
