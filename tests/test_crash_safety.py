"""Crash safety of `facespace-bridge run`: the real CLI in a subprocess, a real
Kafka-protocol broker, and the simulator over real HTTP with a live clock.

Signals, SIGKILL at random moments in a large backfill, a broker outage, API faults.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from facespace_bridge.bridge import BridgeOptions
from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.schemas import validate
from facespace_bridge.sources.listing import BATCH_EVENTS
from tests.fixtures.kafka import topic_size

pytestmark = pytest.mark.slow


_started: list[subprocess.Popen] = []  # every bridge a test started, killed after it if still running


@pytest.fixture(autouse=True)
def no_bridge_left_running():
    """A test that fails half-way must not leave its bridges running into the next tests."""
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class BridgeProcess:
    """`python -m facespace_bridge run --broker kafka ...` with its own checkpoint file."""

    def __init__(self, sim, kafka, topic: str, tmp_path: Path, *extra: str) -> None:
        self.checkpoint = tmp_path / "checkpoint.json"
        self.log = tmp_path / "bridge.log"
        self.args = [
            sys.executable, "-m", "facespace_bridge",
            "--broker", "kafka",
            "--bootstrap-servers", kafka.bootstrap,
            "--topic", topic,
            "--presence-topic", f"{topic}.presence",
            "--deadletter-topic", f"{topic}.deadletter",
            "--checkpoint", str(self.checkpoint),
            "--tail-interval", "0.5",
            "--refresh", "0.5",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "FACESPACE_API_KEY": sim.api_key, "FACESPACE_API_URL": sim.base_url}
        self.proc: subprocess.Popen | None = None

    def start(self) -> BridgeProcess:
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=handle, stderr=handle)
        _started.append(self.proc)
        handle.close()
        return self

    def state(self) -> dict | None:
        try:
            return orjson.loads(self.checkpoint.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    async def wait(self, predicate, timeout: float = 120.0, every: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.state() or {}):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; log tail:\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(every)

    def signal(self, signum: int, timeout: float = 5.0) -> tuple[int, float]:
        assert self.proc is not None
        sent = time.monotonic()
        self.proc.send_signal(signum)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - sent


def backfill_done(state: dict) -> bool:
    return bool(state.get("backfill") and state["backfill"]["complete"])


def progress(state: dict, start: datetime, t0: datetime) -> float:
    """How far a backfill has got by its saved checkpoint: the mean over the cameras that have
    a position of the share of the range they are past (the backfill walks every camera's
    windows in time order)."""
    positions = [when(p["seen_at"]) for p in (state.get("cameras") or {}).values()]
    if not positions:
        return 0.0
    span = (t0 - start).total_seconds()
    return sum(min(max((p - start).total_seconds() / span, 0.0), 1.0) for p in positions) / len(positions)


def when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def live_world(**overrides):
    # A live clock (the bridge's own clock is the wall clock): history up to now, and more coming.
    return {"now": None, "speed": 1.0, "camera_ids": None, **overrides}


async def published(read_topic, topic: str) -> tuple[Counter, Counter, list]:
    records = await read_topic(topic, timeout=60)
    values = [orjson.loads(r.value) for r in records]
    for record, value in zip(records, values, strict=True):
        assert record.key == value["camera_id"].encode()
        assert record.headers["event-id"] == value["event_id"].encode()
    sightings = Counter((v["camera_id"], v["person"], when(v["seen_at"])) for v in values)
    ids = Counter(v["event_id"] for v in values)
    return sightings, ids, values


async def kafka_checkpoint(bootstrap: str, instance: str) -> dict:
    """The checkpoint `instance` keeps in Kafka (`--checkpoint kafka`, `--exactly-once`), as JSON."""
    from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore

    store = KafkaCheckpointStore(bootstrap, instance)
    await store.open()
    try:
        checkpoint = await store.load()
    finally:
        await store.close()
    return orjson.loads(checkpoint.to_bytes()) if checkpoint else {}


def truth(sim, start: datetime, end: datetime) -> Counter:
    return Counter(sim.world.entries(start, end))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_flushes_checkpoints_and_exits_0_within_5s_then_restart_repeats_nothing(
    signum, simulator_factory, kafka, kafka_topic, read_topic, tmp_path
):
    sim = simulator_factory(**live_world(cameras=4, visits_per_hour=900, history_hours=1))
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    bridge = BridgeProcess(sim, kafka, kafka_topic, tmp_path, "--backfill-from", start.isoformat()).start()
    await bridge.wait(backfill_done)
    await asyncio.sleep(1.5)  # some tail polls
    code, took = bridge.signal(signum)
    assert code == 0 and took < 5.0, bridge.log.read_text()[-2000:]
    t0 = when(bridge.state()["backfill"]["t0"])
    bridge.start()
    await bridge.wait(
        lambda state: when(state["written_at"]) > datetime.now(timezone.utc) - timedelta(seconds=1)
    )
    await asyncio.sleep(2.0)  # the restarted bridge tails: new sightings arrive meanwhile
    code, took = bridge.signal(signal.SIGTERM)
    assert code == 0 and took < 5.0
    sightings, ids, values = await published(read_topic, kafka_topic)
    assert max(ids.values()) == 1, "a graceful stop must not repeat anything"
    expected = truth(sim, start.replace(microsecond=0) + timedelta(seconds=1), t0)
    assert not expected - sightings, "every sighting of the backfill range is published"
    assert len(values) > sum(expected.values()), "and the tail went on after T0"
    assert all(validate(v) == [] for v in values)
    assert "Traceback" not in bridge.log.read_text()


def covered(sim, start: datetime, checkpoint: Checkpoint) -> int:
    """How many of the world's sightings since `start` a checkpoint says are published: what a
    restart from it does not publish again (each camera up to its resume position)."""
    total = 0
    for camera in sim.world.cameras():
        position = checkpoint.position(camera)
        if position is None:
            continue
        seconds = [seen_at for _, _, seen_at in sim.world.entries(start, position.seen_at, camera)]
        before = sum(1 for seen_at in seconds if seen_at < position.seen_at)
        total += before + min(position.count, len(seconds) - before)
    return total


async def distinct_once_settled(read_topic, bootstrap: str, topic: str) -> int:
    """The distinct event ids in the topic once nothing more lands (a killed producer's last
    requests may still be written by the broker)."""
    size = await topic_size(bootstrap, topic)
    while True:
        await asyncio.sleep(0.5)
        again = await topic_size(bootstrap, topic)
        if again == size:
            break
        size = again
    return len({record.headers["event-id"] for record in await read_topic(topic, timeout=60)})


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
async def test_sigkill_repeats_at_most_what_was_in_flight_and_unsaved_per_kill(
    client, simulator_factory, kafka, kafka_topic, read_topic, tmp_path
):
    """SIGKILLs at random moments of a 200k backfill (under load), then one while the bridge
    tails (idle): nothing is lost, and each kill repeats at most what was in flight plus what
    was acknowledged but not yet in a saved checkpoint (docs/delivery.md)."""
    hours = 4
    sim = simulator_factory(
        **live_world(cameras=20, visits_per_hour=2600, history_hours=hours + 0.5, seed=11)
    )
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=hours)
    in_flight = 2000  # (more than a batch: BATCH_EVENTS)
    # In flight (a batch larger than the limit goes alone), acknowledged but not yet saved,
    # and the batch that was let in just before the unsaved ones reached their bound.
    per_kill = max(in_flight, BATCH_EVENTS) + BridgeOptions().max_unsaved + BATCH_EVENTS
    bridge = BridgeProcess(
        sim, kafka, kafka_topic, tmp_path, "--kafka-client", client,
        "--backfill-from", start.isoformat(), "--no-realtime", "--kafka-max-in-flight", str(in_flight),
    )  # fmt: skip
    rng = random.Random(5)
    repeated: list[int] = []  # per kill: what the restart publishes again

    async def kill_and_restart() -> None:
        assert bridge.proc is not None
        bridge.proc.kill()
        bridge.proc.wait()
        # Every sighting in the topic beyond what the saved checkpoint covers is published
        # again by the restart, once.
        published_now = await distinct_once_settled(read_topic, kafka.bootstrap, kafka_topic)
        saved = Checkpoint.from_bytes(bridge.checkpoint.read_bytes())
        repeated.append(published_now - covered(sim, start, saved))
        restarted = datetime.now(timezone.utc)
        bridge.start()
        await bridge.wait(lambda state: when(state["written_at"]) > restarted)  # running again

    bridge.start()
    await bridge.wait(lambda state: bool(state.get("backfill")))  # T0 fixed and written
    t0 = when(bridge.state()["backfill"]["t0"])
    expected = truth(sim, start, t0 - timedelta(seconds=1))
    assert sum(expected.values()) >= 200_000

    # Kills at random points of the backfill's progress, not of the clock: on a fast machine
    # the whole backfill takes about as long as a restart does.
    def reached(target: float):
        return lambda state: backfill_done(state) or progress(state, start, t0) >= target

    for low, high in ((0.05, 0.25), (0.35, 0.55), (0.65, 0.85)):
        await bridge.wait(reached(rng.uniform(low, high)), every=0.005)
        if backfill_done(bridge.state() or {}):
            break
        await kill_and_restart()
    under_load = len(repeated)
    assert under_load >= 2, "the backfill finished before the bridge could be killed twice"
    await bridge.wait(backfill_done, timeout=300)
    await asyncio.sleep(1.0)  # tailing: a few sightings a second
    await kill_and_restart()
    await asyncio.sleep(1.0)
    code, _ = bridge.signal(signal.SIGTERM)
    assert code == 0
    assert when(bridge.state()["backfill"]["t0"]) == t0, "T0 is fixed once, before the backfill"
    sightings, ids, values = await published(read_topic, kafka_topic)
    missing = expected - sightings
    assert not missing, f"{sum(missing.values())} sightings lost, e.g. {list(missing)[:3]}"
    # A duplicate is a whole repeated record: same id, same bytes.
    by_id: dict[str, bytes] = {}
    for value in values:
        raw = orjson.dumps(value)
        assert by_id.setdefault(value["event_id"], raw) == raw
    duplicates = sum(n - 1 for n in ids.values())
    print(f"\n{client}: {under_load} kills under load and 1 idle, {len(values)} records, repeated {repeated}")
    assert duplicates == sum(repeated), "every repeat comes from a restart, counted per kill"
    assert max(repeated) <= per_kill, f"a kill repeated more than {per_kill}: {repeated}"


async def test_broker_outage_of_10s_loses_nothing_and_resumes_by_itself(
    simulator_factory, kafka, kafka_topic, read_topic, tmp_path
):
    sim = simulator_factory(**live_world(cameras=4, visits_per_hour=3600, history_hours=1, seed=3))
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=5)
    bridge = BridgeProcess(sim, kafka, kafka_topic, tmp_path, "--backfill-from", start.isoformat()).start()
    await bridge.wait(backfill_done)
    await kafka.outage(10)
    resumed_from = datetime.now(timezone.utc)
    # It resumes by itself: the checkpoint moves past the outage.
    await bridge.wait(lambda state: when(state["through"]) > resumed_from - timedelta(seconds=130) and any(
        when(p["seen_at"]) > resumed_from for p in state["cameras"].values()
    ), timeout=90)  # fmt: skip
    end = min(when(p["seen_at"]) for p in bridge.state()["cameras"].values())
    code, _ = bridge.signal(signal.SIGTERM)
    assert code == 0
    sightings, _ids, _ = await published(read_topic, kafka_topic)
    expected = truth(sim, start + timedelta(seconds=1), end - timedelta(seconds=1))
    missing = expected - sightings
    assert not missing, f"{sum(missing.values())} sightings lost across the outage"
    assert "Traceback" not in bridge.log.read_text()


async def test_checkpoint_in_kafka_resumes_without_a_disk(
    simulator_factory, kafka, kafka_topic, read_topic, tmp_path
):

    sim = simulator_factory(**live_world(cameras=3, visits_per_hour=900, history_hours=1, seed=5))
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=20)
    instance = kafka_topic.rsplit(".", 1)[-1]
    bridge = BridgeProcess(sim, kafka, kafka_topic, tmp_path, "--backfill-from", start.isoformat())
    bridge.args[bridge.args.index("--checkpoint") + 1] = "kafka"
    bridge.args += ["--instance-id", instance]

    async def stored() -> dict:
        return await kafka_checkpoint(kafka.bootstrap, instance)

    for _ in range(2):  # a run, a stop, a resumed run, a stop
        bridge.start()
        deadline = time.monotonic() + 60
        while not backfill_done(await stored()):
            assert bridge.proc.poll() is None and time.monotonic() < deadline, bridge.log.read_text()[-2000:]
            await asyncio.sleep(0.3)
        await asyncio.sleep(1.5)
        code, _ = bridge.signal(signal.SIGTERM)
        assert code == 0
    assert not bridge.checkpoint.exists()  # nothing on disk
    t0 = when((await stored())["backfill"]["t0"])
    sightings, ids, _ = await published(read_topic, kafka_topic)
    assert max(ids.values()) == 1
    assert not truth(sim, start + timedelta(seconds=1), t0) - sightings
