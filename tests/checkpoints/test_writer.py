"""CheckpointWriter on its own: a change saved after `save_delay` with what was acknowledged
meanwhile (one write), at once when `max_unsaved` events wait, at least every `heartbeat`; a
failed save logged and retried on the next change; with a transactional sink every save a
commit that waits for what is in flight; the final save bounded by the shutdown budget."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import pytest

from facespace_bridge.checkpoints import Checkpoint, CheckpointError, CheckpointStore, Position
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.checkpoints.writer import CheckpointWriter

T0 = datetime(2023, 10, 23, 12, 0, tzinfo=timezone.utc)


class MemoryStore(CheckpointStore):
    """Keeps what is saved; `failures` saves raise first; `hang` blocks saves."""

    def __init__(self, failures: int = 0, hang: bool = False) -> None:
        self.saved: list[Checkpoint] = []
        self.failures = failures
        self.hang = hang
        self.wrote = asyncio.Event()

    async def load(self) -> Checkpoint | None:
        return self.saved[-1] if self.saved else None

    async def save(self, checkpoint: Checkpoint) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.failures:
            self.failures -= 1
            raise CheckpointError("disk full")
        self.saved.append(checkpoint)
        self.wrote.set()

    async def writes(self, count: int, timeout: float = 5.0) -> None:
        async def reached() -> None:
            while len(self.saved) < count:
                self.wrote.clear()
                await self.wrote.wait()

        await asyncio.wait_for(reached(), timeout)


def at(second: int) -> tuple[datetime, int]:
    return (T0 + timedelta(seconds=second), 1)


@contextlib.asynccontextmanager
async def running(writer: CheckpointWriter) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.ensure_future(writer.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        writer.tracker.changed.set()
        await asyncio.wait_for(task, 5)


async def test_a_change_is_saved_once_with_what_was_acknowledged_meanwhile() -> None:
    tracker, store = AckTracker(Checkpoint()), MemoryStore()
    writer = CheckpointWriter(store, tracker, heartbeat=60, save_delay=0.3)
    tickets = [tracker.issue({"Door": at(s)}, 1) for s in range(3)]
    async with running(writer):
        for ticket in tickets:  # within the save delay of the first
            tracker.acknowledged(ticket)
            await asyncio.sleep(0)
        await store.writes(1)
        assert store.saved[0].cameras == {"Door": Position(*at(2))}  # one write for all three
        assert tracker.unsaved == 0
        tracker.acknowledged(tracker.issue({"Door": at(3)}, 1))
        await store.writes(2)
    assert [c.cameras["Door"] for c in store.saved[:2]] == [Position(*at(2)), Position(*at(3))]


async def test_max_unsaved_events_are_saved_without_waiting_for_the_delay() -> None:
    tracker, store = AckTracker(Checkpoint(), max_unsaved=2), MemoryStore()
    writer = CheckpointWriter(store, tracker, heartbeat=600, save_delay=600)
    async with running(writer):
        tracker.acknowledged(tracker.issue({"Door": at(1)}, 2))
        await store.writes(1)  # long before the 600 s delay
        assert not tracker.full


async def test_the_heartbeat_saves_while_nothing_changes() -> None:
    tracker, store = AckTracker(Checkpoint(through=T0)), MemoryStore()
    seen: list[Checkpoint] = []
    writer = CheckpointWriter(store, tracker, heartbeat=0.05, save_delay=0.01, on_saved=seen.append)
    async with running(writer):
        await store.writes(3)
    assert all(c.through == T0 for c in store.saved) and seen[:3] == store.saved[:3]


async def test_a_failed_save_is_logged_and_the_next_one_carries_the_checkpoint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker, store = AckTracker(Checkpoint()), MemoryStore(failures=1)
    writer = CheckpointWriter(store, tracker, heartbeat=0.05, save_delay=0.01)
    async with running(writer):
        tracker.acknowledged(tracker.issue({"Door": at(1)}, 1))
        await store.writes(1)
    assert store.saved[0].cameras == {"Door": Position(*at(1))}
    assert "disk full" in caplog.text


class Transactions:
    """A transactional sink as the writer sees it: what happened, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    @contextlib.asynccontextmanager
    async def transaction_boundary(self) -> AsyncIterator[None]:
        self.log.append("pause and flush")
        yield
        self.log.append("commit")

    async def write_in_transaction(self, topic: str, key: bytes, value: bytes | None) -> None:
        raise AssertionError("the store writes into the transaction, not the writer")


async def test_with_transactions_a_save_is_a_commit_after_everything_in_flight() -> None:
    tracker, transactions = AckTracker(Checkpoint()), Transactions()

    class Store(MemoryStore):
        async def save(self, checkpoint: Checkpoint) -> None:
            transactions.log.append(f"checkpoint {sorted(checkpoint.cameras)}")
            await super().save(checkpoint)

    store = Store()
    writer = CheckpointWriter(store, tracker, transactional=transactions, heartbeat=600)  # type: ignore[arg-type]
    late = tracker.issue({"Gate": at(1)}, 1)
    tracker.acknowledged(tracker.issue({"Door": at(1)}, 1))
    saving = asyncio.ensure_future(writer.save())
    for _ in range(20):  # everything the save can do without Gate's acknowledgement
        await asyncio.sleep(0)
    assert transactions.log == ["pause and flush"] and not saving.done()  # waits for Gate's batch
    tracker.acknowledged(late)
    await asyncio.wait_for(saving, 5)
    assert transactions.log == ["pause and flush", "checkpoint ['Door', 'Gate']", "commit"]
    assert tracker.unsaved == 0


async def test_the_final_save_is_bounded_by_the_shutdown_budget() -> None:
    writer = CheckpointWriter(MemoryStore(hang=True), AckTracker(Checkpoint()))
    with pytest.raises(CheckpointError, match=r"could not be saved at shutdown within 0\.1 s"):
        await writer.final_save(0.1)
