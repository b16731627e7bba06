"""Shared by the bridge benchmarks: child processes (simulator, bridge), their CPU and memory,
the simulator's admin API, the bridge's metrics, a topic's true size, which Kafka clients this
build of the bridge offers, and py-spy profiles.

Every child is started by the caller inside try/finally with `stop()`, so Ctrl-C or an error
never leaves one behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' broker fixtures

from tests.fixtures.kafka import topic_size  # noqa: F401  (the benchmarks count topics with it)
from tests.fixtures.prometheus import metric_sum

CLI = [sys.executable, "-m", "facespace_bridge"]
API_KEY = "bench-key"


def child_env(api_url: str | None = None) -> dict[str, str]:
    """The key goes by environment, never argv."""
    env = {**os.environ, "FACESPACE_API_KEY": API_KEY}
    if api_url is not None:
        env["FACESPACE_API_URL"] = api_url
    return env


def start_simulator(flags: Sequence[str]) -> tuple[subprocess.Popen[str], str]:
    """`facespace-bridge simulate --port 0 <flags>` in its own process; returns it and its API URL."""
    from facespace_bridge.simulator import SimulatorProcess

    simulator = SimulatorProcess(API_KEY, args=flags).start()
    assert simulator.proc is not None
    return simulator.proc, simulator.base_url


def admin_url(api_url: str) -> str:
    return api_url.rsplit("/facespace", 1)[0] + "/admin"


def admin(api_url: str, method: str, path: str, body: Any = None, timeout: float = 300.0) -> Any:
    """One call to the simulator's admin API (never faulted)."""
    reply = httpx.request(
        method,
        f"{admin_url(api_url)}/{path}",
        json=body,
        headers={"x-api-key": API_KEY},
        timeout=timeout,
    )
    reply.raise_for_status()
    return reply.json()


