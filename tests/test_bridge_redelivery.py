"""A batch a sink fails to acknowledge is delivered again, and the checkpoint waits for it.

In-process, no network: the backfill reads prepared windows and publishes into a sink that
acknowledges in batches, as the Kafka sink does, and fails chosen batches once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import Checkpoint, CheckpointStore, Position
from facespace_bridge.client import BadEntry, LogEntry, Window
from facespace_bridge.events import Event, listing_events
from facespace_bridge.sinks import Sink
from facespace_bridge.sources.logs import LogsSource, _Numbering

T0 = datetime(2023, 5, 1, 12, 0, tzinfo=timezone.utc)
START = T0 - timedelta(minutes=3)
BATCH = 7


def windows() -> list[Window]:
    """Three minute windows, cameras together and in time order, shared seconds, one bad entry."""
    out = []
    for minute in range(3):
        lo = START + timedelta(minutes=minute)
        entries: list[LogEntry | BadEntry] = []
        for camera in ("A", "B", "C"):
            for i in range(12):
                seen_at = lo + timedelta(seconds=i // 3 * 7)  # three entries a second
                entries.append(LogEntry(camera, f"P{i % 2}", seen_at, f"P{i % 2} @ {seen_at}"))
            if camera == "B" and minute == 1:
                entries.append(BadEntry(camera, "garbage", "does not parse"))
        out.append(Window(lo, lo + timedelta(minutes=1), entries))
    return out


class Client:
    """The backfill's windows; the tail that follows stops the bridge."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop

    async def iter_windows(
        self, start: datetime, end: datetime | None, camera_id: str | None = None, **_: object
    ) -> AsyncIterator[Window]:
        if end is None:
            self.stop.set()
            return
        for window in windows():
            yield window


class FlakySink(Sink):
    """One ack per batch of BATCH events, settled soon after; the batches numbered in `fail`
    fail. An event delivered again is acknowledged on its own, after the later batches."""

    name = "flaky"

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.delivered: list[str] = []
        self.first: dict[str, Event] = {}  # each event as first delivered
        self.again: list[Event] = []  # the events delivered again
        self.failed: set[str] = set()  # events of failed batches, until delivered again
        self.batches = 0
        self._ack: asyncio.Future[None] | None = None
        self._in_batch = 0

    async def publish(self, event: Event) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if event.event_id in self.delivered:  # delivered again, once the later batches settled
            await asyncio.sleep(0.05)
            self.delivered.append(event.event_id)
            self.again.append(event)
            self.failed.discard(event.event_id)
            ack: asyncio.Future[None] = loop.create_future()
            ack.set_result(None)
            return ack
        self.delivered.append(event.event_id)
        self.first[event.event_id] = event
        if self._ack is None or self._in_batch == BATCH:
            self.batches += 1
            self._ack, self._in_batch = loop.create_future(), 0
            loop.call_later(0.001, self._settle, self._ack, self.batches in self.fail)
        if self.batches in self.fail:
            self.failed.add(event.event_id)
        self._in_batch += 1
        return self._ack

    @staticmethod
    def _settle(ack: asyncio.Future[None], failed: bool) -> None:
        if failed:
            ack.set_exception(ConnectionError("broker went away"))
        else:
            ack.set_result(None)


class Store(CheckpointStore):
    """Keeps every checkpoint saved, with the failed events not yet delivered again then."""

    def __init__(self, sink: FlakySink) -> None:
        self.sink = sink
        self.saved: list[tuple[Checkpoint, set[str]]] = []

    async def load(self) -> Checkpoint | None:
        return None

    async def save(self, checkpoint: Checkpoint) -> None:
        self.saved.append((checkpoint, set(self.sink.failed)))


async def test_a_failed_batch_is_delivered_again_and_the_checkpoint_waits_for_it() -> None:
    stop = asyncio.Event()
    sink = FlakySink(fail={2, 5, 9})
    store = Store(sink)
    options = BridgeOptions(realtime=False, backfill_from=START, heartbeat=60.0, safety_lag=timedelta(0))
    bridge = Bridge(Client(stop), [sink], store, options, clock=lambda: T0)  # type: ignore[arg-type]
    await asyncio.wait_for(bridge.run(stop), 10)

    # Each event with the position it completes, numbered as a fresh backfill numbers them.
    source = LogsSource(client=None)  # type: ignore[arg-type]
    items = [item for w in windows() for item in source._fresh(w.entries, _Numbering(), Checkpoint())]
    expected = [event.event_id for event, _ in items]
    assert expected == [e.event_id for window in windows() for e in listing_events(window.entries)]

    assert set(sink.delivered) == set(expected)  # nothing lost
    assert sink.delivered[: len(expected)] == expected  # first deliveries in order
    assert len(sink.delivered) - len(expected) == 3 * BATCH  # the failed batches again, nothing else
    assert not sink.failed
    assert {event.kind for event in sink.again} == {"sighting", "deadletter"}  # batch 9 has the junk
    for event in sink.again:  # the same event: id, payload bytes, decoded fields
        assert event == sink.first[event.event_id]
        assert event.payload == sink.first[event.event_id].payload

    final, _ = store.saved[-1]
    assert final.backfill is not None and final.backfill.complete
    last = START + timedelta(minutes=2, seconds=21)
    assert final.cameras == {camera: Position(last, 3) for camera in "ABC"}

    # No checkpoint ever covered a failed event before it was delivered again.
    where = {event.event_id: (event, position) for event, position in items}
    assert any(pending for _, pending in store.saved)  # some were saved while events were pending
    for checkpoint, pending in store.saved:
        for event_id in pending:
            event, position = where[event_id]
            saved = checkpoint.cameras.get(event.camera_id)
            assert saved is None or saved < position, (event_id, saved, position)
