"""`--pseudonymize` end to end, against ground truth: the simulator's world over real HTTP, the
real CLI in subprocesses, a real Kafka-protocol broker and a real Mosquitto.

One bridge run (Kafka, MQTT with Home Assistant discovery and a file; the web page and the
metrics port; the checkpoint in Kafka; logging at debug), a restart, and two replays of the
backfilled range (the same key, another key) are read back whole and searched for every
name the simulator knows, in every form a sink could write it (as sent, NFC, NFD, JSON
escaped, as a topic segment and a Home Assistant id): Kafka values, keys, headers and topic
names (dead letters and the checkpoint topic included), the whole MQTT tree as sent and as
retained, the file, the checkpoint, /status, /metrics, the page's state and the log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import unicodedata
import uuid
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
from aiokafka import AIOKafkaClient

from facespace_bridge.checkpoints.file import FileCheckpointStore
from facespace_bridge.checkpoints.kafka import OFFSETS_TOPIC, KafkaCheckpointStore
from facespace_bridge.embedded import free_port
from facespace_bridge.privacy.pseudonyms import KEY_VARIABLE, Pseudonyms
from facespace_bridge.schemas import validate
from facespace_bridge.simulator._faults import MALFORMED_SAMPLES
from facespace_bridge.sinks.mqtt.topics import id_slug, topic_segment
from tests.fixtures.kafka import Record, read_all
from tests.fixtures.mqtt import MqttCollector, retained
from tests.fixtures.prometheus import metric_sum

KEY = "0123456789abcdef-the-pseudonym-key"  # 34 bytes
OTHER_KEY = "fedcba9876543210-another-pseudonym-key"
PSEUDONYM = re.compile(r"p_[0-9a-f]{20}")


def name_forms(names: list[str]) -> dict[bytes, str]:
    """Every byte string that would betray a name -> the name: as sent, NFC, NFD, JSON with
    ASCII escapes, as an MQTT topic segment and as a Home Assistant id (as is and lower case,
    and its readable part without the hash)."""
    forms: dict[bytes, str] = {}
    for name in names:
        texts = {
            name,
            unicodedata.normalize("NFC", name),
            unicodedata.normalize("NFD", name),
            json.dumps(name)[1:-1],
            topic_segment(name),
        }
        slug = id_slug(name)
        texts |= {slug, slug.lower()}
        if slug != name and "_" in slug:
            readable = slug.rsplit("_", 1)[0]
            texts |= {readable, readable.lower()}
        for text in texts:
            if len(text) >= 3:
                forms[text.encode()] = name
    return forms


def matches(blob: bytes, forms: dict[bytes, str]) -> list[str]:
    """The names whose forms occur in `blob` as whole words (a name is never part of a word)."""
    found = []
    for form, name in forms.items():
        pattern = rb"(?<![A-Za-z0-9])" + re.escape(form) + rb"(?![A-Za-z0-9])"
        if re.search(pattern, blob):
            found.append(f"{name!r} as {form!r}")
    return found


def bridge_args(sim, kafka, mqtt_broker, topic: str, tmp_path: Path, instance: str, ports: dict) -> list[str]:
    return [
        sys.executable, "-m", "facespace_bridge", "run",
        "--broker", "kafka", "--broker", "mqtt", "--broker", "file",
        "--bootstrap-servers", kafka.bootstrap,
        "--topic", topic, "--presence-topic", f"{topic}.presence",
        "--deadletter-topic", f"{topic}.deadletter",
        "--mqtt-url", mqtt_broker.url,
        "--output", str(tmp_path / "events.jsonl"),
        "--checkpoint", "kafka", "--instance-id", instance,
        "--backfill-from", ports["backfill_from"],
        "--tail-interval", "0.5", "--refresh", "0.5",
        "--metrics-port", str(ports["metrics"]), "--metrics-host", "127.0.0.1",
        "--web-port", str(ports["web"]),
        "--log-level", "debug",
        "--pseudonymize",
    ]  # fmt: skip


def environment(sim, key: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))}
    return {**base, "FACESPACE_API_KEY": sim.api_key, "FACESPACE_API_URL": sim.base_url, KEY_VARIABLE: key}


class BridgeRun:
    """`facespace-bridge run` in a subprocess, its output appended to `log`."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, ports: dict) -> None:
        self.args, self.env, self.log, self.ports = args, env, log, ports
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)

    def get(self, port: str, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.ports[port]}{path}", timeout=5)

    def cmdline(self) -> bytes:
        return Path(f"/proc/{self.proc.pid}/cmdline").read_bytes()

    def alive(self, deadline: float, what: str) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log tail:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=15) == 0, self.log.read_text()[-3000:]

    def published_sightings(self) -> float:
        metrics = self.get("metrics", "/metrics").text
        return metric_sum(metrics, "facespace_bridge_events_published_total", sink="kafka", type="sighting")


