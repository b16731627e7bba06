"""`facespace-bridge replay --broker kafka` per Kafka client against bare producer loops, a
competent script and a naive script, all into the same Tansu, in one run.

    .venv/bin/python bench/kafka_replay.py [--sightings 1000000] [--small 500000]
                                           [--clients librdkafka,aiokafka] [--breakdown] [--profile DIR]

1. Starts Tansu (memory storage, no relay) and the simulator (`facespace-bridge simulate`, its
   own process) with a frozen world of about `--sightings` sightings in 48 hours (10 cameras,
   40 people); every hour of it is generated before the first run (a ground-truth count).
2. Per client (`--kafka-client`, passed only where this build has the flag; without it the
   bridge has aiokafka only): `replay` of the full range, and of about `--small` sightings
   (peak RSS against the range; `--small 0` skips it). Wall time from spawn to exit, CPU
   seconds (wait4) and peak RSS (VmHWM) of the replay process. Its records are counted in
   the topic (Fetch high watermark) and checked against the world's ground truth.
3. The competent script (bench/_competent_seed.py): the original client's `get_logs_range`
   over the same range, then per entry the replay's very record (k, the sha256 event id, the
   payload, the ten headers) built by hand and produced with confluent-kafka; timed the same
   way, and its topic checked to hold exactly the replay's records.
4. The naive script (bench/_naive_seed.py): the original client's `get_logs_range` over the
   same range, then confluent-kafka `produce(json.dumps(entry))` per entry; timed the same way.
5. The records of the first client's replay are read back (keys, values, headers) and sent
   again by bare loops, each in a process of its own (bench/_kafka_loops.py), timing only the
   send loop: librdkafka with the same headers (the same-records loop), librdkafka without
   headers, aiokafka with them.
Every run writes to a fresh topic of 3 partitions, deleted after it: Tansu's memory storage
slows down as it fills.

`--breakdown` adds `replay --dry-run` (the range read, numbered and built into events, no sink:
what the API side costs), per client, `replay --no-cloudevents` (3 headers per record
instead of 10), and `replay --exclude-person` of the world's most frequent person (the filters
of docs/privacy.md; its rate counts the entries read, published or left out, as the others'
do), timed the same way.

`--profile DIR` attaches py-spy to every replay and prints its top functions (rates measured
with the sampler attached are lower).

Not a timed test: it prints figures side by side. The 2 cores are shared by the publisher,
the simulator and the broker, as they would be on a small host.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import pickle
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # the tests' broker launcher and reader

from _bridge_harness import (  # noqa: E402
    CLI,
    Measured,
    Probe,
    Profiler,
    admin,
    child_env,
    clients_option,
    kafka_client_flags,
    run_measured,
    start_simulator,
    stop,
    topic_size,
    usable_clients,
)

from tests.fixtures.kafka import Record, read_all, start_tansu  # noqa: E402

START = datetime(2023, 10, 23, tzinfo=timezone.utc)
HOURS = 48
END = START + timedelta(hours=HOURS)  # the clock of the frozen world: the range is all of history
CAMERAS = 10
PARTITIONS = 3
RUN_TIMEOUT = 900.0
FREQUENT = "Zoë Ångström"  # the simulator's first person, whom its worlds show most often
TARGET_OF_SAME_RECORDS = 0.7  # replay >= 70 % of the bare librdkafka loop sending its records
TARGET_OF_COMPETENT = 1.5  # replay >= 1.5 x the competent script
TARGET_RSS_MB = 200.0


@dataclass
class Run:
    name: str
    events: int
    seconds: float
    cpu: float
    rss: str  # peak RSS, MiB, as shown
    broker_cpu: float
    hwm_mb: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def create_topic(bootstrap: str, topic: str) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        await client.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await client.close()


async def delete_topics(bootstrap: str, *topics: str) -> None:
    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await client.start()
    try:
        existing = set(await client.list_topics())
        gone = [t for t in topics if t in existing]
        if gone:
            await client.delete_topics(gone)
    finally:
        await client.close()


def truth_count(api_url: str, end: datetime) -> int:
    """The world's sightings in [START, end): the range a replay with `--end-time end - 1 s` reads
    (the admin API's end is inclusive, like `--end-time`)."""
    last = iso(end - timedelta(seconds=1))
    return int(admin(api_url, "GET", f"truth?start={iso(START)}&end={last}&count_only=1")["count"])


def checked(what: str, measured: Measured) -> Measured:
    if measured.finished.code != 0:
        output = measured.stdout + measured.stderr[-3000:]
        raise SystemExit(f"{what} exited {measured.finished.code}: {output}")
    return measured


def replay(
    api_url: str, bootstrap: str, broker_pid: int, client: str, end: datetime, topic: str, profiler: Profiler,
    flags: Sequence[str] = (),
) -> Run:  # fmt: skip
    """One `facespace-bridge replay` of [START, end) into `topic` (`flags`: `--dry-run` publishes
    nothing, `--no-cloudevents` leaves out the ce_ headers)."""
    last = iso(end - timedelta(seconds=1))  # the end is inclusive
    command = [*CLI, "replay", "--start-time", iso(START), "--end-time", last, "--no-progress",
               "--log-level", "warning", *flags]  # fmt: skip
    if "--dry-run" not in flags:
        command += [
            "--broker", "kafka", "--bootstrap-servers", bootstrap, *kafka_client_flags(client),
            "--topic", topic, "--deadletter-topic", f"{topic}.deadletter", "--partitions", str(PARTITIONS),
        ]  # fmt: skip
    broker = Probe(broker_pid)
    before = broker.cpu()
    measured = checked("replay", run_measured(command, child_env(api_url), RUN_TIMEOUT, profiler, topic))
    broker_cpu = broker.cpu() - before
    profiler.finish(f"replay, {client}")
    # "published N sightings and M dead letters ...", or "dry run: would publish N sightings ..."
    found = re.search(r"publish(?:ed)? (\d+) sightings", measured.stdout)
    if found is None:
        raise SystemExit(f"no summary from the replay: {measured.stdout}")
    left_out = re.search(r"\((\d+) entries left out by the filters\)", measured.stdout)
    published = int(found.group(1)) + (int(left_out.group(1)) if left_out else 0)  # entries read
    done = measured.finished
    if "--dry-run" in flags:
        name = "`replay --dry-run` (read, number, build; no sink)"
    else:
        name = f"`replay{''.join(' ' + f for f in flags)}`, {client}"
    return Run(name, published, done.seconds, done.cpu, f"{done.hwm_mb:.0f}", broker_cpu,
               done.hwm_mb)  # fmt: skip


SCRIPTS = {
    "_competent_seed.py": "competent script (`get_logs_range`, the same records by hand, confluent-kafka)",
    "_naive_seed.py": "naive script (`get_logs_range` + confluent-kafka `produce`)",
}


def script(name: str, api_url: str, bootstrap: str, broker_pid: int, topic: str) -> Run:
    """bench/_competent_seed.py or bench/_naive_seed.py over the same range, in the original
    client's time format."""
    first_day = START.strftime("%d/%m/%y")
    last_day = (END - timedelta(days=1)).strftime("%d/%m/%y")  # a date-only end is that whole day
    asyncio.run(create_topic(bootstrap, topic))
    command = [sys.executable, str(HERE / name), api_url, first_day, last_day, bootstrap, topic]
    broker = Probe(broker_pid)
    before = broker.cpu()
    measured = checked(SCRIPTS[name], run_measured(command, child_env(api_url), RUN_TIMEOUT))
    done = measured.finished
    published = int(measured.stdout.split()[1])
    broker_cpu = broker.cpu() - before
    return Run(
        SCRIPTS[name], published, done.seconds, done.cpu, f"{done.hwm_mb:.0f}", broker_cpu, done.hwm_mb
    )


def records_digest(records: Wire) -> tuple[int, str]:
    """How many records and a digest of them as a multiset (order-free: partitions interleave)."""
    total = 0
    for key, value, headers in records:
        h = hashlib.blake2b(digest_size=16)
        for part in (key or b"", value or b"", *(f"{n}={v.hex()}".encode() for n, v in headers)):
            h.update(len(part).to_bytes(4, "big") + part)
        total += int.from_bytes(h.digest(), "big")
    return len(records), f"{total % (1 << 128):032x}"


LOOPS = {
    "librdkafka-headers": "same-records loop: bare librdkafka, the replay's records and headers",
    "librdkafka": "bare librdkafka loop, the replay's records without headers",
    "aiokafka": "bare aiokafka loop, the replay's records and headers",
}


def bare(loop: str, records: Path, bootstrap: str, broker_pid: int, topic: str) -> Run:
    asyncio.run(create_topic(bootstrap, topic))
    command = [sys.executable, str(HERE / "_kafka_loops.py"), loop, str(records), bootstrap, topic]
    broker = Probe(broker_pid)
    before = broker.cpu()
    measured = checked(LOOPS[loop], run_measured(command, child_env(), RUN_TIMEOUT))
    figures = json.loads(measured.stdout.strip().splitlines()[-1])
    # Broker CPU over the whole child, loading included (the broker idles meanwhile).
    growth = figures["hwm_mb"] - figures["rss_before_mb"]
    return Run(LOOPS[loop], figures["events"], figures["seconds"], figures["cpu"], f"+{growth:.0f}¹",
               broker.cpu() - before)  # fmt: skip


Wire = list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]


