"""A batch a sink fails to acknowledge is delivered again, and the checkpoint waits for it.

In-process, no network: the backfill reads prepared windows and publishes into a sink that
acknowledges in batches, as the Kafka sink does, and fails chosen batches once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone

import pytest

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import Checkpoint, CheckpointStore, Position
from facespace_bridge.client import Window
from facespace_bridge.events import Event
from facespace_bridge.sinks import Sink
from facespace_bridge.sources import listing

T0 = datetime(2023, 5, 1, 12, 0, tzinfo=timezone.utc)
START = T0 - timedelta(minutes=3)
BATCH = 7  # events per batch the bridge hands over (windows are cut into batches of this)


def windows() -> list[Window]:
    """Three minute windows, cameras together and in time order, shared seconds, one bad entry."""
    out = []
    for minute in range(3):
        lo = START + timedelta(minutes=minute)
        reply: dict[str, list[str]] = {}
        for camera in ("A", "B", "C"):
            raws = reply[camera] = []
            for i in range(12):
                seen_at = lo + timedelta(seconds=i // 3 * 7)  # three entries a second
                raws.append(f"P{i % 2} @ {seen_at:%H:%M:%S %d/%m/%y}")
            if camera == "B" and minute == 1:
                raws.append("garbage")
        out.append(Window(lo, lo + timedelta(minutes=1), reply))
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
    """Acknowledges each batch soon after; the batches numbered in `fail` fail once. A batch
    delivered again is acknowledged after a pause, so later batches settle first."""

    name = "flaky"

    def __init__(self, fail: set[int]) -> None:
        self.fail = fail
        self.delivered: list[str] = []
        self.first: dict[str, Event] = {}  # each event as first delivered
        self.again: list[Event] = []  # the events delivered again
        self.failed: set[str] = set()  # events of failed batches, until delivered again
        self.batches = 0

    async def publish(self, events: Sequence[Event]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[None] = loop.create_future()
        ids = [event.event_id for event in events]
        if ids[0] in self.first:  # delivered again
            await asyncio.sleep(0.05)
            self.delivered += ids
            self.again += events
            self.failed.difference_update(ids)
            ack.set_result(None)
            return ack
        self.batches += 1
        self.delivered += ids
        self.first.update(zip(ids, events, strict=True))
        failing = self.batches in self.fail
        if failing:
            self.failed.update(ids)
        loop.call_later(0.001, self._settle, ack, failing)
        return ack

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


async def test_a_failed_batch_is_delivered_again_and_the_checkpoint_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listing, "BATCH_EVENTS", BATCH)
    batches = [batch for w in windows() for batch in listing.number_listing(w.reply, w.start, w.end)]
    junk = next(n for n, b in enumerate(batches, 1) if any(e.kind == "deadletter" for e in b.events))
    fail = {2, 5, junk}
    stop = asyncio.Event()
    sink = FlakySink(fail=fail)
    store = Store(sink)
    options = BridgeOptions(
        realtime=False, backfill_from=START, heartbeat=60.0, safety_lag=timedelta(0), save_delay=0.005
    )
    bridge = Bridge(Client(stop), [sink], store, options, clock=lambda: T0)  # type: ignore[arg-type]
    await asyncio.wait_for(bridge.run(stop), 10)

    # Each event with the position it completes, numbered one event a batch.
    numbered = [
        (event, batch.positions.get(event.camera_id) if event.kind == "sighting" else None)
        for w in windows()
        for batch in listing.number_listing(w.reply, w.start, w.end, batch_events=1)
        for event in batch.events
    ]
    expected = [event.event_id for event, _ in numbered]

    assert set(sink.delivered) == set(expected)  # nothing lost
    assert sink.delivered[: len(expected)] == expected  # first deliveries in order
    assert sink.batches == len(batches) and len(fail) == 3
    again = sum(len(batches[n - 1].events) for n in fail)
    assert len(sink.delivered) - len(expected) == again  # the failed batches again, nothing else
    assert not sink.failed
    assert {event.kind for event in sink.again} == {"sighting", "deadletter"}  # one has the junk
    for event in sink.again:  # the same event: id, payload bytes
        assert event == sink.first[event.event_id]
        assert event.payload == sink.first[event.event_id].payload

    final, _ = store.saved[-1]
    assert final.backfill is not None and final.backfill.complete
    last = START + timedelta(minutes=2, seconds=21)
    assert final.cameras == {camera: Position(last, 3) for camera in "ABC"}

    # No checkpoint ever covered a failed event before it was delivered again.
    where = {event.event_id: (event, position) for event, position in numbered}
    assert any(pending for _, pending in store.saved)  # some were saved while events were pending
    for checkpoint, pending in store.saved:
        for event_id in pending:
            event, position = where[event_id]
            saved = checkpoint.cameras.get(event.camera_id)
            assert position is None or saved is None or saved < position, (event_id, saved, position)
