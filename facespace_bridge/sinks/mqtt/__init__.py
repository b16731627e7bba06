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
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facespace_bridge.client import redactor
from facespace_bridge.events import Event
from facespace_bridge.sinks.base import Ack, LastSeen, Role, Sink, SinkError
from facespace_bridge.sinks.mqtt import homeassistant
from facespace_bridge.sinks.mqtt.address import BrokerAddress, TlsFiles, parse_mqtt_url
from facespace_bridge.sinks.mqtt.connection import PROTOCOLS, MqttConnection
from facespace_bridge.sinks.mqtt.extension import MqttExtension
from facespace_bridge.sinks.mqtt.outbox import DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_QUEUED, Acknowledgement
from facespace_bridge.sinks.mqtt.topics import TopicLayout, check_base_topic, id_slug

__all__ = [
    "BrokerAddress",
    "MqttConnection",
    "MqttExtension",
    "MqttSink",
    "TlsFiles",
    "TopicLayout",
    "from_config",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)

DEFAULT_MESSAGE_EXPIRY = 3600  # seconds (MQTT 5): a sighting nobody fetched within an hour is stale


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
        url: str = "mqtt://127.0.0.1:1883",
        *,
        username: str | None = None,
        password: str | None = None,
        tls: TlsFiles | None = None,
        client_id: str | None = None,
        keepalive: int = 30,
        qos: int = 1,
        protocol: str = "3.1.1",
        topic_prefix: str = "facespace",
        message_expiry: int = DEFAULT_MESSAGE_EXPIRY,
        availability: bool = True,
        extensions: Sequence[MqttExtension] = (),
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_queued: int = DEFAULT_MAX_QUEUED,
        connect_timeout: float = 10.0,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        close_timeout: float = 10.0,
    ) -> None:
        problem = check_base_topic(topic_prefix, "topic prefix")
        if problem:
            raise ValueError(problem)
        self.layout = TopicLayout(topic_prefix)
        self.connection = MqttConnection(
            parse_mqtt_url(url, username, password),
            client_id=client_id or default_client_id(topic_prefix),
            availability=self.layout.bridge_state if availability else None,
            tls=tls,
            keepalive=keepalive,
            qos=qos,
            protocol=protocol,
            max_inflight=max_inflight,
            max_queued=max_queued,
            connect_timeout=connect_timeout,
            reconnect_delay=reconnect_delay,
            close_timeout=close_timeout,
        )
        self.address = self.connection.address
        self.message_expiry = message_expiry
        self.extensions = list(extensions)
        self._person_seen_at: dict[str, str] = {}  # the seen_at of each person's retained topic

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
        details: dict[str, Any] = {}
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
        fields = event.fields
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
            topics += extension.on_event(event, fields)

        properties = self._properties(event) if topics and connection.protocol == "5" else None
        for topic in topics:
            if connection.full:
                await connection.room()
            connection.send(topic, event.payload, ack, properties)
        if kind == "sighting":
            # Last seen never moves backwards: a replay or a late entry leaves a newer one alone.
            person, seen_at = str(fields["person"]), str(fields["seen_at"])
            if seen_at >= self._person_seen_at.get(person, ""):
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

_FILE = click.Path(exists=True, dir_okay=False)

HELP = "an MQTT broker, with Home Assistant discovery"
SECRET_VARIABLES = ("MQTT_PASSWORD",)

