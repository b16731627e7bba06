"""Every benchmark of bench/, one after the other, each printing its own figures (`make bench`).

    .venv/bin/python bench/run_all.py [--quick]

The figures to compare are inside each script's output (a baseline measured in the same
run); bench/README.md says what each one measures. `--quick` runs the smaller sizes, for a
look in a few minutes rather than a record. A script that fails is reported and the rest
still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (script, full-size arguments, quick arguments)
BENCHES: list[tuple[str, list[str], list[str]]] = [
    ("validators.py", [], ["--number", "2000"]),
    ("simulator_rate.py", [], ["--entries", "200000"]),
    ("client_stream_memory.py", [], ["--entries", "200000"]),
    ("kafka_replay.py", [], ["--sightings", "200000", "--small", "100000"]),
    ("cloudevents_headers.py", ["--kafka"], ["--events", "50000", "--repeat", "2"]),
    ("bridge_overhead.py", [], ["--count", "100000", "--rounds", "1"]),
    ("bridge_backfill.py", ["--rounds", "2"], ["--count", "200000"]),
    ("bridge_backfill.py", ["--exactly-once"], ["--count", "200000", "--exactly-once"]),
    ("two_sinks.py", [], ["--count", "100000"]),
    ("bridge_steady_state.py", [], ["--duration", "20", "--warmup", "10"]),
    ("mqtt_latency_throughput.py", [], ["--count", "5000", "--repeats", "1"]),
    ("mqtt_presence_latency.py", [], ["--samples", "20"]),
    ("ha_history_events.py", [], ["--seconds", "20"]),
    ("sighting_latency.py", [], ["--visits", "40"]),
    ("web_page.py", [], ["--count", "200000", "--rounds", "1", "--soak-seconds", "60"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes: minutes, not a record")
    options = parser.parse_args()
    failed = []
    for script, full, quick in BENCHES:
        args = quick if options.quick else full
        print(f"\n=== bench/{script} {' '.join(args)}", flush=True)
        began = time.monotonic()
        code = subprocess.call([sys.executable, str(HERE / script), *args])
        print(f"=== bench/{script}: exit {code} after {time.monotonic() - began:.0f} s", flush=True)
        if code != 0:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
