import asyncio
import os
from datetime import datetime, timezone

import orjson
import pytest

from facespace_bridge.checkpoints import (
    Backfill,
    Checkpoint,
    CheckpointError,
    CheckpointInUse,
    FileCheckpointStore,
    Position,
)
from facespace_bridge.checkpoints import file as file_store

T = datetime(2023, 10, 23, 10, 0, 5, tzinfo=timezone.utc)


def test_position_orders_by_time_then_count():
    assert Position(T, 2) > Position(T, 1)
    assert Position(T.replace(second=6), 0) > Position(T, 99)


def test_resume_point_is_the_later_of_own_position_and_heartbeat():
    later = T.replace(minute=5)
    cp = Checkpoint(cameras={"A": Position(T, 3)}, through=later)
    assert cp.position("A") == Position(later, 0)
    assert cp.position("B") == Position(later, 0)
    cp = Checkpoint(cameras={"A": Position(later, 3)}, through=T)
    assert cp.position("A") == Position(later, 3)
    assert cp.position("B") == Position(T, 0)
    assert cp.earliest() == T


def test_checkpoint_bytes_round_trip():
    cp = Checkpoint(
        cameras={"Cam/1": Position(T, 2), "Zoë": Position(T, 1)},
        through=T,
        backfill=Backfill(T.replace(hour=0), T, complete=False),
    )
    assert Checkpoint.from_bytes(cp.to_bytes()) == cp


async def test_file_store_saves_atomically_and_loads(tmp_path):
    store = FileCheckpointStore(tmp_path / "state" / "x.json")
    await store.open()
    assert await store.load() is None
    cp = Checkpoint(cameras={"A": Position(T, 1)}, through=T)
    await store.save(cp)
    await store.save(Checkpoint(cameras={"A": Position(T, 2)}, through=T))
    assert (await store.load()).cameras["A"] == Position(T, 2)
    await store.close()
    # no temp file left behind (the lock file stays: see test_the_lock_file_stays_and_is_reused)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [".x.json.lock", "x.json"]


async def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        await FileCheckpointStore(path).load()


# -- the lock: one process at a time has a checkpoint file open --------------------------------------


@pytest.fixture
def short_lock_wait(monkeypatch):
    """open() gives up on a held lock after 0.2 s instead of 2 s (what it waits for is the same)."""
    monkeypatch.setattr(file_store, "LOCK_WAIT", 0.2)


async def test_a_second_store_on_the_same_file_is_refused_while_the_first_is_open(tmp_path, short_lock_wait):
    path = tmp_path / "x.json"
    first, second = FileCheckpointStore(path), FileCheckpointStore(path)
    assert first.holder() is None  # never opened: no lock file yet
    await first.open()
    try:
        assert first.holder() == f"pid {os.getpid()}"
        with pytest.raises(
            CheckpointInUse, match=rf"in use by pid {os.getpid()}, which holds .*\.x\.json\.lock"
        ):
            await second.open()
        await first.save(Checkpoint(through=T))  # the holder still writes
    finally:
        await first.close()
    assert first.holder() is None
    await second.open()  # free again
    try:
        assert (await second.load()) == Checkpoint(through=T)
    finally:
        await second.close()


async def test_open_waits_out_a_brief_holder(tmp_path, short_lock_wait):
    """A `checkpoint set` (or the probe of `checkpoint show`) holds the lock for a moment: a
    bridge starting meanwhile waits for it instead of failing."""
    path = tmp_path / "x.json"
    brief = FileCheckpointStore(path)
    await brief.open()

    async def release_soon() -> None:
        await asyncio.sleep(0.05)
        await brief.close()

    releaser = asyncio.create_task(release_soon())
    starting = FileCheckpointStore(path)
    await starting.open()
    await releaser
    assert starting.holder() == f"pid {os.getpid()}"
    await starting.close()


async def test_the_lock_file_stays_and_is_reused(tmp_path):
    path = tmp_path / "x.json"
    for _ in range(2):
        store = FileCheckpointStore(path)
        await store.open()
        await store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.json.lock"]


async def test_forget_removes_the_checkpoint(tmp_path):
    store = FileCheckpointStore(tmp_path / "x.json")
    await store.open()
    try:
        await store.save(Checkpoint(through=T))
        await store.forget()
        assert await store.load() is None
        await store.forget()  # nothing left to remove: fine
    finally:
        await store.close()


# -- the format: rewound cameras, and files written before they existed -----------------------------


def test_a_checkpoint_written_before_rewound_cameras_existed_still_loads():
    old = (
        b'{"version":1,"cameras":{"A":{"seen_at":"2023-10-23T10:00:05Z","count":2}},'
        b'"through":"2023-10-23T10:01:00Z","backfill":{"start":"2023-10-23T00:00:00Z",'
        b'"t0":"2023-10-23T10:00:00Z","complete":true},"written_at":"2023-10-23T10:01:02Z"}'
    )
    checkpoint = Checkpoint.from_bytes(old)
    assert checkpoint.cameras == {"A": Position(T, 2)}
    assert checkpoint.rewound == frozenset() and checkpoint.written_by == "bridge"
    assert checkpoint.written_at == T.replace(minute=1, second=2)
    assert checkpoint.position("A") == Position(T.replace(minute=1, second=0), 0)  # the heartbeat, as before


def test_rewound_cameras_and_the_writer_round_trip():
    cp = Checkpoint(
        cameras={"A": Position(T, 2), "B": Position(T, 0)},
        through=T.replace(hour=11),
        rewound=frozenset({"B"}),
        written_by="checkpoint set",
    )
    loaded = Checkpoint.from_bytes(cp.to_bytes())
    assert loaded == cp and loaded.written_by == "checkpoint set"
    assert orjson.loads(cp.to_bytes())["rewound"] == ["B"]
