"""Home Assistant discovery: configs as HA reads them, re-announce on HA `online` and on
reconnect, templates rendered with Jinja as HA renders them."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime, timedelta, timezone

import jinja2
import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, presence_event, sighting_event
from facespace_bridge.sinks._topics import TopicLayout, id_slug
from facespace_bridge.sinks.homeassistant import HomeAssistantDiscovery
from facespace_bridge.sinks.mqtt import MqttSink
from tests.fixtures.mqtt import MqttBroker, MqttCollector, Received, eventually

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
CONFIG_TOPIC = re.compile(r"^homeassistant/(sensor|binary_sensor|event)/facespace/[a-zA-Z0-9_-]+/config$")
REQUIRED = {"unique_id", "object_id", "default_entity_id", "device", "origin", "state_topic", "name"}
NAMES = ["Alice", "Bob Smith", 'quote " and }} brace', "a/b", "Zoë 😀"]


def sighting(camera: str, person: str, second: int = 0) -> Event:
    return sighting_event(LogEntry(camera, person, T0 + timedelta(seconds=second), "raw"), 0)


def sink_for(broker: MqttBroker, **kwargs: object) -> MqttSink:
    return MqttSink(
        broker.url,
        reconnect_delay=(0.05, 0.5),
        reannounce_delay=(0.01, 0.05),
        close_timeout=2.0,
        **kwargs,  # type: ignore[arg-type]
    )


def home_assistant_says_online(broker: MqttBroker) -> None:
    ha = paho.Client(CallbackAPIVersion.VERSION2, client_id="fake-home-assistant")
    ha.connect(broker.host, broker.port)
    ha.loop_start()
    ha.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    ha.disconnect()
    ha.loop_stop()


def configs_of(messages: list[Received]) -> dict[str, dict]:
    return {m.topic: orjson.loads(m.payload) for m in messages if m.topic.endswith("/config") and m.payload}


def render(template: str, payload: bytes) -> str:
    """Render as HA does for a value template: `value` and `value_json` (its `tojson` is Jinja's)."""
    env = jinja2.Environment()
    return env.from_string(template).render(value=payload.decode(), value_json=orjson.loads(payload)).strip()


async def test_configs_are_complete_and_point_at_published_topics(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, ["homeassistant/#", "facespace/#"]) as collector:
        # Sightings of 2023 count as live here, so that they reach the event entities' topics.
        async with sink_for(mqtt_broker, ha_event_max_age=1e10) as sink:
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
    # bridge 1 + cameras 2 + people 5 * 3 + pairs 2 * 5
    assert len(configs) == 1 + 2 + 15 + 10
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    bridge_ids = None
    for topic, config in configs.items():
        assert CONFIG_TOPIC.match(topic), topic
        assert REQUIRED <= config.keys(), topic
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


async def test_templates_render_the_right_states_for_any_name(mqtt_broker: MqttBroker) -> None:
    ha = HomeAssistantDiscovery(TopicLayout("facespace"))
    presence = presence_event("Camera1", NAMES[2:4], NAMES[2:4], [], T0).payload
    for name in NAMES:
        (config,) = (orjson.loads(p) for p in ha.occupancy_config("Camera1", name).values())
        assert render(config["value_template"], presence) == ("ON" if name in NAMES[2:4] else "OFF")
    camera = orjson.loads(next(iter(ha.camera_configs("Camera1").values())))
    assert render(camera["value_template"], presence) == "2"
    assert orjson.loads(render(camera["json_attributes_template"], presence))["people"] == sorted(NAMES[2:4])
    seen = sighting("Camera1", NAMES[4], 7).payload
    by_id = {orjson.loads(p)["unique_id"]: orjson.loads(p) for p in ha.person_configs(NAMES[4]).values()}
    slug = id_slug(NAMES[4])
    assert render(by_id[f"facespace_person_{slug}_last_camera"]["value_template"], seen) == "Camera1"
    last_seen = by_id[f"facespace_person_{slug}_last_seen"]
    assert render(last_seen["value_template"], seen) == "2023-10-23T00:05:29Z"
    fired = orjson.loads(render(by_id[f"facespace_person_{slug}_sighting"]["value_template"], seen))
    assert fired["event_type"] in by_id[f"facespace_person_{slug}_sighting"]["event_types"]


def test_ids_are_stable_and_come_only_from_names() -> None:
    one = HomeAssistantDiscovery(TopicLayout("facespace")).configs(["Camera1"], NAMES)
    two = HomeAssistantDiscovery(TopicLayout("facespace")).configs(["Camera1"], list(reversed(NAMES)))
    assert one == two  # same names, same topics and bytes, whatever the order or the process
    assert id_slug("Zoë") != id_slug("Zoe") and id_slug("a b") != id_slug("a_b")
    # Letters without a decomposition are spelled out, not dropped.
    assert id_slug("Łukasz Żółkiewski").startswith("Lukasz_Zolkiewski_")
    assert id_slug("Søren Ørsted").startswith("Soren_Orsted_")


async def test_ha_online_triggers_a_reannounce(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, ["homeassistant/+/facespace/#", "facespace/#"]) as collector:
        async with sink_for(mqtt_broker) as sink:
            await sink.announce(["Camera1"], ["Alice"])
            await (await sink.publish([presence_event("Camera1", ["Alice"], ["Alice"], [], T0)]))
            await (await sink.publish([sighting("Camera1", "Alice")]))

            def count(ms: list[Received], topic: str) -> int:
                return sum(m.topic == topic for m in ms)

            first = await collector.wait_for(
                lambda ms: len(configs_of(ms)) == 6 and count(ms, "facespace/person/Alice") == 1,
                what="six configs and the person state",
            )
            n_configs = sum(m.topic.endswith("/config") for m in first)
            await asyncio.to_thread(home_assistant_says_online, mqtt_broker)

            again = await collector.wait_for(
                lambda ms: (
                    sum(m.topic.endswith("/config") for m in ms) == 2 * n_configs
                    and count(ms, "facespace/Camera1/presence") == 2
                    and count(ms, "facespace/person/Alice") == 2
                ),
                what="configs, then presence and person state, again",
            )
            assert sink.reannounces == 1
    later = again[len(first) :]
    topics = [m.topic for m in later]
    # Availability first, then every config, then the state the entities read.
    assert topics[0] == "facespace/bridge/state"
    last_config = max(i for i, t in enumerate(topics) if t.endswith("/config"))
    assert last_config < topics.index("facespace/Camera1/presence")
    assert last_config < topics.index("facespace/person/Alice")


async def test_reconnect_resends_configs_and_state(mqtt_broker: MqttBroker) -> None:
    async with sink_for(mqtt_broker) as sink:
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
            got = await late.wait_for(
                lambda ms: len(configs_of(ms)) == 6 and any(m.topic.endswith("/presence") for m in ms),
                what="retained configs and presence",
            )
    assert all(m.retain for m in got)
    assert next(m for m in got if m.topic == "facespace/Camera1/presence").payload == presence.payload


def test_base_topic_must_not_overlap_the_discovery_prefix() -> None:
    for prefix, ha_prefix in [("homeassistant", "homeassistant"), ("ha/facespace", "ha"), ("ha", "ha/x")]:
        with pytest.raises(ValueError, match="overlaps"):
            MqttSink(topic_prefix=prefix, ha_prefix=ha_prefix)
    MqttSink(topic_prefix="homeassistant", ha_discovery=False)  # no discovery, no clash
