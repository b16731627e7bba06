"""The MQTT sink against a real Mosquitto: topics, schemas, retained state, the Last Will,
broker restarts, back-pressure and hostile names."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, deadletter_event, presence_event, sighting_event
from facespace_bridge.schemas import validate
from facespace_bridge.sinks import SinkError
from facespace_bridge.sinks.mqtt import MqttSettings, MqttSink
from facespace_bridge.sinks.mqtt.topics import camera_segment, person_segment
from tests.fixtures.mqtt import MqttBroker, MqttCollector, eventually, free_port, retained_async
from tests.sinks.mqtt._helpers import sink_for

pytestmark = pytest.mark.timeout(90)

T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
HOSTILE = ["a/b", "#", "+", "a+b/#", "smile 😀", "tab\there", "nul\x00x", "bell\x07", "$SYS", "", "person"]


def sighting(camera: str, person: str, second: int = 0, k: int = 0) -> Event:
    return sighting_event(LogEntry(camera, person, T0 + timedelta(seconds=second), "raw"), k)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_every_payload_validates_and_lands_on_its_topic(mqtt_broker: MqttBroker, protocol: str) -> None:
    with MqttCollector(mqtt_broker, "facespace/#") as collector:
        async with sink_for(mqtt_broker, protocol=protocol) as sink:
            live = datetime.now(timezone.utc).replace(microsecond=0)  # history would not fire the HA event
            events = [
                sighting_event(LogEntry("Camera1", "Alice", live, "raw"), 0),
                presence_event("Camera1", ["Alice", "Bob"], ["Alice", "Bob"], [], T0),
                deadletter_event("Camera1", "garbage", "unparseable entry", "logs"),
            ]
            acks = [await sink.publish([e]) for e in events]
            await asyncio.gather(*acks)
        messages = await collector.wait_for(
            lambda ms: (
                any(m.topic == "facespace/deadletter" for m in ms)
                and any(m.topic == "facespace/bridge/state" and m.payload == b"offline" for m in ms)
            ),
            what="the dead letter and the closing `offline`",
        )
    by_topic = {m.topic: m for m in messages}
    assert by_topic["facespace/Camera1/sighting"].payload == events[0].payload
    assert by_topic["facespace/Camera1/presence"].payload == events[1].payload
    assert by_topic["facespace/deadletter"].payload == events[2].payload
    assert by_topic["facespace/person/Alice"].payload == events[0].payload  # last seen
    assert by_topic["facespace/person/Alice/sighting"].payload == events[0].payload  # the HA event feed
    for message in messages:
        if message.topic != "facespace/bridge/state":
            assert validate(message.payload) == [], message.topic
    states = [m.payload for m in messages if m.topic == "facespace/bridge/state"]
    assert states[0] == b"online" and states[-1] == b"offline"  # clean close says so itself


async def test_retained_presence_reaches_a_late_subscriber(mqtt_broker: MqttBroker) -> None:
    async with sink_for(mqtt_broker, ha=False) as sink:
        first = presence_event("Camera1", ["Alice"], ["Alice"], [], T0)
        second = presence_event("Camera1", [], [], ["Alice"], T0 + timedelta(seconds=40))
        await (await sink.publish([first]))
        await (await sink.publish([second]))
        await (await sink.publish([sighting("Camera1", "Alice", second=3)]))
        # An older sighting (a replay, a late entry) must not move "last seen" backwards.
        await (await sink.publish([sighting("Camera1", "Alice", second=1)]))
        await sink.flush()
        held = await retained_async(mqtt_broker, "facespace/#")
    assert held["facespace/Camera1/presence"] == second.payload
    assert orjson.loads(held["facespace/person/Alice"])["seen_at"] == "2023-10-23T00:05:25Z"
    assert held["facespace/bridge/state"] == b"online"
    assert "facespace/Camera1/sighting" not in held  # sightings are events, not state
    after = await retained_async(mqtt_broker, "facespace/bridge/state")
    assert after["facespace/bridge/state"] == b"offline"  # a clean close says so itself


SCRIPT = """
import asyncio, sys
from facespace_bridge.sinks.mqtt import MqttSettings, MqttSink

