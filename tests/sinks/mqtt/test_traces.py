"""A person's retained traces against a real Mosquitto (sinks/mqtt/traces.py): found in what
the broker retains, in both discovery forms, under any spelling of the name, and cleared
without touching anyone else's; the bridge's sink forgets on request and, at start, the
people excluded now, so that nothing it re-sends names them again."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from datetime import datetime, timezone

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import LogEntry
from facespace_bridge.events import presence_event, sighting_event
from facespace_bridge.sinks.mqtt import MqttSink
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from facespace_bridge.sinks.mqtt.traces import PersonTraces, sweep
from tests.fixtures.mqtt import MqttBroker, MqttCollector, eventually, retained_async
from tests.sinks.mqtt._helpers import ha_for, sink_for

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
LAYOUT = TopicLayout("facespace")
CAMERAS = ["Door", "Hall"]
ZOE_NFD = unicodedata.normalize("NFD", "Zoë 😀")  # as an API might send it
PEOPLE = ["Alice", "Bob Smith", ZOE_NFD, "a/b", "presence"]
FOREIGN = "homeassistant/device/facespace/other_tool/config"


async def world(sink: MqttSink) -> None:
    """Everyone announced; Bob and Zoë in view at the door, Alice just left it; a sighting each."""
    await sink.announce(CAMERAS, PEOPLE)
    events = [
        presence_event("Door", ["Bob Smith", ZOE_NFD], ["Bob Smith", ZOE_NFD], ["Alice"], T0),
        presence_event("Hall", ["presence"], ["presence"], [], T0),
        *(sighting_event(LogEntry("Hall", person, T0, "raw"), 0) for person in PEOPLE),
    ]
    await (await sink.publish(events))
    await sink.flush()


def foreign_config(broker: MqttBroker) -> None:
    """Another tool's device named like one of ours, under our node id."""
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    payload = {"dev": {"identifiers": ["x"], "name": "Bob Smith"}, "o": {"name": "another-tool"}, "cmps": {}}
    client.publish(FOREIGN, orjson.dumps(payload), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("mode", ["entity", "device"])
@pytest.mark.parametrize("person", ["Bob Smith", "Zoë 😀", "Alice", "presence"])
async def test_finds_and_clears_one_persons_retained_messages_only(
    mqtt_broker: MqttBroker, mode: str, person: str
) -> None:
    ha = ha_for(mode=mode)
    async with sink_for(mqtt_broker, ha=ha) as sink:
        await world(sink)
    await asyncio.to_thread(foreign_config, mqtt_broker)
    before = await retained_async(mqtt_broker)
    as_sent = ZOE_NFD if person == "Zoë 😀" else person  # the name is given in NFC, sent in NFD
    # What Home Assistant's own config computation says exists for them, and their state topics.
    theirs = set(ha.configs(CAMERAS, PEOPLE)) - set(ha.configs(CAMERAS, set(PEOPLE) - {as_sent}))
    states = {LAYOUT.person(as_sent), LAYOUT.person_tracker(as_sent)}
    presences = {
        "Bob Smith": {"facespace/Door/presence"},
        "Zoë 😀": {"facespace/Door/presence"},
        "Alice": {"facespace/Door/presence"},  # named as departed
        "presence": {"facespace/Hall/presence"},
    }[person]
    assert theirs and theirs | states | presences <= before.keys()

    traces = PersonTraces(LAYOUT, [ha_for(mode=mode)])  # a fresh extension: only what the broker says
    async with sink_for(mqtt_broker, ha=False, availability=False, requests=False) as side:
        found, read = await sweep(
            side.connection, traces.filters(), lambda found: traces.find([person], found), timeout=5
        )
    assert set(found.configs) == theirs
    assert set(found.states) == states
    assert set(found.presences) == presences
    assert found.topics[: len(theirs)] == found.configs  # configs go first
    assert read == len([t for t in before if t != "facespace/bridge/state"])
    after = await retained_async(mqtt_broker)
    assert after == {t: p for t, p in before.items() if t not in found}
    assert FOREIGN in after


async def test_finding_nobody_clears_nothing(mqtt_broker: MqttBroker) -> None:
    async with sink_for(mqtt_broker) as sink:
        await world(sink)
    before = await retained_async(mqtt_broker)
    traces = PersonTraces(LAYOUT, [ha_for()])
    for nobody in (["Bob"], ["bob smith"], []):  # exact names only: neither a prefix nor another case
        assert len(traces.find(nobody, before)) == 0
    assert traces.find(["Bob Smith", "Alice"], before).configs  # several at once


def request(broker: MqttBroker, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish("facespace/bridge/request/forget", payload, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


@pytest.mark.parametrize("mode", ["entity", "device"])
async def test_the_bridge_forgets_on_request_and_never_resends_them(
    mqtt_broker: MqttBroker, mode: str
) -> None:
    responses = "facespace/bridge/response/forget"
    with MqttCollector(mqtt_broker, [responses, "facespace/#", "homeassistant/#"]) as collector:
        async with sink_for(mqtt_broker, ha=ha_for(mode=mode)) as sink:
            await world(sink)
            before = await retained_async(mqtt_broker)
            transaction = uuid.uuid4().hex
            ask = orjson.dumps({"person": "Zoë 😀", "transaction": transaction})
            await asyncio.to_thread(request, mqtt_broker, ask)
            answers = await collector.wait_topic(responses)
            answer = orjson.loads(answers[0].payload)
            assert answer["status"] == "ok" and answer["transaction"] == transaction
            assert "Zo" not in answers[0].payload.decode()  # the answer never names them
            after = await retained_async(mqtt_broker)
            cleared = before.keys() - after.keys()
            assert answer["data"]["cleared"] == len(cleared) > 0
            assert not any("Zo" in payload.decode() for payload in after.values())
            assert "facespace/Door/presence" in cleared  # it named them
            assert all("Bob" not in t for t in cleared)  # nobody else's

            # Home Assistant restarts, then the broker connection drops: what the sink re-sends
            # names them nowhere.
            mark = len(collector.snapshot())
            await asyncio.to_thread(request_online, mqtt_broker)
            await collector.wait_for(
                lambda ms: any(m.topic == "facespace/person/Alice" for m in ms[mark:]), what="re-announce"
            )
            await asyncio.to_thread(mqtt_broker.stop)  # it keeps what it retains (persistence)
            await asyncio.to_thread(mqtt_broker.start)
            await eventually(lambda: sink.reconnects == 1, what="a reconnect")
            await collector.wait_for(
                lambda ms: sum(m.topic == "facespace/person/Alice" for m in ms[mark:]) >= 2, what="reconnect"
            )
            # A new camera: its pairs with everyone known (entity form), everyone's device
            # configs again (device form), but not theirs.
            await (await sink.publish([presence_event("Garage", ["Alice"], ["Alice"], [], T0)]))
            await sink.flush()
            # Until the config of the last person in order (named "presence") that names Garage.
            again = await collector.wait_for(
                lambda ms: any(
                    m.topic.endswith("/config") and "presence" in m.topic and b"Garage" in m.payload
                    for m in ms[mark:]
                ),
                what="the new camera's configs",
            )
            again = again[mark:]
            assert not any("Zo" in m.payload.decode() or "Zo" in m.topic for m in again)
            assert not any(
                "Zo" in t or "Zo" in p.decode() for t, p in (await retained_async(mqtt_broker)).items()
            )

            # Seen again: announced again.
            await (await sink.publish([sighting_event(LogEntry("Hall", ZOE_NFD, T0, "raw"), 1)]))
            await sink.flush()
            assert LAYOUT.person(ZOE_NFD) in await retained_async(mqtt_broker)

            bad = b'{"name": "x"}'
            await asyncio.to_thread(request, mqtt_broker, bad)
            answers = await collector.wait_topic(responses, count=2)
            assert orjson.loads(answers[1].payload)["status"] == "error"


def request_online(broker: MqttBroker) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    client.publish("homeassistant/status", b"online", qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


async def test_a_start_clears_the_people_excluded_now(mqtt_broker: MqttBroker) -> None:
    async with sink_for(mqtt_broker) as sink:
        await world(sink)
    before = await retained_async(mqtt_broker)
    excluded = frozenset({"Bob Smith", "Zoë 😀"})
    async with sink_for(mqtt_broker, excluded_people=excluded) as sink:
        await sink.announce(CAMERAS, [p for p in PEOPLE if p not in ("Bob Smith", ZOE_NFD)])
        await sink.flush()
    after = await retained_async(mqtt_broker)
    assert not any("Bob" in t or "Zo" in t or b"Bob" in p or "Zo" in p.decode() for t, p in after.items())
    kept = {t for t in before if "Bob" not in t and "Zo" not in t and t != "facespace/Door/presence"}
    assert kept <= after.keys()
    # A side client (replay) excludes too, but touches nothing retained.
    async with sink_for(
        mqtt_broker, excluded_people=frozenset({"Alice"}), ha=False, availability=False, requests=False
    ):
        pass
    assert LAYOUT.person("Alice") in await retained_async(mqtt_broker)


async def test_a_start_clears_the_people_a_person_list_leaves_out(mqtt_broker: MqttBroker) -> None:
    """With `--person`, everyone not on the list is left out: announced before, they are
    removed at start as the excluded are (docs/privacy.md, "Filters")."""
    async with sink_for(mqtt_broker) as sink:
        await world(sink)
    before = await retained_async(mqtt_broker)
    kept = frozenset({"Alice", unicodedata.normalize("NFC", ZOE_NFD)})
    async with sink_for(mqtt_broker, kept_people=kept) as sink:
        await sink.announce(CAMERAS, ["Alice", ZOE_NFD])
        await sink.flush()
    after = await retained_async(mqtt_broker)
    left_out_topics = ("Bob", "a_b", "person/a", "person/presence", "person_presence")
    assert [t for t in after if any(part in t for part in left_out_topics)] == []
    assert [t for t, p in after.items() if b"Bob" in p or b'"a/b"' in p or b'"presence"' in p] == []
    assert LAYOUT.person("Alice") in after and LAYOUT.person(ZOE_NFD) in after
    assert any("person_Alice" in t or "person_alice" in t for t in after)
    left_out_configs = ("Bob", "a_b", "occupancy_presence", "person_presence")
    others = {
        t for t in before if t.startswith("homeassistant/") and not any(x in t for x in left_out_configs)
    }
    assert others <= after.keys()


async def test_excluded_at_a_start_that_switches_discovery_forms(mqtt_broker: MqttBroker) -> None:
    """Cleared before Home Assistant's migration, which would otherwise move their configs over
    (and keep them in its registry)."""
    async with sink_for(mqtt_broker, ha=ha_for(mode="entity")) as sink:
        await world(sink)
    excluded = frozenset({"Bob Smith"})
    with MqttCollector(mqtt_broker, "homeassistant/#") as collector:
        async with sink_for(mqtt_broker, ha=ha_for(mode="device"), excluded_people=excluded) as sink:
            await sink.announce(CAMERAS, [p for p in PEOPLE if p != "Bob Smith"])
            await sink.flush()
        await collector.wait_for(lambda ms: any("person_Alice" in m.topic for m in ms), what="the new form")
    migrated = [m.topic for m in collector.snapshot() if b"migrate_discovery" in m.payload]
    assert migrated and not any("Bob" in t for t in migrated)
    after = await retained_async(mqtt_broker)
    assert [t for t, p in after.items() if "Bob" in t or b"Bob" in p] == []
    assert any(t.startswith("homeassistant/device/facespace/person_Alice") for t in after)
    assert not any(t.startswith("homeassistant/sensor/") for t in after)  # the others migrated


ODD_CAMERA = "Zoë's 📷/1"  # a camera id that is no topic segment as it is


async def world_with_cameras(sink: MqttSink) -> None:
    """`world`, and a third camera whose id is escaped in topics, with Alice in view there."""
    await world(sink)
    await sink.announce([*CAMERAS, ODD_CAMERA], PEOPLE)
    await (await sink.publish([presence_event(ODD_CAMERA, ["Alice"], ["Alice"], [], T0)]))
    await sink.flush()


@pytest.mark.parametrize("mode", ["entity", "device"])
@pytest.mark.parametrize(
    "filters",
    [
        {"excluded_cameras": frozenset({"Door"})},
        {"kept_cameras": frozenset({"Hall", "Door"})},  # `--camera-id`: every other camera is left out
    ],
    ids=["exclude-camera", "camera-id"],
)
async def test_a_start_clears_the_cameras_left_out(
    mqtt_broker: MqttBroker, mode: str, filters: dict[str, frozenset[str]]
) -> None:
    """What the broker retains of a camera left out now goes at start: its presence, its Home
    Assistant device, everyone's occupancy of it (in device form withdrawn from each person's
    config, as Home Assistant removes one entity of a device); nothing else changes."""
    async with sink_for(mqtt_broker, ha=ha_for(mode=mode)) as sink:
        await world_with_cameras(sink)
    await asyncio.to_thread(foreign_config, mqtt_broker)
    before = await retained_async(mqtt_broker)
    everyone = [*CAMERAS, ODD_CAMERA]
    left_out = "Door" if "excluded_cameras" in filters else ODD_CAMERA
    kept = [c for c in everyone if c != left_out]
    # What Home Assistant's own config computation says the configs are without that camera.
    ha = ha_for(mode=mode)
    expected = ha.configs(kept, PEOPLE)
    theirs = set(ha.configs(everyone, PEOPLE)) - set(expected)
    assert theirs and theirs <= before.keys() and LAYOUT.presence(left_out) in before

    with MqttCollector(mqtt_broker, "homeassistant/#") as collector:
        async with sink_for(mqtt_broker, ha=ha_for(mode=mode), **filters):  # a start, announcing nobody
            pass
        published = [m for m in collector.snapshot() if not m.retain]
    after = await retained_async(mqtt_broker)
    assert before.keys() - after.keys() == theirs | {LAYOUT.presence(left_out)}
    assert {t: p for t, p in after.items() if t.startswith("homeassistant/") and t != FOREIGN} == expected
    assert {t: p for t, p in after.items() if t.startswith("facespace/")} == {
        t: p for t, p in before.items() if t.startswith("facespace/") and t != LAYOUT.presence(left_out)
    }  # the people's states stay as they were
    assert after[FOREIGN] == before[FOREIGN]
    withdrawn = [
        key
        for m in published
        if m.topic.startswith("homeassistant/device/") and m.payload
        for key, component in orjson.loads(m.payload)["cmps"].items()
        if component == {"p": "binary_sensor"}
    ]
    if mode == "device":  # each person's occupancy of it, withdrawn before it left their config
        assert len(withdrawn) == len(PEOPLE)
    else:
        assert withdrawn == []

    # Started again: nothing left to clear, nothing published but what a start publishes.
    async with sink_for(mqtt_broker, ha=ha_for(mode=mode), **filters) as sink:
        assert len(sink.traces.find((), after, sink.traces.cameras(after) - set(kept))) == 0
    assert await retained_async(mqtt_broker) == after


async def test_a_camera_left_out_at_a_start_that_switches_discovery_forms(mqtt_broker: MqttBroker) -> None:
    """Device form to entity form with a camera excluded: its occupancy entities are withdrawn
    from each person's device config before the migration moves the configs over."""
    async with sink_for(mqtt_broker, ha=ha_for(mode="device")) as sink:
        await world_with_cameras(sink)
    with MqttCollector(mqtt_broker, "homeassistant/#") as collector:
        async with sink_for(
            mqtt_broker, ha=ha_for(mode="entity"), excluded_cameras=frozenset({ODD_CAMERA})
        ) as sink:
            await sink.announce(CAMERAS, PEOPLE)
            await sink.flush()
        await collector.wait_for(lambda ms: any("/sensor/" in m.topic for m in ms), what="the new form")
    topics = [m.topic for m in collector.snapshot() if not m.retain]
    person_config = "homeassistant/device/facespace/person_Alice/config"
    # Withdrawn (its components), then moved over (the migration), then cleared.
    assert topics.count(person_config) == 3
    after = await retained_async(mqtt_broker)
    assert {t: p for t, p in after.items() if t.startswith("homeassistant/")} == ha_for(
        mode="entity"
    ).configs(CAMERAS, PEOPLE)
    assert LAYOUT.presence(ODD_CAMERA) not in after
