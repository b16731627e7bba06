"""The MQTT sink: events onto per-camera topics (docs/mqtt.md), retained presence and
last-seen state, availability, and extensions — Home Assistant's (homeassistant.py) —
that add what their consumers need on top.

The sink routes: a sighting to `<prefix>/<camera>/sighting` (and the person's retained
last-seen topic, never moved backwards), a presence to the retained
`<prefix>/<camera>/presence`, a dead letter to `<prefix>/deadletter`. The connection
(connection.py, with outbox.py and retained.py) keeps the outbox, the acknowledgements and
the retained state; an event's
ack completes on the PUBACKs of all its messages. Extensions (extension.py) see every event
first and may add topics to it.

With MQTT 5, the messages that are not retained carry a message expiry, the user properties
`event-id` and `schema`, and the content type `application/json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facespace_bridge.events import Event
from facespace_bridge.settings import cli_options
from facespace_bridge.sinks.base import Ack, LastSeen, Role, Sink, SinkError
from facespace_bridge.sinks.mqtt import homeassistant
from facespace_bridge.sinks.mqtt.address import BrokerAddress, TlsFiles, parse_mqtt_url
from facespace_bridge.sinks.mqtt.connection import (
    CLOSE_TIMEOUT,
    CONNECT_TIMEOUT,
    RECONNECT_DELAY,
    MqttConnection,
)
from facespace_bridge.sinks.mqtt.extension import MqttExtension
from facespace_bridge.sinks.mqtt.outbox import Acknowledgement
from facespace_bridge.sinks.mqtt.settings import MqttSettings, settings_from_config
from facespace_bridge.sinks.mqtt.topics import TopicLayout, check_base_topic, id_slug

__all__ = [
    "BrokerAddress",
    "MqttConnection",
    "MqttExtension",
    "MqttSettings",
    "MqttSink",
    "TlsFiles",
    "TopicLayout",
    "from_config",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)


def default_client_id(topic_prefix: str) -> str:
    """Stable across restarts, so the broker sees the same client come back."""
    return f"facespace-bridge-{id_slug(topic_prefix)}"


def client_id_of(role: Role, client_id: str | None, topic_prefix: str) -> str:
    """The client id `role` connects with: the bridge's own (`--mqtt-client-id`, else the
    default), and for a side client that id with the role's name appended, since the bridge's
    would take the bridge's connection over."""
    own = client_id or default_client_id(topic_prefix)
    return f"{own}-{role.value}" if role.side else own


class MqttSink(Sink):
    """Events into MQTT topics (docs/mqtt.md), with `extensions` on top.

    `availability`: the sink keeps `<prefix>/bridge/state` (`online`, and `offline` as its
    Last Will); off for a side client that runs beside the bridge (a replay, a check).
    """

    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings | None = None,
        *,
        availability: bool = True,
        extensions: Sequence[MqttExtension] = (),
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_delay: tuple[float, float] = RECONNECT_DELAY,
        close_timeout: float = CLOSE_TIMEOUT,
    ) -> None:
        settings = settings or MqttSettings()
        problem = check_base_topic(settings.topic_prefix, "topic prefix")
        if problem:
            raise ValueError(problem)
        self.settings = settings
        self.layout = TopicLayout(settings.topic_prefix)
        self.connection = MqttConnection(
            settings.address,
            client_id=settings.client_id or default_client_id(settings.topic_prefix),
            availability=self.layout.bridge_state if availability else None,
            tls=settings.tls,
            keepalive=settings.keepalive,
            qos=settings.qos,
            protocol=settings.protocol,
            max_inflight=settings.max_inflight,
            max_queued=settings.max_queued,
            connect_timeout=connect_timeout,
            reconnect_delay=reconnect_delay,
            close_timeout=close_timeout,
        )
        self.address = self.connection.address
        self.message_expiry = settings.message_expiry
        self.extensions = list(extensions)
        self._person_seen_at: dict[str, datetime] = {}  # the seen_at of each person's retained topic

    @property
    def connected(self) -> bool:
        """Whether the sink has a live broker connection right now."""
        return self.connection.connected

    @property
    def reconnects(self) -> int:
        return self.connection.reconnects

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.connection.start()
        self.connection.on_message = self._on_message
        for extension in self.extensions:
            await extension.start(self.connection)

    async def announce(
        self, cameras: Iterable[str], people: Iterable[str], last_seen: Mapping[str, LastSeen] | None = None
    ) -> None:
        cameras, people = sorted(set(cameras)), sorted(set(people))
        for extension in self.extensions:
            await extension.announce(cameras, people, last_seen or {})

    async def flush(self) -> None:
        await self.connection.flush()

    async def close(self) -> None:
        for extension in self.extensions:
            try:
                await extension.close()
            except Exception as exc:  # the connection must still close
                log.warning("MQTT extension %s did not close cleanly: %s", extension.name, exc)
        await self.connection.close()

    def details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"reconnects": self.connection.reconnects}
        for extension in self.extensions:
            details.update(extension.details())
        return details

    # -- publishing -------------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> Ack:
        connection = self.connection
        ack = connection.acknowledgement()
        for event in events:
            await self._publish_one(event, ack)
            connection.drain()
        return ack.seal()

    async def _publish_one(self, event: Event, ack: Acknowledgement) -> None:
        connection = self.connection
        kind = event.kind
        if kind == "sighting":
            topics = [self.layout.sighting(event.camera_id)]
        elif kind == "presence":
            # Retained state: acknowledged once the broker has this or a later presence.
            connection.retain(self.layout.presence(event.camera_id), event.payload, ack)
            topics = []
        elif kind == "deadletter":
            topics = [self.layout.deadletter]
        else:
            raise SinkError(f"MQTT sink cannot route events of schema {event.schema}")
        for extension in self.extensions:
            topics += extension.on_event(event)

        properties = self._properties(event) if topics and connection.protocol == "5" else None
        for topic in topics:
            if connection.full:
                await connection.room()
            connection.send(topic, event.payload, ack, properties)
        if kind == "sighting":
            # Last seen never moves backwards: a replay or a late entry leaves a newer one alone.
            person, seen_at = event.person, event.seen_at
            assert person is not None and seen_at is not None  # every sighting has both
            latest = self._person_seen_at.get(person)
            if latest is None or seen_at >= latest:
                self._person_seen_at[person] = seen_at
                connection.retain(self.layout.person(person), event.payload)

    def _properties(self, event: Event) -> Properties:
        """MQTT 5 properties of an event's messages (none of them retained)."""
        properties = Properties(PacketTypes.PUBLISH)
        properties.MessageExpiryInterval = self.message_expiry
        properties.ContentType = "application/json"
        properties.UserProperty = [("event-id", event.event_id), ("schema", event.schema)]
        return properties

    def _on_message(self, topic: str, payload: bytes) -> None:
        for extension in self.extensions:
            extension.on_message(topic, payload)


# -- CLI --------------------------------------------------------------------------------------------

HELP = "an MQTT broker, with Home Assistant discovery"
SECRET_VARIABLES = ("MQTT_PASSWORD",)
OPTIONS = [*cli_options(MqttSettings), *homeassistant.OPTIONS]


def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> MqttSink:
    settings = settings_from_config(config)
    layout = TopicLayout(settings.topic_prefix)
    ha = homeassistant.from_config(config, layout, role=role)
    # A side client (replay, check) runs beside the bridge: its own client id, no hand on
    # the bridge's availability, no extensions.
    settings = replace(settings, client_id=client_id_of(role, settings.client_id, layout.prefix))
    return MqttSink(settings, availability=not role.side, extensions=[ha] if ha is not None else [])
