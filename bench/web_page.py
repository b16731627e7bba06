"""Open web pages against the bridge: a backfill's rate with 10 pages open against none, in
the same run (target: >= 95 %), and the bridge's RSS with 10 pages open for 10 minutes
(target: flat).

    .venv/bin/python bench/web_page.py [--count 1000000] [--rounds 3] [--pages 10] [--soak-seconds 600]

A page here is what a browser's page does: a WebSocket to `api/live` that takes the snapshot
and then every update, as fast as they come (aiohttp, in a thread of this process).

1. Backfill. Starts Tansu (memory storage) and the simulator in its own process: a frozen
   world of about `--count` sightings in the 24 hours before its clock (10 cameras), its
   clock a minute behind real time, so the bridge's T0 lies after every entry. Each run is
   `facespace-bridge run --backfill-from <history start> --no-realtime --broker kafka
   --web-port P` with a fresh file checkpoint and topic, timed from spawn until the checkpoint
   says the backfill is complete; the pages connect as soon as the port answers (before the
   start-up history read and the backfill). Rows: no page open, `--pages` open, and, for
   reference, the same run without `--web-port` (no page, no start-up history read).
   `--rounds` alternates the order. Each topic is checked against the world's ground truth.
2. Soak. The simulator with a live clock (10 cameras, one sighting a second each) and the
   bridge tailing it with realtime on and `--web-port`; `--pages` pages open for
   `--soak-seconds`; the bridge's RSS every `--sample-seconds`, and what the pages received.

Not a timed test: it prints figures side by side. The 2 cores are shared by the bridge, the
simulator, the broker and these pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import aiohttp
import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    CLI,
    Probe,
    Profiler,
    admin,
    child_env,
    start_simulator,
    stop,
    topic_size,
    wait_until,
)
from bridge_backfill import backfill_complete, delete_topics, iso, kafka_flags

from facespace_bridge.embedded import TansuBroker, free_port

CAMERAS = 10
HOURS = 24
TARGET_SHARE = 0.95
RUN_TIMEOUT = 600.0


@dataclass
class PageCounts:
    messages: int = 0
    snapshots: int = 0
    received: int = 0  # bytes
    connects: int = 0


class Pages:
    """`count` pages reading `url`'s live feed, on a thread with its own event loop."""

    def __init__(self, url: str, count: int) -> None:
        self.url = url.rstrip("/") + "/api/live"
        self.counts = [PageCounts() for _ in range(count)]
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="pages", daemon=True)

    def start(self) -> Pages:
        if self.counts:
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    @property
    def total(self) -> PageCounts:
        return PageCounts(
            *(sum(getattr(c, name) for c in self.counts) for name in PageCounts.__annotations__)
        )

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            pages = [asyncio.create_task(self._page(http, counts)) for counts in self.counts]
            await self._stop.wait()
            for page in pages:
                page.cancel()
            await asyncio.gather(*pages, return_exceptions=True)

    async def _page(self, http: aiohttp.ClientSession, counts: PageCounts) -> None:
        while True:  # as the page does: reconnect after a second when the bridge is not there
            try:
                async with http.ws_connect(self.url, heartbeat=30) as ws:
                    counts.connects += 1
                    async for message in ws:
                        counts.messages += 1
                        counts.received += len(message.data)
                        if orjson.loads(message.data)["type"] == "snapshot":
                            counts.snapshots += 1
            except (aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(1.0)


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    cpu: float
    hwm_mb: float
    pages: PageCounts = field(default_factory=PageCounts)

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def bridge_command(api_url: str, bootstrap: str, topics: str, checkpoint: Path, web_port: int | None,
                   start: datetime | None) -> list[str]:  # fmt: skip
    command = [*CLI, "run", "--checkpoint", str(checkpoint), *kafka_flags(bootstrap, topics, "librdkafka")]
    if start is not None:
        command += ["--backfill-from", iso(start), "--no-realtime"]
    if web_port is not None:
        command += ["--web-port", str(web_port)]
    return command


def answering(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def backfill(api_url: str, tansu: TansuBroker, start: datetime, workdir: Path, name: str, pages: int,
             web: bool, truth: int, profiler: Profiler) -> Run:  # fmt: skip
    topics = f"bench.web.{name}"
    checkpoint = workdir / f"{name}.json"
    port = free_port() if web else None
    command = bridge_command(api_url, tansu.bootstrap, topics, checkpoint, port, start)
    log_path = workdir / f"{name}.log"
    began = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=child_env(api_url), stdout=log, stderr=subprocess.STDOUT)
    profiler.attach(process.pid, name)
    readers: Pages | None = None
    try:
        probe = Probe(process.pid)
        deadline = time.monotonic() + RUN_TIMEOUT
        hwm = 0.0
        while not backfill_complete(checkpoint):
            if process.poll() is not None:
                raise SystemExit(f"the bridge exited {process.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the backfill did not complete within {RUN_TIMEOUT:g} s")
            if readers is None and port is not None and pages and answering(port):
                readers = Pages(f"http://127.0.0.1:{port}/", pages).start()
            hwm = probe.usage().hwm_mb
            time.sleep(0.02)
        seconds = time.perf_counter() - began
        usage = probe.usage()
    finally:
        if readers is not None:
            readers.stop()
        code = stop(process)
    if code != 0:
        raise SystemExit(f"the bridge exited {code} at SIGTERM: {log_path.read_text()[-2000:]}")
    profiler.finish(f"{name} (until SIGTERM)")
    stored = asyncio.run(topic_size(tansu.bootstrap, f"{topics}.sightings"))
    if stored != truth:
        raise SystemExit(f"{name}: the topic holds {stored:,} sightings, the world {truth:,}")
    asyncio.run(
        delete_topics(tansu.bootstrap, [f"{topics}.{t}" for t in ("sightings", "presence", "deadletter")])
    )
    label = f"{pages} pages open" if web else "no --web-port (reference)"
    if web and not pages:
        label = "--web-port, no page open"
    return Run(
        label, stored, seconds, usage.cpu, max(hwm, usage.hwm_mb), readers.total if readers else PageCounts()
    )


def backfills(options: argparse.Namespace, tansu: TansuBroker, workdir: Path) -> list[Run]:
    sim_now = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = sim_now - timedelta(hours=HOURS)
    simulator, api_url = start_simulator([
        "--seed", "13", "--cameras", str(CAMERAS), "--people", "40", "--history-hours", str(HOURS),
        "--visits-per-hour", str(options.count / (CAMERAS * HOURS)), "--now", iso(sim_now), "--speed", "0",
    ])  # fmt: skip
    runs: list[Run] = []
    profiler = Profiler(options.profile)
    try:
        truth = int(
            admin(api_url, "GET", f"truth?start={iso(start)}&end={iso(sim_now)}&count_only=1")["count"]
        )
        print(f"backfill: {truth:,} sightings from {iso(start)} to {iso(sim_now)}", file=sys.stderr)
        kinds = [(0, True), (options.pages, True), (0, False)]
        for round_index in range(options.rounds):
            for pages, web in kinds if round_index % 2 == 0 else kinds[::-1]:
                name = f"r{round_index}-p{pages}-{'web' if web else 'plain'}"
                run = backfill(api_url, tansu, start, workdir, name, pages, web, truth, profiler)
                runs.append(run)
                print(f"  {run.name}: {run.rate:,.0f} events/s", file=sys.stderr)
    finally:
        stop(simulator)
    return runs


def soak(options: argparse.Namespace, tansu: TansuBroker, workdir: Path) -> None:
    simulator, api_url = start_simulator([
        "--seed", "17", "--cameras", str(CAMERAS), "--people", "40", "--history-hours", "24",
        "--visits-per-hour", "3600", "--speed", "1",
    ])  # fmt: skip
    port = free_port()
    command = bridge_command(api_url, tansu.bootstrap, "bench.web.soak", workdir / "soak.json", port, None)
    log_path = workdir / "soak.log"
    readers: Pages | None = None
    process: subprocess.Popen[bytes] | None = None
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(command, env=child_env(api_url), stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: answering(port), 120, what="the page")
        readers = Pages(f"http://127.0.0.1:{port}/", options.pages).start()
        probe = Probe(process.pid)
        print(f"\nsoak: {options.pages} pages open for {options.soak_seconds:g} s; the bridge's RSS:")
        print("\n| s | RSS MiB | messages to the pages | MB to the pages |\n|---:|---:|---:|---:|")
        began = time.monotonic()
        samples: list[tuple[float, float]] = []
        while True:
            elapsed = time.monotonic() - began
            if process.poll() is not None:
                raise SystemExit(f"the bridge exited {process.returncode}: {log_path.read_text()[-2000:]}")
            usage, total = probe.usage(), readers.total
            samples.append((elapsed, usage.rss_mb))
            print(f"| {elapsed:.0f} | {usage.rss_mb:.1f} | {total.messages:,} | {total.received / 1e6:.1f} |",
                  flush=True)  # fmt: skip
            if elapsed >= options.soak_seconds:
                break
            time.sleep(min(options.sample_seconds, options.soak_seconds - elapsed))
        total = readers.total
    finally:
        if readers is not None:
            readers.stop()
        stop(process)
        stop(simulator)
    half = len(samples) // 2
    first, second = samples[1 : half + 1], samples[half + 1 :]
    if first and second:
        growth = statistics.mean(r for _, r in second) - statistics.mean(r for _, r in first)
        print(f"\nRSS: first half {statistics.mean(r for _, r in first):.1f} MiB, second half "
              f"{statistics.mean(r for _, r in second):.1f} MiB ({growth:+.1f} MiB), peak "
              f"{max(r for _, r in samples):.1f} MiB")  # fmt: skip
    print(f"pages: {total.connects} connections, {total.snapshots} snapshots, {total.messages:,} messages, "
          f"{total.received / 1e6:.1f} MB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="about this many sightings to backfill")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of the backfill rows, order alternating"
    )
    parser.add_argument("--pages", type=int, default=10, help="pages open")
    parser.add_argument(
        "--soak-seconds", type=float, default=600.0, help="how long the soak keeps pages open"
    )
    parser.add_argument("--sample-seconds", type=float, default=30.0, help="seconds between RSS samples")
    parser.add_argument("--no-soak", action="store_true", help="the backfill rows only")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each backfill, stacks into DIR")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        workdir = Path(scratch)
        (workdir / "tansu").mkdir()
        tansu = TansuBroker(workdir / "tansu")
        stack.callback(tansu.stop)
        tansu.start()
        tansu.wait_for_metadata()
        runs = backfills(options, tansu, workdir)
        base = statistics.median(r.rate for r in runs if r.name == "--web-port, no page open")
        print(
            "\n| run | events | s | events/s | of no page open | CPU s | peak RSS MiB | messages to pages |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in runs:
            share = r.rate / base
            print(f"| {r.name} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} | {100 * share:.0f} % "
                  f"| {r.cpu:.1f} | {r.hwm_mb:.0f} | {r.pages.messages:,} |")  # fmt: skip
        opened = statistics.median(r.rate for r in runs if r.name.endswith("pages open"))
        share = opened / base
        verdict = "met" if share >= TARGET_SHARE else "MISSED"
        print(f"\n{options.pages} pages open / none, events/s (medians) = {share:.3f} "
              f"(target >= {TARGET_SHARE}): {verdict}")  # fmt: skip
        # The bridge is one thread: on a machine others load, its CPU per event is the steadier
        # measure of what the pages cost it (the rate it could reach alone is events / CPU s).
        cpu_none = statistics.median(r.cpu for r in runs if r.name == "--web-port, no page open")
        cpu_open = statistics.median(r.cpu for r in runs if r.name.endswith("pages open"))
        cpu_off = statistics.median(r.cpu for r in runs if r.name.startswith("no --web-port"))
        pages = options.pages
        print(f"CPU s of the backfill (medians): no page {cpu_none:.2f}, {pages} pages {cpu_open:.2f}, "
              f"no --web-port {cpu_off:.2f}; none / {pages} pages = {cpu_none / cpu_open:.3f}")  # fmt: skip
        if not options.no_soak:
            soak(options, tansu, workdir)


if __name__ == "__main__":
    main()
