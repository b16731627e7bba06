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

The bridge's own sink (not a side client's) also forgets people: when asked on
`<prefix>/bridge/request/forget` (`{"person": NAME}`, as zigbee2mqtt's running bridge takes
`bridge/request/device/remove`; answered on `<prefix>/bridge/response/forget`) and, at
start, for the people left out now (`MqttSettings.excluded_people`; with `--person`, everyone
the broker retains a trace of who is not in `MqttSettings.kept_people`). Forgetting drops
what the sink and its extensions hold of them and clears their retained topics (traces.py),
so neither a reconnect nor a Home Assistant restart announces them again until they are seen.
The same sweep at start clears what the broker retains of the cameras left out now
(`MqttSettings.camera_kept`: `--exclude-camera`, and with `--camera-id` every other camera):
their presence, their Home Assistant devices and everyone's occupancy of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from facespace_bridge.events import Event
from facespace_bridge.privacy.filters import matching
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
from facespace_bridge.sinks.mqtt.traces import PersonTraces, Traces, json_object, sweep

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
    "side_connection",
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


def side_connection(settings: MqttSettings, role: Role, timeout: float) -> MqttConnection:
    """The connection of a side client that reads and clears retained topics beside a running
    bridge (`mqtt-cleanup`, `forget`): its own client id, never the bridge's, and no hand on
    its availability; QoS 1, so that clearing waits for each PUBACK."""
    assert role.side
    return MqttConnection(
        settings.address,
        client_id=client_id_of(role, settings.client_id, settings.topic_prefix),
        tls=settings.tls,
        keepalive=settings.keepalive,
        qos=1,
        protocol=settings.protocol,
        max_inflight=settings.max_inflight,
        max_queued=settings.max_queued,
        connect_timeout=timeout,
        reconnect_delay=(0.5, 2.0),
        close_timeout=timeout,
    )


class MqttSink(Sink):
    """Events into MQTT topics (docs/mqtt.md), with `extensions` on top.

    `availability`: the sink keeps `<prefix>/bridge/state` (`online`, and `offline` as its
    Last Will); off for a side client that runs beside the bridge (a replay, a check).
    `requests`: it answers forget requests and clears the excluded people's traces at start
    (the module docstring); off for a side client too.
    """

    name = "mqtt"

    def __init__(
        self,
        settings: MqttSettings | None = None,
        *,
        availability: bool = True,
        requests: bool = True,
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
        self.requests = requests
        self.traces = PersonTraces(self.layout, self.extensions)
        self._forgetting = asyncio.Lock()  # one forget at a time: each reads what the last cleared
        self._answering: set[asyncio.Task[None]] = set()

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
        if self.requests:
            self.connection.subscribe(self.layout.request("forget"))
            if self.settings.leaves_out:
                # Before the extensions start: Home Assistant's would migrate their configs
                # to the other discovery form, which keeps them in its registry.
                traces = await self._clear_left_out()
                if traces or traces.rewrites:
                    log.info(
                        "cleared what the broker retained of people and cameras left out now: %s",
                        traces.summary(),
                    )
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
        for task in list(self._answering):
            task.cancel()
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
        if self.requests and topic == self.layout.request("forget"):
            task = asyncio.ensure_future(self._answer_forget(payload))
            self._answering.add(task)
            task.add_done_callback(self._answering.discard)
            return
        for extension in self.extensions:
            extension.on_message(topic, payload)

    # -- forgetting -------------------------------------------------------------------------------

    async def forget(self, people: Collection[str], timeout: float = 10.0) -> Traces:
        """Forget `people`: drop what the sink and its extensions hold of them, then clear their
        retained topics, those the broker holds and those this connection would re-send (its
        own). Raises SinkError when the broker cannot be read or does not acknowledge."""
        wanted = self.settings.as_published(people)
        self._drop(wanted)
        return await self._sweep(lambda found: self.traces.find(wanted, found), timeout)

    async def _clear_left_out(self, timeout: float = 10.0) -> Traces:
        """Forget, in one sweep, whom and what the filters leave out now: the excluded people
        and, with `--person`, everyone else the broker retains a trace of; every camera it
        retains a trace of that the camera filters leave out (`--exclude-camera`, and with
        `--camera-id` every other camera)."""
        settings = self.settings

        def left_out(found: dict[str, bytes]) -> Traces:
            people = set(settings.as_published(settings.excluded_people))
            if settings.kept_people:
                kept = settings.as_published(settings.kept_people)
                people |= {name for name in self.traces.people(found) if name not in kept}
            self._drop(people)
            cameras = {camera for camera in self.traces.cameras(found) if not settings.camera_kept(camera)}
            return self.traces.find(people, found, cameras)

        return await self._sweep(left_out, timeout)

    def _drop(self, people: Collection[str]) -> None:
        """Drop what the sink, its extensions and the rest of the bridge hold of `people` (as
        published), so that nothing re-sent names them until they are seen again."""
        for name in matching(self._person_seen_at, people):
            del self._person_seen_at[name]
        for extension in self.extensions:
            for person in people:
                extension.forget(person)
        if people and self.on_forget is not None:  # the rest of the bridge (its web page) forgets them too
            self.on_forget(frozenset(people))

    async def _sweep(self, choose: Callable[[dict[str, bytes]], Traces], timeout: float) -> Traces:
        """Clear the retained topics `choose` picks from those the broker holds and those this
        connection would re-send (its own); one sweep at a time, each reading what the last
        cleared. Raises SinkError when the broker cannot be read or does not acknowledge."""

        def chosen(found: dict[str, bytes]) -> Traces:
            return choose({**self.connection.retained_values(), **found})

        async with self._forgetting:
            try:
                traces, _ = await sweep(self.connection, self.traces.filters(), chosen, timeout=timeout)
            except asyncio.TimeoutError:
                raise SinkError(
                    f"MQTT broker {self.address} did not acknowledge within {timeout:g} s"
                ) from None
        return traces

    async def _answer_forget(self, payload: bytes) -> None:
        """A forget request: forget the person, answer with what was cleared (never the name)."""
        request = json_object(payload)
        person = request.get("person")
        answer: dict[str, Any]
        if not isinstance(person, str) or not person:
            answer = {"status": "error", "error": 'the request must be {"person": NAME}'}
        else:
            try:
                traces = await self.forget([person])
            except Exception as exc:  # answered, and the bridge carries on
                log.warning("could not forget a person on request: %s", exc)
                answer = {"status": "error", "error": str(exc) or type(exc).__name__}
            else:
                # The name stays out of the log: the point is to forget it.
                log.info("forgot a person on request: cleared %s", traces.summary())
                answer = {"status": "ok", "data": traces.counts()}
        if "transaction" in request:
            answer["transaction"] = request["transaction"]
        if self.connection.connected:
            ack = self.connection.acknowledgement()
            self.connection.send(self.layout.response("forget"), orjson.dumps(answer), ack)
            self.connection.drain()
            await ack.seal()


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
    return MqttSink(
        settings,
        availability=not role.side,
        requests=not role.side,
        extensions=[ha] if ha is not None else [],
    )
