"""What the bridge's bookkeeping costs per event, with no network: the backfill path (the logs
source → publisher → tracker → checkpoint writes) against replay's (the same source and
publisher, no checkpoint: `commands.replay.publish_range`) over the same windows into the
same in-memory sink, in one process.

    .venv/bin/python bench/bridge_overhead.py [--count 500000] [--rounds 3] [--profile FILE]

`bench/bridge_backfill.py` measures the real thing end to end (simulator, HTTP, Tansu); this
one isolates the CPU the bridge adds to a replay, so a change to the hot path can be judged
in seconds and with little noise. The sink acknowledges each batch it is handed a few
milliseconds later, the oldest at once beyond 16,000 unacknowledged events (the Kafka
sink's in-flight default). The checkpoint goes to a real file (atomic write + fsync), or to
memory (`store=memory`
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
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import Checkpoint, CheckpointStore, FileCheckpointStore
from facespace_bridge.client import Window
from facespace_bridge.client.entries import format_entry
from facespace_bridge.commands._common import tune_gc
from facespace_bridge.commands.replay import _Progress, publish_range
from facespace_bridge.events import Event
from facespace_bridge.sinks import Sink
from facespace_bridge.sources.logs import LogsSource

MAX_IN_FLIGHT = 16_000
WINDOW_ENTRIES = 20_000


class BatchSink(Sink):
    """Acknowledges batches a few milliseconds after it got them, oldest first, as a broker would."""

    name = "memory"

    def __init__(self) -> None:
        self.count = 0
        self._pending: deque[tuple[asyncio.Future[None], int]] = deque()
        self._unacked = 0
        self._drain_pending = False

    async def publish(self, events: Sequence[Event]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        ack: asyncio.Future[None] = loop.create_future()
        self._pending.append((ack, len(events)))
        self._unacked += len(events)
        self.count += len(events)
        while self._unacked > MAX_IN_FLIGHT:
            self._ack_oldest()
        if not self._drain_pending:
            self._drain_pending = True
            loop.call_later(0.005, self._drain)
        await asyncio.sleep(0)  # the event loop runs the ack callbacks, as with a socket
        return ack

    def _ack_oldest(self) -> None:
        ack, count = self._pending.popleft()
        self._unacked -= count
        ack.set_result(None)

    def _drain(self) -> None:
        self._drain_pending = False
        while self._pending:
            self._ack_oldest()

    async def flush(self) -> None:
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
        reply = {
            camera: [format_entry(rng.choice(people), seen_at) for seen_at in stamps if lo <= seen_at < hi]
            for camera, stamps in by_camera.items()
        }
        windows.append(Window(lo, hi, reply))
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
    stop = asyncio.Event()
    sink = BatchSink()
    chunks = LogsSource(WindowsClient(windows, stop)).read_range(
        windows[0].start, windows[-1].end, Checkpoint()
    )  # type: ignore[arg-type]
    tally = await publish_range(chunks, [sink], _Progress(False, windows[0].start, windows[-1].end))
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
    total = sum(len(raws) for w in windows for raws in w.reply.values())
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
