"""Backfill catch-up rate with checkpoints on against `replay` of the identical range, in one run
(issue 5 §6; target: checkpointing costs < 15 % of the replay rate).

    .venv/bin/python bench/bridge_backfill.py [--count 1000000] [--rounds 1]

1. Starts Tansu (memory storage) and the simulator in its own process: a frozen world of
   about `--count` sightings in the 48 hours before its clock (10 cameras), its clock a
   minute behind real time, so the bridge's T0 (real now - 5 s) lies after every entry.
   The world's hours are generated up front (an admin ground-truth count), so neither run
   pays for generation.
2. `facespace-bridge replay --start-time <history start> --end-time <sim now> --broker kafka`:
   wall time from spawn to exit, CPU seconds (wait4), peak RSS (VmHWM).
3. `facespace-bridge run --backfill-from <history start> --no-realtime --broker kafka` with a
   fresh file checkpoint: wall time from spawn until the checkpoint file says the backfill is
   complete (written once every event is acknowledged), CPU seconds and peak RSS at that
   moment; then SIGTERM.
Each run writes to a fresh topic, deleted afterwards (Tansu's memory storage slows as it
fills), and the topic's record count is checked against the world's ground truth. With
`--rounds N` the order alternates, so neither side always runs on a warmer machine.

Both times include interpreter start-up and imports (about a second), as a user sees them.

`--kafka-checkpoint` adds a row with the checkpoint in Kafka (`--checkpoint kafka`, the
compacted offsets topic), timed until its log says the backfill is complete.

`--exactly-once` runs everything on noida-db's Kafka service instead (Tansu has no
transactions; noida-db is in the `test` extra) and adds a third row, `run --backfill-from
--exactly-once`: events and checkpoint committed together in Kafka transactions, timed until
its log says the backfill is complete (logged after the commit that records it). Its topic is
read back with read_committed isolation and must hold each sighting exactly once.

`--profile DIR` attaches py-spy (sampling, `pip install py-spy`) to each run, keeps its
collapsed stacks in DIR and prints the top functions by own and by inclusive samples. The
sampler takes CPU from the same 2 cores, so rates measured with it are lower.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    CLI,
    Probe,
    admin,
    child_env,
    start_simulator,
    stop,
    topic_size,
    wait_with_usage,
)

from facespace_bridge.embedded import TansuBroker

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.kafka import read_all, start_noida  # one launcher for the tests and this bench


@dataclass
class Broker:
    bootstrap: str
    pid: int


CAMERAS = 10
HOURS = 48
TARGET_OVERHEAD = 0.15
RUN_TIMEOUT = 600.0


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    cpu: float
    hwm_mb: float
    broker_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


class Profiler:
    """py-spy attached to one process for its whole life; its stacks summarised afterwards."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.process: subprocess.Popen[bytes] | None = None
        self.output: Path | None = None

    def attach(self, pid: int, name: str) -> None:
        if self.directory is None:
            return
        self.output = self.directory / f"{name}.txt"
        self.process = subprocess.Popen(
            [self.spy, "record", "--pid", str(pid), "--format", "raw", "--output", str(self.output),
             "--rate", "200", "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def finish(self, title: str) -> None:
        """Waits for py-spy (it stops with its target) and prints the top functions."""
        if self.process is None or self.output is None:
            return
        try:
            self.process.wait(60)
        finally:
            stop(self.process)
        print(f"\nprofile of {title} ({self.output}):")
        print(summarise(self.output))


def summarise(collapsed: Path, top: int = 15) -> str:
    """Top functions of py-spy's collapsed stacks: own samples and inclusive samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        total += samples
        frames = [
            f.split(" (")[0] + " (" + f.rsplit("/", 1)[-1] if " (" in f else f for f in stack.split(";")
        ]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    rows = [f"  {total:,} samples; own % | inclusive % | function (file:line)"]
    for frame, samples in own.most_common(top):
        rows.append(f"  {100 * samples / total:5.1f} | {100 * inclusive[frame] / total:5.1f} | {frame}")
    rows.append("  top inclusive (not the entry points):")
    for frame, samples in inclusive.most_common(top + 10)[10:]:
        rows.append(f"        {100 * samples / total:5.1f} | {frame}")
    return "\n".join(rows)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def delete_topics(bootstrap: str, topics: list[str]) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        existing = set(await client.list_topics())
        gone = [t for t in topics if t in existing]
        if gone:
            await client.delete_topics(gone)
    finally:
        await client.close()


def kafka_flags(bootstrap: str, topics: str) -> list[str]:
    return [
        "--broker", "kafka", "--bootstrap-servers", bootstrap,
        "--topic", f"{topics}.sightings", "--presence-topic", f"{topics}.presence",
        "--deadletter-topic", f"{topics}.deadletter", "--log-level", "warning",
    ]  # fmt: skip


def replay(
    api_url: str, broker: Broker, start: datetime, end: datetime, topics: str, profiler: Profiler
) -> Run:
    command = [
        *CLI, "replay", "--start-time", iso(start), "--end-time", iso(end), "--no-progress",
        *kafka_flags(broker.bootstrap, topics),
    ]  # fmt: skip
    broker_probe = Probe(broker.pid)
    broker_before = broker_probe.cpu()
    began = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=child_env(api_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    profiler.attach(process.pid, f"{topics}-replay")
    try:
        # The summary line is short and stderr quiet at warning level, so the pipes never fill.
        finished = wait_with_usage(process, began, RUN_TIMEOUT)
    finally:
        stop(process)
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read().decode(), process.stderr.read().decode()
    if finished.code != 0:
        raise SystemExit(f"replay exited {finished.code}: {out}{err}")
    profiler.finish("replay")
    published = int(out.split()[1])
    return Run("`replay`", published, finished.seconds, finished.cpu, finished.hwm_mb,
               broker_probe.cpu() - broker_before)  # fmt: skip


def backfill_complete(checkpoint: Path) -> bool:
    try:
        data = orjson.loads(checkpoint.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return False
    return bool((data.get("backfill") or {}).get("complete"))


def backfill(
    api_url: str,
    broker: Broker,
    start: datetime,
    topics: str,
    workdir: Path,
    index: int,
    profiler: Profiler,
    store: str = "file",  # "file", "kafka" (--checkpoint kafka) or "exactly-once"
) -> Run:
    checkpoint = workdir / f"checkpoint-{index}.json"
    log_path = workdir / f"bridge-{index}-{store}.log"
    in_kafka = store != "file"  # then the log, not a file, says when the backfill is complete
    where = {
        "file": ["--checkpoint", str(checkpoint)],
        "kafka": ["--checkpoint", "kafka", "--instance-id", f"{topics}-{index}"],
        "exactly-once": ["--exactly-once", "--instance-id", f"{topics}-{index}"],
    }[store]
    command = [
        *CLI, "run", "--backfill-from", iso(start), "--no-realtime", *where,
        *kafka_flags(broker.bootstrap, topics), *(["--log-level", "info"] if in_kafka else []),
    ]  # fmt: skip

    def complete() -> bool:
        if in_kafka:
            return "backfill complete" in log_path.read_text(errors="replace")
        return backfill_complete(checkpoint)

    broker_probe = Probe(broker.pid)
    broker_before = broker_probe.cpu()
    began = time.perf_counter()
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            env=child_env(api_url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    profiler.attach(process.pid, f"{topics}-backfill")
    try:
        probe = Probe(process.pid)
        deadline = time.monotonic() + RUN_TIMEOUT
        hwm = 0.0
        while not complete():
            if process.poll() is not None:
                raise SystemExit(f"the bridge exited {process.returncode}: {log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the backfill did not complete within {RUN_TIMEOUT:g} s")
            hwm = probe.usage().hwm_mb
            time.sleep(0.05)
        seconds = time.perf_counter() - began
        usage = probe.usage()
        broker_cpu = broker_probe.cpu() - broker_before
    finally:
        code = stop(process)
    if code != 0:
        raise SystemExit(f"the bridge exited {code} at SIGTERM: {log_path.read_text()[-2000:]}")
    profiler.finish("run --backfill-from (until SIGTERM)")
    name = {
        "file": "`run --backfill-from` (file checkpoint)",
        "kafka": "`run --backfill-from --checkpoint kafka`",
        "exactly-once": "`run --backfill-from --exactly-once`",
    }[store]
    return Run(name, 0, seconds, usage.cpu, max(hwm, usage.hwm_mb), broker_cpu)


def table(runs: list[Run], replay_rate: float) -> str:
    lines = [
        "| run | events | s | events/s | % of replay | CPU s | CPU µs/event | peak RSS MiB | broker CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} "
            f"| {100 * r.rate / replay_rate:.0f} % | {r.cpu:.1f} | {1e6 * r.cpu / r.events:.0f} "
            f"| {r.hwm_mb:.0f} | {r.broker_cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="about this many sightings")
    parser.add_argument("--rounds", type=int, default=1, help="replay + backfill pairs, order alternating")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each run, stacks into DIR")
    parser.add_argument(
        "--exactly-once", action="store_true", help="on noida-db's Kafka, with an --exactly-once row"
    )
    parser.add_argument("--kafka-checkpoint", action="store_true", help="a row with --checkpoint kafka")
    options = parser.parse_args()
    if options.profile is not None:
        options.profile.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(options.profile)

    # Whole minutes, a minute behind real time: T0 of the bridge is after every entry.
    sim_now = datetime.now(timezone.utc).replace(second=0, microsecond=0) - timedelta(minutes=1)
    start = sim_now - timedelta(hours=HOURS)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        workdir = Path(scratch)
        if options.exactly_once:
            noida = stack.enter_context(start_noida(workdir))
            broker = Broker(noida.bootstrap, noida.pid or 0)
        else:
            tansu = TansuBroker(workdir)
            stack.callback(tansu.stop)
            tansu.start()
            tansu.wait_for_metadata()
            assert tansu.proc is not None
            broker = Broker(tansu.bootstrap, tansu.proc.pid)
        simulator: subprocess.Popen[str] | None = None
        try:
            simulator, api_url = start_simulator([
                "--seed", "11", "--cameras", str(CAMERAS), "--people", "40",
                "--history-hours", str(HOURS), "--visits-per-hour", str(options.count / (CAMERAS * HOURS)),
                "--now", iso(sim_now), "--speed", "0",
            ])  # fmt: skip
            # Generates (and caches) every hour of the range: both runs read a warm simulator.
            truth = int(
                admin(api_url, "GET", f"truth?start={iso(start)}&end={iso(sim_now)}&count_only=1")["count"]
            )
            print(f"Kafka at {broker.bootstrap}; simulator at {api_url}; {truth:,} sightings "
                  f"from {iso(start)} to {iso(sim_now)}", file=sys.stderr)  # fmt: skip
            kinds = ["replay", "backfill"]
            kinds += ["kafka-checkpoint"] if options.kafka_checkpoint else []
            kinds += ["exactly-once"] if options.exactly_once else []
            for round_index in range(options.rounds):
                order = kinds if round_index % 2 == 0 else kinds[::-1]
                for kind in order:
                    topics = f"bench.{kind}.{round_index}"
                    if kind == "replay":
                        run = replay(api_url, broker, start, sim_now, topics, profiler)
                    else:
                        store = {"backfill": "file", "kafka-checkpoint": "kafka"}.get(kind, kind)
                        run = backfill(api_url, broker, start, topics, workdir, round_index, profiler, store)
                    if kind == "exactly-once":  # committed records only, each once
                        records = asyncio.run(read_all(broker.bootstrap, f"{topics}.sightings", 300,
                                                       "read_committed"))  # fmt: skip
                        stored = len({r.headers["event-id"] for r in records})
                        if stored != len(records):
                            raise SystemExit(f"{len(records) - stored} repeated records under --exactly-once")
                    else:
                        stored = asyncio.run(topic_size(broker.bootstrap, f"{topics}.sightings"))
                    if kind != "replay":
                        run.events = stored
                    if not stored == truth == run.events:
                        raise SystemExit(f"{run.name}: published {run.events:,}, topic holds {stored:,}, "
                                         f"truth {truth:,}")  # fmt: skip
                    runs.append(run)
                    print(f"  {run.name}: {run.rate:,.0f} events/s", file=sys.stderr)
                    suffixes = ("sightings", "presence", "deadletter")
                    asyncio.run(delete_topics(broker.bootstrap, [f"{topics}.{t}" for t in suffixes]))
        finally:
            stop(simulator)

    replays = [r for r in runs if r.name.startswith("`replay")]
    backfills = [r for r in runs if r.name.endswith("(file checkpoint)")]
    replay_rate = statistics.median(r.rate for r in replays)
    backfill_rate = statistics.median(r.rate for r in backfills)
    print()
    print(table(runs, replay_rate))
    overhead = 1 - backfill_rate / replay_rate
    verdict = "met" if overhead < TARGET_OVERHEAD else "MISSED"
    target = f"target < {100 * TARGET_OVERHEAD:.0f} %"
    print(f"\nbackfill / replay = {backfill_rate / replay_rate:.2f}: checkpointing costs "
          f"{100 * overhead:.0f} % of the replay rate ({target}): {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
