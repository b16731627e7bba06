"""`facespace-bridge demo` (what `make demo` runs): every part starts, events reach both brokers,
and it stops cleanly by itself or on SIGINT."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time

import httpx


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
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "facespace_bridge", "demo", "--backfill-minutes", "1", "--no-mqtt"],
            stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            err.seek(0)
            found = re.search(r"web page: (http://127\.0\.0\.1:\d+/)", err.read())
            url = found.group(1) if found else None
        assert url, "the demo printed no web page URL"
        # The page shows the demo's world: its four cameras.
        cameras: set[str] = set()
        while time.monotonic() < deadline and cameras != {"Camera1", "Camera2", "Camera3", "Camera4"}:
            cameras = set(httpx.get(url + "api/state", timeout=10).json()["cameras"])
            time.sleep(0.5)
        assert cameras == {"Camera1", "Camera2", "Camera3", "Camera4"}
        assert "FaceSpace bridge" in httpx.get(url, timeout=10).text
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        err.seek(0)
        stderr = err.read()
    assert proc.returncode == 0, stderr[-2000:]
    assert summary(stderr)["kafka"] > 0