CONNECTION_OPTIONS = [
    click.option(
        "--mqtt-url",
        envvar="MQTT_URL",
        default="mqtt://localhost:1883",
        show_default=True,
        help="mqtt://[user[:password]@]host[:port] or mqtts:// for TLS. A password in the URL "
        "shows in `ps`: prefer env MQTT_URL or MQTT_PASSWORD.",
    ),
    click.option("--mqtt-username", envvar="MQTT_USERNAME", help="Broker user (password: MQTT_PASSWORD)."),
    click.option("--mqtt-cafile", type=_FILE, help="CA bundle for mqtts://."),
    click.option("--mqtt-certfile", type=_FILE, help="Client certificate (PEM)."),
    click.option("--mqtt-keyfile", type=_FILE, help="Key of the client certificate (PEM)."),
    click.option("--mqtt-client-id", help="MQTT client id [default: facespace-bridge-<topic prefix>]."),
    click.option(
        "--mqtt-keepalive",
        type=click.IntRange(5, 65535),
        default=30,
        show_default=True,
        help="Seconds between keepalive pings.",
    ),
    click.option(
        "--mqtt-qos",
        type=click.Choice(["0", "1", "2"]),
        default="1",
        show_default=True,
        help="QoS of every message; acks (and checkpoints) follow it.",
    ),
    click.option(
        "--mqtt-protocol",
        type=click.Choice(list(PROTOCOLS)),
        default="3.1.1",
        show_default=True,
        help="MQTT version; 5 adds message expiry, user properties and content type to sightings.",
    ),
    click.option(
        "--mqtt-message-expiry",
        type=click.IntRange(1, 2**32 - 1),
        help=f"Seconds (MQTT 5 only) after which the broker drops a sighting not yet delivered; "
        f"never on retained topics [default: {DEFAULT_MESSAGE_EXPIRY}].",
    ),
    click.option(
        "--mqtt-max-inflight",
        type=click.IntRange(1, 65000),
        default=DEFAULT_MAX_INFLIGHT,
        show_default=True,
        help="Messages awaiting PUBACK at once.",
    ),
    click.option(
        "--mqtt-max-queued",
        type=click.IntRange(1, 10_000_000),
        default=DEFAULT_MAX_QUEUED,
        show_default=True,
        help="Unacknowledged messages held before sources are made to wait.",
    ),
    click.option("--topic-prefix", default="facespace", show_default=True, help="Base MQTT topic."),
]
OPTIONS = [*CONNECTION_OPTIONS, *homeassistant.OPTIONS]


def connection_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """MqttSink keyword arguments for the connection and the topic prefix, from parsed
    options; raises click errors for bad input. The password comes from the URL or env
    MQTT_PASSWORD, never from a flag."""
    url = config.get("mqtt_url") or "mqtt://localhost:1883"
    username = config.get("mqtt_username") or None
    password = os.environ.get("MQTT_PASSWORD") or None
    try:
        address = parse_mqtt_url(url, username, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mqtt-url") from None
    if address.password:  # from the URL: redacted like the variables in SECRET_VARIABLES
        redactor.add(address.password)
    prefix = config.get("topic_prefix") or "facespace"
    problem = check_base_topic(prefix, "--topic-prefix")
    if problem:
        raise click.BadParameter(problem, param_hint="--topic-prefix")
    tls = TlsFiles(config.get("mqtt_cafile"), config.get("mqtt_certfile"), config.get("mqtt_keyfile"))
    if tls and not address.tls:
        raise click.BadParameter("TLS files need an mqtts:// URL", param_hint="--mqtt-url")
    if tls.keyfile and not tls.certfile:
        raise click.BadParameter("--mqtt-keyfile needs --mqtt-certfile", param_hint="--mqtt-keyfile")
    max_inflight = int(config.get("mqtt_max_inflight") or DEFAULT_MAX_INFLIGHT)
    max_queued = int(config.get("mqtt_max_queued") or DEFAULT_MAX_QUEUED)
    if max_queued < max_inflight:
        raise click.BadParameter("must be at least --mqtt-max-inflight", param_hint="--mqtt-max-queued")
    protocol = str(config.get("mqtt_protocol") or "3.1.1")
    expiry = config.get("mqtt_message_expiry")
    if expiry is not None and protocol != "5":
        raise click.BadParameter("message expiry needs --mqtt-protocol 5", param_hint="--mqtt-message-expiry")
    return {
        "url": url,
        "username": username,
        "password": password,
        "tls": tls,
        "client_id": config.get("mqtt_client_id") or None,
        "keepalive": int(config.get("mqtt_keepalive") or 30),
        "qos": 1 if config.get("mqtt_qos") is None else int(config["mqtt_qos"]),
        "protocol": protocol,
        "message_expiry": DEFAULT_MESSAGE_EXPIRY if expiry is None else int(expiry),
        "topic_prefix": prefix,
        "max_inflight": max_inflight,
        "max_queued": max_queued,
    }


def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> MqttSink:
    kwargs = connection_kwargs(config)
    layout = TopicLayout(kwargs["topic_prefix"])
    ha = homeassistant.from_config(config, layout, role=role)
    # A side client (replay, check) runs beside the bridge: its own client id, no hand on
    # the bridge's availability, no extensions.
    kwargs["client_id"] = client_id_of(role, kwargs["client_id"], layout.prefix)
    kwargs["availability"] = not role.side
    return MqttSink(**kwargs, extensions=[ha] if ha is not None else [])
