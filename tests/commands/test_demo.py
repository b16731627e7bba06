"""`facespace-bridge demo` (what `make demo` runs): every part starts, events reach both brokers,
and it stops cleanly by itself or on SIGINT."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson

from facespace_bridge.schemas import validate

REPO = Path(__file__).resolve().parents[2]


def summary(stderr: str) -> dict[str, int]:
    pattern = r"stopped: (\d+) sightings, (\d+) presence events, (\d+) dead letters; acknowledged (.*)"
    match = re.search(pattern, stderr.replace("\n", " "))
    assert match, stderr[-2000:]
    acked = dict(re.findall(r"(\w+)\s+(\d+)", match.group(4)))
    return {"sightings": int(match.group(1)), "presence": int(match.group(2)),
            **{sink: int(n) for sink, n in acked.items()}}  # fmt: skip


def test_demo_runs_the_whole_pipeline_and_stops_on_its_own():
    result = subprocess.run(
        [sys.executable, "-m", "facespace_bridge", "demo", "--duration", "6", "--backfill-minutes", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = summary(result.stderr)
    assert figures["sightings"] > 0 and figures["presence"] > 0
    # Both brokers acknowledged every event the bridge handed over.
    assert figures["kafka"] == figures["mqtt"] == figures["sightings"] + figures["presence"]
    assert "Traceback" not in result.stderr


def test_demo_serves_the_page_and_stops_cleanly_on_ctrl_c():
    proc = subprocess.Popen(
        [sys.executable, "-m", "facespace_bridge", "demo", "--backfill-minutes", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    output = Lines(proc.stderr)
    lines = output.wait_for(
        lambda ls: any(line.startswith("web page: ") for line in ls), 90, "the page's URL"
    )
    url = next(line for line in lines if line.startswith("web page: ")).split()[-1]
    # The page shows the demo's world: its four cameras.
    deadline = time.monotonic() + 60
    cameras: set[str] = set()
    while time.monotonic() < deadline and cameras != {"Camera1", "Camera2", "Camera3", "Camera4"}:
        cameras = set(httpx.get(url + "api/state", timeout=10).json()["cameras"])
        time.sleep(0.5)
    assert cameras == {"Camera1", "Camera2", "Camera3", "Camera4"}
    assert "FaceSpace bridge" in httpx.get(url, timeout=10).text
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group
    proc.wait(timeout=30)
    stderr = "\n".join(output.wait_for(lambda ls: any("stopped:" in line for line in ls), 10, "the summary"))
    assert proc.returncode == 0, stderr[-2000:]
    assert summary(stderr)["kafka"] > 0 and summary(stderr)["mqtt"] > 0
    # The brokers outlive the bridge: nothing warns of a lost broker on the way out.
    assert "WARNING" not in stderr and "Traceback" not in stderr, stderr[-2000:]


class Lines:
    """A child's output, read line by line in a thread (a demo or a watch command runs on)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float, what: str) -> list[str]:
        deadline = time.monotonic() + timeout
        while not predicate(list(self.lines)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.1)
        return list(self.lines)


def printed_hints(lines: list[str]) -> list[str]:
    """The indented commands under the demo's "watch it from another terminal" line."""
    start = next(i for i, line in enumerate(lines) if line.startswith("watch it from another terminal"))
    hints = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        hints.append(line.strip())
    return hints


def test_every_command_the_demo_prints_works_as_printed_against_its_brokers():
    started = datetime.now(timezone.utc).replace(microsecond=0)
    demo = subprocess.Popen(
        [sys.executable, "-m", "facespace_bridge", "demo", "--backfill-minutes", "2"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    watchers: list[tuple[str, subprocess.Popen, Lines]] = []
    try:
        output = Lines(demo.stderr)
        lines = output.wait_for(
            lambda ls: any(line.startswith("  mosquitto_sub") for line in ls),  # the last of them
            timeout=90,
            what="the demo's watch commands",
        )
        hints = printed_hints(lines)
        assert [hint.split()[1].endswith("kafka_consumer.py") for hint in hints[:1]] == [True], hints
        assert any(hint.startswith("mosquitto_sub ") for hint in hints), hints
        for hint in hints:
            # As a user would paste it: through a shell, from the directory the demo ran in.
            proc = subprocess.Popen(
                hint, shell=True, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
            watchers.append((hint, proc, Lines(proc.stdout)))
        for hint, proc, seen in watchers:
            if "kafka_consumer.py" in hint:
                got = seen.wait_for(lambda ls: sum(bool(SIGHTING_LINE.match(x)) for x in ls) >= 5, 60, hint)
                for line in got:
                    match = SIGHTING_LINE.match(line)
                    if match:  # a sighting of the demo's world: its cameras, within its history and now
                        seen_at = datetime.fromisoformat(match["seen_at"].replace("Z", "+00:00"))
                        assert match["camera"] in DEMO_CAMERAS, line
                        assert started - timedelta(minutes=40) <= seen_at <= datetime.now(timezone.utc), line
                    else:
                        assert STORED_LINE.match(line), line
            else:
                got = seen.wait_for(lambda ls: sum("/sighting " in x for x in ls) >= 1, 60, hint)
                for line in got:
                    topic, _, payload = line.partition(" ")
                    assert topic.startswith("facespace/"), line
                    if topic.endswith("/sighting"):
                        sighting = orjson.loads(payload)
                        assert validate(sighting) == [], line
                        assert sighting["camera_id"] in DEMO_CAMERAS, line
            assert proc.poll() is None, f"{hint} exited: {seen.lines[-5:]}"
    finally:
        for _, proc, _ in watchers:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as the user stops them
        for hint, proc, seen in watchers:
            proc.wait(timeout=10)
            assert "Traceback" not in "\n".join(seen.lines), hint
        demo.send_signal(signal.SIGINT)
        demo.wait(timeout=30)
    assert demo.returncode == 0, "\n".join(output.lines[-40:])


DEMO_CAMERAS = {f"Camera{n}" for n in range(1, 5)}
SIGHTING_LINE = re.compile(r"(?P<seen_at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)  (?P<camera>\S+)\s+(?P<person>.+)$")
STORED_LINE = re.compile(r"-- \d+ stored, \d+ duplicates skipped$")
