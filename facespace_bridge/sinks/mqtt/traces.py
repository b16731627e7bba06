"""What the broker retains of people and cameras, found in what it actually retains and
cleared: a person's traces for `facespace-bridge forget` (commands/forget.py), for the bridge
when asked to forget someone and, at start, for the people and cameras the filters leave out
now (MqttSink). `mqtt-cleanup` clears its stale topics through the same `sweep`.

What belongs to a person is read from the retained messages themselves, never guessed from
topic spellings (a name reaches a topic only through `topics.topic_segment`, and may have
reached the broker in another Unicode form): the sink's own topics by the names in their
payloads — the person's last-seen state (`person`) and every camera's presence that names
them (`people`, `arrived`, `departed`) — and each extension's by its own rule (its
`retained_reader`, a `RetainedReader` of extension.py: `person_topics`; Home Assistant's,
homeassistant_retained.py, finds its discovery configs by their device identifiers and the
device tracker's state by its `person`). Names are compared after NFC
normalisation. A camera's are found the same way: its presence by the payload's `camera_id`,
each extension's by `RetainedReader.camera_topics` (Home Assistant's camera device and each
person's occupancy of it, by their identifiers); a retained message that holds a left-out
camera's parts beside others' (Home Assistant's device form: a person's config lists their
occupancy of every camera) is re-retained without them (`RetainedReader.camera_rewrites`).
Clearing is an empty retained payload on each topic, configs first, so that Home Assistant
removes the entities before their state topics empty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, overload

import orjson
import paho.mqtt.client as paho

from facespace_bridge.privacy.filters import normalized
from facespace_bridge.sinks.mqtt.connection import MqttConnection
from facespace_bridge.sinks.mqtt.extension import MqttExtension
from facespace_bridge.sinks.mqtt.topics import TopicLayout


def json_object(payload: bytes) -> dict[str, Any]:
    """A retained payload as a JSON object; empty when it is not one."""
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    return document if isinstance(document, dict) else {}


def names_in(document: Mapping[str, Any], *fields: str) -> set[str]:
    """The names (NFC) a document holds in `fields`, each a name or a list of names."""
    names: set[str] = set()
    for field in fields:
        value = document.get(field)
        for name in value if isinstance(value, list) else [value]:
            if isinstance(name, str):
                names.add(normalized(name))
    return names


@dataclass(frozen=True)
class Traces(Sequence[str]):
    """The retained topics that name or belong to some people, in the order to clear them."""

    configs: tuple[str, ...] = ()  # discovery configs: first, so their entities go before their state
    states: tuple[str, ...] = ()  # last seen, device trackers
    presences: tuple[str, ...] = ()  # cameras' presence that names them, or of cameras left out
    # Retained configs re-published without the parts of cameras left out (not cleared: the
    # rest is someone else's), topic -> the new payload.
    rewrites: tuple[tuple[str, bytes], ...] = ()

    @property
    def topics(self) -> tuple[str, ...]:
        return (*self.configs, *self.states, *self.presences)

    def __len__(self) -> int:
        return len(self.configs) + len(self.states) + len(self.presences)

    def __iter__(self) -> Iterator[str]:
        return iter(self.topics)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return self.topics[index]

    def counts(self) -> dict[str, int]:
        """How many of each kind (a bridge's answer to a forget request carries them)."""
        return {
            "cleared": len(self),
            "configs": len(self.configs),
            "states": len(self.states),
            "presences": len(self.presences),
            **({"rewritten": len(self.rewrites)} if self.rewrites else {}),  # a camera's; never a person's
        }

    def summary(self) -> str:
        """The counts, in words."""
        return (
            f"{len(self)} retained message(s): {len(self.configs)} discovery config(s), "
            f"{len(self.states)} state(s), {len(self.presences)} camera presence(s)"
            + (f"; {len(self.rewrites)} discovery config(s) rewritten" if self.rewrites else "")
        )


class PersonTraces:
    """Where the retained traces of people and cameras lie under one topic layout, and which
    they are."""

    def __init__(self, layout: TopicLayout, extensions: Iterable[MqttExtension] = ()) -> None:
        self.layout = layout
        self.extensions = list(extensions)

    def filters(self) -> list[str]:
        """The topic filters under which every retained trace lies."""
        filters = self.layout.retained_filters()
        for extension in self.extensions:
            filters += extension.retained_reader.retained_filters()
        return list(dict.fromkeys(filters))

    def people(self, found: Mapping[str, bytes]) -> set[str]:
        """Everyone (NFC) that the retained messages `found` name or belong to."""
        people: set[str] = set()
        for _, payload in self._sink_messages(found):
            people |= names_in(json_object(payload), "person", "people", "arrived", "departed")
        for extension in self.extensions:
            people |= extension.retained_reader.people_in(found)
        return people

    def cameras(self, found: Mapping[str, bytes]) -> set[str]:
        """Every camera whose retained messages `found` holds (its presence, its configs)."""
        cameras: set[str] = set()
        for _, payload in self._sink_messages(found):
            document = json_object(payload)
            camera = document.get("camera_id")
            if "people" in document and isinstance(camera, str):
                cameras.add(camera)
        for extension in self.extensions:
            cameras |= extension.retained_reader.cameras_in(found)
        return cameras

    def _sink_messages(self, found: Mapping[str, bytes]) -> Iterator[tuple[str, bytes]]:
        """The retained messages of `found` under the sink's own filters."""
        sink_filters = self.layout.retained_filters()
        for topic, payload in found.items():
            if any(paho.topic_matches_sub(f, topic) for f in sink_filters):
                yield topic, payload

    def find(
        self, people: Collection[str], found: Mapping[str, bytes], cameras: Collection[str] = ()
    ) -> Traces:
        """The topics of `found` (retained topic -> payload) that name or belong to `people`, or
        belong to `cameras` (ids, exact), and the configs to re-publish without those cameras."""
        wanted = frozenset(map(normalized, people))
        left_out = frozenset(cameras)
        if not wanted and not left_out:
            return Traces()
        states: list[str] = []
        presences: list[str] = []
        # A person named "presence" has `<prefix>/person/presence`: the payload tells them apart.
        for topic, payload in self._sink_messages(found):
            document = json_object(payload)
            if "people" in document:
                if names_in(document, "people", "arrived", "departed") & wanted or (
                    document.get("camera_id") in left_out
                ):
                    presences.append(topic)
            elif names_in(document, "person") & wanted:
                states.append(topic)
        configs: list[str] = []
        rewrites: dict[str, bytes] = {}
        for reader in (extension.retained_reader for extension in self.extensions):
            for topic in reader.person_topics(wanted, found) if wanted else ():
                (configs if topic.endswith("/config") else states).append(topic)
            if left_out:
                configs += reader.camera_topics(left_out, found)
                rewrites.update(reader.camera_rewrites(left_out, found))
        unique = dict.fromkeys  # an extension's topic may lie under the sink's filters too
        cleared = set(configs)  # a config cleared whole is not rewritten too
        return Traces(
            tuple(sorted(unique(configs))),
            tuple(sorted(unique(states))),
            tuple(sorted(unique(presences))),
            tuple(sorted((t, p) for t, p in rewrites.items() if t not in cleared)),
        )


Chosen = TypeVar("Chosen", bound=Sequence[str])


async def sweep(
    connection: MqttConnection,
    filters: Sequence[str],
    choose: Callable[[dict[str, bytes]], Chosen],
    *,
    timeout: float,
    dry_run: bool = False,
) -> tuple[Chosen, int]:
    """Read what the broker retains under `filters` through `connection` (started), clear the
    topics `choose(found)` picks (unless `dry_run`), in its order, then re-publish the configs it
    rewrites (`Traces.rewrites`); returns them and how many retained topics were found in all.
    Raises asyncio.TimeoutError when the broker does not acknowledge within `timeout`."""
    found = await connection.read_retained(filters, timeout)
    chosen = choose(found)
    if dry_run:
        return chosen, len(found)
    if chosen:
        await asyncio.wait_for(asyncio.gather(*(connection.clear(topic) for topic in chosen)), timeout)
    rewrites = chosen.rewrites if isinstance(chosen, Traces) else ()
    if rewrites:
        ack = connection.acknowledgement()
        for topic, payload in rewrites:
            connection.retain(topic, payload, ack)
        await asyncio.wait_for(ack.seal(), timeout)
    return chosen, len(found)
