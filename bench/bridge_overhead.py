"""What the bridge's bookkeeping costs per event, with no network: the backfill path (LogsSource
numbering → Bridge.publish → ack groups → tracker → checkpoint writes) against replay's path
(`publish_windows`) over the same windows into the same in-memory sink, in one process.

    .venv/bin/python bench/bridge_overhead.py [--count 500000] [--rounds 3] [--profile FILE]

`bench/bridge_backfill.py` measures the real thing end to end (simulator, HTTP, Tansu); this
one isolates the CPU the bridge adds to a replay, so a change to the hot path can be judged
in seconds and with little noise. The sink acknowledges in batches of 500 records, at most
16,000 unacknowledged (the Kafka sink's defaults), one future per batch as the Kafka sink
does. The checkpoint goes to a real file (atomic write + fsync), or to memory (`store=memory`
rows), which separates the file's cost from the rest. CPU seconds are `time.process_time()`.
The GC thresholds are those of the `run` and `replay` commands unless `--default-gc`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import random
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import Checkpoint, CheckpointStore, FileCheckpointStore
from facespace_bridge.client import LogEntry, Window
from facespace_bridge.client.entries import format_entry
from facespace_bridge.commands._common import tune_gc
from facespace_bridge.commands.replay import publish_windows
from facespace_bridge.events import Event
from facespace_bridge.sinks import Sink

BATCH = 500
MAX_IN_FLIGHT = 16_000
WINDOW_ENTRIES = 20_000


class BatchSink(Sink):
    """Acknowledges records a batch at a time, the oldest batch first, as a broker would."""

    name = "memory"

    def __init__(self) -> None:
        self.count = 0
        self._batch: asyncio.Future[None] | None = None
        self._in_batch = 0
        self._pending: deque[asyncio.Future[None]] = deque()
        self._drain_pending = False

    async def publish(self, event: Event) -> asyncio.Future[None]:
        if self._batch is None:
            loop = asyncio.get_running_loop()
            self._batch = loop.create_future()
            self._in_batch = 0
            loop.call_soon(self._send)  # like the Kafka sink: a batch goes when the publisher yields
        ack = self._batch
        self._in_batch += 1
        self.count += 1
        if self._in_batch == BATCH:
            self._send()
            await asyncio.sleep(0)  # the event loop runs the ack callbacks, as with a socket
        return ack

    def _send(self) -> None:
        """The open batch is "sent"; the broker acks the oldest beyond the in-flight limit at
        once and the rest within a few milliseconds."""
        if self._batch is not None:
            self._pending.append(self._batch)
            self._batch = None
        while len(self._pending) * BATCH > MAX_IN_FLIGHT:
            self._pending.popleft().set_result(None)
        if self._pending and not self._drain_pending:
            self._drain_pending = True
            asyncio.get_running_loop().call_later(0.005, self._drain)

    def _drain(self) -> None:
        self._drain_pending = False
        while self._pending:
            self._pending.popleft().set_result(None)

    async def flush(self) -> None:
        self._send()
        self._drain()
        await asyncio.sleep(0)


class MemoryStore(CheckpointStore):
    def __init__(self) -> None:
        self.saved: Checkpoint | None = None

    async def load(self) -> Checkpoint | None:
        return self.saved

    async def save(self, checkpoint: Checkpoint) -> None:
        self.saved = checkpoint

    def describe(self) -> str:
        return "memory"


def make_windows(count: int, t0: datetime) -> list[Window]:
    """About `count` sightings of 10 cameras over the 48 h before t0, in minute-aligned windows."""
    rng = random.Random(7)
    people = [f"Person {i}" for i in range(200)]
    start = t0 - timedelta(hours=48)
    seconds = sorted(rng.randrange(48 * 3600) for _ in range(count))
    by_camera: dict[str, list[datetime]] = {f"Camera{c}": [] for c in range(10)}
    for second in seconds:
        by_camera[f"Camera{rng.randrange(10)}"].append(start + timedelta(seconds=second))
    per_window = timedelta(seconds=48 * 3600 * WINDOW_ENTRIES // count // 60 * 60 or 60)
    windows = []
    lo = start
    while lo < t0:
        hi = min(lo + per_window, t0)
        entries = []
        for camera, stamps in by_camera.items():
            for seen_at in stamps:
                if lo <= seen_at < hi:
                    person = rng.choice(people)
                    entries.append(LogEntry(camera, person, seen_at, format_entry(person, seen_at)))
        windows.append(Window(lo, hi, entries))
        lo = hi
    return windows


class WindowsClient:
    """Just enough of AsyncLogsAPI for the backfill: the prepared windows, then nothing to tail."""

    def __init__(self, windows: list[Window], stop: asyncio.Event) -> None:
        self.windows = windows
        self.stop = stop

    async def iter_windows(
        self, start: datetime, end: datetime | None, camera_id: str | None = None, **_: object
    ) -> AsyncIterator[Window]:
        if end is None:  # the tail: the backfill is done
            self.stop.set()
            return
        for window in self.windows:
            yield window


async def run_replay(windows: list[Window]) -> int:
    async def source() -> AsyncIterator[Window]:
        for window in windows:
            yield window

    sink = BatchSink()
    tally = await publish_windows(source(), [sink])
    return tally.entries


async def run_backfill(windows: list[Window], t0: datetime, store: CheckpointStore) -> int:
    stop = asyncio.Event()
    sink = BatchSink()
    options = BridgeOptions(realtime=False, backfill_from=windows[0].start, heartbeat=60.0)
    bridge = Bridge(WindowsClient(windows, stop), [sink], store, options, clock=lambda: t0)  # type: ignore[arg-type]
    bridge.options.safety_lag = timedelta(0)
    await bridge.run(stop)
    return sink.count


def timed(label: str, work, profile: Path | None) -> tuple[float, int]:
    profiler = cProfile.Profile() if profile else None
    began = time.process_time()
    if profiler:
        profiler.enable()
    events = asyncio.run(work())
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").dump_stats(str(profile) + f".{label}")
    return time.process_time() - began, events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500_000, help="about this many sightings")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="cProfile each run into FILE.<label>")
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's GC thresholds (`run` and "
        "`replay` raise the young generation's, commands._common.tune_gc)",
    )
    options = parser.parse_args()
    if not options.default_gc:
        tune_gc()
    t0 = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    windows = make_windows(options.count, t0)
    total = sum(len(w.entries) for w in windows)
    print(f"{total:,} sightings in {len(windows)} windows", file=sys.stderr)
    rows: list[tuple[str, float, int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(options.rounds):
            path = Path(tmp) / f"{round_}.json"
            runs = [
                ("replay", lambda: run_replay(windows)),
                ("backfill, store=file", lambda p=path: run_backfill(windows, t0, FileCheckpointStore(p))),
                ("backfill, store=memory", lambda: run_backfill(windows, t0, MemoryStore())),
            ]
            if round_ % 2:
                runs.reverse()
            for label, work in runs:
                seconds, events = timed(label.split(",")[0] + str(round_), work, options.profile)
                assert events == total, (label, events, total)
                rows.append((label, seconds, events))
    replay = min(s for label, s, _ in rows if label == "replay")
    print("\n| path | events | CPU s | µs/event | extra µs/event over replay |")
    print("|---|---:|---:|---:|---:|")
    for label in ("replay", "backfill, store=file", "backfill, store=memory"):
        best = min(s for lbl, s, _ in rows if lbl == label)
        per_event, extra = best / total * 1e6, (best - replay) / total * 1e6
        print(f"| {label} | {total:,} | {best:.2f} | {per_event:.2f} | {extra:+.2f} |")
    print("\n(best of each over the rounds)")


if __name__ == "__main__":
    main()
