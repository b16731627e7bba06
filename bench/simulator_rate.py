"""How many history entries per second the simulator serves over real HTTP.

Starts `facespace-bridge simulate` in its own process (as the bridge's benchmarks do) with
a world of about 1,000,000 entries in the asked range, then times, from the client side
(request, transfer and `orjson.loads` of the body):

  1. the range in one-hour windows (every camera per request), cold (a fresh simulator:
     the hours are generated on demand);
  2. the whole range in one request, cold;
  3. the same request again, warm (hours cached);
  4. the range in one-hour windows, warm.

Baseline printed beside them: how fast the project's client parses entries
(`parse_entry`), i.e. what the bridge can consume; the simulator should be well above it.

    .venv/bin/python bench/simulator_rate.py [--entries 1000000] [--cameras 10] [--hours 100]
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timedelta, timezone

import httpx
import orjson

from facespace_bridge.client.entries import parse_entry
from facespace_bridge.simulator import SimulatorProcess

NOW = datetime(2023, 10, 25, tzinfo=timezone.utc)
KEY = "bench-key"


def start_simulator(cameras: int, hours: int, per_hour: float) -> SimulatorProcess:
    return SimulatorProcess(
        KEY, now=NOW, speed=0, seed=1, cameras=cameras, people=500,
        history_hours=hours, visits_per_hour=per_hour,
    ).start()  # fmt: skip


def fetch(client: httpx.Client, base: str, start: datetime, end: datetime) -> tuple[int, int, float]:
    """(entries, body bytes, seconds) of one /logs request, the body decoded as a client would."""
    params = {"start_time": f"{start:%H:%M %d/%m/%y}", "end_time": f"{end:%H:%M %d/%m/%y}"}
    began = time.perf_counter()
    reply = client.get(f"{base}/logs", params=params)
    reply.raise_for_status()
    body = orjson.loads(reply.content)
    took = time.perf_counter() - began
    return sum(map(len, body.values())), len(reply.content), took


def windows(client: httpx.Client, base: str, start: datetime, end: datetime) -> tuple[int, int, float]:
    """The range as one-hour requests (every camera each), totalled."""
    entries, size, took = 0, 0, 0.0
    hour = start
    while hour <= end:
        n, b, t = fetch(client, base, hour, min(hour + timedelta(minutes=59), end))
        entries, size, took = entries + n, size + b, took + t
        hour += timedelta(hours=1)
    return entries, size, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--cameras", type=int, default=10)
    parser.add_argument("--hours", type=int, default=100)
    args = parser.parse_args()
    per_hour = args.entries / (args.cameras * args.hours)
    start, end = NOW - timedelta(hours=args.hours), NOW - timedelta(minutes=1)  # whole minutes, inside
    rows: list[tuple[str, int, int, float]] = []
    for fresh in (True, False):
        simulator = start_simulator(args.cameras, args.hours, per_hour)
        base = simulator.base_url
        try:
            with httpx.Client(headers={"x-api-key": KEY}, timeout=600) as client:
                if fresh:  # a simulator of its own, so that the windows generate their hours
                    rows.append((f"{args.hours} hour windows, cold", *windows(client, base, start, end)))
                    continue
                for label in ("one request, cold", "one request, warm"):
                    rows.append((label, *fetch(client, base, start, end)))
                rows.append((f"{args.hours} hour windows, warm", *windows(client, base, start, end)))
                sample = client.get(f"{base}/logs", params={"start_time": f"{start:%H:%M %d/%m/%y}"}).json()
        finally:
            simulator.stop()

    raws = [(camera, raw) for camera, items in sample.items() for raw in items][:200_000]
    began = time.perf_counter()
    for camera, raw in raws:
        parse_entry(camera, raw)
    parse_rate = len(raws) / (time.perf_counter() - began)

    print(f"simulator over HTTP: {args.cameras} cameras x {args.hours} h x {per_hour:g} visits/h")
    print(f"{'case':<28} {'entries':>10} {'MB':>8} {'seconds':>8} {'entries/s':>12}")
    for label, n, size, took in rows:
        print(f"{label:<28} {n:>10,} {size / 1e6:>8.1f} {took:>8.2f} {n / took:>12,.0f}")
    print(f"{'baseline: client parse_entry':<28} {len(raws):>10,} {'':>8} {'':>8} {parse_rate:>12,.0f}")


if __name__ == "__main__":
    main()
