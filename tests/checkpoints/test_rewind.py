"""Moving a resume point (`checkpoint set`): one camera set back behind the heartbeat resumes
at its own position, the others keep theirs; the bridge's tracker carries the rewind until
it has read every camera up to the heartbeat again, then the heartbeat holds for all."""

from datetime import datetime, timedelta, timezone

from facespace_bridge.checkpoints import Backfill, Checkpoint, Position
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.sources.listing import number_listing

T = datetime(2023, 10, 24, 12, 0, 0, tzinfo=timezone.utc)
HEARTBEAT = T + timedelta(hours=6)
START = T - timedelta(hours=12)


def running_checkpoint() -> Checkpoint:
    """After a backfill and some tail: A and B have positions of their own, A's past the heartbeat."""
    return Checkpoint(
        cameras={
            "A": Position(HEARTBEAT + timedelta(seconds=30), 2),
            "B": Position(T + timedelta(hours=1), 1),
        },
        through=HEARTBEAT,
        backfill=Backfill(START, HEARTBEAT - timedelta(minutes=5), complete=True),
    )


def test_one_camera_set_back_resumes_at_the_new_time_and_the_others_keep_theirs():
    before = running_checkpoint()
    after = before.moved(T, "B")
    assert after.position("B") == Position(T, 0)
    assert after.position("A") == before.position("A")
    assert after.position("never-seen") == before.position("never-seen") == Position(HEARTBEAT, 0)
    assert after.rewound == {"B"}
    assert after.earliest() == T  # where the next start must ask the API from
    assert after.backfill == before.backfill


def test_one_camera_set_ahead_skips_to_the_new_time_without_a_rewind():
    ahead = HEARTBEAT + timedelta(hours=1)
    after = running_checkpoint().moved(T, "B").moved(ahead, "B")
    assert after.position("B") == Position(ahead, 0)
    assert after.rewound == frozenset()
    assert after.earliest() == HEARTBEAT


def test_every_camera_set_back_makes_the_new_time_the_heartbeat():
    after = running_checkpoint().moved(T, "B").moved(T)
    assert after.cameras == {} and after.rewound == frozenset()
    assert after.through == T and after.earliest() == T
    assert after.position("A") == after.position("B") == Position(T, 0)
    assert after.backfill == running_checkpoint().backfill  # kept: `reset --camera-id` goes back to its start


def test_setting_every_camera_past_an_unfinished_backfill_finishes_it():
    unfinished = Checkpoint(through=START + timedelta(hours=1), backfill=Backfill(START, T))
    assert unfinished.moved(T - timedelta(hours=1)).backfill == Backfill(START, T)  # the rest still to do
    assert unfinished.moved(T + timedelta(seconds=1)).backfill == Backfill(START, T, complete=True)


def test_the_backfill_source_publishes_the_rewound_camera_from_the_new_time_only():
    """The sources ask `position()` per camera: B's entries from T on come again, A's do not."""

    def raw(person: str, at: datetime) -> str:
        return f"{person} @ {at:%H:%M:%S %d/%m/%y}"

    reply = {
        "A": [raw("ann", T + timedelta(minutes=1))],
        "B": [
            raw("bob", T - timedelta(seconds=1)),
            raw("bob", T),
            raw("eve", T),
            raw("bob", T + timedelta(minutes=2)),
        ],
    }
    resume = running_checkpoint().moved(T, "B")
    batches = list(number_listing(reply, None, None, resume=resume, batch_events=1))
    published = [
        (e.camera_id, e.fields["person"], b.positions[e.camera_id]) for b in batches for e in b.events
    ]
    assert published == [
        ("B", "bob", (T, 1)),
        ("B", "eve", (T, 2)),
        ("B", "bob", (T + timedelta(minutes=2), 1)),
    ]


# -- the bridge's tracker carries the rewind, and ends it -------------------------------------------


def settle(tracker: AckTracker, camera: str, at: datetime, n: int = 1) -> None:
    tracker.acknowledged(tracker.issue({camera: (at, n)}, 1))


def test_the_rewind_survives_saves_until_a_heartbeat_at_or_past_the_old_one():
    tracker = AckTracker(running_checkpoint().moved(T, "B"))
    settle(tracker, "B", T + timedelta(minutes=1))
    saved = tracker.checkpoint  # what a save during the republish writes
    assert saved.rewound == {"B"} and saved.position("B") == Position(T + timedelta(minutes=1), 1)
    assert saved.through == HEARTBEAT
    tracker.barrier(HEARTBEAT - timedelta(minutes=1))  # a backfill window before the old heartbeat
    assert tracker.checkpoint.rewound == {"B"}, "B is not read up to the heartbeat yet"
    tracker.barrier(HEARTBEAT)
    after = tracker.checkpoint
    assert after.rewound == frozenset() and after.through == HEARTBEAT
    assert after.position("B") == Position(HEARTBEAT, 0)  # read through: the heartbeat holds for B again


def test_a_barrier_waits_for_the_rewound_cameras_events_before_it():
    tracker = AckTracker(running_checkpoint().moved(T, "B"))
    ticket = tracker.issue({"B": (T + timedelta(minutes=1), 1)}, 1)
    tracker.barrier(HEARTBEAT + timedelta(minutes=1))
    assert tracker.checkpoint.rewound == {"B"}  # B's event before the barrier is not acknowledged yet
    tracker.acknowledged(ticket)
    assert tracker.checkpoint.rewound == frozenset()
    assert tracker.checkpoint.through == HEARTBEAT + timedelta(minutes=1)


def test_a_finished_backfill_ends_the_rewind():
    unfinished = Checkpoint(
        cameras={"B": Position(START + timedelta(hours=3), 1)},
        through=START + timedelta(hours=4),
        backfill=Backfill(START, T),
    ).moved(START + timedelta(hours=1), "B")
    tracker = AckTracker(unfinished)
    assert tracker.checkpoint.rewound == {"B"}
    tracker.set_backfill(Backfill(START, T, complete=True), through=T)
    assert tracker.checkpoint.rewound == frozenset() and tracker.checkpoint.through == T
