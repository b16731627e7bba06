"""LogsSource on its own, against the simulator over HTTP: a fixed range gives the ground truth
once, after the resume positions, with barriers that follow the windows; the tail skips what
the resume positions cover, publishes an entry the API inserts late exactly once however often
it re-reads the look-back window, polls a camera at once when asked (`poll_soon`), and
reports a failing API in its health while it retries."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.client import AsyncLogsAPI, Window, format_entry
from facespace_bridge.events import parse_rfc3339
from facespace_bridge.simulator import SimulatorServer
from facespace_bridge.sources.base import Barrier, Batch
from facespace_bridge.sources.logs import LogsSource
from tests.fixtures.simulator import SIM_NOW
from tests.sources._helpers import until

Sightings = Counter[tuple[str, str, datetime]]


def sightings_of(batch: Batch) -> Sightings:
    found: Sightings = Counter()
    for event in batch.events:
        if event.kind == "sighting":
            payload = orjson.loads(event.payload)
            found[(event.camera_id, payload["person"], parse_rfc3339(payload["seen_at"]))] += 1
    return found


def truth(sim: SimulatorServer, start: datetime, end: datetime) -> Sightings:
    """The simulator's entries in [start, end) (its own `entries` takes both ends)."""
    return Counter(e for e in sim.world.entries(start, end) if e[2] < end)


def client_of(sim: SimulatorServer) -> AsyncLogsAPI:
    return AsyncLogsAPI(sim.api_key, base_url=sim.base_url, max_retries=1, retry_max_seconds=0.2)


@pytest.mark.parametrize("seconds", [0, 37], ids=["on-a-minute", "within-a-minute"])
async def test_a_range_is_the_ground_truth_once_after_the_resume_positions(
    simulator_factory, seconds
) -> None:
    """Also from a start within a minute: the API answers whole minutes, and what the first
    minute holds before the start is not in the range."""
    sim = simulator_factory(visits_per_hour=400)
    start, end = SIM_NOW - timedelta(hours=6, seconds=-seconds), SIM_NOW - timedelta(hours=1)
    expected = truth(sim, start, end)
    # Camera1 was published up to the whole second of its 50th entry in the range.
    cutoff = sorted(seen for camera, _, seen in expected.elements() if camera == "Camera1")[49]
    at_cutoff = sum(n for (camera, _, seen), n in expected.items() if camera == "Camera1" and seen == cutoff)
    resume = Checkpoint(cameras={"Camera1": Position(cutoff, at_cutoff)})
    got: Sightings = Counter()
    barriers: list[datetime] = []
    async with client_of(sim) as client:
        async for chunk in LogsSource(client).read_range(start, end, resume):
            if isinstance(chunk, Barrier):
                barriers.append(chunk.through)
            else:
                got += sightings_of(chunk)
    assert got == Counter({e: n for e, n in expected.items() if e[0] != "Camera1" or e[2] > cutoff})
    assert len(barriers) > 1 and barriers == sorted(barriers) and barriers[-1] == end


class Tail:
    """A LogsSource's tail consumed in the background; what it handed over, per poll."""

    def __init__(self, source: LogsSource, resume: Checkpoint) -> None:
        self.source = source
        self.got: Sightings = Counter()
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._consume(source.tail(resume, self.stop)))

    async def _consume(self, chunks: AsyncIterator[Batch | Barrier]) -> None:
        async for chunk in chunks:
            if isinstance(chunk, Batch):
                self.got += sightings_of(chunk)

    async def until(self, predicate: Callable[[], object], timeout: float = 20.0) -> None:
        await until(predicate, self.task, timeout)

    async def close(self) -> None:
        self.stop.set()
        self.source.poll_soon([])  # wake it
        await asyncio.wait_for(self.task, 10)


def resume_at_the_newest(sim: SimulatorServer) -> Checkpoint:
    """A checkpoint that covers every entry up to the simulator's now."""
    newest: dict[str, tuple[datetime, int]] = {}
    for camera, _, seen in sim.world.entries(SIM_NOW - timedelta(hours=2), SIM_NOW):
        at, count = newest.get(camera, (seen, 0))
        newest[camera] = (seen, count + 1) if seen == at else (seen, 1)
    return Checkpoint(cameras={c: Position(*p) for c, p in newest.items()}, through=SIM_NOW)


async def test_the_tail_publishes_a_late_entry_once_and_nothing_the_resume_covers(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=120)
    async with client_of(sim) as client:
        source = LogsSource(client, tail_interval=0.1, lateness=timedelta(minutes=2), clock=lambda: SIM_NOW)
        tail = Tail(source, resume_at_the_newest(sim))
        try:
            await tail.until(lambda: source.polls >= 2)
            assert tail.got == Counter()  # the look-back window was published before
            late = sim.insert("Camera2", "Late Comer", SIM_NOW - timedelta(seconds=40))
            await tail.until(lambda: bool(tail.got))
            polls = source.polls
            await tail.until(lambda: source.polls >= polls + 3)  # re-read three more times
            assert tail.got == Counter({("Camera2", "Late Comer", late): 1})
        finally:
            await tail.close()


async def test_poll_soon_polls_a_camera_before_the_next_regular_poll(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=120)
    async with client_of(sim) as client:
        source = LogsSource(client, tail_interval=3600, refresh=0.05, clock=lambda: SIM_NOW)
        tail = Tail(source, resume_at_the_newest(sim))
        try:
            await tail.until(lambda: source.polls == 1)
            seen = sim.insert("TestCamera", "In View", SIM_NOW)
            source.poll_soon(["TestCamera"])
            await tail.until(lambda: source.quick_polls == 1)
            assert tail.got == Counter({("TestCamera", "In View", seen): 1})
            assert source.polls == 1  # the regular poll is an hour away
        finally:
            await tail.close()


async def test_a_failing_api_shows_in_the_health_and_the_tail_retries(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=60)
    sim.set_faults(error_rate=1.0)
    async with client_of(sim) as client:
        source = LogsSource(client, tail_interval=0.1, clock=lambda: SIM_NOW)
        tail = Tail(source, resume_at_the_newest(sim))
        try:
            await tail.until(lambda: source.health.state == "failing")
            assert source.polls == 0 and "GET /logs: HTTP 50" in str(source.health.last_error)
            sim.reset_faults()
            await tail.until(lambda: source.health.state == "polling" and source.polls >= 1)
        finally:
            await tail.close()


# -- an open range's window (end None) ------------------------------------------------------------


OPEN_T0 = datetime(2023, 10, 23, 10, 0, tzinfo=timezone.utc)


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
    return [item async for item in source.read_range(OPEN_T0, None, Checkpoint())]


async def test_an_open_range_ends_its_barrier_after_the_newest_entry_read() -> None:
    newest = OPEN_T0 + timedelta(minutes=7, seconds=12)
    reply = {
        "C1": [format_entry("Alice", OPEN_T0 + timedelta(seconds=5)), format_entry("Bob", newest)],
        "C2": [format_entry("Carl", OPEN_T0 + timedelta(minutes=3))],
    }
    *batches, barrier = await _read(reply)
    assert sum(len(b.events) for b in batches if isinstance(b, Batch)) == 3  # nothing filtered
    assert barrier == Barrier(newest + timedelta(seconds=1))


async def test_an_empty_open_range_ends_its_barrier_at_its_start() -> None:
    assert await _read({"C1": []}) == [Barrier(OPEN_T0)]
