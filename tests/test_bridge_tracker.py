"""The ack tracker: the durable checkpoint is the contiguous low watermark of acks."""

from datetime import datetime, timedelta, timezone

from facespace_bridge.bridge import AckTracker
from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.events import Event
from facespace_bridge.sources.base import Item

T = datetime(2023, 10, 23, 10, 0, 0, tzinfo=timezone.utc)


def item(camera: str, second: int, n: int) -> Item:
    event = Event("facespace.sighting/v1", f"{camera}{second}{n}", camera, b"{}", {})
    return Item(event, Position(T + timedelta(seconds=second), n))


def test_camera_position_moves_only_over_a_contiguous_acked_run():
    changes = []
    tracker = AckTracker(Checkpoint(through=T), lambda: changes.append(1))
    a1, a2, a3 = (tracker.add(item("A", 1, n), sinks=1) for n in (1, 2, 3))
    b1 = tracker.add(item("B", 5, 1), sinks=1)
    tracker.acked(a2)
    assert "A" not in tracker.checkpoint.cameras  # a1 is still in flight
    tracker.acked(a1)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 2)
    tracker.acked(b1)
    assert tracker.checkpoint.cameras["B"] == Position(T + timedelta(seconds=5), 1)
    tracker.acked(a3)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 3)
    assert tracker.in_flight == 0 and changes


def test_barrier_moves_heartbeat_only_after_everything_before_it_is_acked():
    tracker = AckTracker(Checkpoint(through=T), lambda: None)
    first = tracker.add(item("A", 1, 1), sinks=1)
    tracker.barrier(T + timedelta(minutes=1))
    later = tracker.add(item("A", 70, 1), sinks=1)
    assert tracker.checkpoint.through == T
    tracker.acked(later)
    assert tracker.checkpoint.through == T  # `first` precedes the barrier and is unacked
    tracker.acked(first)
    assert tracker.checkpoint.through == T + timedelta(minutes=1)


def test_abandoned_publish_never_advances_the_camera():
    tracker = AckTracker(Checkpoint(through=T), lambda: None)
    lost = tracker.add(item("A", 1, 1), sinks=1)
    after = tracker.add(item("A", 2, 1), sinks=1)
    tracker.abandon(lost)
    tracker.acked(after)
    assert "A" not in tracker.checkpoint.cameras
    assert tracker.in_flight == 0
