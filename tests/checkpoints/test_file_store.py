from datetime import datetime, timezone

import pytest

from facespace_bridge.checkpoints import Backfill, Checkpoint, CheckpointError, FileCheckpointStore, Position

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
    # no temp file left behind
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["x.json"]


async def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        await FileCheckpointStore(path).load()
