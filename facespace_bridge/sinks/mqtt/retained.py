"""Retained state, both ways: what the connection keeps retained on the broker, and reading
what the broker retains.

`RetainedState` is the latest value per retained topic the connection publishes
(availability, discovery configs, presence, person topics): the outbox reads a topic's value
when it hands the message to paho, and the connection re-sends every topic after a reconnect
(the broker may have lost them) and on `resend_retained`.

`RetainedReader` reads the retained messages under some topic filters and ends
deterministically: a marker published after the SUBACKs, on a topic subscribed last,
arrives after every retained message (one connection, in order).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Iterator

import paho.mqtt.client as paho

from facespace_bridge.sinks.mqtt.outbox import Message, Outbox

ONLINE = b"online"
OFFLINE = b"offline"


class RetainedState:
    """The latest value of each retained topic, and the availability topic's (`online` while
    connected, `offline` once closing); `availability` None: a client that has none."""

    def __init__(self, availability: str | None) -> None:
        self.availability = availability
        self.available = OFFLINE
        self._values: dict[str, bytes] = {}  # in the order first set

    def set(self, topic: str, payload: bytes) -> None:
        self._values[topic] = payload

    def forget(self, topic: str) -> None:
        """Stop restoring `topic` (it is being cleared)."""
        self._values.pop(topic, None)

    def values(self) -> dict[str, bytes]:
        """Every retained topic set (but the availability) and its value, now."""
        return dict(self._values)

    def value(self, topic: str) -> bytes | None:
        """What `topic` holds now; None for a topic cleared or never set."""
        if topic == self.availability:
            return self.available
        return self._values.get(topic)

    def resend_order(self, first: Iterable[str] = ()) -> Iterator[str]:
        """Every retained topic but the availability: those in `first` (what the others'
        readers need before them: discovery configs), then the rest in the order first set."""
        for topic in (*first, *self._values):
            if topic in self._values:
                yield topic


class RetainedReader:
    """Reads what the broker retains (`read`), with the subscriptions that deliver it."""

    def __init__(self) -> None:
        self._readers: dict[str, Callable[[paho.MQTTMessage], None]] = {}  # filter -> reader

    def deliver(self, message: paho.MQTTMessage) -> bool:
        """Hand `message` to the read it belongs to; False when it belongs to none."""
        for topic_filter, reader in self._readers.items():
            if paho.topic_matches_sub(topic_filter, message.topic):
                reader(message)
                return True
        return False

    async def read(
        self,
        client: paho.Client,
        outbox: Outbox,
        filters: Iterable[str],
        timeout: float,
        unsubscribe: Callable[[str], None],
    ) -> dict[str, bytes]:
        """The retained messages under `filters`, through `client` (connected) and `outbox` (for
        the marker); raises asyncio.TimeoutError after `timeout`. `unsubscribe(filter)` ends
        each subscription afterwards (the connection keeps the ones it holds for itself)."""
        marker = f"facespace-bridge/marker/{uuid.uuid4().hex}"
        found: dict[str, bytes] = {}
        done = asyncio.get_running_loop().create_future()

        def collect(message: paho.MQTTMessage) -> None:
            if message.retain and message.payload:
                found[message.topic] = message.payload

        def end(_message: paho.MQTTMessage) -> None:
            if not done.done():
                done.set_result(None)

        readers = {f: collect for f in dict.fromkeys(filters)} | {marker: end}
        self._readers.update(readers)
        try:
            for topic_filter in readers:
                client.subscribe(topic_filter, qos=1)
            # The marker is not retained: it reaches only our subscription, after the rest.
            outbox.put(Message(marker, b"", False, False))
            outbox.drain()
            await asyncio.wait_for(done, timeout)
        finally:
            for topic_filter in readers:
                self._readers.pop(topic_filter, None)
                unsubscribe(topic_filter)
        return found
