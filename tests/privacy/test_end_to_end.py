"""`--exclude-person` end to end, against ground truth: the real CLI in a subprocess, the
simulator over real HTTP, a real Kafka-protocol broker and a real Mosquitto.

The simulator's companion is seen on every camera, in the same seconds as everyone else and
sometimes twice in a second; the API sends their name decomposed (NFD), the bridge is told it
composed (NFC); two malformed entries name them, one names nobody. One bridge run (Kafka and
MQTT with Home Assistant discovery, /status, /metrics, the web page, logs at debug) and a
restart on its checkpoint, then `replay` with and without the filter and `check` with it.
Everything any of them wrote is read back (every Kafka topic and record, the whole MQTT
tree with every message and what is retained, /status, /metrics, the page's state and its
WebSocket snapshot, every log line): the name appears in none of it, in any form; everyone
else's sightings are all there, once, with the ids a run without the filter gives them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import httpx
import orjson
import pytest

from facespace_bridge.embedded import free_port
from tests.fixtures.kafka import read_all
from tests.fixtures.mqtt import MqttCollector, retained_async
from tests.fixtures.prometheus import metric_sum

pytestmark = pytest.mark.slow

SURNAME = "Quillfeather"  # in no other name of the world, so any trace of them is findable
NFC = unicodedata.normalize("NFC", f"Zoë {SURNAME}")
NFD = unicodedata.normalize("NFD", f"Zoë {SURNAME}")


def forms_of_the_name() -> list[bytes]:
    """Every way the name could show in bytes: UTF-8 either form, JSON's ASCII escapes, and the
    surname alone in lower case (topic segments, entity ids, slugs), checked case-insensitively."""
    forms = {NFC.encode(), NFD.encode(), json.dumps(NFC).encode(), json.dumps(NFD).encode()}
    return [*sorted(forms), SURNAME.lower().encode()]


def matches(data: bytes) -> int:
    lowered = data.lower()
    return sum(lowered.count(form.lower()) for form in forms_of_the_name())


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Bridge:
    """`facespace-bridge run` into Kafka and MQTT, its log at debug in a file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, metrics_port: int) -> None:
        self.args, self.env, self.log_path, self.port = args, env, log, metrics_port
        handle = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "facespace_bridge", *args], env=env,
                                     stdout=handle, stderr=handle)  # fmt: skip
        handle.close()

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=10)

    async def until(self, predicate, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-3000:]
                raise AssertionError(f"bridge exited {self.proc.returncode}: {tail}")
            try:
                if predicate():
                    return
            except (httpx.TransportError, FileNotFoundError, orjson.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.2)

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.get("/metrics").text, name, **labels)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def test_an_excluded_person_leaves_no_trace_and_everyone_else_is_all_there(
    simulator_factory, kafka, kafka_topic, mqtt_broker, tmp_path
):
    sim = simulator_factory(now=None, speed=1.0, camera_ids=None, cameras=3, people=8, history_hours=1,
                            visits_per_hour=240, companion=NFD)  # fmt: skip
    world = sim.world
    start = world.now().replace(second=0, microsecond=0) - timedelta(minutes=15)
    # Malformed entries among the history: two name the companion (dropped), one nobody (a dead letter).
    world.insert_malformed("Camera1", f"{NFD} @ 99:99:99 junk", start + timedelta(minutes=5))
    world.insert_malformed("Camera3", {"who": NFD}, start + timedelta(minutes=6))
    world.insert_malformed("Camera2", "junk that names nobody", start + timedelta(minutes=7))
    topics = {"sightings": kafka_topic, "presence": f"{kafka_topic}.presence",
              "deadletter": f"{kafka_topic}.deadletter"}  # fmt: skip
    checkpoint = tmp_path / "checkpoint.json"
    env = {**os.environ, "FACESPACE_API_KEY": sim.api_key, "FACESPACE_API_URL": sim.base_url}
    port = free_port()
    args = [
        "run", "--broker", "kafka", "--broker", "mqtt",
        "--bootstrap-servers", kafka.bootstrap, "--topic", topics["sightings"],
        "--presence-topic", topics["presence"], "--deadletter-topic", topics["deadletter"],
        "--mqtt-url", mqtt_broker.url,
        "--exclude-person", NFC,
        "--backfill-from", start.isoformat(), "--checkpoint", str(checkpoint),
        "--tail-interval", "0.5", "--refresh", "0.3", "--log-level", "debug",
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--web-port", "0",
    ]  # fmt: skip
    scanned: dict[str, list[bytes]] = {}
    bridges: list[Bridge] = []
    with MqttCollector(mqtt_broker, "#", persistent=True, client_id="privacy-e2e") as collector:
        try:
            first = Bridge(args, env, tmp_path / "bridge.log", port)
            bridges.append(first)

            def backfilled() -> bool:
                state = orjson.loads(checkpoint.read_bytes())
                return bool(state.get("backfill", {}).get("complete"))

            await first.until(backfilled, "the backfill")
            await asyncio.sleep(1.5)  # the tail and the presence at work on the live world
            world.freeze()
            frozen = world.now()
            truth = [(c, p, at) for c, p, at in world.entries(start, frozen)]
            others = Counter((c, p, at) for c, p, at in truth if p != NFD)
            companions = sum(p == NFD for _, p, _ in truth)
            assert companions > len(truth) / 4
            assert {c for c, p, _ in truth if p == NFD} == set(world.cameras())

            async def sightings() -> list:
                return await read_all(kafka.bootstrap, topics["sightings"])

            records: list = []

            async def all_published() -> bool:
                nonlocal records
                records = await sightings()
                got = Counter((v["camera_id"], v["person"], when(v["seen_at"]))
                              for v in map(orjson.loads, [r.value for r in records]))  # fmt: skip
                return got == others

            deadline = time.monotonic() + 60
            while not await all_published():
                assert time.monotonic() < deadline, "the others' sightings never all arrived in Kafka"
                assert first.proc.poll() is None, first.log_path.read_text()[-3000:]
                await asyncio.sleep(0.5)
            # Counted once each: every sighting of theirs, and the two malformed entries naming them.
            await first.until(
                lambda: first.metric("facespace_bridge_filtered_total", reason="person") == companions + 2,
                "the filtered count",
            )
            assert first.metric("facespace_bridge_filtered_total", reason="camera") == 0
            await first.until(lambda: first.get("/status").json()["state"] == "RUNNING", "RUNNING")
            page_url = re.search(rb"web page at (\S+)", first.log_path.read_bytes()).group(1).decode()
            scanned["/status"] = [first.get("/status").content]
            scanned["/metrics"] = [first.get("/metrics").content]
            async with aiohttp.ClientSession() as http:
                async with http.get(page_url + "api/state") as reply:
                    state = await reply.read()
                async with http.ws_connect(page_url + "api/live") as ws:
                    snapshot = (await ws.receive(timeout=10)).data.encode()
            page = orjson.loads(state)
            assert page["sightings"] and orjson.loads(snapshot)["type"] == "snapshot"  # (a page with content)
            scanned["web page"] = [state, snapshot]
            assert first.stop() == 0

            # A restart on the checkpoint: nothing is read twice (no sighting, no count again).
            second = Bridge(args, env, tmp_path / "bridge.log", port)
            bridges.append(second)
            await second.until(lambda: second.get("/status").json()["state"] == "RUNNING", "the restart")
            await asyncio.sleep(2.5)  # several tail polls of the look-back window
            assert second.metric("facespace_bridge_filtered_total", reason="person") == 0
            sent = second.metric("facespace_bridge_events_published_total", sink="kafka", type="sighting")
            assert sent == 0
            scanned["/status"].append(second.get("/status").content)
            scanned["/metrics"].append(second.get("/metrics").content)
            assert second.stop() == 0
        finally:
            for bridge in bridges:
                bridge.kill()
        await asyncio.sleep(0.5)  # the last messages to the collector
        mqtt_messages = collector.snapshot()

    # Kafka: every record of every topic the bridge wrote, whole.
    records = await sightings()
    payloads = [orjson.loads(r.value) for r in records]
    ids = Counter(p["event_id"] for p in payloads)
    assert max(ids.values()) == 1  # nothing twice, across the restart
    assert Counter((p["camera_id"], p["person"], when(p["seen_at"])) for p in payloads) == others
    letters = await read_all(kafka.bootstrap, topics["deadletter"])
    assert [orjson.loads(r.value)["raw"] for r in letters] == ["junk that names nobody"]
    presence = await read_all(kafka.bootstrap, topics["presence"])
    assert presence and any(orjson.loads(r.value)["people"] for r in presence)
    for kind, topic in topics.items():
        found = letters if kind == "deadletter" else presence if kind == "presence" else records
        scanned[f"Kafka {kind}"] = [topic.encode()] + [
            b"".join([r.key or b"", r.value or b"", *(k.encode() + v for k, v in r.headers.items())])
            for r in found
        ]

    # MQTT: every message the bridge sent (topics and payloads), and everything retained now.
    held = await retained_async(mqtt_broker, "#")
    scanned["MQTT messages"] = [m.topic.encode() + m.payload for m in mqtt_messages]
    scanned["MQTT retained"] = [topic.encode() + payload for topic, payload in held.items()]
    mqtt_sightings = Counter()
    for message in mqtt_messages:
        if message.topic.endswith("/sighting") and message.topic.count("/") == 2:
            payload = orjson.loads(message.payload)
            mqtt_sightings[(payload["camera_id"], payload["person"], when(payload["seen_at"]))] += 1
    assert set(mqtt_sightings) == set(others)  # (QoS 1: a repeat would be allowed, a gap not)
    assert any(topic.startswith("homeassistant/") for topic in held)  # discovery did run

    # replay, with and without the filter, over the frozen world; check with it.
    end = (frozen - timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

    async def cli(*arguments: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "facespace_bridge", *arguments]
        return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, timeout=120)

    def replay(topic: str, *extra: str):
        return cli("replay", "--start-time", start.isoformat(), "--end-time", end, "--broker", "kafka",
                   "--bootstrap-servers", kafka.bootstrap, "--topic", topic,
                   "--deadletter-topic", f"{topic}.deadletter", "--log-level", "debug", *extra)  # fmt: skip

    unfiltered = await replay(f"{kafka_topic}.all")
    filtered = await replay(f"{kafka_topic}.filtered", "--exclude-person", NFC)
    assert unfiltered.returncode == 0 and filtered.returncode == 0, (unfiltered.stderr, filtered.stderr)
    all_records = await read_all(kafka.bootstrap, f"{kafka_topic}.all")
    assert sum(matches(r.value) for r in all_records) > 0  # the scan sees them where they are
    everyone = [orjson.loads(r.value) for r in all_records]
    replayed = await read_all(kafka.bootstrap, f"{kafka_topic}.filtered")
    replayed_letters = await read_all(kafka.bootstrap, f"{kafka_topic}.filtered.deadletter")
    without_them = [p["event_id"] for p in everyone if p["person"] != NFD]
    assert len(without_them) < len(everyone)
    assert [orjson.loads(r.value)["event_id"] for r in replayed] == without_them
    # The bridge's ids are those of a run without the filter.
    in_range = {p["event_id"] for p in payloads if when(p["seen_at"]) <= when(end)}
    assert in_range == set(without_them)
    assert len(replayed_letters) == 1
    scanned["replay (filtered)"] = [filtered.stdout, filtered.stderr] + [
        b"".join([r.key or b"", r.value or b"", *(k.encode() + v for k, v in r.headers.items())])
        for r in [*replayed, *replayed_letters]
    ]
    checked = await cli("check", *args[1:])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    scanned["check"] = [checked.stdout, checked.stderr]
    scanned["bridge log (debug)"] = [(tmp_path / "bridge.log").read_bytes()]

    report = {where: (sum(map(len, parts)), sum(map(matches, parts))) for where, parts in scanned.items()}
    print("\nscanned for the excluded name (bytes, matches):")
    for where, (size, found) in report.items():
        print(f"  {where:<22} {size:>12,} bytes  {found} matches")
    assert all(size > 0 for size, _ in report.values())
    assert {where: found for where, (_, found) in report.items() if found} == {}
