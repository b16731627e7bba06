"""Peak memory of the client reading a 1,000,000-entry range: streamed vs. loaded at once.

    .venv/bin/python bench/client_stream_memory.py [--entries 1000000] [--target 20000]

Starts `facespace-bridge simulate` (frozen clock, 4 cameras, 48 h of history) as its own
process, then measures each way of reading the range in a fresh child process, so each
figure is the client's alone:

- stream: `AsyncLogsAPI.iter_entries` over the range (windows of ~`--target` entries);
- whole (baseline): `LogsAPI.get_logs_range` over the same range, as the original client does.

Printed per mode: entries read, wall time, entries/s, peak RSS growth over the process's
RSS after imports (psutil + ru_maxrss), and the tracemalloc peak of a second, traced run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from datetime import datetime, timedelta, timezone

import psutil

NOW = datetime(2023, 10, 25, tzinfo=timezone.utc)
START = datetime(2023, 10, 1, tzinfo=timezone.utc)
HOURS, CAMERAS = 48, 4
KEY = "bench-key"
MiB = 1024 * 1024


def child(mode: str, url: str, target: int, traced: bool) -> None:
    """Read the range one way and print one JSON line of figures."""
    from facespace_bridge import AsyncLogsAPI, LogsAPI

    gc.collect()
    base_rss = psutil.Process().memory_info().rss
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    if mode == "stream":

        async def run() -> int:
            count = 0
            async with AsyncLogsAPI(KEY, base_url=url, timeout=120) as api:
                async for _entry in api.iter_entries(START, NOW, target_entries=target):
                    count += 1
            return count

        count = asyncio.run(run())
    else:
        with LogsAPI(KEY, base_url=url, timeout=120) as api:
            logs = api.get_logs_range(START, NOW - timedelta(seconds=1))  # a datetime end is inclusive
            count = sum(map(len, logs.values()))
    elapsed = time.perf_counter() - started
    figures = {"mode": mode, "entries": count, "seconds": elapsed}
    if traced:
        figures["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    else:
        figures["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    print(json.dumps(figures))


def measure(mode: str, url: str, target: int, traced: bool) -> dict[str, float]:
    args = [sys.executable, __file__, "--child", mode, "--url", url, "--target", str(target)]
    if traced:
        args.append("--traced")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--target", type=int, default=20_000, help="target_entries of a window")
    parser.add_argument("--child", choices=["stream", "whole"])
    parser.add_argument("--url")
    parser.add_argument("--traced", action="store_true")
    options = parser.parse_args()
    if options.child:
        child(options.child, options.url, options.target, options.traced)
        return

    from facespace_bridge.simulator import SimulatorProcess

    server = SimulatorProcess(
        KEY, seed=7, cameras=CAMERAS, history_hours=HOURS, speed=0, now=NOW,
        visits_per_hour=options.entries / (HOURS * CAMERAS),
    ).start()  # fmt: skip
    try:
        url = server.base_url
        measure("whole", url, options.target, traced=False)  # warm the simulator's cache first
        rows = []
        for mode in ("stream", "whole"):
            plain = measure(mode, url, options.target, traced=False)
            traced = measure(mode, url, options.target, traced=True)
            rows.append((mode, plain, traced))
    finally:
        server.stop()

    print(
        f"range {START:%Y-%m-%d} .. {NOW:%Y-%m-%d}, target_entries={options.target}, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores"
    )
    print(
        f"{'mode':<28} {'entries':>9} {'seconds':>8} {'entries/s':>10} {'RSS growth':>11} {'tracemalloc':>12}"
    )
    names = {"stream": "iter_entries (streamed)", "whole": "get_logs_range (baseline)"}
    for mode, plain, traced in rows:
        print(
            f"{names[mode]:<28} {plain['entries']:>9,} {plain['seconds']:>8.2f} "
            f"{plain['entries'] / plain['seconds']:>10,.0f} {plain['rss_growth'] / MiB:>8.1f} MiB "
            f"{traced['tracemalloc_peak'] / MiB:>8.1f} MiB"
        )


if __name__ == "__main__":
    main()
