"""The Home Assistant extension of the MQTT sink against a real Mosquitto: discovery configs in
both forms, re-announcing, the migration between the forms, the device tracker. Home
Assistant itself reads them in test_homeassistant_live.py."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jinja2
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, presence_event, sighting_event
from facespace_bridge.sinks import LastSeen
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
from facespace_bridge.sinks.mqtt.topics import TopicLayout, id_slug
from tests.fixtures.mqtt import MqttBroker, MqttCollector, Received, eventually, retained_async
from tests.sinks.mqtt._helpers import ha_for, sink_for

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
REPO = Path(__file__).resolve().parents[3]
ENTITY_TOPIC = re.compile(
    r"^homeassistant/(sensor|binary_sensor|event|device_tracker)/facespace/[a-zA-Z0-9_-]+/config$"
)
DEVICE_TOPIC = re.compile(r"^homeassistant/device/facespace/[a-zA-Z0-9_-]+/config$")
REQUIRED = {"unique_id", "object_id", "default_entity_id", "state_topic", "name"}
NAMES = ["Alice", "Bob Smith", 'quote " and }} brace', "a/b", "Zoë 😀"]


def sighting(camera: str, person: str, second: int = 0, at: datetime = T0) -> Event:
    return sighting_event(LogEntry(camera, person, at + timedelta(seconds=second), "raw"), 0)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def home_assistant_says_online(broker: MqttBroker) -> None:
    ha = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-home-assistant")
    ha.connect(broker.host, broker.port)
    ha.loop_start()
    ha.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    ha.disconnect()
    ha.loop_stop()


def configs_of(messages: list[Received]) -> dict[str, dict]:
    return {m.topic: orjson.loads(m.payload) for m in messages if m.topic.endswith("/config") and m.payload}


def entities(configs: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """Every entity's config by unique id, in either form: a device config's components get
    their device and origin, as Home Assistant reads them."""
    found: dict[str, dict[str, Any]] = {}
    for topic, payload in configs.items():
        config = orjson.loads(payload)
        if topic.split("/")[1] == "device":
            for component in config["cmps"].values():
                found[component["unique_id"]] = {**component, "device": config["dev"], "origin": config["o"]}
        else:
            found[config["unique_id"]] = {**config, "p": topic.split("/")[1]}
    return found


def render(template: str, payload: bytes) -> str:
    """Render as HA does for a value template: `value` and `value_json` (its `tojson` is Jinja's)."""
    env = jinja2.Environment()
    return env.from_string(template).render(value=payload.decode(), value_json=orjson.loads(payload)).strip()


async def test_configs_are_complete_and_point_at_published_topics(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, ["homeassistant/#", "facespace/#"]) as collector:
        # Sightings of 2023 count as live here, so that they reach the event entities' topics.
        async with sink_for(mqtt_broker, ha=ha_for(event_max_age=1e10)) as sink:
            await sink.announce(["Camera1", "Garden"], NAMES)
            acks = [await sink.publish([sighting("Camera1", name, i)]) for i, name in enumerate(NAMES)]
            acks.append(await sink.publish([presence_event("Camera1", NAMES[:2], NAMES[:2], [], T0)]))
            acks.append(await sink.publish([presence_event("Garden", [], [], [], T0)]))
            await asyncio.gather(*acks)
        messages = await collector.wait_for(
            lambda ms: bool(ms) and ms[-1].payload == b"offline", what="offline"
        )
    configs = configs_of(messages)
    published = {m.topic for m in messages if not m.topic.endswith("/config")}
    # bridge 1 + cameras 2 + people 5 * 4 (last camera, last seen, sighting, tracker) + pairs 2 * 5
    assert len(configs) == 1 + 2 + 5 * 4 + 2 * 5
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    bridge_ids = None
    for topic, config in configs.items():
        assert ENTITY_TOPIC.match(topic), topic
        assert REQUIRED | {"device", "origin"} <= config.keys(), topic
        assert re.fullmatch(r"[a-zA-Z0-9_-]+", config["unique_id"])
        assert config["default_entity_id"].split(".")[0] == topic.split("/")[1]
        assert config["origin"]["name"] == "facespace-bridge"
        assert config["state_topic"] in published, (topic, config["state_topic"])
        if config["device"].get("model") == "Bridge":
            bridge_ids = config["device"]["identifiers"]
            assert config["device_class"] == "connectivity" and "availability" not in config
        else:
            assert config["availability"] == [{"topic": "facespace/bridge/state"}]
    assert bridge_ids is not None
    for config in configs.values():
        if config["device"].get("model") != "Bridge":
            assert config["device"]["via_device"] == bridge_ids[0]
    # Each person and camera is one device, named by its original name.
    devices = {tuple(c["device"]["identifiers"]): c["device"]["name"] for c in configs.values()}
    assert set(devices.values()) == {"FaceSpace bridge", "Camera1", "Garden", *NAMES}


def test_both_discovery_forms_describe_the_same_entities() -> None:
    cameras, people = ["Camera1", "Garden", "a/b"], NAMES
    by_entity = HomeAssistant(TopicLayout("facespace")).configs(cameras, people)
    by_device = ha_for(mode="device").configs(cameras, people)
    # One config per entity, or one per device: the bridge, each camera, each person.
    assert len(by_entity) == 1 + len(cameras) + 4 * len(people) + len(cameras) * len(people)
    assert len(by_device) == 1 + len(cameras) + len(people)
    assert all(DEVICE_TOPIC.match(topic) for topic in by_device)
    one, other = entities(by_entity), entities(by_device)
    assert one.keys() == other.keys()  # the same unique ids, so switching keeps entity ids
    for unique_id, config in one.items():
        assert {k: v for k, v in config.items() if k != "qos"} == other[unique_id], unique_id
    # In device form the component key is the entity-form object id (Home Assistant's
    # discovery id of the component), so a migration finds the same entity.
    for payload in by_device.values():
        for key, component in orjson.loads(payload)["cmps"].items():
            assert component["unique_id"] == f"facespace_{key}"


async def test_templates_render_the_right_states_for_any_name() -> None:
    configs = entities(HomeAssistant(TopicLayout("facespace")).configs(["Camera1"], NAMES))
    presence = presence_event("Camera1", NAMES[2:4], NAMES[2:4], [], T0).payload
    for name in NAMES:
        (occupancy,) = (
            c for c in configs.values() if c["name"] == "At Camera1" and c["device"]["name"] == name
        )
        assert render(occupancy["value_template"], presence) == ("ON" if name in NAMES[2:4] else "OFF")
    camera = configs["facespace_camera_Camera1_people"]
    assert render(camera["value_template"], presence) == "2"
    assert orjson.loads(render(camera["json_attributes_template"], presence))["people"] == sorted(NAMES[2:4])
    seen = sighting("Camera1", NAMES[4], 7).payload
    slug = id_slug(NAMES[4])
    assert render(configs[f"facespace_person_{slug}_last_camera"]["value_template"], seen) == "Camera1"
    last_seen = configs[f"facespace_person_{slug}_last_seen"]
    assert render(last_seen["value_template"], seen) == "2023-10-23T00:05:29Z"
    event = configs[f"facespace_person_{slug}_sighting"]
    fired = orjson.loads(render(event["value_template"], seen))
    assert fired["event_type"] in event["event_types"]
    tracker = configs[f"facespace_person_{slug}_presence"]
    state = (REPO / "tests/data/schemas/whereabouts/v1/home.json").read_bytes()
    assert render(tracker["value_template"], state) == "home"
    attributes = orjson.loads(render(tracker["json_attributes_template"], state))
    assert attributes == {
        "camera_id": "Front Door",
        "seen_at": "2023-10-23T00:05:22Z",
        "cameras": ["Front Door"],
    }
    assert tracker["source_type"] == "router"


def test_ids_are_stable_and_come_only_from_names() -> None:
    for mode in ("entity", "device"):
        one = ha_for(mode=mode).configs(["Camera1"], NAMES)
        two = ha_for(mode=mode).configs(["Camera1"], list(reversed(NAMES)))
        assert one == two  # same names, same topics and bytes, whatever the order or the process
    assert id_slug("Zoë") != id_slug("Zoe") and id_slug("a b") != id_slug("a_b")
    # Letters without a decomposition are spelled out, not dropped.
    assert id_slug("Łukasz Żółkiewski").startswith("Lukasz_Zolkiewski_")
    assert id_slug("Søren Ørsted").startswith("Soren_Orsted_")


async def test_ha_online_triggers_a_reannounce(mqtt_broker: MqttBroker) -> None:
    ha = ha_for()
    with MqttCollector(mqtt_broker, ["homeassistant/+/facespace/#", "facespace/#"]) as collector:
        async with sink_for(mqtt_broker, ha=ha) as sink:
            await sink.announce(["Camera1"], ["Alice"])
            await (await sink.publish([presence_event("Camera1", ["Alice"], ["Alice"], [], T0)]))
            await (await sink.publish([sighting("Camera1", "Alice")]))

            def count(ms: list[Received], topic: str) -> int:
                return sum(m.topic == topic for m in ms)

            first = await collector.wait_for(
                lambda ms: len(configs_of(ms)) == 7 and count(ms, "facespace/person/Alice") == 1,
                what="seven configs and the person state",
            )
            n_configs = sum(m.topic.endswith("/config") for m in first)
            await asyncio.to_thread(home_assistant_says_online, mqtt_broker)

            again = await collector.wait_for(
                lambda ms: (
                    sum(m.topic.endswith("/config") for m in ms) == 2 * n_configs
                    and count(ms, "facespace/Camera1/presence") == 2
                    and count(ms, "facespace/person/Alice") == 2
                    and count(ms, "facespace/person/Alice/tracker") >= 2
                ),
                what="configs, then presence, person and tracker state, again",
            )
            assert ha.reannounces == 1
    later = again[len(first) :]
    topics = [m.topic for m in later]
    # Availability first, then every config, then the state the entities read.
    assert topics[0] == "facespace/bridge/state"
    last_config = max(i for i, t in enumerate(topics) if t.endswith("/config"))
    for state in ("facespace/Camera1/presence", "facespace/person/Alice", "facespace/person/Alice/tracker"):
        assert last_config < topics.index(state), state


@pytest.mark.parametrize("mode", ["entity", "device"])
async def test_reconnect_resends_configs_and_state(mqtt_broker: MqttBroker, mode: str) -> None:
    async with sink_for(mqtt_broker, ha=ha_for(mode=mode)) as sink:
        await sink.announce(["Camera1"], ["Alice"])
        presence = presence_event("Camera1", ["Alice"], ["Alice"], [], T0)
        await (await sink.publish([presence]))
        # A broker that lost everything (no persistence file) must be refilled by the bridge.
        await asyncio.to_thread(mqtt_broker.stop)
        for leftover in mqtt_broker.workdir.glob("*.db"):
            leftover.unlink()
        await eventually(lambda: not sink.connected, what="the sink to notice")
        await asyncio.to_thread(mqtt_broker.start)
        await eventually(lambda: sink.reconnects == 1, what="a reconnect")
        await sink.flush()
        with MqttCollector(mqtt_broker, ["homeassistant/#", "facespace/#"]) as late:
            expected = 7 if mode == "entity" else 3
            got = await late.wait_for(
                lambda ms: (
                    len(configs_of(ms)) == expected
                    and any(m.topic.endswith("/presence") for m in ms)
                    and any(m.topic.endswith("/tracker") for m in ms)
                ),
                what="retained configs, presence and tracker",
            )
    assert all(m.retain for m in got)
    assert next(m for m in got if m.topic == "facespace/Camera1/presence").payload == presence.payload


async def test_switching_forms_migrates_and_leaves_only_the_new_one(mqtt_broker: MqttBroker) -> None:
    cameras, people = ["Camera1", "Garden"], ["Alice", "Bob"]

    async def run(mode: str) -> dict[str, bytes]:
        async with sink_for(mqtt_broker, ha=ha_for(mode=mode)) as sink:
            await sink.announce(cameras, people)
            await sink.flush()
        return await retained_async(mqtt_broker, "homeassistant/#")

    entity_form = HomeAssistant(TopicLayout("facespace")).configs(cameras, people)
    device_form = ha_for(mode="device").configs(cameras, people)
    assert await run("entity") == entity_form
    with MqttCollector(mqtt_broker, "homeassistant/#") as seen:
        assert await run("device") == device_form  # the old configs are gone from the broker
        # Each old topic said `migrate_discovery` before the new configs came, and was cleared after.
        messages = await seen.wait_for(
            lambda ms: sum(m.topic in entity_form and not m.payload for m in ms) == len(entity_form),
            what="every old config cleared",
        )
    topics = [(m.topic, m.payload) for m in messages if not m.retain]
    first_new = min(i for i, (t, _) in enumerate(topics) if t in device_form)
    for topic in entity_form:
        migrate = topics.index((topic, b'{"migrate_discovery":true}'))
        assert migrate < first_new < topics.index((topic, b""))
    # And back: the rollback is the same protocol from the device configs.
    assert await run("entity") == entity_form
    assert await run("entity") == entity_form  # nothing to migrate the second time


async def test_the_tracker_is_home_while_seen_and_until_away_after(mqtt_broker: MqttBroker) -> None:
    tracker = "facespace/person/{}/tracker"

    def state(held: dict[str, bytes], person: str) -> dict[str, Any]:
        return orjson.loads(held[tracker.format(person)])

    # (3 s: `now()` drops up to a second of it, and a busy machine takes a while to publish)
    ha = ha_for(away_after=3.0, event_max_age=300)
    with MqttCollector(mqtt_broker, "facespace/person/+/tracker") as collector:
        async with sink_for(mqtt_broker, ha=ha) as sink:
            recently, long_ago = now(), now() - timedelta(hours=1)
            await sink.announce(
                ["Door", "Garden"],
                ["Alice", "Bob", "Carol"],
                {"Bob": LastSeen(recently, "Garden"), "Carol": LastSeen(long_ago, "Door")},
            )
            await sink.flush()
            held = await retained_async(mqtt_broker, "facespace/person/+/tracker")
            assert state(held, "Alice") == {
                "schema": "facespace.whereabouts/v1",
                "person": "Alice",
                "state": "not_home",
                "cameras": [],
                "camera_id": None,
                "seen_at": None,
            }
            assert state(held, "Bob")["state"] == "home"  # seen within the last second
            assert state(held, "Carol")["state"] == "not_home"  # an hour is longer than away_after
            assert state(held, "Carol")["camera_id"] == "Door"

            # Alice arrives at two cameras, leaves one, then the other: home until 3 s later.
            arrived = now()
            await (await sink.publish([presence_event("Door", ["Alice"], ["Alice"], [], arrived)]))
            await (await sink.publish([presence_event("Garden", ["Alice"], ["Alice"], [], arrived)]))
            await (await sink.publish([presence_event("Door", [], [], ["Alice"], arrived)]))
            held = await retained_async(mqtt_broker, "facespace/person/+/tracker")
            assert state(held, "Alice")["state"] == "home" and state(held, "Alice")["cameras"] == ["Garden"]
            await asyncio.sleep(3.5)
            held = await retained_async(mqtt_broker, "facespace/person/+/tracker")
            assert state(held, "Alice")["state"] == "home"  # Garden still sees her
            left = now()
            await (await sink.publish([presence_event("Garden", [], [], ["Alice"], left)]))
            held = await retained_async(mqtt_broker, "facespace/person/+/tracker")
            gone = state(held, "Alice")
            assert gone["state"] == "home" and gone["cameras"] == [] and gone["camera_id"] == "Garden"
            alice = tracker.format("Alice")

            def left_home(messages: list[Received]) -> bool:
                last = [m for m in messages if m.topic == alice][-1]
                return orjson.loads(last.payload)["state"] == "not_home"

            await collector.wait_for(left_home, what="not_home 3 s after she left")
            # A sighting (no presence) is a visit too.
            await (await sink.publish([sighting("Door", "Carol", at=now())]))
            await sink.flush()
            held = await retained_async(mqtt_broker, "facespace/person/+/tracker")
            assert state(held, "Carol")["state"] == "home"
    changes = [(m.topic, orjson.loads(m.payload)["state"]) for m in collector.snapshot()]
    alice = [s for t, s in changes if t == tracker.format("Alice")]
    assert alice[0] == "not_home" and "home" in alice and alice[-1] == "not_home"
    bob = [s for t, s in changes if t == tracker.format("Bob")]
    assert bob[-1] == "not_home"  # his second ran out too


async def test_a_sighting_from_an_api_clock_ahead_keeps_no_one_home_longer(mqtt_broker: MqttBroker) -> None:
    ha = ha_for(away_after=2.0)
    async with sink_for(mqtt_broker, ha=ha) as sink:
        await sink.announce(["Door"], ["Alice"])
        ahead = now() + timedelta(minutes=10)  # the API's clock, ten minutes fast
        await (await sink.publish([sighting("Door", "Alice", at=ahead)]))
        await sink.flush()
        held = await retained_async(mqtt_broker, "facespace/person/Alice/tracker")
        assert orjson.loads(held["facespace/person/Alice/tracker"])["state"] == "home"
        await asyncio.sleep(2.5)
        held = await retained_async(mqtt_broker, "facespace/person/Alice/tracker")
    state = orjson.loads(held["facespace/person/Alice/tracker"])
    assert state["state"] == "not_home" and state["seen_at"] == ahead.strftime("%Y-%m-%dT%H:%M:%SZ")
