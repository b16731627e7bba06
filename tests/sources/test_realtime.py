"""RealtimeSource on its own, against the simulator over HTTP: a presence per camera at the
first poll and then only when who is in view changes (what the simulator shows, arrivals and
departures included), recognition's flicker debounced away, the cameras that see someone
reported after every poll, the API's stop reply a pause rather than an error, and a refused
key the end of the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from facespace_bridge.client import APIKeyError, AsyncLogsAPI
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.simulator import STOP_MESSAGE, SimulatorServer
from facespace_bridge.sources.base import Batch
from facespace_bridge.sources.realtime import RealtimeSource
from tests.sources._helpers import until


class Run:
    """A RealtimeSource's batches consumed in the background."""

    def __init__(self, source: RealtimeSource) -> None:
        self.source = source
        self.batches: list[list[dict]] = []
        self.in_view: list[list[str]] = []
        source.on_in_view = self.in_view.append
        self.stop = asyncio.Event()
        self.task = asyncio.ensure_future(self._consume(source.run(self.stop)))

    async def _consume(self, batches: AsyncIterator[Batch]) -> None:
        async for batch in batches:
            self.batches.append([orjson.loads(e.payload) for e in batch.events])

    async def until(self, predicate: Callable[[], object], timeout: float = 20.0) -> None:
        await until(predicate, self.task, timeout)

    async def polls(self, count: int) -> None:
        """Until `count` more polls were made."""
        target = self.source.polls + count
        await self.until(lambda: self.source.polls >= target)

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 10)

    def events(self) -> list[dict]:
        return [event for batch in self.batches for event in batch]


def client_of(sim: SimulatorServer, key: str | None = None) -> AsyncLogsAPI:
    return AsyncLogsAPI(key or sim.api_key, base_url=sim.base_url, max_retries=1, retry_max_seconds=0.2)


def shown(events: list[dict]) -> dict[str, list[str]]:
    """Each camera's people as its newest presence event says."""
    return {e["camera_id"]: sorted(e["people"]) for e in events}


async def test_presence_follows_who_the_cameras_see(simulator_factory) -> None:
    sim = simulator_factory(cameras=4, people=10, visits_per_hour=120)
    async with client_of(sim) as client:
        run = Run(RealtimeSource(client, refresh=0.02, presence_timeout=0))
        try:
            await run.polls(3)
            first = run.events()
            before = sim.world.present()
            # One presence per camera at the first poll (empty ones too), then nothing new.
            assert sorted(e["camera_id"] for e in first) == sorted(sim.world.cameras())
            assert shown(first) == {camera: sorted(people) for camera, people in before.items()}
            assert sorted(run.in_view[-1]) == sorted(c for c, p in before.items() if p)
            for _ in range(200):  # time passes until someone comes or goes
                sim.advance(30)
                if sim.world.present() != before:
                    break
            after = sim.world.present()
            count = len(run.events())
            await run.until(lambda: len(run.events()) > count)
            await run.polls(2)
            changes = run.events()[count:]
            assert shown(changes) == {
                c: sorted(p) for c, p in after.items() if sorted(p) != sorted(before[c])
            }
            for event in changes:
                old, new = set(before[event["camera_id"]]), set(after[event["camera_id"]])
                assert (set(event["arrived"]), set(event["departed"])) == (new - old, old - new)
        finally:
            await run.close()


async def test_a_filter_keeps_cameras_and_people_out_of_presence(simulator_factory) -> None:
    """A camera left out has no presence at all; a person left out is in no camera's list, and a
    camera that sees only them is not in view (no quick poll)."""
    companion = "Zoe\u0308 Companion"  # decomposed, as an API may send it; excluded composed
    sim = simulator_factory(cameras=4, people=10, visits_per_hour=300, companion=companion)
    entry_filter = EntryFilter(exclude_cameras=["Camera4"], exclude_people=["Zoë Companion"])
    present = sim.world.present()
    assert any(companion in people for camera, people in present.items() if camera != "Camera4")
    async with client_of(sim) as client:
        run = Run(RealtimeSource(client, refresh=0.02, presence_timeout=0, entry_filter=entry_filter))
        try:
            await run.polls(3)
            events = run.events()
            expected = {c: sorted(p for p in people if p != companion) for c, people in present.items()}
            del expected["Camera4"]
            assert shown(events) == expected
            assert all(companion not in e["arrived"] + e["departed"] for e in events)
            assert sorted(run.in_view[-1]) == sorted(c for c, p in expected.items() if p)
        finally:
            await run.close()


async def test_flicker_is_debounced_by_the_presence_timeout(simulator_factory) -> None:
    sim = simulator_factory(cameras=3, people=10, visits_per_hour=300)
    async with client_of(sim) as client:
        run = Run(RealtimeSource(client, refresh=0.02, presence_timeout=3600))
        try:
            await run.polls(2)
            assert any(run.in_view[-1])  # someone is in view, so there is something to flicker
            settled = len(run.events())
            sim.set_faults(flicker_rate=0.5)  # each person missed in half the replies
            await run.polls(30)
            assert len(run.events()) == settled
        finally:
            await run.close()


async def test_the_stop_reply_pauses_presence_and_is_no_error(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=60)
    sim.set_faults(stop_signal=True)
    async with client_of(sim) as client:
        source = RealtimeSource(client, refresh=0.02)
        run = Run(source)
        try:
            await run.until(lambda: source.health.state == "stopped")
            assert (source.health.stop_reason, source.health.last_error) == (STOP_MESSAGE, None)
            sim.reset_faults()
            await run.until(lambda: source.health.state == "polling" and bool(run.events()))
            assert sorted({e["camera_id"] for e in run.events()}) == sorted(sim.world.cameras())
        finally:
            await run.close()


async def test_a_refused_key_ends_the_run(simulator_factory) -> None:
    sim = simulator_factory()
    async with client_of(sim, key="wrong-key") as client:
        with pytest.raises(APIKeyError):
            async for _ in RealtimeSource(client, refresh=0.02).run(asyncio.Event()):
                pass
