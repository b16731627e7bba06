"""Home Assistant, as an extension of the MQTT sink (extension.py) that owns its whole life
cycle: discovery configs in either of Home Assistant's two forms and the migration between
them, re-announcing when Home Assistant restarts, the event gate, a device tracker per
person, and the one implementation of each of its naming rules. Reading its retained messages
back (whose they are, for `mqtt-cleanup` and forgetting) is homeassistant_retained.py's
(`retained_reader`), by these same rules. docs/mqtt.md says what users see.

Discovery follows Home Assistant's MQTT discovery docs and zigbee2mqtt's Home Assistant
extension: a stable `unique_id` per entity, `origin`, one device per camera and per person
linked `via_device` to the bridge's own device, `availability` on the bridge state topic.
Ids derive only from slugs of camera ids and person names (`topics.id_slug`), so a restart
or a host change never duplicates anything. Two forms (`mode`):
- `entity`: one retained config per entity at `<ha-prefix>/<component>/<node>/<object>/config`,
  which every Home Assistant and other readers of its discovery understand;
- `device` (Home Assistant 2024.11 and later): one retained config per device at
  `<ha-prefix>/device/<node>/<device>/config` with its entities under `cmps`, keyed by the
  same object ids, with the same `unique_id`s, so switching keeps entity ids and history.
At start the retained configs this bridge left in the other form are migrated the way Home
Assistant documents it: `{"migrate_discovery": true}` on each old topic (Home Assistant
unloads the entity but keeps its registry entry), a pause, the new configs (the entities
come back with the same ids), a pause, then the old topics cleared.

The event gate: Home Assistant fires an `event` entity, and every automation on it ("unlock
when Mary is at the door"), once per message on its topic. Only a sighting at most
`event_max_age` seconds old by the bridge's clock when it is published goes there.

The device tracker: each person's whereabouts (whereabouts.py: `home` while a camera sees
them and until `away_after` seconds after they were last seen, `not_home` after that), the
last camera and time as attributes, retained on the person's tracker topic whenever they
change. Its source type is `router`, a stationary tracker: Home Assistant's `person` takes
its `home` over a phone's GPS, and a phone's location over its `not_home`.

Everything published is retained in the connection, which re-sends it after a reconnect;
when Home Assistant announces `online` on its status topic, it is re-sent after a short
random delay.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
import orjson

from facespace_bridge._version import __version__
from facespace_bridge.events import seen_at_text
from facespace_bridge.privacy.filters import matching
from facespace_bridge.settings import cli_options, from_options, setting
from facespace_bridge.sinks.base import LastSeen, Role
from facespace_bridge.sinks.mqtt.extension import MqttExtension
from facespace_bridge.sinks.mqtt.homeassistant_retained import HomeAssistantRetained
from facespace_bridge.sinks.mqtt.topics import (
    TopicLayout,
    check_base_topic,
    id_slug,
    short_hash,
    topics_overlap,
)
from facespace_bridge.whereabouts import Whereabouts

if TYPE_CHECKING:
    from facespace_bridge.events import Event
    from facespace_bridge.sinks.mqtt.connection import MqttConnection

log = logging.getLogger(__name__)

ORIGIN_NAME = "facespace-bridge"
MODES = ("entity", "device")
MIGRATE = orjson.dumps({"migrate_discovery": True})


def jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal: JSON's escapes are a subset of what Jinja's
    (Python unicode-escape) string literals decode, and a `}}` inside a literal does not
    end the expression, so any name is safe to embed in a template."""
    return orjson.dumps(text).decode()


