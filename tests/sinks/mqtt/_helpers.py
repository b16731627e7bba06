"""What the MQTT sink tests share: a sink on a test broker, with or without the Home
Assistant extension, its delays shortened so that tests do not wait for them."""

from __future__ import annotations

from typing import Any

from facespace_bridge.sinks.mqtt import MqttSink
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.mqtt import MqttBroker


def ha_for(topic_prefix: str = "facespace", **kwargs: Any) -> HomeAssistant:
    options: dict[str, Any] = {"reannounce_delay": (0.01, 0.05), "migration_pause": 0.05}
    return HomeAssistant(TopicLayout(topic_prefix), **(options | kwargs))


def sink_for(
    broker: MqttBroker, *, ha: bool | HomeAssistant = True, topic_prefix: str = "facespace", **kwargs: Any
) -> MqttSink:
    """A sink on `broker`; `ha`: the default extension, none, or this one."""
    extension = ha_for(topic_prefix) if ha is True else ha or None
    options: dict[str, Any] = {"reconnect_delay": (0.05, 0.5), "connect_timeout": 5.0, "close_timeout": 2.0}
    return MqttSink(
        broker.url,
        topic_prefix=topic_prefix,
        extensions=[extension] if extension is not None else [],
        **(options | kwargs),
    )
