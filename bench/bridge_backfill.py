"""Backfill catch-up rate with checkpoints on against `replay` of the identical range, per Kafka
client, in one run (target: backfill >= 90 % of the replay rate).

    .venv/bin/python bench/bridge_backfill.py [--count 1000000] [--rounds 1] [--clients librdkafka,aiokafka]

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
`--rounds N` the order alternates, so neither side always runs on a warmer machine. Every
row runs once per client of `--clients` (`--kafka-client`, passed only where this build has
the flag; a build without it has aiokafka only), and each backfill is compared with the
replay of the same client.

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
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
from aiokafka.admin import AIOKafkaAdminClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    CLI,
    Probe,
    Profiler,
    admin,
    child_env,
    clients_option,
    kafka_client_flags,
    start_simulator,
    stop,
    topic_size,
    usable_clients,
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
TARGET_OF_REPLAY = 0.90
RUN_TIMEOUT = 600.0


@dataclass
class Run:
    name: str
    client: str
    events: int
    seconds: float
    cpu: float
    hwm_mb: float
    broker_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


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


def kafka_flags(bootstrap: str, topics: str, client: str) -> list[str]:
    return [
        "--broker", "kafka", "--bootstrap-servers", bootstrap, *kafka_client_flags(client),
        "--topic", f"{topics}.sightings", "--presence-topic", f"{topics}.presence",
        "--deadletter-topic", f"{topics}.deadletter", "--log-level", "warning",
    ]  # fmt: skip


def replay(
    api_url: str, broker: Broker, start: datetime, end: datetime, topics: str, client: str, profiler: Profiler
) -> Run:
    command = [
        *CLI, "replay", "--start-time", iso(start), "--end-time", iso(end), "--no-progress",
        *kafka_flags(broker.bootstrap, topics, client),
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
    profiler.finish(f"replay, {client}")
    published = int(out.split()[1])
    return Run("`replay`", client, published, finished.seconds, finished.cpu, finished.hwm_mb,
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
    client: str,
    profiler: Profiler,
    store: str = "file",  # "file", "kafka" (--checkpoint kafka) or "exactly-once"
) -> Run:
    checkpoint = workdir / f"checkpoint-{index}-{client}.json"
    log_path = workdir / f"bridge-{index}-{client}-{store}.log"
    in_kafka = store != "file"  # then the log, not a file, says when the backfill is complete
    where = {
        "file": ["--checkpoint", str(checkpoint)],
        "kafka": ["--checkpoint", "kafka", "--instance-id", topics],
        "exactly-once": ["--exactly-once", "--instance-id", topics],
    }[store]
    command = [
        *CLI, "run", "--backfill-from", iso(start), "--no-realtime", *where,
        *kafka_flags(broker.bootstrap, topics, client), *(["--log-level", "info"] if in_kafka else []),
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
    profiler.finish(f"run --backfill-from, {client} (until SIGTERM)")
    name = {
        "file": "`run --backfill-from` (file checkpoint)",
        "kafka": "`run --backfill-from --checkpoint kafka`",
        "exactly-once": "`run --backfill-from --exactly-once`",
    }[store]
    return Run(name, client, 0, seconds, usage.cpu, max(hwm, usage.hwm_mb), broker_cpu)


def table(runs: list[Run], replay_rates: dict[str, float]) -> str:
    lines = [
        "| run | client | events | s | events/s | % of replay (same client) | CPU s | CPU µs/event "
        "| peak RSS MiB | broker CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.client} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} "
            f"| {100 * r.rate / replay_rates[r.client]:.0f} % | {r.cpu:.1f} | {1e6 * r.cpu / r.events:.1f} "
            f"| {r.hwm_mb:.0f} | {r.broker_cpu:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="about this many sightings")
    parser.add_argument("--rounds", type=int, default=1, help="replay + backfill pairs, order alternating")
    parser.add_argument("--clients", type=clients_option, default="librdkafka,aiokafka",
                        help="Kafka clients of the bridge, comma-separated")  # fmt: skip
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each run, stacks into DIR")
    parser.add_argument(
        "--exactly-once", action="store_true", help="on noida-db's Kafka, with an --exactly-once row"
    )
    parser.add_argument("--kafka-checkpoint", action="store_true", help="a row with --checkpoint kafka")
    options = parser.parse_args()
    clients = usable_clients(options.clients)
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
                  f"from {iso(start)} to {iso(sim_now)}; clients: {', '.join(clients)}",
                  file=sys.stderr)  # fmt: skip
            kinds = ["replay", "backfill"]
            kinds += ["kafka-checkpoint"] if options.kafka_checkpoint else []
            kinds += ["exactly-once"] if options.exactly_once else []
            for round_index in range(options.rounds):
                order = kinds if round_index % 2 == 0 else kinds[::-1]
                for client in clients:
                    for kind in order:
                        run = one_run(api_url, broker, start, sim_now, kind, round_index, client, workdir,
                                      profiler, truth)  # fmt: skip
                        runs.append(run)
                        print(f"  {run.name}, {run.client}: {run.rate:,.0f} events/s", file=sys.stderr)
        finally:
            stop(simulator)

    replay_rates = {
        client: statistics.median(r.rate for r in runs if r.client == client and r.name == "`replay`")
        for client in clients
    }
    print()
    print(table(runs, replay_rates))
    print()
    for client in clients:
        backfills = [r.rate for r in runs if r.client == client and r.name.endswith("(file checkpoint)")]
        share = statistics.median(backfills) / replay_rates[client]
        verdict = "met" if share >= TARGET_OF_REPLAY else "MISSED"
        print(f"{client}: backfill / replay = {share:.2f} (target >= {TARGET_OF_REPLAY:.2f}): {verdict}")


def one_run(
    api_url: str,
    broker: Broker,
    start: datetime,
    end: datetime,
    kind: str,
    round_index: int,
    client: str,
    workdir: Path,
    profiler: Profiler,
    truth: int,
) -> Run:
    """One row: the run, its topic checked against the truth, then deleted."""
    topics = f"bench.{kind}.{client}.{round_index}"
    if kind == "replay":
        run = replay(api_url, broker, start, end, topics, client, profiler)
    else:
        store = {"backfill": "file", "kafka-checkpoint": "kafka"}.get(kind, kind)
        run = backfill(api_url, broker, start, topics, workdir, round_index, client, profiler, store)
    if kind == "exactly-once":  # committed records only, each once
        records = asyncio.run(read_all(broker.bootstrap, f"{topics}.sightings", 300, "read_committed"))
        stored = len({r.headers["event-id"] for r in records})
        if stored != len(records):
            raise SystemExit(f"{len(records) - stored} repeated records under --exactly-once")
    else:
        stored = asyncio.run(topic_size(broker.bootstrap, f"{topics}.sightings"))
    if kind != "replay":
        run.events = stored
    if not stored == truth == run.events:
        raise SystemExit(
            f"{run.name}, {client}: published {run.events:,}, topic holds {stored:,}, truth {truth:,}"
        )
    suffixes = ("sightings", "presence", "deadletter")
    asyncio.run(delete_topics(broker.bootstrap, [f"{topics}.{t}" for t in suffixes]))
    return run


if __name__ == "__main__":
    main()