async def until(predicate, bridge: BridgeRun, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except httpx.HTTPError:
            pass
        bridge.alive(deadline, what)
        await asyncio.sleep(0.2)


def replay(sim, kafka, topic: str, key: str, start: str, end: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "facespace_bridge", "replay", "--broker", "kafka",
        "--bootstrap-servers", kafka.bootstrap, "--topic", topic,
        "--presence-topic", f"{topic}.presence", "--deadletter-topic", f"{topic}.deadletter",
        "--start-time", start, "--end-time", end, "--pseudonymize", "--log-level", "debug",
    ]  # fmt: skip
    result = subprocess.run(args, env=environment(sim, key), capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return result


def read(path: Path) -> bytes:
    return path.read_bytes()


def size(path: Path) -> int:
    return path.stat().st_size


def sighting_id(camera: str, person: str, seen_at: str, k: int) -> str:
    return hashlib.sha256(orjson.dumps(["sighting", camera, person, seen_at, k])).hexdigest()[:32]


def record_bytes(records: list[Record]) -> bytes:
    parts = []
    for r in records:
        parts += [r.key or b"", r.value or b""]
        parts += [name.encode() + b"=" + value for name, value in r.headers.items()]
    return b"\n".join(parts)


async def kafka_topics(bootstrap: str, prefix: str) -> list[str]:
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    try:
        await client.bootstrap()
        await client.force_metadata_update()
        return sorted(t for t in client.cluster.topics() if t.startswith(prefix))
    finally:
        await client.close()


async def test_no_name_leaves_a_pseudonymizing_bridge_and_pseudonyms_are_stable(
    simulator_factory, kafka, mqtt_broker, kafka_topic, tmp_path
):
    sim = simulator_factory(
        now=None,  # a live clock: history up to now, and more coming while the bridge tails
        speed=1.0,
        camera_ids=None,
        cameras=2,
        odd_names=True,  # names with '@', '/', '+', '#', non-Latin script: topics and ids must hide them
        people=8,
        history_hours=1.0,
        visits_per_hour=1800.0,
        faults={"malformed_rate": 0.3},  # junk naming Alice, Bob... in /logs replies: dead letters
    )
    world_names = sim.world.people()
    junk_names = ["Alice", "Bob", "Carol", "Dave", "Eve", "Frank"]  # in MALFORMED_SAMPLES
    assert all(any(n in repr(s) for s in MALFORMED_SAMPLES) for n in junk_names)
    forms = name_forms([*world_names, *junk_names])
    pseudonyms, others = Pseudonyms(KEY.encode()), Pseudonyms(OTHER_KEY.encode())
    expected = {pseudonyms.of(n) for n in world_names}
    instance = f"pseudo-{uuid.uuid4().hex[:8]}"
    # (minute-aligned: `replay` reads from the start of the minute of --start-time)
    backfill_from = (datetime.now(timezone.utc) - timedelta(minutes=30)).replace(second=0, microsecond=0)
    ports = {"metrics": free_port(), "web": free_port(), "backfill_from": backfill_from.isoformat()}
    args = bridge_args(sim, kafka, mqtt_broker, kafka_topic, tmp_path, instance, ports)
    log = tmp_path / "bridge.log"
    scanned: dict[str, bytes] = {}

    with MqttCollector(mqtt_broker, "#") as everything_sent:
        # -- run 1: backfill, tail, presence; the operator surfaces read while it runs -------------
        bridge = BridgeRun(args, environment(sim, KEY), log, ports)
        try:

            def backfilled_and_someone_in_view() -> bool:
                status = bridge.get("metrics", "/status").json()
                seen = any(
                    orjson.loads(m.payload).get("people")
                    for m in everything_sent.snapshot()
                    if m.topic.endswith("/presence") and m.payload
                )
                return bool(status["backfill"] and status["backfill"]["done"]) and seen

            await until(backfilled_and_someone_in_view, bridge, "backfill and a presence")
            assert KEY.encode() not in bridge.cmdline()
            status = bridge.get("metrics", "/status")
            scanned["/status"] = status.content
            t0 = status.json()["backfill"]["to"]
            scanned["/metrics"] = bridge.get("metrics", "/metrics").content
            page = bridge.get("web", "/api/state")
            assert page.status_code == 200
            scanned["web page (/api/state)"] = page.content
            page_people = set(PSEUDONYM.findall(page.text))
            assert page_people and page_people <= expected
        finally:
            bridge.stop()

        # -- run 2: a restart with the same key resumes and publishes new sightings -------------
        first_run_size = size(tmp_path / "events.jsonl")
        bridge = BridgeRun(args, environment(sim, KEY), log, ports)
        try:
            await until(lambda: bridge.published_sightings() > 0, bridge, "a sighting after restart")
        finally:
            bridge.stop()
        assert size(tmp_path / "events.jsonl") > first_run_size
        await asyncio.sleep(0.5)  # the collector's last messages
        sent = everything_sent.snapshot()

    # -- replays of the backfilled range: the same key, another key ---------------------------
    # The backfill covered [--backfill-from, T0): up to T0's second, inclusive, which a replay
    # --end-time given to the second includes.
    last = datetime.fromisoformat(t0.replace("Z", "+00:00")).replace(microsecond=0)
    end = last.isoformat()
    replayed = replay(sim, kafka, f"{kafka_topic}.replay", KEY, ports["backfill_from"], end)
    rekeyed = replay(sim, kafka, f"{kafka_topic}.rekeyed", OTHER_KEY, ports["backfill_from"], end)

    # -- read back everything the bridge and the replays wrote ---------------------------------
    topics = await kafka_topics(kafka.bootstrap, kafka_topic)
    records = {topic: await read_all(kafka.bootstrap, topic, timeout=60) for topic in topics}
    assert {kafka_topic, f"{kafka_topic}.presence", f"{kafka_topic}.deadletter"} <= set(records)
    assert records[f"{kafka_topic}.deadletter"], "the junk in the replies became dead letters"
    checkpoints = [r for r in await read_all(kafka.bootstrap, OFFSETS_TOPIC) if r.key == instance.encode()]
    assert checkpoints
    # The file store writes the very document the Kafka store does (Checkpoint.to_bytes).
    store = KafkaCheckpointStore(kafka.bootstrap, instance)
    await store.open()
    try:
        checkpoint = await store.load()
    finally:
        await store.close()
    assert checkpoint is not None
    file_store = FileCheckpointStore(tmp_path / "checkpoint.json")
    await file_store.open()
    await file_store.save(checkpoint)
    await file_store.close()

    scanned["kafka: topic names"] = "\n".join(topics).encode()
    for topic, found in records.items():
        scanned[f"kafka: {topic.replace(kafka_topic, '<topic>')}"] = record_bytes(found)
    scanned[f"kafka: {OFFSETS_TOPIC} (this instance)"] = record_bytes(checkpoints)
    scanned["checkpoint file"] = read(tmp_path / "checkpoint.json")
    scanned["mqtt: every message sent (topics, payloads)"] = b"\n".join(
        m.topic.encode() + b" " + m.payload for m in sent
    )
    tree = retained(mqtt_broker)
    scanned["mqtt: retained tree (topics, payloads)"] = b"\n".join(
        t.encode() + b" " + p for t, p in tree.items()
    )
    scanned["file sink"] = read(tmp_path / "events.jsonl")
    scanned["log (debug), run and restart"] = read(log)
    scanned["log (debug), replays"] = replayed.stderr + replayed.stdout + rekeyed.stderr + rekeyed.stdout

    report = []
    leaks = {}
    for where, blob in scanned.items():
        found = matches(blob, forms)
        if KEY.encode() in blob or OTHER_KEY.encode() in blob:
            found.append("the pseudonym key")
        report.append(f"{where:<48} {len(blob):>12,} bytes  {len(found)} matches")
        if found:
            leaks[where] = found
    total = sum(len(b) for b in scanned.values())
    print(
        "\nbytes scanned per sink, names searched:",
        len(forms),
        "forms of",
        len(world_names) + len(junk_names),
    )
    print("\n".join(report))
    print(f"{'total':<48} {total:>12,} bytes  {sum(len(v) for v in leaks.values())} matches")
    assert not leaks, leaks

    # -- the payloads: v2, pseudonymous, ids over the pseudonym, stable ------------------------
    def values(topic: str) -> list[dict]:
        return [orjson.loads(r.value) for r in records[topic]]

    run_sightings = values(kafka_topic)
    presences = values(f"{kafka_topic}.presence")
    assert run_sightings and any(p["people"] for p in presences)
    for payload in [*run_sightings, *presences, *values(f"{kafka_topic}.replay")]:
        assert validate(payload) == [], payload
        assert payload["schema"].endswith("/v2") and payload["pseudonymous"] is True
    for record in records[kafka_topic]:
        assert record.headers["ce_type"] == b"one.automa.facespace.sighting.v2"
        assert record.headers["ce_dataschema"] == b"urn:facespace-bridge:schema:sighting/v2"
    trackers = {t: orjson.loads(p) for t, p in tree.items() if t.endswith("/tracker")}
    assert trackers and all(validate(d) == [] and d["pseudonymous"] is True for d in trackers.values())
    assert {d["person"] for d in trackers.values()} <= expected
    assert {s["person"] for s in run_sightings} <= expected
    assert {n for p in presences for n in p["people"]} <= expected
    # Ids are computed over the pseudonym (k counts earlier entries of that pseudonym in the
    # second), and an id always stands for the same bytes, in the run, the restart and replay.
    by_id: dict[str, set[bytes]] = defaultdict(set)
    for record in [*records[kafka_topic], *records[f"{kafka_topic}.replay"]]:
        by_id[orjson.loads(record.value)["event_id"]].add(record.value)
    assert all(len(v) == 1 for v in by_id.values())
    for s in run_sightings:
        assert s["event_id"] in {sighting_id(s["camera_id"], s["person"], s["seen_at"], k) for k in range(8)}
    last_text = last.strftime("%Y-%m-%dT%H:%M:%SZ")
    backfilled = {s["event_id"] for s in run_sightings if s["seen_at"] <= last_text}
    assert backfilled and backfilled == {s["event_id"] for s in values(f"{kafka_topic}.replay")}
    # Another key: other pseudonyms, other ids, the same sightings.
    other = values(f"{kafka_topic}.rekeyed")
    assert len(other) == len(backfilled)
    assert {s["person"] for s in other} <= {others.of(n) for n in world_names}
    assert not {s["person"] for s in other} & expected
    assert not {s["event_id"] for s in other} & backfilled


def test_the_scan_finds_a_name_in_every_form_a_sink_could_write_it() -> None:
    """The search above can fail: each form of a name, as a sink would write it, is found."""
    name = "Zoë Ångström"
    forms = name_forms([name, "Eve"])
    for blob in [
        orjson.dumps({"person": name}),
        orjson.dumps({"person": unicodedata.normalize("NFD", name)}),
        json.dumps({"person": name}).encode(),  # ASCII escapes
        f"facespace/person/{topic_segment(name)}/tracker".encode(),
        f'"unique_id":"facespace_person_{id_slug(name)}"'.encode(),
        f'"object_id":"facespace_person_{id_slug(name)}"'.lower().encode(),
        b"raw: Eve @ 10:00:00 23/10/23",
    ]:
        assert matches(blob, forms), blob
    assert not matches(b'{"event_id":"ab12","type":"Event","events":3}', forms)  # whole words only
