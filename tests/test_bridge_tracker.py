"""The ack tracker: the durable checkpoint is the contiguous low watermark of acks."""

from datetime import datetime, timedelta, timezone

from facespace_bridge.bridge import AckTracker
from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.events import Event
from facespace_bridge.sources.base import Item

T = datetime(2023, 10, 23, 10, 0, 0, tzinfo=timezone.utc)


def item(camera: str, second: int, n: int) -> Item:
    event = Event("facespace.sighting/v1", f"{camera}{second}{n}", camera, b"{}", {})
    return event, Position(T + timedelta(seconds=second), n)


def group_of(tracker: AckTracker, *items: Item):
    group = tracker.open((object(),))
    group.items.extend(items)
    return group


def test_camera_position_moves_only_over_a_contiguous_acked_run():
    changes = []
    tracker = AckTracker(Checkpoint(through=T), lambda: changes.append(1))
    a1, a2, a3 = (group_of(tracker, item("A", 1, n)) for n in (1, 2, 3))
    b1 = group_of(tracker, item("B", 5, 1))
    tracker.settled(a2)
    assert "A" not in tracker.checkpoint.cameras  # a1 is still in flight
    tracker.settled(a1)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 2)
    tracker.settled(b1)
    assert tracker.checkpoint.cameras["B"] == Position(T + timedelta(seconds=5), 1)
    tracker.settled(a3)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 3)
    assert tracker.in_flight == 0 and changes


def test_a_group_moves_each_of_its_cameras_to_its_last_position():
    tracker = AckTracker(Checkpoint(through=T), lambda: None)
    batch = group_of(tracker, item("A", 1, 1), item("B", 1, 1), item("A", 2, 1), item("A", 2, 2))
    assert tracker.in_flight == 4
    tracker.settled(batch)
    assert tracker.checkpoint.cameras == {
        "A": Position(T + timedelta(seconds=2), 2),
        "B": Position(T + timedelta(seconds=1), 1),
    }
    assert tracker.in_flight == 0


def test_barrier_moves_heartbeat_only_after_everything_before_it_is_acked():
    tracker = AckTracker(Checkpoint(through=T), lambda: None)
    first = group_of(tracker, item("A", 1, 1))
    tracker.barrier(T + timedelta(minutes=1))
    later = group_of(tracker, item("A", 70, 1))
    assert tracker.checkpoint.through == T
    tracker.settled(later)
    assert tracker.checkpoint.through == T  # `first` precedes the barrier and is unacked
    tracker.settled(first)
    assert tracker.checkpoint.through == T + timedelta(minutes=1)


def test_checkpoint_is_a_snapshot():
    tracker = AckTracker(Checkpoint(through=T), lambda: None)
    before = tracker.checkpoint
    tracker.settled(group_of(tracker, item("A", 1, 1)))
    assert "A" not in before.cameras and "A" in tracker.checkpoint.cameras
