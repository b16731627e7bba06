"""Home Assistant's retained messages, read back: which of the discovery configs and device
tracker states that the broker retains under the extension's filters are this bridge's,
whose they are (a person's, a camera's, a person's occupancy of a camera), what the bridge
would retain for given cameras and people, and which configs hold withdrawn components.
traces.py finds a person's or a camera's traces with it (the `RetainedReader` hooks of
extension.py), `mqtt-cleanup` (commands/mqtt_cleanup.py) tells stale topics from expected
ones with it, and `HomeAssistant.start` finishes withdrawals with it. It publishes nothing:
it returns topics, and payloads to re-retain, for its caller to clear or publish.

It names nothing itself: every identifier is recognised by building it again with the
extension's own rule (`DiscoveryNaming`, which `HomeAssistant` in homeassistant.py
implements: the config topic filter, a person's and a camera's device identifier, an
occupancy entity's unique id, the origin) and comparing. A config is this bridge's only when
its origin says so, never by its topic alone (another tool may use a colliding node id).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any, Protocol

import orjson
import paho.mqtt.client as paho

from facespace_bridge.privacy.filters import normalized
from facespace_bridge.sinks.mqtt.extension import RetainedReader
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from facespace_bridge.sinks.mqtt.traces import json_object, names_in


class DiscoveryNaming(Protocol):
    """The naming rules of the Home Assistant extension that its retained messages are
    recognised by (`HomeAssistant` holds the one implementation of each)."""

    @property
    def layout(self) -> TopicLayout: ...

    @property
    def ha_prefix(self) -> str: ...

    @property
    def config_filter(self) -> str:
        """Every config this bridge publishes, in either form, matches it."""
        ...

    @property
    def origin(self) -> Mapping[str, Any]: ...

    def configs(self, cameras: Iterable[str], people: Iterable[str]) -> dict[str, bytes]:
        """Every config (topic -> payload) for the bridge, these cameras and these people."""
        ...

    def person_device_id(self, person: str) -> str: ...

    def camera_device_id(self, camera_id: str) -> str: ...

    def occupancy_unique_id(self, camera_id: str, person: str) -> str: ...


class HomeAssistantRetained(RetainedReader):
    """The retained messages of one Home Assistant extension (its `naming`), read back."""

    def __init__(self, naming: DiscoveryNaming) -> None:
        self.naming = naming
        self.tracker_filter = f"{naming.layout.prefix}/person/+/tracker"

    def retained_filters(self) -> list[str]:
        """Where the retained topics this extension publishes lie."""
        return [self.naming.config_filter, self.tracker_filter]

    def expected(self, cameras: Iterable[str], people: Iterable[str]) -> set[str]:
        """The retained topics it would publish for these cameras and people."""
        people = sorted(set(people))
        trackers = {self.naming.layout.person_tracker(p) for p in people}
        return set(self.naming.configs(cameras, people)) | trackers

    def person_topics(self, people: Collection[str], found: Mapping[str, bytes]) -> list[str]:
        """Their discovery configs, in either form, known by their device's identifier (a
        person's device is `<node>_person_<slug of its name>`; in entity form each of their
        entities carries it, the camera pairs too), and their device trackers' states."""
        topics = []
        for topic, payload in found.items():
            if not self._people_of(topic, payload).isdisjoint(people):
                topics.append(topic)
        return topics

    def people_in(self, found: Mapping[str, bytes]) -> set[str]:
        """Everyone whose discovery configs or device tracker `found` holds (NFC)."""
        people: set[str] = set()
        for topic, payload in found.items():
            people |= self._people_of(topic, payload)
        return people

    def camera_topics(self, cameras: Collection[str], found: Mapping[str, bytes]) -> list[str]:
        """The configs, in either form, of the cameras' devices, and in entity form each
        person's occupancy of them (device form: `camera_rewrites`)."""
        return [
            topic
            for topic, payload in found.items()
            if not self._cameras_of(topic, payload).isdisjoint(cameras)
        ]

    def camera_rewrites(self, cameras: Collection[str], found: Mapping[str, bytes]) -> dict[str, bytes]:
        """In device form, each person's config with their occupancy of the cameras withdrawn:
        each such component only `{"p": platform}`, Home Assistant's way to remove one entity
        of a device (`HomeAssistant.start` then drops them from the config)."""
        rewrites = {}
        for topic, payload in found.items():
            parts = [key for key, camera in self._camera_parts(topic, payload).items() if camera in cameras]
            if parts:
                document = json_object(payload)
                components = dict(document["cmps"])
                for key in parts:
                    components[key] = {"p": components[key].get("p")}
                rewrites[topic] = orjson.dumps({**document, "cmps": components})
        return rewrites

    def cameras_in(self, found: Mapping[str, bytes]) -> set[str]:
        """Every camera whose configs, or occupancy in a person's config, `found` holds."""
        cameras: set[str] = set()
        for topic, payload in found.items():
            cameras |= self._cameras_of(topic, payload)
            cameras.update(self._camera_parts(topic, payload).values())
        return cameras

    def owns(self, topic: str, payload: bytes) -> bool:
        """Whether a retained message under `retained_filters` is this bridge's: a config only
        when its origin says so (never someone else's under a colliding node id)."""
        if not topic.startswith(self.naming.ha_prefix + "/"):
            return True
        return self._said_ours(json_object(payload))

    def _said_ours(self, document: Mapping[str, Any]) -> bool:
        """Whether a decoded config says it is this bridge's: its origin, or a migration marker."""
        origin = document.get("origin") or document.get("o")
        ours = isinstance(origin, dict) and origin.get("name") == self.naming.origin["name"]
        return bool(document.get("migrate_discovery") or ours)

    def withdrawn(self, payload: bytes) -> bool:
        """Whether a device config holds withdrawn components (`camera_rewrites`)."""
        components = json_object(payload).get("cmps")
        return isinstance(components, dict) and any(map(_is_withdrawn, components.values()))

    def without_withdrawn(self, payload: bytes) -> bytes:
        """A device config with its withdrawn components left out."""
        document = json_object(payload)
        components = {k: c for k, c in document["cmps"].items() if not _is_withdrawn(c)}
        return orjson.dumps({**document, "cmps": components})

    def _people_of(self, topic: str, payload: bytes) -> set[str]:
        """The person (NFC) a retained message of this bridge's belongs to: a discovery config
        by its device (a person's is `<node>_person_<slug of its name>`), a device tracker's
        state by its `person`; none for anything else."""
        document = self._own_config(topic, payload)
        if document is not None:
            owner = self._device_owner(document)
            if owner is not None and owner[0] == "person":
                return {normalized(owner[1])}
        elif paho.topic_matches_sub(self.tracker_filter, topic):
            return names_in(json_object(payload), "person")
        return set()

    def _cameras_of(self, topic: str, payload: bytes) -> set[str]:
        """The camera a retained config of this bridge's belongs to whole: the camera's device
        (`<node>_camera_<slug of its id>`: its config in device form, its sensor's in entity
        form), and in entity form a person's occupancy of it (`_occupancy_camera`)."""
        document = self._own_config(topic, payload)
        owner = None if document is None else self._device_owner(document)
        if owner is None:
            return set()
        kind, name = owner
        if kind == "camera":
            return {name}
        camera = None if "cmps" in document else self._occupancy_camera(name, document)
        return set() if camera is None else {camera}

    def _camera_parts(self, topic: str, payload: bytes) -> dict[str, str]:
        """A person's config in device form: its occupancy components, key -> camera."""
        document = self._own_config(topic, payload)
        owner = None if document is None else self._device_owner(document)
        components = None if document is None else document.get("cmps")
        if owner is None or owner[0] != "person" or not isinstance(components, dict):
            return {}
        parts = {}
        for key, component in components.items():
            camera = self._occupancy_camera(owner[1], component) if isinstance(component, dict) else None
            if camera is not None:
                parts[key] = camera
        return parts

    def _own_config(self, topic: str, payload: bytes) -> dict[str, Any] | None:
        """A retained discovery config of this bridge's, decoded; None for anything else."""
        if not paho.topic_matches_sub(self.naming.config_filter, topic):
            return None
        document = json_object(payload)  # (decoded once: what owns() reads too)
        return document if self._said_ours(document) else None

    def _device_owner(self, config: Mapping[str, Any]) -> tuple[str, str] | None:
        """Whose device a config is for: ("person", name) or ("camera", id), as the device's
        name says and its identifier (built again from that name) confirms."""
        device = config.get("device") or config.get("dev")
        name = device.get("name") if isinstance(device, dict) else None
        if not isinstance(name, str):
            return None
        identifiers = device.get("identifiers", ())
        naming = self.naming
        for kind, built in (
            ("person", naming.person_device_id(name)),
            ("camera", naming.camera_device_id(name)),
        ):
            if built in identifiers:
                return kind, name
        return None

    def _occupancy_camera(self, person: str, component: Mapping[str, Any]) -> str | None:
        """The camera of `person`'s occupancy entity (a config in entity form, a component in
        device form): the one its name says ("At <camera>") when its unique id is the one the
        extension builds for them; None for any other entity."""
        name = component.get("name")
        if not isinstance(name, str) or not name.startswith("At "):
            return None
        camera = name.removeprefix("At ")
        return (
            camera if component.get("unique_id") == self.naming.occupancy_unique_id(camera, person) else None
        )


def _is_withdrawn(component: object) -> bool:
    """Whether a device config's component is only `{"p": platform}` (`camera_rewrites`)."""
    return isinstance(component, dict) and component.keys() == {"p"}