def stop(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after `timeout`; returns the exit code."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


@dataclass
class Usage:
    cpu: float  # user + system seconds
    rss_mb: float  # resident now
    hwm_mb: float  # peak resident so far (VmHWM)


class Probe:
    """CPU and memory of one running process, read from /proc.

    VmHWM, not `ru_maxrss`: the kernel carries the parent's peak across fork+exec into the
    child's ru_maxrss, while VmHWM belongs to the new address space only.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.process = psutil.Process(pid)

    def usage(self) -> Usage:
        times = self.process.cpu_times()
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        hwm = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        return Usage(times.user + times.system, rss / 1024, hwm / 1024)

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


def metric_total(port: int, name: str, **labels: str) -> float:
    """Sum of one Prometheus metric's samples on the bridge's /metrics that match `labels`."""
    return metric_sum(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text, name, **labels)


def wait_until(condition: Any, timeout: float, every: float = 0.05, what: str = "condition") -> None:
    """Poll `condition()` until true; SystemExit after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(every)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Finished:
    code: int
    seconds: float  # from `began` to the exit
    cpu: float  # user + system seconds of the whole life, from the kernel (wait4)
    hwm_mb: float  # peak RSS (VmHWM), sampled until the exit


def wait_with_usage(
    process: subprocess.Popen[Any], began: float, timeout: float, every: float = 0.05
) -> Finished:
    """Reaps `process` itself (wait4) for its exact CPU time; samples VmHWM meanwhile, which only
    grows, so the last sample before the exit is its peak within `every` seconds."""
    deadline = time.monotonic() + timeout
    hwm = 0.0
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            ended = time.perf_counter()
            process.returncode = os.waitstatus_to_exitcode(status)
            return Finished(process.returncode, ended - began, usage.ru_utime + usage.ru_stime, hwm)
        if time.monotonic() > deadline:
            stop(process)
            raise SystemExit(f"{process.args!r} did not finish within {timeout:g} s")
        with contextlib.suppress(OSError, AttributeError):
            status_text = Path(f"/proc/{process.pid}/status").read_text()
            hwm = int(re.search(r"VmHWM:\s+(\d+)", status_text).group(1)) / 1024  # type: ignore[union-attr]
        time.sleep(every)


# -- Kafka clients ------------------------------------------------------------------------------

KAFKA_CLIENTS = ("librdkafka", "aiokafka")  # the bridge's default first


@cache
def _has_kafka_client_flag() -> bool:
    """Whether this build's `run` has `--kafka-client`; a build without it has aiokafka only."""
    shown = subprocess.run([*CLI, "run", "--help"], capture_output=True, text=True, timeout=120, check=True)
    return "--kafka-client" in shown.stdout


def kafka_clients(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the requested clients this build can run, in the order asked; those it cannot)."""
    offered = set(KAFKA_CLIENTS) if _has_kafka_client_flag() else {"aiokafka"}
    unknown = [c for c in requested if c not in KAFKA_CLIENTS]
    if unknown:
        choices = ", ".join(KAFKA_CLIENTS)
        raise SystemExit(f"unknown Kafka client(s) {', '.join(unknown)}: choose from {choices}")
    return [c for c in requested if c in offered], [c for c in requested if c not in offered]


def kafka_client_flags(client: str) -> list[str]:
    """`--kafka-client CLIENT` where the flag exists (else the build's only client is aiokafka)."""
    return ["--kafka-client", client] if _has_kafka_client_flag() else []


def clients_option(value: str) -> list[str]:
    """argparse type of `--clients librdkafka,aiokafka`."""
    return [c.strip() for c in value.split(",") if c.strip()]


def usable_clients(requested: Sequence[str]) -> list[str]:
    """The requested clients this build has; says on stderr which it skips, exits if none is left."""
    clients, missing = kafka_clients(requested)
    if missing:
        skipped = ", ".join(missing)
        print(f"skipping {skipped}: this build of the bridge has no --kafka-client", file=sys.stderr)
    if not clients:
        raise SystemExit("none of the requested Kafka clients is available in this build")
    return clients


# -- profiles -----------------------------------------------------------------------------------


class Profiler:
    """py-spy attached to one process for its whole life; its stacks summarised afterwards.
    Does nothing without a directory. The sampler takes CPU from the same cores, so rates
    measured with it attached are lower."""

    def __init__(self, directory: Path | None) -> None:
        self.directory = directory
        self.spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.process: subprocess.Popen[bytes] | None = None
        self.output: Path | None = None
        if directory is not None:
            if not Path(self.spy).exists():
                raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
            directory.mkdir(parents=True, exist_ok=True)

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
            self.process = None
        if self.output.exists():
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
    if not total:
        return "  no samples"
    rows = [f"  {total:,} samples; own % | inclusive % | function (file:line)"]
    for frame, samples in own.most_common(top):
        rows.append(f"  {100 * samples / total:5.1f} | {100 * inclusive[frame] / total:5.1f} | {frame}")
    rows.append("  top inclusive (not the entry points):")
    for frame, samples in inclusive.most_common(top + 10)[10:]:
        rows.append(f"        {100 * samples / total:5.1f} | {frame}")
    return "\n".join(rows)


# -- one measured child -------------------------------------------------------------------------


@dataclass
class Measured:
    finished: Finished
    stdout: str
    stderr: str


def run_measured(
    command: Sequence[str],
    env: dict[str, str],
    timeout: float,
    profiler: Profiler | None = None,
    name: str = "run",
) -> Measured:
    """Runs `command` to its exit: wall seconds from spawn, CPU (wait4) and peak RSS (VmHWM);
    its output goes through files, so a chatty child never blocks on a full pipe."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        began = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        if profiler is not None:
            profiler.attach(process.pid, name)
        try:
            finished = wait_with_usage(process, began, timeout)
        finally:
            stop(process)
        out.seek(0)
        err.seek(0)
        return Measured(finished, out.read().decode(errors="replace"), err.read().decode(errors="replace"))
