"""The history source's fixed range (`LogsSource.read_range`) over prepared windows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.client import Window, format_entry
from facespace_bridge.sources.base import Barrier, Batch
from facespace_bridge.sources.logs import LogsSource

T0 = datetime(2023, 10, 23, 10, 0, tzinfo=timezone.utc)


class OpenRangeClient:
    """The client's answer to a range without an end that fits one reply: one open window."""

    def __init__(self, reply: dict[str, list[str]]) -> None:
        self.reply = reply

    async def iter_windows(
        self, start: datetime, end: datetime | None, *_: object, **__: object
    ) -> AsyncIterator[Window]:
        assert end is None
        yield Window(start, None, self.reply)


async def _read(reply: dict[str, list[str]]) -> list[Batch | Barrier]:
    source = LogsSource(OpenRangeClient(reply))  # type: ignore[arg-type]
    return [item async for item in source.read_range(T0, None, Checkpoint())]


async def test_an_open_range_ends_its_barrier_after_the_newest_entry_read() -> None:
    newest = T0 + timedelta(minutes=7, seconds=12)
    reply = {
        "C1": [format_entry("Alice", T0 + timedelta(seconds=5)), format_entry("Bob", newest)],
        "C2": [format_entry("Carl", T0 + timedelta(minutes=3))],
    }
    *batches, barrier = await _read(reply)
    assert sum(len(b.events) for b in batches if isinstance(b, Batch)) == 3  # nothing filtered
    assert barrier == Barrier(newest + timedelta(seconds=1))


async def test_an_empty_open_range_ends_its_barrier_at_its_start() -> None:
    assert await _read({"C1": []}) == [Barrier(T0)]
