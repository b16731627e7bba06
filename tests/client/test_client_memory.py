"""A large range streamed through `iter_entries` stays in bounded memory (measured, generous).

The simulator runs as its own process (`facespace-bridge simulate`), so the measurement
(tracemalloc, this process) is the client's memory alone.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest

from facespace_bridge import AsyncLogsAPI
from facespace_bridge.client import LogEntry
from facespace_bridge.simulator import SimulatorProcess, World, WorldConfig

UTC = timezone.utc
MiB = 1024 * 1024
NOW = datetime(2023, 10, 25, tzinfo=UTC)
HOURS, CAMERAS, ENTRIES = 48, 4, 300_000
KEY = "memory-test-key"


@pytest.fixture
def simulator_process() -> Iterator[str]:
    """`facespace-bridge simulate` in a child process; yields its base URL."""
    with SimulatorProcess(
        KEY, seed=7, cameras=CAMERAS, history_hours=HOURS, speed=0,
        visits_per_hour=ENTRIES / (HOURS * CAMERAS), now=NOW,
    ) as simulator:  # fmt: skip
        yield simulator.base_url


async def test_large_range_streams_in_bounded_memory(simulator_process: str) -> None:
    start, end = datetime(2000, 1, 1, tzinfo=UTC), NOW  # from far before the first entry
    world = World(
        WorldConfig(
            seed=7,
            cameras=CAMERAS,
            history_hours=HOURS,
            now=NOW,
            speed=0,
            visits_per_hour=ENTRIES / (HOURS * CAMERAS),
        )
    )
    total = world.count(start, end - timedelta(seconds=1))  # the same deterministic world: ground truth
    del world
    assert total >= 0.95 * ENTRIES

    async with AsyncLogsAPI(KEY, base_url=simulator_process) as api:
        gc.collect()
        tracemalloc.start()
        try:
            count = 0
            async for entry in api.iter_entries(start, end, target_entries=20_000):
                assert isinstance(entry, LogEntry)
                count += 1
            streamed_peak = tracemalloc.get_traced_memory()[1]

            # The same range held at once, as get_logs_range must: the reference size.
            tracemalloc.reset_peak()
            whole = await api.get_logs_range(start, end - timedelta(seconds=1))
            whole_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert count == total == sum(map(len, whole.values()))
    print(f"streamed {count} entries: peak {streamed_peak / MiB:.1f} MiB; whole {whole_peak / MiB:.1f} MiB")
    assert streamed_peak < 32 * MiB
    assert streamed_peak * 3 < whole_peak
