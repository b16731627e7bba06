"""`replay --dry-run` (read, number, build; no sink) of one world from this checkout and from
another one, alternating: is the path of this tree as fast as the other's?

    .venv/bin/python bench/dry_run_ab.py --other DIR [--rounds 9] [--pseudonymize]

DIR is a plain copy of another revision (`git archive main | tar -x -C DIR`). The simulator
(own process, frozen clock: 10 cameras, 40 people, 48 h, about 300,000 sightings) serves both.
Each replay runs as its own process from its tree (`python -m facespace_bridge` with the tree
first on the path); per run: the replay's own rate (its summary line) and the CPU seconds of
the process (interpreter start-up included) per event. `--pseudonymize` adds a third variant:
this tree with `--pseudonymize`. Prints every run, then the medians. Not a timed test.
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _bridge_harness import child_env, start_simulator, stop  # noqa: E402

from facespace_bridge.privacy.pseudonyms import KEY_VARIABLE  # noqa: E402

START, END = "2023-10-23T00:00:00+00:00", "2023-10-24T23:59:59+00:00"
KEY = "bench-pseudonym-key-of-at-least-32-bytes"


def dry_run(tree: Path, api_url: str, flags: list[str]) -> tuple[int, float, float]:
    """(events, the replay's events/s, CPU µs per event) of one `replay --dry-run` from `tree`."""
    env = {**child_env(api_url), "PYTHONPATH": str(tree), KEY_VARIABLE: KEY}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "facespace_bridge", "replay", "--start-time", START, "--end-time", END,
         "--dry-run", "--no-progress", "--log-level", "warning", *flags],
        cwd=tree, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    found = re.search(r"would publish (\d+) sightings .*\(([\d,]+) events/s\)", done.stdout)
    if found is None:
        raise SystemExit(f"no summary from the replay: {done.stdout}")
    events = int(found.group(1))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return events, float(found.group(2).replace(",", "")), cpu / events * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other", type=Path, required=True, help="a copy of the other revision")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pseudonymize", action="store_true", help="also this tree with --pseudonymize")
    options = parser.parse_args()
    variants = [("other", options.other.resolve(), []), ("this", HERE.parent, [])]
    if options.pseudonymize:
        variants.append(("this --pseudonymize", HERE.parent, ["--pseudonymize"]))
    simulator, api_url = start_simulator([
        "--seed", "11", "--cameras", "10", "--people", "40", "--history-hours", "48",
        "--visits-per-hour", "625", "--now", "2023-10-25T00:00:00+00:00", "--speed", "0",
    ])  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    try:
        dry_run(HERE.parent, api_url, [])  # the simulator generates the world once, untimed
        for round_ in range(options.rounds):
            for name, tree, flags in variants:
                events, rate, cpu = dry_run(tree, api_url, flags)
                runs[name].append((rate, cpu))
                print(
                    f"round {round_ + 1}: {name}: {events:,} events, {rate:,.0f} events/s, "
                    f"{cpu:.2f} µs CPU/event"
                )
    finally:
        stop(simulator)
    for name, found in runs.items():
        rate = statistics.median(r for r, _ in found)
        cpu = statistics.median(c for _, c in found)
        print(f"{name}: median {rate:,.0f} events/s, {cpu:.2f} µs CPU/event ({len(found)} runs)")


if __name__ == "__main__":
    main()