@dataclass(frozen=True)
class HomeAssistantSettings:
    """The Home Assistant extension's settings, each with its CLI option (facespace_bridge/settings.py)."""

    discovery: bool = setting(
        "--ha-discovery/--no-ha-discovery", default=True, help="Home Assistant MQTT discovery."
    )
    prefix: str = setting(
        "--ha-prefix",
        default="homeassistant",
        help="Home Assistant discovery prefix (its status topic is <prefix>/status).",
    )
    mode: str = setting(
        "--ha-discovery-mode",
        default="entity",
        type=click.Choice(MODES),
        help="entity: one config per entity (every Home Assistant); device: one per device "
        "(Home Assistant 2024.11+). Switching migrates and keeps entity ids.",
    )
    event_max_age: float = setting(
        "--ha-event-max-age",
        default=300.0,
        type=click.FloatRange(min=0),
        help="Seconds: only a sighting at most this old when published fires its person's Home "
        "Assistant event entity (history never does; replay fires none).",
    )
    away_after: float = setting(
        "--away-after",
        default=600.0,
        type=click.FloatRange(min=0),
        help="Seconds unseen by every camera after which a person's Home Assistant device "
        "tracker turns not_home.",
    )


@dataclass(frozen=True)
class Device:
    """A Home Assistant device: `key` is its object id within the bridge's node."""

    key: str
    info: dict[str, Any] = field(hash=False, compare=False)


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: `object_id` is unique within the bridge's node and keys it
    in both discovery forms; `device` is the object id of the device it belongs to."""

    component: str
    object_id: str
    device: Device
    fields: dict[str, Any]
    available: bool = True  # follows the bridge state (the connection sensor itself does not)


class HomeAssistant(MqttExtension):
    """Home Assistant discovery, event gate and device trackers for one MQTT topic layout."""

    name = "homeassistant"

    def __init__(
        self,
        layout: TopicLayout,
        settings: HomeAssistantSettings | None = None,
        *,
        reannounce_delay: tuple[float, float] = (1.0, 5.0),
        migration_pause: float = 2.0,
        clock: Callable[[], float] = time.time,
        pseudonymous: bool = False,
    ) -> None:
        settings = settings or HomeAssistantSettings()
        ha_prefix, mode = settings.prefix, settings.mode
        problem = check_base_topic(ha_prefix, "Home Assistant prefix")
        if problem:
            raise ValueError(problem)
        if topics_overlap(layout.prefix, ha_prefix):
            raise ValueError(
                f"topic prefix {layout.prefix!r} overlaps the Home Assistant discovery prefix {ha_prefix!r}"
            )
        if mode not in MODES:
            raise ValueError(f"discovery mode must be one of {', '.join(MODES)}")
        self.layout = layout
        self.ha_prefix = ha_prefix
        self.mode = mode
        self.event_max_age = settings.event_max_age
        self.reannounce_delay = reannounce_delay
        self.migration_pause = migration_pause
        self.clock = clock
        self.node_id = id_slug(layout.prefix)
        self.status_topic = f"{ha_prefix}/status"
        # Every config this bridge (this base topic) publishes, in either form, matches this.
        self.config_filter = f"{ha_prefix}/+/{self.node_id}/+/config"
        self.origin = {"name": ORIGIN_NAME, "sw_version": __version__}
        self.retained_reader: HomeAssistantRetained = HomeAssistantRetained(self)

        self.cameras: set[str] = set()
        self.people: set[str] = set()
        self.held_back = 0  # sightings kept from the event entities as history
        self.reannounces = 0  # re-sends after Home Assistant came online
        self.migrated = 0  # configs moved over from the other discovery form at start
        # The device trackers' states, retained on each person's tracker topic as they change.
        self.whereabouts = Whereabouts(
            settings.away_after, clock=clock, on_change=self._tracker_changed, pseudonymous=pseudonymous
        )
        self._cutoff_at = -1  # the wall-clock second `_cutoff` was computed for
        self._cutoff = ""
        self._connection: MqttConnection | None = None
        self._to_migrate: list[str] = []
        self._config_topics: dict[str, None] = {}  # every config published, in order: re-sent first
        self._reannounce_task: asyncio.Task[None] | None = None

    @property
    def away_after(self) -> float:
        return self.whereabouts.away_after

    # -- life cycle (extension.py) ----------------------------------------------------------------

    async def start(self, connection: MqttConnection) -> None:
        self._connection = connection
        connection.subscribe(self.status_topic)
        connection.on_connect.append(self._reconnected)
        found = await connection.read_retained([self.config_filter])
        reader = self.retained_reader
        own = {t: p for t, p in found.items() if reader.owns(t, p)}
        self._to_migrate = sorted(t for t in own if not self._in_mode(t))
        withdrawn = {t: p for t, p in own.items() if reader.withdrawn(p)}
        if withdrawn:
            # Configs re-published with a left-out camera's occupancy withdrawn (`camera_rewrites`):
            # each such component only `{"p": ...}`, which makes Home Assistant remove the entity;
            # once it has, they leave the config too (a component merely left out stays in Home
            # Assistant), before any migration moves the config over.
            await asyncio.sleep(self.migration_pause)
            await self._publish_configs({
                t: reader.without_withdrawn(p) for t, p in withdrawn.items() if self._in_mode(t)
            })  # fmt: skip
        if self._to_migrate:
            log.info(
                "Home Assistant discovery: moving %d configs to the %s form", len(self._to_migrate), self.mode
            )
            ack = connection.acknowledgement()
            for topic in self._to_migrate:
                connection.retain(topic, MIGRATE, ack)
            await ack.seal()
            await asyncio.sleep(self.migration_pause)  # Home Assistant unloads those entities
        self._publish_configs(self.bridge_configs())

    async def announce(
        self, cameras: Iterable[str], people: Iterable[str], last_seen: Mapping[str, LastSeen]
    ) -> None:
        published = self._add_names(cameras, people)
        for person, seen in last_seen.items():
            self.whereabouts.seen(person, seen.camera_id, seen.at)
        for person in sorted(self.people):
            self.whereabouts.update(person)
        if published is not None:
            await published
        if self._to_migrate:
            await asyncio.sleep(self.migration_pause)  # Home Assistant takes the new configs
            assert self._connection is not None
            await asyncio.gather(*(self._connection.clear(t) for t in self._to_migrate))
            self.migrated, self._to_migrate = len(self._to_migrate), []
            log.info("Home Assistant discovery: %d configs moved to the %s form", self.migrated, self.mode)

    def on_event(self, event: Event) -> Sequence[str]:
        kind = event.kind
        if kind == "sighting":
            person, seen_at, text = event.person, event.seen_at, event.time
            assert person is not None and seen_at is not None and text is not None  # every sighting's
            if event.camera_id not in self.cameras or person not in self.people:
                self._add_names((event.camera_id,), (person,))
            self.whereabouts.sighting(person, event.camera_id, seen_at)
            if self.fires(text):
                return (self.layout.person_sighting(person),)
        elif kind == "presence":
            people, observed_at = event.people or (), event.seen_at
            assert observed_at is not None  # every presence has it
            self._add_names((event.camera_id,), people)
            self.whereabouts.presence(event.camera_id, people, observed_at)
        return ()

    def on_message(self, topic: str, payload: bytes) -> None:
        # Home Assistant announces `online` after (re)starting: its entities need their configs
        # and then their state again.
        if topic == self.status_topic and payload.strip().lower() == b"online":
            self._schedule_reannounce()

    def details(self) -> dict[str, Any]:
        return {"ha_events_held_back": self.held_back}

    def forget(self, person: str) -> None:
        # Under every form of the name the API sent: nothing re-sent names them again.
        for name in matching(self.people, (person,)):
            self.people.discard(name)
            self.whereabouts.forget(name)
            for topic in self.configs_for((), (name,), sorted(self.cameras), (name,)):
                self._config_topics.pop(topic, None)

    async def close(self) -> None:
        if self._reannounce_task is not None:
            self._reannounce_task.cancel()
        self.whereabouts.close()

    def _publish_configs(self, configs: dict[str, bytes]) -> asyncio.Future[None]:
        """Retain these configs; the future completes once the broker has them all."""
        assert self._connection is not None
        self._config_topics.update(dict.fromkeys(configs))
        ack = self._connection.acknowledgement()
        for topic, payload in configs.items():
            self._connection.retain(topic, payload, ack)
        return ack.seal()

    def _reannounce(self) -> None:
        """Configs first (Home Assistant subscribes to state topics once it has them), then the
        state; the connection puts the availability before both."""
        assert self._connection is not None
        self._connection.resend_retained(first=self._config_topics)

    def _reconnected(self, reconnect: bool) -> None:
        if reconnect:
            self._reannounce()

    def _schedule_reannounce(self) -> None:
        if self._reannounce_task is not None and not self._reannounce_task.done():
            return  # one re-announce answers any number of `online`s within the delay

        async def later() -> None:
            # A short random delay, as zigbee2mqtt does: Home Assistant subscribes to its
            # entities' state topics only after processing the configs, and many bridges
            # restarting at once should not all answer in the same instant.
            await asyncio.sleep(random.uniform(*self.reannounce_delay))
            if self._connection is not None and self._connection.connected:
                log.info("Home Assistant is online: re-announcing")
                self.reannounces += 1
                self._reannounce()

        self._reannounce_task = asyncio.ensure_future(later())

    # -- names ------------------------------------------------------------------------------------

    def _add_names(self, cameras: Iterable[str], people: Iterable[str]) -> asyncio.Future[None] | None:
        """Remember cameras and people; publish the configs the new ones need (the future
        completes once the broker has them; None when nobody was new)."""
        new_cameras = [c for c in dict.fromkeys(cameras) if c not in self.cameras]
        new_people = [p for p in dict.fromkeys(people) if p not in self.people]
        if not new_cameras and not new_people:
            return None
        self.cameras.update(new_cameras)
        self.people.update(new_people)
        configs = self.configs_for(new_cameras, new_people, sorted(self.cameras), sorted(self.people))
        published = self._publish_configs(configs)
        for person in new_people:  # the tracker's first state, once its config is out
            self.whereabouts.update(person)
        return published

    # -- the event gate ---------------------------------------------------------------------------

    def fires(self, seen_at: str) -> bool:
        """Whether a sighting seen at `seen_at` (RFC 3339, UTC, seconds: the payload's own text)
        is live enough to fire its person's event entity; counts the ones held back."""
        now = int(self.clock())
        if now != self._cutoff_at:  # the same text compares for every sighting of a second
            self._cutoff_at = now
            self._cutoff = seen_at_text(datetime.fromtimestamp(now - self.event_max_age, timezone.utc))
        if seen_at >= self._cutoff:
            return True
        self.held_back += 1
        return False

    # -- device trackers --------------------------------------------------------------------------

    def _tracker_changed(self, person: str, state: bytes) -> None:
        assert self._connection is not None
        self._connection.retain(self.layout.person_tracker(person), state)

    # -- discovery configs ------------------------------------------------------------------------

    def configs(self, cameras: Iterable[str], people: Iterable[str]) -> dict[str, bytes]:
        """Every config (topic -> payload) for the bridge, these cameras and these people."""
        cameras, people = sorted(set(cameras)), sorted(set(people))
        return {**self.bridge_configs(), **self.configs_for(cameras, people, cameras, people)}

    def configs_for(
        self,
        new_cameras: Iterable[str],
        new_people: Iterable[str],
        all_cameras: Sequence[str],
        all_people: Sequence[str],
    ) -> dict[str, bytes]:
        """Configs that change when `new_cameras` / `new_people` join the known sets (which
        already include them): their own entities and their pairs with everyone known. In
        device form a person's config lists every camera, so a new camera changes them all."""
        new_cameras, new_people = list(new_cameras), list(new_people)
        if self.mode == "device":
            devices = [self._camera_entities(c) for c in new_cameras]
            people = all_people if new_cameras else new_people
            devices += [self._person_entities(p, all_cameras) for p in people]
            return dict(self._device_config(entities) for entities in devices)
        entities: list[Entity] = []
        for camera in new_cameras:
            entities += self._camera_entities(camera)
            entities += [self._occupancy(camera, person) for person in all_people]
        for person in new_people:
            entities += self._person_entities(person, all_cameras)
        return dict(self._entity_config(entity) for entity in entities)

    def bridge_configs(self) -> dict[str, bytes]:
        """The bridge's own device: its connection state."""
        entities = self._bridge_entities()
        if self.mode == "device":
            return dict([self._device_config(entities)])
        return dict(self._entity_config(entity) for entity in entities)

    # -- entities and devices ---------------------------------------------------------------------

    def _in_mode(self, topic: str) -> bool:
        """Whether a config topic has this mode's form."""
        return (topic.split("/")[-4] == "device") == (self.mode == "device")

    def _bridge_entities(self) -> list[Entity]:
        info = {
            "identifiers": [f"{self.node_id}_bridge"],
            "name": f"FaceSpace bridge {self.layout.prefix}".removesuffix(" facespace"),
            "manufacturer": "facespace-bridge",
            "model": "Bridge",
            "sw_version": __version__,
        }
        connection = Entity(
            "binary_sensor",
            "bridge_connection_state",
            Device("bridge", info),
            {
                "name": "Connection state",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": self.layout.bridge_state,
                "payload_on": "online",
                "payload_off": "offline",
            },
            available=False,  # it *is* the availability: it must show "off", not "unavailable"
        )
        return [connection]

    def _camera_device(self, camera_id: str) -> Device:
        return self._device(f"camera_{id_slug(camera_id)}", camera_id, "Camera")

    def _camera_entities(self, camera_id: str) -> list[Entity]:
        device = self._camera_device(camera_id)
        presence = self.layout.presence(camera_id)
        people = Entity(
            "sensor",
            f"{device.key}_people",
            device,
            {
                "name": "People",
                "icon": "mdi:account-group",
                "state_class": "measurement",
                "state_topic": presence,
                "value_template": "{{ value_json.people | length }}",
                "json_attributes_topic": presence,
                # An empty presence (cleared when someone is forgotten) empties the attributes,
                # which named them, instead of leaving them and logging "Erroneous JSON".
                "json_attributes_template": (
                    '{{ ({"people": value_json.people, "observed_at": value_json.observed_at}'
                    " if value_json is defined else {}) | tojson }}"
                ),
            },
        )
        return [people]

    def _person_device(self, person: str) -> Device:
        return self._device(f"person_{id_slug(person)}", person, "Person")

    def _person_entities(self, person: str, cameras: Iterable[str]) -> list[Entity]:
        device = self._person_device(person)
        key = device.key
        state = self.layout.person(person)
        tracker = self.layout.person_tracker(person)
        entities = [
            Entity(
                "sensor",
                f"{key}_last_camera",
                device,
                {
                    "name": "Last camera",
                    "icon": "mdi:cctv",
                    "state_topic": state,
                    "value_template": "{{ value_json.camera_id }}",
                },
            ),
            Entity(
                "sensor",
                f"{key}_last_seen",
                device,
                {
                    "name": "Last seen",
                    "device_class": "timestamp",
                    "state_topic": state,
                    "value_template": "{{ value_json.seen_at }}",
                },
            ),
            Entity(
                "event",
                f"{key}_sighting",
                device,
                {
                    "name": "Sighting",
                    "icon": "mdi:face-recognition",
                    "event_types": ["sighting"],
                    "state_topic": self.layout.person_sighting(person),
                    "value_template": (
                        '{{ {"event_type": "sighting", "camera_id": value_json.camera_id,'
                        ' "seen_at": value_json.seen_at} | tojson }}'
                    ),
                },
            ),
            Entity(
                "device_tracker",
                f"{key}_presence",
                device,
                {
                    "name": "Presence",
                    "icon": "mdi:home-account",
                    "source_type": "router",
                    "state_topic": tracker,
                    "value_template": "{{ value_json.state }}",
                    "json_attributes_topic": tracker,
                    "json_attributes_template": (
                        '{{ {"camera_id": value_json.camera_id, "seen_at": value_json.seen_at,'
                        ' "cameras": value_json.cameras} | tojson }}'
                    ),
                },
            ),
        ]
        entities += [self._occupancy(camera, person, device) for camera in cameras]
        return entities

    def _occupancy(self, camera_id: str, person: str, device: Device | None = None) -> Entity:
        # The pair hash keeps `a_b`+`c` and `a`+`b_c` apart.
        pair = short_hash(f"{person}\0{camera_id}", 6)
        return Entity(
            "binary_sensor",
            f"occupancy_{id_slug(person)}_{id_slug(camera_id)}_{pair}",
            device or self._person_device(person),
            {
                "name": f"At {camera_id}",
                "device_class": "occupancy",
                "state_topic": self.layout.presence(camera_id),
                "value_template": (
                    f"{{{{ 'ON' if {jinja_literal(person)} in value_json.people else 'OFF' }}}}"
                ),
            },
        )

    def _device(self, key: str, name: str, model: str) -> Device:
        info = {
            "identifiers": [f"{self.node_id}_{key}"],
            "name": name,
            "manufacturer": "FaceSpace",
            "model": model,
            "via_device": f"{self.node_id}_bridge",
        }
        return Device(key, info)

    def _unique_id(self, entity: Entity) -> str:
        return f"{self.node_id}_{entity.object_id}"

    # The names its retained messages are recognised by (homeassistant_retained.DiscoveryNaming):
    def person_device_id(self, person: str) -> str:
        return self._person_device(person).info["identifiers"][0]

    def camera_device_id(self, camera_id: str) -> str:
        return self._camera_device(camera_id).info["identifiers"][0]

    def occupancy_unique_id(self, camera_id: str, person: str) -> str:
        return self._unique_id(self._occupancy(camera_id, person))

    def _component(self, entity: Entity) -> dict[str, Any]:
        """What an entity's config says in either form, besides device and origin."""
        unique_id = self._unique_id(entity)
        config: dict[str, Any] = {
            **entity.fields,
            "unique_id": unique_id,
            "object_id": unique_id.lower(),
            "default_entity_id": f"{entity.component}.{unique_id.lower()}",
        }
        if entity.available:
            config["availability"] = [{"topic": self.layout.bridge_state}]
        return config

    def _entity_config(self, entity: Entity) -> tuple[str, bytes]:
        """Entity form: one retained config per entity."""
        payload = {**self._component(entity), "device": entity.device.info, "origin": self.origin, "qos": 1}
        topic = f"{self.ha_prefix}/{entity.component}/{self.node_id}/{entity.object_id}/config"
        return topic, orjson.dumps(payload)

    def _device_config(self, entities: list[Entity]) -> tuple[str, bytes]:
        """Device form: one retained config per device, its entities under `cmps`."""
        device = entities[0].device
        payload = {
            "dev": device.info,
            "o": self.origin,
            "cmps": {e.object_id: {"p": e.component, **self._component(e)} for e in entities},
            "qos": 1,
        }
        return f"{self.ha_prefix}/device/{self.node_id}/{device.key}/config", orjson.dumps(payload)


# -- CLI --------------------------------------------------------------------------------------------

OPTIONS = cli_options(HomeAssistantSettings)


def from_config(
    config: Mapping[str, Any], layout: TopicLayout, *, role: Role = Role.BRIDGE
) -> HomeAssistant | None:
    """The extension for the parsed options, or None: discovery off, or a side client (a
    replay's history published again touches nothing Home Assistant shows or acts on but
    last seen; a check publishes nothing). Raises click errors for bad input."""
    settings = from_options(HomeAssistantSettings, config)
    ha_prefix = settings.prefix
    problem = check_base_topic(ha_prefix, "--ha-prefix")
    if problem:
        raise click.BadParameter(problem, param_hint="--ha-prefix")
    if not settings.discovery:
        return None
    if topics_overlap(layout.prefix, ha_prefix):
        raise click.UsageError(
            f"--topic-prefix {layout.prefix!r} overlaps the Home Assistant discovery prefix {ha_prefix!r}: "
            "choose another, or pass --no-ha-discovery"
        )
    if role.side:
        return None
    # --pseudonymize (a command option, not one of these settings): the names are pseudonyms.
    return HomeAssistant(layout, settings, pseudonymous=bool(config.get("pseudonymize")))
