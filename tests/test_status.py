"""`GET /status`, `/readyz` and the state metrics of a running bridge (facespace_bridge/status.py).

The bridge runs as users run it (the CLI, in a subprocess) against the simulator over HTTP,
with a real Kafka broker whose connection the tests cut, and API faults from the simulator.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest

from facespace_bridge.embedded import free_port
from facespace_bridge.metrics import STATES
from facespace_bridge.status import State
from tests.fixtures.prometheus import metric_sum

CLI = [sys.executable, "-m", "facespace_bridge"]


class RunningBridge:
    def __init__(self, sim: Any, tmp_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log = tmp_path / "bridge.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))}
        env |= {
            "FACESPACE_API_KEY": sim.api_key,
            "FACESPACE_API_URL": sim.base_url,
            "XDG_STATE_HOME": str(tmp_path / "state"),
        }
        with open(self.log, "ab") as handle:
            self.proc = subprocess.Popen(
                [*CLI, *args, "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1",
                 "--refresh", "0.3", "--tail-interval", "0.5", "--api-timeout", "2"],
                env=env, stdout=handle, stderr=handle,
            )  # fmt: skip

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def status(self) -> dict[str, Any]:
        return self.get("/status").json()

    async def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        document: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                document = self.status()
                if predicate(document):
                    return document
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"no {what} within {timeout} s; last status: {document}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


@pytest.fixture
def bridges():
    started: list[RunningBridge] = []
    yield started
    for bridge in started:
        if bridge.proc.poll() is None:
            bridge.proc.kill()
            bridge.proc.wait()


def running(document: dict[str, Any]) -> bool:
    return document["state"] == "RUNNING"


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_status_reports_sinks_sources_cameras_and_backfill(simulator, tmp_path, bridges):
    out = tmp_path / "out.jsonl"
    bridge = RunningBridge(
        simulator, tmp_path, "--broker", "file", "--output", str(out), "--backfill-from", "24/10/23"
    )
    bridges.append(bridge)
    document = await bridge.wait(
        lambda d: running(d) and d["backfill"] and d["backfill"]["done"], 60, "RUNNING with the backfill done"
    )
    assert bridge.get("/readyz").status_code == 200
    assert document["problems"] == []
    assert document["backfill"]["from"] == "2023-10-24T00:00:00Z"
    # T0 is the simulator's "now" (frozen) as the bridge's clock saw it: before the real now.
    assert when(document["backfill"]["to"]) < datetime.now(timezone.utc)
    assert document["backfill"]["progress"] == 1.0
    assert when(document["backfill"]["position"]) >= when(document["backfill"]["to"])
    sink = document["sinks"]["file"]
    written = sum(1 for _ in out.open())
    assert sink["connected"] is True and sink["last_error"] is None
    assert 0 < sink["acknowledged"] <= written  # the file has what was acknowledged (and maybe more)
    assert set(document["sources"]) == {"realtime", "logs"}
    for source in document["sources"].values():
        assert source["state"] == "polling" and source["last_error"] is None
        assert abs(when(source["last_poll"]) - datetime.now(timezone.utc)) < timedelta(seconds=30)
    truth = {camera for camera, _, _ in simulator.world.entries(datetime(2023, 10, 24, tzinfo=timezone.utc))}
    assert set(document["cameras"]) == truth
    for camera in document["cameras"].values():
        assert when(camera["position"]) >= datetime(2023, 10, 24, tzinfo=timezone.utc)
        assert camera["count"] >= 0 and camera["lag_seconds"] > 0  # the world is frozen in 2023

    metrics = bridge.get("/metrics").text
    assert 'facespace_bridge_state{state="RUNNING"} 1.0' in metrics
    assert sum(f'facespace_bridge_state{{state="{s}"}} 1.0' in metrics for s in STATES) == 1
    assert 'facespace_bridge_sink_connected{sink="file"} 1.0' in metrics
    assert bridge.stop() == 0


async def test_api_faults_degrade_and_count_retries_then_recover(simulator, tmp_path, bridges):
    out = tmp_path / "out.jsonl"
    bridge = RunningBridge(simulator, tmp_path, "--broker", "file", "--output", str(out))
    bridges.append(bridge)
    await bridge.wait(running, 30, "RUNNING")
    simulator.set_faults(error_rate=1.0)
    degraded = await bridge.wait(lambda d: d["state"] == "DEGRADED", 10, "DEGRADED with the API failing")
    assert any(problem.startswith("source ") for problem in degraded["problems"])
    failing = [s for s in degraded["sources"].values() if s["state"] == "failing"]
    assert failing and all("HTTP 5" in s["last_error"] or "50" in s["last_error"] for s in failing)
    assert bridge.get("/readyz").status_code == 503
    assert metric_sum(bridge.get("/metrics").text, "facespace_bridge_api_retries_total") >= 1
    assert simulator.api_key not in bridge.get("/status").text
    simulator.reset_faults()
    await bridge.wait(running, 90, "RUNNING again once the API answers")
    assert bridge.stop() == 0


async def test_a_broker_outage_degrades_within_seconds_and_recovers(
    simulator_factory, kafka, kafka_topic, tmp_path, bridges
):
    if not kafka.can_interrupt:
        pytest.skip(kafka.why_not_interruptible())
    live = {
        "now": None,
        "speed": 1.0,
        "camera_ids": None,
        "cameras": 3,
        "visits_per_hour": 3600,
        "history_hours": 1,
    }
    sim = simulator_factory(**live)
    bridge = RunningBridge(
        sim, tmp_path, "--broker", "kafka", "--bootstrap-servers", kafka.bootstrap, "--topic", kafka_topic
    )
    bridges.append(bridge)
    await bridge.wait(lambda d: running(d) and d["sinks"]["kafka"]["acknowledged"] > 0, 60, "RUNNING")
    kafka.down()
    try:
        cut = time.monotonic()
        degraded = await bridge.wait(
            lambda d: d["state"] in ("DEGRADED", "FAILED"), 20, "DEGRADED with the broker gone"
        )
        took = time.monotonic() - cut
        assert degraded["sinks"]["kafka"]["connected"] is False
        assert "sink kafka: not delivering" in degraded["problems"]
        assert 'facespace_bridge_sink_connected{sink="kafka"} 0.0' in bridge.get("/metrics").text
        print(f"\nDEGRADED {took:.1f} s after the broker went away")
    finally:
        kafka.up()
    document = await bridge.wait(running, 90, "RUNNING once the broker is back")
    assert document["sinks"]["kafka"]["connected"] is True
    assert bridge.stop() == 0


def test_the_states_the_metrics_know_are_the_states_the_status_has():
    assert STATES == tuple(state.value for state in State)
