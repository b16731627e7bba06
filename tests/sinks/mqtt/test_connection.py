"""`MqttConnection` on its own against a real Mosquitto: acknowledgements on PUBACKs, the
retained state and the availability across a broker restart, subscriptions renewed,
`read_retained` and `clear`, what fails at close, and what a failed start says."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.sinks import SinkError
from facespace_bridge.sinks.mqtt import MqttConnection, MqttSettings, parse_mqtt_url
from tests.fixtures.mqtt import MqttBroker, MqttCollector, eventually, free_port, retained_async

pytestmark = pytest.mark.timeout(60)

STATE = "test/bridge/state"


def connection_to(broker: MqttBroker | str, **kwargs: object) -> MqttConnection:
    url = broker if isinstance(broker, str) else broker.url
    defaults = MqttSettings()
    options: dict[str, object] = {
        "client_id": "connection-test",
        "keepalive": defaults.keepalive,
        "qos": defaults.qos,
        "protocol": defaults.protocol,
        "max_inflight": defaults.max_inflight,
        "max_queued": defaults.max_queued,
        "connect_timeout": 5.0,
        "reconnect_delay": (0.05, 0.3),
        "close_timeout": 2.0,
    }
    return MqttConnection(parse_mqtt_url(url), **(options | kwargs))  # type: ignore[arg-type]


@pytest.fixture
async def connection(mqtt_broker: MqttBroker) -> AsyncIterator[MqttConnection]:
    connection = connection_to(mqtt_broker, availability=STATE)
    await connection.start()
    try:
        yield connection
    finally:
        await connection.close()


async def test_an_acknowledgement_completes_on_the_pubacks_of_all_its_messages(
    mqtt_broker: MqttBroker, connection: MqttConnection
) -> None:
    with MqttCollector(mqtt_broker, "test/data") as collector:
        ack = connection.acknowledgement()
        for i in range(500):
            if connection.full:
                await connection.room()
            connection.send("test/data", str(i).encode(), ack)
        connection.drain()
        assert ack.pending > 0  # nothing is acknowledged before the broker says so
        await asyncio.wait_for(ack.seal(), 10)
        assert ack.pending == 0 and connection.pending == 0
        received = await collector.wait_topic("test/data", count=500)
    assert [m.payload for m in received] == [str(i).encode() for i in range(500)]  # in order
    empty = connection.acknowledgement().seal()
    assert empty.done()  # an acknowledgement of no message is complete at once


async def test_retained_state_and_availability_come_back_after_a_broker_restart(
    mqtt_broker: MqttBroker, connection: MqttConnection
) -> None:
    for value in (b"1", b"2", b"3"):  # only the latest value is kept
        connection.retain("test/state/a", value)
    await connection.flush()
    assert await retained_async(mqtt_broker, "test/#") == {STATE: b"online", "test/state/a": b"3"}
    heard: list[str] = []
    connection.on_message = lambda topic, payload: heard.append(topic)
    connection.subscribe("test/commands")

    mqtt_broker.stop()
    (mqtt_broker.workdir / "mosquitto.db").unlink()  # the broker forgets all it held
    mqtt_broker.start()
    await eventually(lambda: connection.reconnects == 1 and connection.connected, 15, "a reconnect")
    await connection.flush()
    assert await retained_async(mqtt_broker, "test/#") == {STATE: b"online", "test/state/a": b"3"}

    async def heard_it() -> None:  # the SUBACK may still be on its way: publish until heard
        while not heard:
            await asyncio.to_thread(_publish, mqtt_broker, "test/commands", b"x")
            await asyncio.sleep(0.1)

    await asyncio.wait_for(heard_it(), 10)
    assert set(heard) == {"test/commands"}


async def test_read_retained_sees_what_the_broker_holds_and_clear_removes_it(
    mqtt_broker: MqttBroker, connection: MqttConnection
) -> None:
    connection.retain("test/keep/a", b"a")
    connection.retain("test/keep/b", b"b")
    connection.retain("other/c", b"c")
    await connection.flush()
    assert await connection.read_retained(["test/keep/#"]) == {"test/keep/a": b"a", "test/keep/b": b"b"}
    await asyncio.wait_for(connection.clear("test/keep/a"), 10)
    assert await connection.read_retained(["test/keep/#", "other/#"]) == {
        "test/keep/b": b"b",
        "other/c": b"c",
    }


async def test_close_says_offline(mqtt_broker: MqttBroker, connection: MqttConnection) -> None:
    await connection.close()
    assert (await retained_async(mqtt_broker, STATE))[STATE] == b"offline"


async def test_close_fails_what_was_never_acknowledged(mqtt_broker: MqttBroker) -> None:
    connection = connection_to(mqtt_broker, close_timeout=0.5)
    await connection.start()
    mqtt_broker.stop()
    await eventually(lambda: not connection.connected, 10, "the connection lost")
    ack = connection.acknowledgement()
    connection.send("test/data", b"never", ack)
    future = ack.seal()
    await connection.close()
    with pytest.raises(SinkError, match="closed before the broker acknowledged"):
        await future


async def test_a_client_without_availability_never_touches_the_state_topic(mqtt_broker: MqttBroker) -> None:
    with MqttCollector(mqtt_broker, STATE) as collector:
        connection = connection_to(mqtt_broker)  # availability None: a side client
        await connection.start()
        connection.retain("test/state/a", b"1")
        await connection.flush()
        await connection.close()
    assert collector.on(STATE) == []


async def test_a_refused_connection_says_refused() -> None:
    port = free_port()  # nothing listens there
    connection = connection_to(f"mqtt://127.0.0.1:{port}", connect_timeout=0.5)
    with pytest.raises(SinkError) as raised:
        await connection.start()
    assert str(raised.value) == (
        f"cannot connect to MQTT broker mqtt://127.0.0.1:{port}: connection refused by 127.0.0.1:{port} "
        "(tried for 0.5 s)"
    )


async def test_a_broker_that_never_answers_is_a_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections (the backlog), never answers CONNECT
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        connection = connection_to(f"mqtt://127.0.0.1:{port}", connect_timeout=0.5)
        with pytest.raises(SinkError) as raised:
            await connection.start()
    assert str(raised.value) == (
        f"cannot connect to MQTT broker mqtt://127.0.0.1:{port}: no answer within 0.5 s (timeout)"
    )


def _publish(broker: MqttBroker, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
