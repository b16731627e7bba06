"""The one interface every destination implements.

`publish` hands an event over and returns an acknowledgement: an awaitable that
completes when the destination has durably accepted the event (Kafka acks=all,
MQTT PUBACK at QoS 1, a 2xx webhook reply, an fsync'd file line) and raises if it
never will. Checkpoints advance only on those acks (DESIGN §4), so a sink must
never resolve an ack early. `publish` itself waits while the sink has too much in
flight: that wait is the back-pressure that keeps a slow broker from growing memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from facespace_bridge.events import Event

Ack = Awaitable[None]


class SinkError(Exception):
    """A sink could not start or deliver; the message is one clear line for the user."""


class Sink(ABC):
    """A destination for events: Kafka, MQTT, webhook, file."""

    #: short name used in logs, metrics labels and `--broker`
    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect; raise `SinkError` with one clear line if the destination is unusable."""

    @abstractmethod
    async def publish(self, event: Event) -> Ack:
        """Hand one event over; returns its acknowledgement (see module docstring)."""

    async def announce(self, cameras: Iterable[str], people: Iterable[str]) -> None:  # noqa: B027
        """Optional: learn, at start, every camera and person known from the API, so that
        entities (Home Assistant discovery) exist before their first event."""

    #: True for a sink that delivers in transactions the bridge commits together with the
    #: checkpoint (Kafka with --exactly-once); such a sink implements `transaction_boundary`.
    transactional: bool = False

    def transaction_boundary(self) -> AbstractAsyncContextManager[object]:
        """Transactional sinks: pause publishers, flush, and on leaving the block commit what
        was published together with what the block wrote (the checkpoint)."""
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
