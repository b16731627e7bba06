"""Batches to every sink, acknowledgements back to the checkpoint tracker.

`publish` hands a batch to each sink in turn (each may make it wait: back-pressure) and
registers one callback per sink on the batch's acknowledgement; once every sink has
acknowledged, the tracker's ticket settles. A sink that fails a batch gets it again (the
same events, so the same ids: duplicates are harmless) until it acknowledges, and the
checkpoint waits for it; `redeliver=False` (replay) counts the failure instead. With a
transactional sink a failure ends the run: the open transaction cannot commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from facespace_bridge.checkpoints.acks import AckTracker, Ticket
from facespace_bridge.events import DEADLETTER_SCHEMA, Event, schema_kind
from facespace_bridge.metrics import Metrics
from facespace_bridge.sinks import Sink
from facespace_bridge.sources.base import Batch

log = logging.getLogger(__name__)

_schema_of = attrgetter("schema")
# Redelivery to a sink that failed a batch: soon at first, then every 10 s at most, for ever
# (the sink's own outage handling decides how long a broker may be gone).
_REDELIVERY_WAIT = wait_exponential(multiplier=0.5, max=10.0)


@dataclass
class SinkStats:
    """One sink's side of the traffic, for /status."""

    in_flight: int = 0  # events handed over, not yet acknowledged
    acknowledged: int = 0  # events acknowledged since start
    failed: int = 0  # events it failed to acknowledge (retried, or counted by a replay)
    last_error: tuple[float, str] | None = None  # (time.time(), why)
    first_error: BaseException | None = None
    progress: float = 0.0  # time.monotonic() of the last acknowledgement, or of work after none waited

    def handed(self, count: int) -> None:
        if self.in_flight == 0:
            self.progress = time.monotonic()
        self.in_flight += count

    def stalled_for(self, now: float) -> float:
        """Seconds the sink has had events in flight without acknowledging any (0 when idle)."""
        return now - self.progress if self.in_flight else 0.0


@dataclass(eq=False)
class _InFlight:
    """A batch on its way: what each sink's acknowledgement settles."""

    ticket: Ticket
    events: Sequence[Event]
    kinds: dict[str, int]
    waiting: int  # sinks that have not acknowledged yet
    batch: Batch


class Publisher:
    def __init__(
        self,
        sinks: list[Sink],
        tracker: AckTracker,
        metrics: Metrics,
        *,
        redeliver: bool = True,
        on_acknowledged: Callable[[Batch], None] | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("nothing to publish to: no sinks")
        self.sinks = sinks
        self.tracker = tracker
        self.metrics = metrics
        self.redeliver = redeliver
        self.on_acknowledged = on_acknowledged  # each batch once every sink has it (the web page)
        self.stats = {sink.name: SinkStats() for sink in sinks}
        self.published = Counter[str]()  # events handed over, by kind (a replay's summary)
        self._failing: set[str] = set()  # sinks that stopped acknowledging (logged once per outage)
        self._redeliveries: set[asyncio.Task[None]] = set()
        # Exactly once: the first error of the transactional sink, which ends the run.
        self.fatal: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def publish(self, batch: Batch) -> None:
        """Hand a batch to every sink; the tracker learns when all of them acknowledged it."""
        events = batch.events
        if not events:
            if batch.positions:  # entries a filter left out: the checkpoint moves past them, in turn
                self.tracker.acknowledged(self.tracker.issue(batch.positions, 0))
            return
        await self.tracker.room()  # at most `max_unsaved` acknowledged events wait for a save
        kinds = {schema_kind(schema): count for schema, count in Counter(map(_schema_of, events)).items()}
        self.published.update(kinds)
        if "deadletter" in kinds:
            for event in events:
                if event.schema == DEADLETTER_SCHEMA:
                    self.metrics.dead_letters.labels(source=event.source or "").inc()
        acks = []
        for sink in self.sinks:
            self.stats[sink.name].handed(len(events))
            acks.append(await sink.publish(events))
        # The ticket once every sink has the whole batch (a transactional sink commits between
        # batches, and the checkpoint of a commit must cover exactly the batches before it).
        flight = _InFlight(
            self.tracker.issue(batch.positions, len(events)), events, kinds, len(self.sinks), batch
        )
        for index, ack in enumerate(acks):
            ack.add_done_callback(partial(self._acked, index, flight))

    @property
    def failing(self) -> frozenset[str]:
        """The sinks that failed a batch and have not acknowledged its redelivery yet."""
        return frozenset(self._failing)

    async def cancel(self) -> None:
        """Stop redelivering (at shutdown: what was not acknowledged is sent again after a restart)."""
        for task in self._redeliveries:
            task.cancel()
        await asyncio.gather(*self._redeliveries, return_exceptions=True)

    def _acked(self, index: int, flight: _InFlight, ack: asyncio.Future[Any]) -> None:
        if ack.cancelled():
            return
        error = ack.exception()
        if error is None:
            self._sink_done(index, flight)
            return
        sink = self.sinks[index]
        stats = self.stats[sink.name]
        stats.failed += len(flight.events)
        stats.last_error = (time.time(), str(error))
        stats.first_error = stats.first_error or error
        self.metrics.publish_failures.labels(sink=sink.name).inc(len(flight.events))
        if sink.transactional:
            if not self.fatal.done():
                self.fatal.set_exception(error)
            return
        if not self.redeliver:
            self._sink_done(index, flight, acknowledged=False)
            return
        if sink.name not in self._failing:  # once per outage, not once per batch
            self._failing.add(sink.name)
            log.warning("%s is not acknowledging events (%s); retrying until it does", sink.name, error)
        task = asyncio.create_task(self._redeliver(index, flight))
        self._redeliveries.add(task)
        task.add_done_callback(self._redeliveries.discard)

    async def _redeliver(self, index: int, flight: _InFlight) -> None:
        sink = self.sinks[index]
        async for attempt in AsyncRetrying(
            wait=_REDELIVERY_WAIT, retry=retry_if_exception_type(Exception), reraise=True
        ):
            with attempt:
                await (await sink.publish(flight.events))
        if sink.name in self._failing:
            self._failing.discard(sink.name)
            log.info("%s acknowledges again", sink.name)
        self._sink_done(index, flight)

    def _sink_done(self, index: int, flight: _InFlight, *, acknowledged: bool = True) -> None:
        name = self.sinks[index].name
        stats = self.stats[name]
        stats.in_flight -= len(flight.events)
        stats.progress = time.monotonic()
        if acknowledged:
            stats.acknowledged += len(flight.events)
            for kind, count in flight.kinds.items():
                self.metrics.published.labels(sink=name, type=kind).inc(count)
        flight.waiting -= 1
        if flight.waiting == 0:
            self.tracker.acknowledged(flight.ticket)
            if self.on_acknowledged is not None:
                self.on_acknowledged(flight.batch)
