"""The publisher on its own: every batch to every sink, the tracker's ticket settled only once
all of them acknowledged it, a failed batch delivered again (the same events) until it is
acknowledged, a replay's failures counted instead, a transactional sink's failure fatal, and
publishing held while too much waits for a save.

In-process: the sinks are `Sink`s that acknowledge when the test says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import pytest

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, deadletter_event, presence_event, sighting_event
from facespace_bridge.metrics import Metrics
from facespace_bridge.publisher import Publisher
from facespace_bridge.sinks import Ack, Sink, SinkError
from facespace_bridge.sources.base import Batch

T0 = datetime(2023, 10, 23, 12, 0, tzinfo=timezone.utc)


class HeldSink(Sink):
    """Keeps every batch with its acknowledgement until the test settles it."""

    def __init__(self, name: str, *, transactional: bool = False) -> None:
        self.name = name
        self.transactional = transactional
        self.batches: list[tuple[Sequence[Event], Ack]] = []

    async def publish(self, events: Sequence[Event]) -> Ack:
        ack: Ack = asyncio.get_running_loop().create_future()
        self.batches.append((events, ack))
        return ack

    def settle(self, index: int = -1, error: BaseException | None = None) -> None:
        _, ack = self.batches[index]
        ack.set_exception(error) if error is not None else ack.set_result(None)


def sightings(camera: str, second: int, count: int) -> Batch:
    """`count` sightings at one camera and second, with the position they complete."""
    seen_at = T0 + timedelta(seconds=second)
    events = [sighting_event(LogEntry(camera, f"P{k}", seen_at, "raw"), 0) for k in range(count)]
    return Batch(events, {camera: (seen_at, count)})


async def settled() -> None:
    """Let the acknowledgements' callbacks (and redelivery tasks) run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_checkpoint_moves_only_once_every_sink_acknowledged() -> None:
    kafka, mqtt = HeldSink("kafka"), HeldSink("mqtt")
    tracker, metrics = AckTracker(Checkpoint()), Metrics()
    publisher = Publisher([kafka, mqtt], tracker, metrics)
    batch = sightings("Door", 5, 3)
    await publisher.publish(batch)
    assert [len(events) for events, _ in kafka.batches] == [3] and mqtt.batches[0][0] == batch.events
    assert publisher.stats["kafka"].in_flight == 3

    kafka.settle()
    await settled()
    assert tracker.checkpoint.cameras == {}  # one sink has it; the other may yet fail
    assert (publisher.stats["kafka"].acknowledged, publisher.stats["mqtt"].acknowledged) == (3, 0)
    mqtt.settle()
    await settled()
    assert tracker.checkpoint.cameras == {"Door": Position(T0 + timedelta(seconds=5), 3)}
    assert metrics.published.labels(sink="mqtt", type="sighting")._value.get() == 3
    assert publisher.published == {"sighting": 3}


async def test_a_failed_batch_is_delivered_again_and_the_checkpoint_waits() -> None:
    kafka, mqtt = HeldSink("kafka"), HeldSink("mqtt")
    tracker, metrics = AckTracker(Checkpoint()), Metrics()
    publisher = Publisher([kafka, mqtt], tracker, metrics)
    first, second = sightings("Door", 1, 2), sightings("Door", 2, 2)
    await publisher.publish(first)
    await publisher.publish(second)
    kafka.settle(0, SinkError("broker gone"))
    for sink, index in ((kafka, 1), (mqtt, 0), (mqtt, 1)):
        sink.settle(index)
    await settled()
    assert publisher.failing == {"kafka"}
    assert tracker.checkpoint.cameras == {}  # the second batch waits behind the first
    assert publisher.stats["kafka"].failed == 2
    assert metrics.publish_failures.labels(sink="kafka")._value.get() == 2

    (again, _) = kafka.batches[2]  # redelivered at once: the same events, so the same ids
    assert again == first.events
    kafka.settle(2)
    await settled()
    assert publisher.failing == frozenset()
    assert tracker.checkpoint.cameras == {"Door": Position(T0 + timedelta(seconds=2), 2)}
    assert (publisher.stats["kafka"].acknowledged, publisher.stats["kafka"].in_flight) == (4, 0)
    await publisher.cancel()


async def test_a_replay_counts_a_failure_instead_of_delivering_again() -> None:
    sink = HeldSink("file")
    tracker = AckTracker(Checkpoint())
    publisher = Publisher([sink], tracker, Metrics(), redeliver=False)
    await publisher.publish(sightings("Door", 1, 2))
    sink.settle(error=SinkError("disk full"))
    await settled()
    assert len(sink.batches) == 1  # not sent again
    stats = publisher.stats["file"]
    assert (stats.failed, stats.acknowledged, stats.in_flight, str(stats.first_error)) == (
        2,
        0,
        0,
        "disk full",
    )
    await tracker.idle()  # the replay goes on: its progress counts the batch as done


async def test_a_transactional_sinks_failure_ends_the_run() -> None:
    sink = HeldSink("kafka", transactional=True)
    publisher = Publisher([sink], AckTracker(Checkpoint()), Metrics())
    await publisher.publish(sightings("Door", 1, 1))
    fenced = SinkError("another bridge took over")
    sink.settle(error=fenced)
    await settled()
    with pytest.raises(SinkError, match="took over"):
        await publisher.fatal
    assert len(sink.batches) == 1  # an open transaction cannot be completed by sending again


async def test_dead_letters_are_counted_by_source_and_presence_moves_no_position() -> None:
    sink = HeldSink("file")
    tracker, metrics = AckTracker(Checkpoint()), Metrics()
    publisher = Publisher([sink], tracker, metrics)
    dead = deadletter_event("Door", "garbage", "not Name @ time", "logs")
    presence = presence_event("Door", ["P0"], ["P0"], [], T0)
    await publisher.publish(Batch([dead, presence]))
    await publisher.publish(Batch([]))  # nothing to hand over: no sink sees it
    assert len(sink.batches) == 1
    sink.settle()
    await settled()
    assert metrics.dead_letters.labels(source="logs")._value.get() == 1
    assert publisher.published == {"deadletter": 1, "presence": 1}
    assert tracker.checkpoint.cameras == {}


async def test_publishing_waits_while_max_unsaved_events_wait_for_a_save() -> None:
    sink = HeldSink("file")
    tracker = AckTracker(Checkpoint(), max_unsaved=2)
    publisher = Publisher([sink], tracker, Metrics())
    await publisher.publish(sightings("Door", 1, 2))
    sink.settle()
    await settled()
    assert tracker.full
    blocked = asyncio.ensure_future(publisher.publish(sightings("Door", 2, 1)))
    await settled()
    assert not blocked.done() and len(sink.batches) == 1  # held before any sink sees it
    tracker.saved(2)  # the writer made them durable
    await asyncio.wait_for(blocked, 5)
    assert len(sink.batches) == 2