async def main():
    sink = MqttSink(MqttSettings(url=sys.argv[1], keepalive=5))
    await sink.start()
    await sink.flush()
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_last_will_says_offline_after_sigkill(mqtt_broker: MqttBroker, tmp_path: Path) -> None:
    script = tmp_path / "bridge.py"
    script.write_text(SCRIPT)
    with MqttCollector(mqtt_broker, "facespace/bridge/state") as collector:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            mqtt_broker.url,
            stdout=subprocess.PIPE,
            cwd=Path(__file__).parents[3],
            env={**os.environ, "PYTHONPATH": "."},
        )
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 20)
            assert line.strip() == b"ready"
            await collector.wait_for(lambda ms: bool(ms) and ms[-1].payload == b"online", what="online")
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            messages = await collector.wait_for(lambda ms: ms[-1].payload == b"offline", what="the Last Will")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert [m.payload for m in messages][-2:] == [b"online", b"offline"]
    held = await retained_async(mqtt_broker, "facespace/bridge/state")
    assert held["facespace/bridge/state"] == b"offline"  # late subscribers learn it too


async def test_broker_restart_mid_stream_loses_nothing(mqtt_broker: MqttBroker) -> None:
    n = 3000
    events = [sighting(f"Camera{i % 3}", f"P{i % 7}", second=i // 10, k=i % 10) for i in range(n)]
    expected = {e.event_id for e in events}
    assert len(expected) == n
    # A persistent session: the broker keeps its queue through the restart.
    watcher = MqttCollector(mqtt_broker, "facespace/+/sighting", client_id="restart-watcher", persistent=True)
    with watcher as col:
        async with sink_for(mqtt_broker, ha=False, max_queued=200) as sink:
            acks = []
            restart: asyncio.Future[None] | None = None
            for i, event in enumerate(events):
                acks.append(await sink.publish([event]))
                if i == n // 3:
                    restart = asyncio.ensure_future(asyncio.to_thread(mqtt_broker.restart, 0.3))
            assert restart is not None
            await restart
            await asyncio.wait_for(asyncio.gather(*acks), 60)
            assert sink.reconnects >= 1
        got = await col.wait_for(
            lambda ms: {orjson.loads(m.payload)["event_id"] for m in ms} >= expected, 30, "every sighting"
        )
    assert {orjson.loads(m.payload)["event_id"] for m in got} == expected


async def test_back_pressure_while_the_broker_is_down(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, "facespace/+/sighting", client_id="bp-watcher", persistent=True) as col:
        async with sink_for(mqtt_broker, ha=False, max_inflight=4, max_queued=10) as sink:
            await asyncio.to_thread(mqtt_broker.stop)
            await eventually(lambda: not sink.connected, what="the sink to notice")
            events = [sighting("Camera1", "Alice", second=i) for i in range(12)]
            acks = [await sink.publish([e]) for e in events[:10]]  # the queue takes ten
            blocked = asyncio.ensure_future(sink.publish([events[10]]))
            await asyncio.sleep(0.3)
            assert not blocked.done(), "publish must wait while the queue is full"
            assert not any(asyncio.ensure_future(a).done() for a in acks)  # nothing acked early
            await asyncio.to_thread(mqtt_broker.start)
            acks.append(await blocked)
            acks.append(await sink.publish([events[11]]))
            await asyncio.wait_for(asyncio.gather(*acks), 30)
        got = await col.wait_for(lambda ms: len({m.payload for m in ms}) >= 12, what="all twelve")
    assert {m.payload for m in got} == {e.payload for e in events}


async def test_hostile_names_never_break_the_topic_tree(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, ["facespace/#", "homeassistant/#"]) as collector:
        async with sink_for(mqtt_broker) as sink:
            await sink.announce(HOSTILE, HOSTILE)
            acks = []
            events = []
            for i, name in enumerate(HOSTILE):
                events += [sighting(name, name, second=i), presence_event(name, [name], [name], [], T0)]
            for event in events:
                acks.append(await sink.publish([event]))
            await asyncio.gather(*acks)
        # The sink's last word (in order on its one connection) is its retained `offline`.
        messages = await collector.wait_for(
            lambda ms: any(m.payload == b"offline" for m in ms), what="offline"
        )
    cameras = {camera_segment(n) for n in HOSTILE}
    people = {person_segment(n) for n in HOSTILE}
    assert len(cameras) == len(people) == len(HOSTILE)  # distinct names, distinct segments
    assert "person" not in cameras  # a camera called "person" cannot shadow the person tree
    for message in messages:
        levels = message.topic.split("/")
        assert not any(c in message.topic for c in "+#\x00\x07\t")
        if levels[0] == "homeassistant":
            assert len(levels) == 5 and levels[-1] == "config"
            continue
        if levels[1] == "person":
            assert levels[2] in people and levels[3:] in ([], ["sighting"], ["tracker"])
        elif levels[1] not in ("bridge", "deadletter"):
            assert len(levels) == 3 and levels[1] in cameras and levels[2] in ("sighting", "presence")
    sightings = [orjson.loads(m.payload) for m in messages if m.topic.endswith("/sighting")]
    named = {e.fields["person"] for e in events if e.kind == "sighting"}
    assert len(named) >= len(HOSTILE) - 1  # only "" is refused by the schema (a dead letter)
    assert {s["person"] for s in sightings} == named
    for name in named:  # the original names stay in the payloads, on the right topic
        camera_topic = f"facespace/{camera_segment(name)}/sighting"
        assert any(orjson.loads(m.payload)["camera_id"] == name for m in messages if m.topic == camera_topic)


async def test_unreachable_broker_fails_start_with_one_line() -> None:
    sink = MqttSink(
        MqttSettings(url=f"mqtt://127.0.0.1:{free_port()}"), connect_timeout=0.5, reconnect_delay=(0.1, 0.2)
    )
    with pytest.raises(SinkError, match=r"cannot connect to MQTT broker mqtt://127\.0\.0\.1:\d+"):
        await sink.start()


async def test_publish_before_start_is_an_error() -> None:
    with pytest.raises(SinkError, match="not started"):
        await MqttSink().publish([sighting("Camera1", "Alice")])


async def test_a_refused_message_fails_its_ack_under_mqtt5(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite facespace/bridge/#\ntopic readwrite facespace/+/presence\n")
    broker = MqttBroker(tmp_path, extra_config=[f"acl_file {acl}"])
    broker.start()
    try:
        async with sink_for(broker, protocol="5", ha=False) as sink:
            allowed = await sink.publish([presence_event("Camera1", [], [], [], T0)])
            denied = await sink.publish([sighting("Camera1", "Alice")])
            await allowed
            with pytest.raises(SinkError, match="refused a message to facespace/Camera1/sighting"):
                await denied
    finally:
        broker.stop()


async def test_mqtt5_properties_on_what_is_not_retained(mqtt_broker: MqttBroker) -> None:
    """Read by a paho MQTT 5 subscriber: sightings, the person's event feed and dead letters carry
    a message expiry, `event-id` and `schema` user properties and a content type; retained
    state and discovery configs carry no expiry."""
    received: list[tuple[str, bool, dict[str, object]]] = []
    subscribed = asyncio.Event()
    loop = asyncio.get_running_loop()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id="v5-reader")
    client.on_message = lambda _c, _u, m: received.append((m.topic, m.retain, m.properties.json()))
    client.on_subscribe = lambda *_: loop.call_soon_threadsafe(subscribed.set)
    client.connect(mqtt_broker.host, mqtt_broker.port)
    client.subscribe([("facespace/#", 1), ("homeassistant/#", 1)])
    client.loop_start()
    try:
        await asyncio.wait_for(subscribed.wait(), 10)
        now = datetime.now(timezone.utc).replace(microsecond=0)  # live: it feeds the event entity too
        seen = sighting_event(LogEntry("Camera1", "Alice", now, "raw"), 0)
        events = [
            seen,
            presence_event("Camera1", ["Alice"], ["Alice"], [], T0),
            deadletter_event("Camera1", "garbage", "unparseable entry", "logs"),
        ]
        async with sink_for(mqtt_broker, protocol="5", message_expiry=120) as sink:
            await sink.announce(["Camera1"], ["Alice"])
            await asyncio.gather(*[await sink.publish([e]) for e in events])
        await eventually(
            lambda: any(t == "facespace/deadletter" for t, _, _ in received), what="the dead letter"
        )
    finally:
        client.disconnect()
        client.loop_stop()
    by_topic = {topic: properties for topic, _, properties in received}
    for topic, event in [
        ("facespace/Camera1/sighting", seen),
        ("facespace/person/Alice/sighting", seen),
        ("facespace/deadletter", events[2]),
    ]:
        properties = by_topic[topic]
        assert 110 <= properties["MessageExpiryInterval"] <= 120, topic  # the broker counts it down
        assert properties["ContentType"] == "application/json"
        assert properties["UserProperty"] == [("event-id", event.event_id), ("schema", event.schema)]
    for topic, properties in by_topic.items():
        if (
            topic.endswith(("/presence", "/config", "/tracker", "/state"))
            or topic == "facespace/person/Alice"
        ):
            assert "MessageExpiryInterval" not in properties, topic
