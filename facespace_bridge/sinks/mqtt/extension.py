"""What an MQTT sink extension is: a feature on top of the sink's connection that owns its
whole life cycle, the way a zigbee2mqtt extension owns Home Assistant discovery or
availability. Home Assistant (homeassistant.py) is the one there is.

The sink keeps the connection, the outbox and the acknowledgements; it routes every event
to its data topics. An extension is told about the run through these hooks, in this order,
all on the event loop:

1. `start(connection)` once connected, before any event: subscribe (the connection renews
   subscriptions after reconnects), read what the broker holds (`read_retained`), set
   retained topics of its own (`connection.retain`).
2. `announce(cameras, people, last_seen)`: everyone known at start; return once the
   broker has what the extension published for them.
3. `on_event(event)` for each event the sink publishes, before its messages are
   queued (what it needs is on the event: `person`, `people`, `seen_at`, `time`; the
   payload is not decoded); it returns the extra topics that should carry the same message under the
   event's acknowledgement (Home Assistant's event entities), and may update retained
   state of its own.
4. `on_message(topic, payload)` for each message on a topic it subscribed to.
5. `forget(person)` when the bridge is asked to forget someone (MqttSink): drop what it
   holds about them, so that nothing it re-sends (after a reconnect, to a restarted Home
   Assistant) names them until they are seen again; the sink then clears their retained
   topics, found through each extension's `retained_reader` (below); at start, before
   `start`, the sink also clears what belongs to cameras left out and re-publishes what
   holds parts of them, found the same way.
6. `close()` before the connection closes.

`details()` adds what /status should show about it. An extension must not block: the
hooks run between publishes.

Its `retained_reader` (a `RetainedReader`) reads back what it retains, without publishing:
where its retained topics lie (`retained_filters`), which of the retained messages found there
are its own and belong to some people (`person_topics`, `people_in`) or cameras
(`camera_topics`, `cameras_in`), and which hold parts of cameras beside others'
(`camera_rewrites`). traces.py asks it, for `forget` and the sink; `mqtt-cleanup` reads
under its `retained_filters`. An extension that retains nothing keeps the default, which
finds nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from facespace_bridge.events import Event
from facespace_bridge.sinks.base import LastSeen

if TYPE_CHECKING:
    from facespace_bridge.sinks.mqtt.connection import MqttConnection


class RetainedReader:
    """What an extension's retained messages say, read back (the module docstring); this
    default finds nothing."""

    def retained_filters(self) -> list[str]:
        """Where the retained topics this extension publishes lie."""
        return []

    def person_topics(self, people: Collection[str], found: Mapping[str, bytes]) -> list[str]:
        """Which of the retained messages `found` (topic -> payload, read under
        `retained_filters`) are this extension's and belong to one of `people` (NFC)."""
        return []

    def people_in(self, found: Mapping[str, bytes]) -> set[str]:
        """Everyone (NFC) whom this extension's retained messages in `found` belong to."""
        return set()

    def camera_topics(self, cameras: Collection[str], found: Mapping[str, bytes]) -> list[str]:
        """Which of the retained messages `found` are this extension's and belong to one of
        `cameras` (left out by the filters: cleared at start)."""
        return []

    def camera_rewrites(self, cameras: Collection[str], found: Mapping[str, bytes]) -> dict[str, bytes]:
        """This extension's retained messages in `found` that hold parts of `cameras` beside
        other parts, each as it must be re-published to withdraw those parts: topic -> payload."""
        return {}

    def cameras_in(self, found: Mapping[str, bytes]) -> set[str]:
        """Every camera whom this extension's retained messages in `found` belong to or hold
        parts of."""
        return set()


class MqttExtension(ABC):
    """One feature of the MQTT sink; see the module docstring for when each hook is called."""

    name: str = "extension"
    retained_reader: RetainedReader = RetainedReader()

    @abstractmethod
    async def start(self, connection: MqttConnection) -> None:
        """Connected, nothing published yet: subscribe, read the broker, set retained state."""

    async def announce(  # noqa: B027 - optional hook
        self, cameras: Iterable[str], people: Iterable[str], last_seen: Mapping[str, LastSeen]
    ) -> None:
        """Everyone known at start; return once the broker has what was published for them."""

    def on_event(self, event: Event) -> Sequence[str]:
        """An event the sink is about to publish; returns the
        extra topics that carry the same message under the event's acknowledgement."""
        return ()

    def on_message(self, topic: str, payload: bytes) -> None:  # noqa: B027 - optional hook
        """A message on a topic this extension subscribed to."""

    def forget(self, person: str) -> None:  # noqa: B027 - optional hook
        """Drop everything held about `person` (NFC-normalised): they are being forgotten."""

    def details(self) -> dict[str, Any]:
        """What /status shows about this extension, beside the sink's own details."""
        return {}

    async def close(self) -> None:  # noqa: B027 - optional hook
        """The sink is closing; the connection is still open."""