def as_wire(records: list[Record]) -> Wire:
    """The records as (key, value, headers); equal header pairs share one object (most of a
    record's headers are the same for every record of a camera), which keeps a million of them
    small in memory and in the pickle."""
    shared: dict[tuple[str, bytes], tuple[str, bytes]] = {}
    keys: dict[bytes | None, bytes | None] = {}
    return [
        (keys.setdefault(r.key, r.key), r.value, [shared.setdefault(p, p) for p in r.headers.items()])
        for r in records
    ]


def table(runs: list[Run], same_records: float, competent: float, naive_rate: float) -> str:
    def ratio(rate: float, base: float, percent: bool) -> str:
        return f"{100 * rate / base:.0f} %" if percent else f"{rate / base:.2f}×"

    lines = [
        "| run | events | s | events/s | CPU µs/event | peak RSS MiB | broker CPU s "
        "| of the same-records loop | of the competent script | of naive |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r.name} | {r.events:,} | {r.seconds:.1f} | {r.rate:,.0f} | {1e6 * r.cpu / r.events:.1f} "
            f"| {r.rss} | {r.broker_cpu:.1f} | {ratio(r.rate, same_records, True)} "
            f"| {ratio(r.rate, competent, False)} | {ratio(r.rate, naive_rate, False)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sightings", type=int, default=1_000_000, help="about this many in the range")
    parser.add_argument("--small", type=int, default=500_000, help="also replay about this many (0: no)")
    parser.add_argument("--clients", type=clients_option, default="librdkafka,aiokafka",
                        help="Kafka clients of the bridge to replay with, comma-separated")  # fmt: skip
    parser.add_argument("--profile", type=Path, metavar="DIR", help="py-spy each replay, stacks into DIR")
    parser.add_argument(
        "--breakdown", action="store_true", help="also `replay --dry-run` and `replay --no-cloudevents`"
    )
    options = parser.parse_args()
    clients = usable_clients(options.clients)
    profiler = Profiler(options.profile)
    small_end = START + timedelta(hours=HOURS * options.small / options.sightings) if options.small else None

    runs: list[Run] = []
    small_runs: list[tuple[str, Run]] = []
    breakdown: list[Run] = []
    with tempfile.TemporaryDirectory() as scratch, start_tansu(Path(scratch), relay=False) as broker:
        bootstrap, pid = broker.bootstrap, broker.pid
        simulator = None
        try:
            visits = options.sightings / (CAMERAS * HOURS)
            simulator, api_url = start_simulator([
                "--seed", "11", "--cameras", str(CAMERAS), "--people", "40", "--history-hours", str(HOURS),
                "--visits-per-hour", str(visits), "--now", iso(END), "--speed", "0",
            ])  # fmt: skip
            truth = truth_count(api_url, END)
            small_truth = truth_count(api_url, small_end) if small_end is not None else 0
            print(f"Tansu at {bootstrap}; simulator at {api_url}; {truth:,} sightings in {HOURS} h; "
                  f"clients: {', '.join(clients)}", file=sys.stderr)  # fmt: skip
            wire_file = Path(scratch) / "records.pickle"
            for n, client in enumerate(clients):
                topic = f"bench.replay.{client}"
                run = replay(api_url, bootstrap, pid, client, END, topic, profiler)
                stored = asyncio.run(topic_size(bootstrap, topic))
                if not run.events == truth == stored:
                    raise SystemExit(f"{run.name}: {run.events:,} sent, topic {stored:,}, truth {truth:,}")
                runs.append(run)
                print(f"  {run.name}: {run.rate:,.0f} events/s", file=sys.stderr)
                if n == 0:  # the very records of the replay, for the bare loops
                    wire = as_wire(asyncio.run(read_all(bootstrap, topic, timeout=900)))
                    wire_file.write_bytes(pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL))
                    replay_digest = records_digest(wire)
                    del wire
                asyncio.run(delete_topics(bootstrap, topic, f"{topic}.deadletter"))
                if small_end is not None:
                    no_profile = Profiler(None)
                    small = replay(api_url, bootstrap, pid, client, small_end, f"{topic}.small", no_profile)
                    stored = asyncio.run(topic_size(bootstrap, f"{topic}.small"))
                    if not small.events == small_truth == stored:
                        raise SystemExit(f"small {small.name}: {small.events:,}, topic {stored:,}, "
                                         f"truth {small_truth:,}")  # fmt: skip
                    small_runs.append((client, small))
                    asyncio.run(delete_topics(bootstrap, f"{topic}.small", f"{topic}.small.deadletter"))
            if options.breakdown:
                breakdown.append(replay(api_url, bootstrap, pid, clients[0], END, "", Profiler(None),
                                        ["--dry-run"]))  # fmt: skip
                for client in clients:
                    topic = f"bench.replay.{client}.plain"
                    run = replay(
                        api_url, bootstrap, pid, client, END, topic, Profiler(None), ["--no-cloudevents"]
                    )
                    stored = asyncio.run(topic_size(bootstrap, topic))
                    if not run.events == truth == stored:
                        raise SystemExit(
                            f"{run.name}: {run.events:,} sent, topic {stored:,}, truth {truth:,}"
                        )
                    breakdown.append(run)
                    asyncio.run(delete_topics(bootstrap, topic, f"{topic}.deadletter"))
                topic = f"bench.replay.{clients[0]}.filtered"
                run = replay(api_url, bootstrap, pid, clients[0], END, topic, Profiler(None),
                             ["--exclude-person", FREQUENT])  # fmt: skip
                stored = asyncio.run(topic_size(bootstrap, topic))
                if not (run.events == truth and 0 < stored < truth):
                    raise SystemExit(f"{run.name}: {run.events:,} read, topic {stored:,}, truth {truth:,}")
                print(f"  {run.name}: {truth - stored:,} of {truth:,} left out", file=sys.stderr)
                breakdown.append(run)
                asyncio.run(delete_topics(bootstrap, topic, f"{topic}.deadletter"))
                for run in breakdown:
                    print(f"  {run.name}: {run.rate:,.0f} events/s", file=sys.stderr)
            competent_run = script("_competent_seed.py", api_url, bootstrap, pid, "bench.competent")
            competent_digest = records_digest(
                as_wire(asyncio.run(read_all(bootstrap, "bench.competent", 900)))
            )
            if competent_digest != replay_digest:
                raise SystemExit(f"the competent script's records {competent_digest} are not the replay's "
                                 f"{replay_digest}")  # fmt: skip
            runs.append(competent_run)
            print(f"  competent: {competent_run.rate:,.0f} events/s (the replay's records)", file=sys.stderr)
            asyncio.run(delete_topics(bootstrap, "bench.competent"))
            naive_run = script("_naive_seed.py", api_url, bootstrap, pid, "bench.naive")
            stored = asyncio.run(topic_size(bootstrap, "bench.naive"))
            if not naive_run.events == truth == stored:
                raise SystemExit(f"naive: published {naive_run.events:,}, topic {stored:,}, truth {truth:,}")
            runs.append(naive_run)
            print(f"  naive: {naive_run.rate:,.0f} events/s", file=sys.stderr)
            asyncio.run(delete_topics(bootstrap, "bench.naive"))
        finally:
            stop(simulator)
        ceilings: dict[str, Run] = {}
        for loop in LOOPS:
            topic = f"bench.bare.{loop}"
            ceilings[loop] = bare(loop, wire_file, bootstrap, pid, topic)
            print(f"  {ceilings[loop].name}: {ceilings[loop].rate:,.0f} events/s", file=sys.stderr)
            asyncio.run(delete_topics(bootstrap, topic))
        runs.extend(ceilings.values())

    same_records = ceilings["librdkafka-headers"].rate
    print()
    shown = [*runs[: len(clients)], *breakdown, *runs[len(clients) :]]
    print(table(shown, same_records, competent_run.rate, naive_run.rate))
    print("\n¹ growth during the send loop, over the process with every record loaded (the bare loops hold")
    print("  the whole range in memory; their RSS is not a figure to compare)")
    print()
    for run in runs[: len(clients)]:
        of_same, of_competent = run.rate / same_records, run.rate / competent_run.rate
        same_met = "met" if of_same >= TARGET_OF_SAME_RECORDS else "MISSED"
        print(f"{run.name}: {100 * of_same:.0f} % of the same-records loop (target >= "
              f"{100 * TARGET_OF_SAME_RECORDS:.0f} %): {same_met}; "
              f"{of_competent:.2f}× the competent script (target >= {TARGET_OF_COMPETENT}×): "
              f"{'met' if of_competent >= TARGET_OF_COMPETENT else 'MISSED'}")  # fmt: skip
    for client, small in small_runs:
        full = next(r for r in runs if r.name == f"`replay`, {client}")
        flat = full.hwm_mb < TARGET_RSS_MB
        print(f"`replay`, {client}: peak RSS {small.hwm_mb:.0f} MiB for {small.events:,} events, "
              f"{full.hwm_mb:.0f} MiB for {full.events:,} (target < {TARGET_RSS_MB:.0f} MB, flat): "
              f"{'met' if flat and full.hwm_mb <= small.hwm_mb * 1.15 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
