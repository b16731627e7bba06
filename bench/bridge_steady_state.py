"""Steady-state cost of the bridge: CPU % of one core and RSS while it tails a live world into
Kafka (target: < 5 % of a core).

    .venv/bin/python bench/bridge_steady_state.py [--duration 60] [--warmup 20] [--split] [--row FLAGS]

1. Starts Tansu (memory storage) and the simulator in its own process: 20 cameras, each
   logging 10 sightings/s on average (36,000 visits per camera-hour), live clock (real time,
   speed 1), so the tail reads a stream that grows as it runs. 200 people: each camera sees
   almost all of them at any moment (a visit lasts about two minutes), so every /recognition
   reply lists about 4,000 names, and presence still changes now and then (with 50 people
   everyone is always in view and presence never changes).
2. For each row, runs `facespace-bridge run --broker kafka --refresh 1 --tail-interval 5`
   (realtime on) with its own checkpoint file and topics, waits `--warmup` seconds, then
   measures `--duration` seconds: the bridge's CPU seconds (user + system, /proc), its RSS
   and peak RSS, the simulator's and the broker's CPU over the same window, the events the
   bridge acknowledged (its own /metrics) against the world's ground truth for the window,
   and the largest per-camera lag at the end.
   Rows: the defaults (`--lateness 120`) and `--lateness 0`, which shows what the look-back
   costs; `--split` adds `--lateness 0 --no-realtime` (what the /recognition poll costs);
   every `--row FLAGS` adds a row with those flags (e.g. `--row=--no-quick-polls`).

Not a timed test: it prints figures side by side. The 2 cores are shared by the bridge, the
simulator and the broker.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    CLI,
    Probe,
    Usage,
    admin,
    child_env,
    metric_total,
    start_simulator,
    stop,
    wait_until,
)

from facespace_bridge.embedded import TansuBroker, free_port

METRIC = "facespace_bridge_events_published_total"
LAG = "facespace_bridge_camera_lag_seconds"
TARGET_CPU = 5.0  # % of one core


@dataclass
class Row:
    name: str
    flags: list[str]
    seconds: float = 0.0
    cpu: float = 0.0
    rss_mb: float = 0.0
    hwm_mb: float = 0.0
    sightings: float = 0.0
    presence: float = 0.0
    truth: int = 0
    lag: float = 0.0
    simulator_cpu: float = 0.0
    broker_cpu: float = 0.0

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.seconds


def max_lag(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    lags = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(LAG + "{")]
    return max(lags, default=float("nan"))


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def measure(
    row: Row,
    index: int,
    api_url: str,
    broker: TansuBroker,
    peers: dict[str, Probe],
    workdir: Path,
    warmup: float,
    duration: float,
) -> None:
    """Runs one bridge and fills `row` with what it cost over `duration` seconds after `warmup`."""
    port = free_port()
    topics = f"bench.steady.{index}"
    log_path = workdir / f"bridge-{index}.log"
    command = [
        *CLI, "run", "--broker", "kafka", "--bootstrap-servers", broker.bootstrap,
        "--refresh", "1", "--tail-interval", "5",
        "--checkpoint", str(workdir / f"checkpoint-{index}.json"),
        "--topic", f"{topics}.sightings", "--presence-topic", f"{topics}.presence",
        "--deadletter-topic", f"{topics}.deadletter",
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--log-level", "warning",
        *row.flags,
    ]  # fmt: skip
    with open(log_path, "wb") as log_file:
        bridge = subprocess.Popen(
            command,
            env=child_env(api_url),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_until(lambda: ready(port) or bridge.poll() is not None, 60, 0.2, "the bridge to be ready")
        if bridge.poll() is not None:
            raise SystemExit(f"the bridge exited {bridge.returncode}: {log_path.read_text()[-2000:]}")
        time.sleep(warmup)
        probe = Probe(bridge.pid)
        before = probe.usage()
        sims = peers["simulator"].cpu()
        brokers = peers["broker"].cpu()
        sightings = metric_total(port, METRIC, type="sighting")
        presence = metric_total(port, METRIC, type="presence")
        sim_from = admin(api_url, "GET", "clock")["now"]
        began = time.perf_counter()
        time.sleep(duration)
        after: Usage = probe.usage()
        row.seconds = time.perf_counter() - began
        sim_to = admin(api_url, "GET", "clock")["now"]
        row.cpu = after.cpu - before.cpu
        row.rss_mb, row.hwm_mb = after.rss_mb, after.hwm_mb
        row.simulator_cpu = peers["simulator"].cpu() - sims
        row.broker_cpu = peers["broker"].cpu() - brokers
        row.sightings = metric_total(port, METRIC, type="sighting") - sightings
        row.presence = metric_total(port, METRIC, type="presence") - presence
        row.lag = max_lag(port)
        truth = admin(api_url, "GET", f"truth?start={sim_from}&end={sim_to}&count_only=1")
        row.truth = int(truth["count"])
    finally:
        code = stop(bridge)
    if code != 0:
        raise SystemExit(f"the bridge exited {code} at SIGTERM: {log_path.read_text()[-2000:]}")


def table(rows: list[Row]) -> str:
    lines = [
        "| bridge flags | CPU % of a core | RSS MiB | peak RSS MiB | sightings/s acked | truth/s "
        "| presence/s | max lag s | simulator CPU % | broker CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.cpu_percent:.1f} | {r.rss_mb:.0f} | {r.hwm_mb:.0f} "
            f"| {r.sightings / r.seconds:.0f} | {r.truth / r.seconds:.0f} "
            f"| {r.presence / r.seconds:.2f} | {r.lag:.0f} "
            f"| {100 * r.simulator_cpu / r.seconds:.1f} | {100 * r.broker_cpu / r.seconds:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds before measuring")
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10.0, help="sightings/s per camera")
    parser.add_argument("--people", type=int, default=200, help="200: presence changes ~1.5/s (50: never)")
    parser.add_argument("--split", action="store_true", help="also a row without realtime")
    parser.add_argument("--row", action="append", default=[], metavar="FLAGS",
                        help="also a row with these bridge flags (repeatable)")  # fmt: skip
    options = parser.parse_args()

    rows = [Row("defaults (`--lateness 120`)", []), Row("`--lateness 0`", ["--lateness", "0"])]
    if options.split:
        rows.append(Row("`--lateness 0 --no-realtime`", ["--lateness", "0", "--no-realtime"]))
    rows += [Row(f"`{flags}`", shlex.split(flags)) for flags in options.row]

    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        broker = TansuBroker(workdir)
        simulator: subprocess.Popen[str] | None = None
        try:
            broker.start()
            broker.wait_for_metadata()
            simulator, api_url = start_simulator([
                "--seed", "5", "--cameras", str(options.cameras), "--people", str(options.people),
                "--visits-per-hour", str(options.rate * 3600), "--history-hours", "1", "--speed", "1",
            ])  # fmt: skip
            assert broker.proc is not None
            peers = {"simulator": Probe(simulator.pid), "broker": Probe(broker.proc.pid)}
            print(
                f"Tansu at {broker.bootstrap}; simulator at {api_url}: {options.cameras} cameras x "
                f"{options.rate:g} sightings/s, {options.people} people, live clock",
                file=sys.stderr,
            )
            for index, row in enumerate(rows):
                print(f"  {row.name}: warm-up {options.warmup:g} s, measuring {options.duration:g} s",
                      file=sys.stderr)  # fmt: skip
                measure(row, index, api_url, broker, peers, workdir, options.warmup, options.duration)
                print(f"  {row.name}: {row.cpu_percent:.1f} % of a core", file=sys.stderr)
        finally:
            stop(simulator)
            broker.stop()

    print()
    print(table(rows))
    default = rows[0].cpu_percent
    verdict = "met" if default < TARGET_CPU else "MISSED"
    print(f"\nsteady state, defaults: {default:.1f} % of a core (target < {TARGET_CPU:g} %): {verdict}")


if __name__ == "__main__":
    main()
