"""Home Assistant MQTT discovery: a self-contained extension the MQTT sink drives.

Conventions follow Home Assistant's discovery docs and zigbee2mqtt's Home Assistant
extension: one retained config per entity at
`<ha-prefix>/<component>/<node_id>/<object_id>/config`, a stable `unique_id`, both
`object_id` and its successor `default_entity_id`, `origin`, one `device` per camera and
per person linked `via_device` to the bridge's own device, and `availability` on the
bridge state topic. Ids derive only from the slug of the camera id / person name
(`_topics.id_slug`), so a restart or a host change never creates duplicates.

The extension only computes topics and payloads; the sink publishes them, keeps them for
re-announcing, and asks `wants_reannounce` about every message on the subscribed topics,
and `fires` about every sighting before it feeds a person's `event` entity.

The event gate: Home Assistant fires an `event` entity, and every automation on it ("unlock
when Mary is at the door"), once per message on its topic. History must not do that: only
a sighting at most `event_max_age` seconds old by the bridge's clock when it is published
goes there, and none from a replay (`event_max_age=None`). Backfills, catch-up after
downtime and replays still move the retained last-seen state forward (the sink's part).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson

from facespace_bridge._version import __version__
from facespace_bridge.sinks._topics import TopicLayout, id_slug, short_hash

ORIGIN_NAME = "facespace-bridge"


def jinja_literal(text: str) -> str:
    """`text` as a Jinja string literal: JSON's escapes are a subset of what Jinja's
    (Python unicode-escape) string literals decode, and a `}}` inside a literal does not
    end the expression, so any name is safe to embed in a template."""
    return orjson.dumps(text).decode()


class HomeAssistantDiscovery:
    """Discovery configs for the bridge, its cameras and the people they recognise."""

    def __init__(
        self, layout: TopicLayout, ha_prefix: str = "homeassistant", event_max_age: float | None = 300.0
    ) -> None:
        self.layout = layout
        self.ha_prefix = ha_prefix
        self.event_max_age = event_max_age  # None: nothing fires (a replay)
        self.held_back = 0  # sightings kept from the event entities as history
        self._cutoff_at = -1  # the wall-clock second `_cutoff` was computed for
        self._cutoff = ""
        self.node_id = id_slug(layout.prefix)
        self.status_topic = f"{ha_prefix}/status"
        # Every config this bridge (this base topic) ever published matches this filter.
        self.config_filter = f"{ha_prefix}/+/{self.node_id}/+/config"
        self.origin = {"name": ORIGIN_NAME, "sw_version": __version__}
        self._bridge_id = f"{self.node_id}_bridge"

    # -- what the sink asks -----------------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        return [self.status_topic]

    def wants_reannounce(self, topic: str, payload: bytes) -> bool:
        """HA announces `online` on its status topic after (re)starting: its entities need
        their configs and then their state again."""
        return topic == self.status_topic and payload.strip().lower() == b"online"

    def fires(self, seen_at: str) -> bool:
        """Whether a sighting seen at `seen_at` (RFC 3339, UTC, seconds: the payload's own text)
        is live enough to fire its person's event entity; counts the ones held back."""
        if self.event_max_age is not None:
            now = int(time.time())
            if now != self._cutoff_at:  # the same text compares for every sighting of a second
                self._cutoff_at = now
                self._cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - self.event_max_age))
            if seen_at >= self._cutoff:
                return True
        self.held_back += 1
        return False

    def configs(self, cameras: Iterable[str], people: Iterable[str]) -> dict[str, bytes]:
        """Every config for the bridge, these cameras, these people and each camera-person pair."""
        cameras, people = list(cameras), list(people)
        return {**self.bridge_configs(), **self.configs_for(cameras, people, cameras, people)}

    def configs_for(
        self,
        new_cameras: Iterable[str],
        new_people: Iterable[str],
        all_cameras: Iterable[str],
        all_people: Iterable[str],
    ) -> dict[str, bytes]:
        """Configs that appear when `new_cameras` / `new_people` join the known sets (which
        already include them): their own entities and their pairs with everyone known."""
        new_cameras, new_people = list(new_cameras), list(new_people)
        all_cameras, all_people = list(all_cameras), list(all_people)
        out: dict[str, bytes] = {}
        for camera in new_cameras:
            out.update(self.camera_configs(camera))
            for person in all_people:
                out.update(self.occupancy_config(camera, person))
        for person in new_people:
            out.update(self.person_configs(person))
            for camera in all_cameras:
                out.update(self.occupancy_config(camera, person))
        return out

    # -- entities ---------------------------------------------------------------------------------

    def bridge_configs(self) -> dict[str, bytes]:
        return self._entity(
            "binary_sensor",
            "bridge_connection_state",
            self._bridge_device(),
            {
                "name": "Connection state",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": self.layout.bridge_state,
                "payload_on": "online",
                "payload_off": "offline",
            },
            availability=False,  # it *is* the availability: it must show "off", not "unavailable"
        )

    def camera_configs(self, camera_id: str) -> dict[str, bytes]:
        presence = self.layout.presence(camera_id)
        return self._entity(
            "sensor",
            f"camera_{id_slug(camera_id)}_people",
            self._camera_device(camera_id),
            {
                "name": "People",
                "icon": "mdi:account-group",
                "state_class": "measurement",
                "state_topic": presence,
                "value_template": "{{ value_json.people | length }}",
                "json_attributes_topic": presence,
                "json_attributes_template": (
                    '{{ {"people": value_json.people, "observed_at": value_json.observed_at} | tojson }}'
                ),
            },
        )

    def person_configs(self, person: str) -> dict[str, bytes]:
        slug = id_slug(person)
        device = self._person_device(person)
        state = self.layout.person(person)
        return {
            **self._entity(
                "sensor",
                f"person_{slug}_last_camera",
                device,
                {
                    "name": "Last camera",
                    "icon": "mdi:cctv",
                    "state_topic": state,
                    "value_template": "{{ value_json.camera_id }}",
                },
            ),
            **self._entity(
                "sensor",
                f"person_{slug}_last_seen",
                device,
                {
                    "name": "Last seen",
                    "device_class": "timestamp",
                    "state_topic": state,
                    "value_template": "{{ value_json.seen_at }}",
                },
            ),
            **self._entity(
                "event",
                f"person_{slug}_sighting",
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
        }

    def occupancy_config(self, camera_id: str, person: str) -> dict[str, bytes]:
        # The pair hash keeps `a_b`+`c` and `a`+`b_c` apart.
        pair = short_hash(f"{person}\0{camera_id}", 6)
        return self._entity(
            "binary_sensor",
            f"occupancy_{id_slug(person)}_{id_slug(camera_id)}_{pair}",
            self._person_device(person),
            {
                "name": f"At {camera_id}",
                "device_class": "occupancy",
                "state_topic": self.layout.presence(camera_id),
                "value_template": (
                    f"{{{{ 'ON' if {jinja_literal(person)} in value_json.people else 'OFF' }}}}"
                ),
            },
        )

    # -- helpers ----------------------------------------------------------------------------------

    def _entity(
        self,
        component: str,
        object_id: str,
        device: dict[str, Any],
        fields: dict[str, Any],
        *,
        availability: bool = True,
    ) -> dict[str, bytes]:
        unique_id = f"{self.node_id}_{object_id}"
        payload: dict[str, Any] = {
            **fields,
            "unique_id": unique_id,
            "object_id": unique_id.lower(),
            "default_entity_id": f"{component}.{unique_id.lower()}",
            "device": device,
            "origin": self.origin,
            "qos": 1,
        }
        if availability:
            payload["availability"] = [{"topic": self.layout.bridge_state}]
        topic = f"{self.ha_prefix}/{component}/{self.node_id}/{object_id}/config"
        return {topic: orjson.dumps(payload)}

    def _bridge_device(self) -> dict[str, Any]:
        return {
            "identifiers": [self._bridge_id],
            "name": f"FaceSpace bridge {self.layout.prefix}".removesuffix(" facespace"),
            "manufacturer": "facespace-bridge",
            "model": "Bridge",
            "sw_version": __version__,
        }

    def _camera_device(self, camera_id: str) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node_id}_camera_{id_slug(camera_id)}"],
            "name": camera_id,
            "manufacturer": "FaceSpace",
            "model": "Camera",
            "via_device": self._bridge_id,
        }

    def _person_device(self, person: str) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.node_id}_person_{id_slug(person)}"],
            "name": person,
            "manufacturer": "FaceSpace",
            "model": "Person",
            "via_device": self._bridge_id,
        }
