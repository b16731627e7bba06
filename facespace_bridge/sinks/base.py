"""The one interface every destination implements.

`publish` hands a batch of events over and returns an acknowledgement: a future that
completes when the destination has durably accepted every event of the batch (Kafka
acks=all, MQTT PUBACK at QoS 1, a 2xx webhook reply, an fsync'd file line) and raises if
any of them never will be. Checkpoints advance only on those acks (docs/delivery.md), so a
sink must never resolve an ack early. `publish` itself waits while the sink has too much
in flight: that wait is the back-pressure that keeps a slow broker from growing memory.
Batches, as in Kafka Connect's `SinkTask.put`, because a backfill hands over hundreds of
thousands of events a second: per-event awaits and acknowledgements would cost more than
the sending.
"""

from __future__ import annotations

import asyncio
import enum
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from types import TracebackType
from typing import Any, NamedTuple

from facespace_bridge.events import Event

# A future, not any awaitable: the bridge and a caller may both wait on it.
Ack = asyncio.Future[Any]


class LastSeen(NamedTuple):
    """Where and when a person was last seen, as far as the bridge knows at start."""

    at: datetime
    camera_id: str


class Role(enum.Enum):
    """Who builds the sinks, which decides what they may touch besides the events they publish.

    Only the bridge owns the destination's shared state: its client id, its availability
    topic, what its extensions (Home Assistant) publish and retain, its Kafka transactional
    id. Every other role is a side client that runs beside a live bridge and must never
    disturb it: its own client id, no availability, no extensions, nothing retained that it
    does not own.
    """

    BRIDGE = "bridge"  # `run`: the one bridge of an instance
    REPLAY = "replay"  # history published again: data topics and last seen, nothing that acts
    CHECK = "check"  # connects and disconnects; publishes nothing
    CLEANUP = "cleanup"  # `mqtt-cleanup`: reads and clears stale retained topics
    FORGET = "forget"  # `forget`: clears one person's retained topics, asks the bridge to forget them

    @property
    def side(self) -> bool:
        """Whether this is a side client, running beside the bridge."""
        return self is not Role.BRIDGE


class SinkError(Exception):
    """A sink could not start or deliver; the message is one clear line for the user."""


class Sink(ABC):
    """A destination for events: Kafka, MQTT, webhook, file."""

    #: short name used in logs, metrics labels and `--broker`
    name: str = "sink"

    #: the last problem the sink had with its destination, and when (`time.time()`); for /status
    last_error: tuple[float, str] | None = None

    #: Set by the bridge: a sink that forgets people (the MQTT sink, when asked on its forget
    #: request topic: docs/privacy.md) calls it with them, as published (NFC-normalised names;
    #: under --pseudonymize their pseudonyms too), so that the rest of the bridge (the web page)
    #: forgets them as well.
    on_forget: Callable[[frozenset[str]], None] | None = None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; raise `SinkError` with one clear line if the destination is unusable."""

    @abstractmethod
    async def publish(self, events: Sequence[Event]) -> Ack:
        """Hand a batch of events over, in order; returns its acknowledgement (see module docstring)."""

    async def announce(  # noqa: B027
        self, cameras: Iterable[str], people: Iterable[str], last_seen: Mapping[str, LastSeen] | None = None
    ) -> None:
        """Optional: learn, at start, every camera and person known from the API (and when
        each person was last seen in the recent history), so that entities (Home Assistant
        discovery) exist, and show the right state, before their first event."""

    @property
    def connected(self) -> bool:
        """Whether the sink can deliver right now (a sink with a connection says so)."""
        return True

    def details(self) -> dict[str, Any]:
        """Optional: what else /status should show about this sink (counts of its own)."""
        return {}

    def note_error(self, error: BaseException | str) -> None:
        """Record a problem with the destination (shown by /status)."""
        self.last_error = (time.time(), str(error))

    #: True for a sink that delivers in transactions the bridge commits together with the
    #: checkpoint (Kafka with --exactly-once); such a sink implements `transaction_boundary`
    #: and `write_in_transaction`.
    transactional: bool = False

    def transaction_boundary(self) -> AbstractAsyncContextManager[None]:
        """Transactional sinks: pause publishers, flush, and on leaving the block commit what
        was published together with what the block wrote (the checkpoint)."""
        raise NotImplementedError(f"the {self.name} sink has no transactions")

    async def write_in_transaction(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Transactional sinks: write one record into the open transaction (the checkpoint store
        writes its record this way) and wait until the broker has it."""
        raise NotImplementedError(f"the {self.name} sink has no transactions")

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until every event handed over so far is acknowledged."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush what can be flushed and release the connection."""

    async def __aenter__(self) -> Sink:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
