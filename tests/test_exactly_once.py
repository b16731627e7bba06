"""`--exactly-once`: events and the checkpoint commit in one Kafka transaction, so
a read_committed consumer sees every sighting once, whatever kills the bridge; a second
instance with the same `--instance-id` fences the first.

The real CLI in a subprocess, the simulator over real HTTP, and a Kafka-protocol broker whose
transactions work (`transactional_kafka`: Tansu's do not, see tests/fixtures/kafka.py), on
both client libraries (`--kafka-client`).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from tests.fixtures.kafka import read_all
from tests.test_crash_safety import (  # noqa: F401  (no_bridge_left_running: an autouse fixture)
    BridgeProcess,
    kafka_checkpoint,
    live_world,
    no_bridge_left_running,
    truth,
    when,
)

pytestmark = pytest.mark.slow


@pytest.fixture(params=["librdkafka", "aiokafka"])
def client(request: pytest.FixtureRequest) -> str:
    return request.param


class ExactlyOnceBridge(BridgeProcess):
    """A bridge with --exactly-once: its checkpoint lives in Kafka (read back committed only)."""

    def __init__(self, sim, kafka, topic: str, tmp_path, instance: str, client: str, *extra: str) -> None:
        super().__init__(
            sim, kafka, topic, tmp_path,
            "--exactly-once", "--instance-id", instance, "--kafka-client", client, *extra,
        )  # fmt: skip
        at = self.args.index("--checkpoint")
        del self.args[at : at + 2]  # exactly once keeps it in Kafka, in the events' transaction
        self.bootstrap, self.instance = kafka.bootstrap, instance

    async def stored(self) -> dict:
        return await kafka_checkpoint(self.bootstrap, self.instance)

    async def wait_logged(self, phrases: tuple[str, ...], after: int, timeout: float = 60.0) -> None:
        """Until the log, past its first `after` bytes, has one of `phrases`."""
        deadline = time.monotonic() + timeout
        while not any(p in self.log.read_bytes()[after:].decode(errors="replace") for p in phrases):
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"timed out waiting for {phrases}"
            await asyncio.sleep(0.05)

    async def wait_stored(self, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            state = await self.stored()
            if predicate(state):
                return state
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            assert time.monotonic() < deadline, f"timed out; log tail:\n{self.log.read_text()[-3000:]}"
            await asyncio.sleep(0.2)


def backfill_done(state: dict) -> bool:
    return bool(state.get("backfill") and state["backfill"]["complete"])


async def committed_and_all(bootstrap: str, topic: str) -> tuple[list[dict], int]:
    """The values a read_committed consumer sees, and how many records the topic holds in all
    (aborted transactions included)."""
    committed = await read_all(bootstrap, topic, timeout=60, isolation_level="read_committed")
    everything = await read_all(bootstrap, topic, timeout=60)
    values = [orjson.loads(r.value) for r in committed]
    for record, value in zip(committed, values, strict=True):
        assert record.key == value["camera_id"].encode()
        assert record.headers["event-id"] == value["event_id"].encode()
    return values, len(everything)


async def test_sigkill_at_random_moments_repeats_nothing_a_read_committed_consumer_sees(
    client, simulator_factory, transactional_kafka, kafka_topic, tmp_path
):
    hours = 8  # some 400,000 sightings: the backfill outlasts three kills on an idle machine too
    sim = simulator_factory(
        **live_world(cameras=20, visits_per_hour=2600, history_hours=hours + 0.5, seed=21)
    )
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=hours)
    instance = kafka_topic.rsplit(".", 1)[-1]
    bridge = ExactlyOnceBridge(
        sim, transactional_kafka, kafka_topic, tmp_path, instance, client,
        "--backfill-from", start.isoformat(), "--no-realtime",
    )  # fmt: skip
    rng = random.Random(9)
    kills = 3
    for _ in range(kills):
        logged = bridge.log.stat().st_size if bridge.log.exists() else 0
        bridge.start()
        # Once it says where it starts from it is about to publish (a start takes a second or
        # more on a loaded machine); a kill a moment later lands in an open transaction.
        await bridge.wait_logged(("backfilling from", "resuming from checkpoint"), after=logged)
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        assert bridge.proc.poll() is None, bridge.log.read_text()[-2000:]
        bridge.proc.kill()
        bridge.proc.wait()
    logged = bridge.log.stat().st_size
    bridge.start()
    # Not before it runs: a SIGTERM must not beat the signal handlers of a new process.
    await bridge.wait_logged(("resuming from checkpoint",), after=logged)
    state = await bridge.wait_stored(backfill_done, timeout=300)
    code, _ = bridge.signal(signal.SIGTERM)
    assert code == 0, bridge.log.read_text()[-2000:]
    t0 = when(state["backfill"]["t0"])
    expected = truth(sim, start, t0 - timedelta(seconds=1))
    assert sum(expected.values()) >= 300_000
    values, stored_in_all = await committed_and_all(transactional_kafka.bootstrap, kafka_topic)
    ids = Counter(v["event_id"] for v in values)
    sightings = Counter((v["camera_id"], v["person"], when(v["seen_at"])) for v in values)
    missing = expected - sightings
    assert not missing, f"{sum(missing.values())} sightings lost, e.g. {list(missing)[:3]}"
    repeated = {event_id: n for event_id, n in ids.items() if n > 1}
    assert not repeated, f"{len(repeated)} events seen more than once by a read_committed consumer"
    assert "Traceback" not in bridge.log.read_text()
    # The kills did cut transactions short: their records are in the topic, hidden by the abort.
    aborted = stored_in_all - len(values)
    assert aborted > 0, "no kill landed inside a transaction: the test proved nothing"
    print(f"\n{kills} kills, {len(values)} committed records, {aborted} aborted")


async def test_a_second_instance_with_the_same_id_fences_the_first(
    client, simulator_factory, transactional_kafka, kafka_topic, tmp_path
):
    sim = simulator_factory(**live_world(cameras=4, visits_per_hour=3600, history_hours=1, seed=4))
    start = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(minutes=10)
    instance = kafka_topic.rsplit(".", 1)[-1]
    first = ExactlyOnceBridge(
        sim,
        transactional_kafka,
        kafka_topic,
        tmp_path / "first",
        instance,
        client,
        "--backfill-from",
        start.isoformat(),
    )
    second = ExactlyOnceBridge(sim, transactional_kafka, kafka_topic, tmp_path / "second", instance, client)
    for bridge in (first, second):
        bridge.log.parent.mkdir()
    first.start()
    await first.wait_stored(backfill_done)
    second.start()
    first.proc.wait(timeout=30)  # fenced at its next commit
    log = first.log.read_text()
    assert first.proc.returncode == 1, log[-2000:]
    # One line says so, the last (docs/kafka.md): not first as a broker outage.
    assert log.count("took over (same --instance-id)") == 1 and "Traceback" not in log, log[-2000:]
    assert "took over (same --instance-id)" in log.strip().splitlines()[-1]
    resumed = datetime.now(timezone.utc)
    await second.wait_stored(
        lambda s: any(when(p["seen_at"]) > resumed for p in s.get("cameras", {}).values()), timeout=60
    )
    code, _ = second.signal(signal.SIGTERM)
    assert code == 0, second.log.read_text()[-2000:]
    values, _ = await committed_and_all(transactional_kafka.bootstrap, kafka_topic)
    ids = Counter(v["event_id"] for v in values)
    assert max(ids.values()) == 1, "the handover repeats nothing a read_committed consumer sees"
    end = min(when(p["seen_at"]) for p in (await second.stored())["cameras"].values())
    expected = truth(sim, start + timedelta(seconds=1), end - timedelta(seconds=1))
    sightings = Counter((v["camera_id"], v["person"], when(v["seen_at"])) for v in values)
    assert not expected - sightings, "and nothing is lost across it"


async def test_check_reports_transactions_without_fencing_a_running_bridge(
    client, simulator_factory, transactional_kafka, kafka_topic, tmp_path
):
    sim = simulator_factory(**live_world(cameras=3, visits_per_hour=3600, history_hours=1, seed=6))
    instance = kafka_topic.rsplit(".", 1)[-1]
    bridge = ExactlyOnceBridge(sim, transactional_kafka, kafka_topic, tmp_path, instance, client).start()
    first = await bridge.wait_stored(lambda s: bool(s.get("cameras")))
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "facespace_bridge", "check", *bridge.args[3:]],
        env=bridge.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert (
        "ok   exactly-once: the Kafka broker's transactions work: an aborted transaction stays "
        "invisible to read_committed readers"
    ) in check.stdout
    # The bridge was not fenced: it goes on committing.
    await bridge.wait_stored(lambda s: s.get("written_at", "") > first["written_at"], timeout=30)
    code, _ = bridge.signal(signal.SIGTERM)
    assert code == 0, bridge.log.read_text()[-2000:]
