"""The ack tracker: the durable checkpoint is the contiguous low watermark of acks."""

import asyncio
from datetime import datetime, timedelta, timezone

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.checkpoints.acks import AckTracker, Ticket

T = datetime(2023, 10, 23, 10, 0, 0, tzinfo=timezone.utc)


def at(second: int, n: int) -> tuple[datetime, int]:
    return (T + timedelta(seconds=second), n)


def issue(tracker: AckTracker, events: int = 1, **positions: tuple[datetime, int]) -> Ticket:
    return tracker.issue(dict(positions), events)


def test_camera_position_moves_only_over_a_contiguous_acked_run() -> None:
    tracker = AckTracker(Checkpoint(through=T))
    a1, a2, a3 = (issue(tracker, A=at(1, n)) for n in (1, 2, 3))
    b1 = issue(tracker, B=at(5, 1))
    tracker.acknowledged(a2)
    assert "A" not in tracker.checkpoint.cameras  # a1 is still in flight
    tracker.acknowledged(a1)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 2)
    tracker.acknowledged(b1)
    assert tracker.checkpoint.cameras["B"] == Position(T + timedelta(seconds=5), 1)
    tracker.acknowledged(a3)
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=1), 3)
    assert tracker.in_flight == 0 and tracker.changed.is_set()


def test_a_batch_moves_each_of_its_cameras() -> None:
    tracker = AckTracker(Checkpoint(through=T))
    batch = issue(tracker, 4, A=at(2, 2), B=at(1, 1))
    assert tracker.in_flight == 4
    tracker.acknowledged(batch)
    assert tracker.checkpoint.cameras == {
        "A": Position(T + timedelta(seconds=2), 2),
        "B": Position(T + timedelta(seconds=1), 1),
    }
    assert tracker.in_flight == 0 and tracker.unsaved == 4


def test_a_position_never_moves_back() -> None:
    tracker = AckTracker(Checkpoint(cameras={"A": Position(T + timedelta(seconds=9), 1)}))
    tracker.acknowledged(issue(tracker, A=at(3, 1)))  # a late insert, published after later entries
    assert tracker.checkpoint.cameras["A"] == Position(T + timedelta(seconds=9), 1)


def test_barrier_moves_heartbeat_only_after_everything_before_it_is_acked() -> None:
    tracker = AckTracker(Checkpoint(through=T))
    first = issue(tracker, A=at(1, 1))
    tracker.barrier(T + timedelta(minutes=1))
    later = issue(tracker, A=at(70, 1))
    assert tracker.checkpoint.through == T
    tracker.acknowledged(later)
    assert tracker.checkpoint.through == T  # `first` precedes the barrier and is unacked
    tracker.acknowledged(first)
    assert tracker.checkpoint.through == T + timedelta(minutes=1)


def test_checkpoint_is_a_snapshot() -> None:
    tracker = AckTracker(Checkpoint(through=T))
    before = tracker.checkpoint
    tracker.acknowledged(issue(tracker, A=at(1, 1)))
    assert "A" not in before.cameras and "A" in tracker.checkpoint.cameras


async def test_room_waits_while_max_unsaved_events_wait_for_a_save() -> None:
    tracker = AckTracker(Checkpoint(through=T), max_unsaved=3)
    tracker.acknowledged(issue(tracker, 3))
    assert tracker.full
    waiting = asyncio.ensure_future(tracker.room())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    tracker.saved(3)
    await asyncio.wait_for(waiting, 1)
    assert tracker.unsaved == 0


def test_an_acknowledged_batch_stays_unsaved_until_the_checkpoint_covers_it() -> None:
    """A batch acknowledged before an earlier batch of one of its cameras is not in the
    checkpoint yet: a kill now would publish it again, so it counts against `max_unsaved`
    until a saved checkpoint covers it whole."""
    tracker = AckTracker(Checkpoint(through=T), max_unsaved=3)
    first = issue(tracker, 2, A=at(1, 2))
    second = issue(tracker, 3, A=at(2, 3), B=at(2, 3))
    tracker.acknowledged(second)
    assert tracker.checkpoint.cameras == {"B": Position(T + timedelta(seconds=2), 3)}
    assert (tracker.unsaved, tracker.covered) == (3, 0) and tracker.full
    tracker.saved(tracker.covered)  # a save now makes none of it durable
    assert tracker.full
    tracker.acknowledged(first)
    assert (tracker.unsaved, tracker.covered) == (5, 5)
    tracker.saved(tracker.covered)
    assert (tracker.unsaved, tracker.covered) == (0, 0) and not tracker.full
