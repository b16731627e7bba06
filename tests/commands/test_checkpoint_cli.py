"""`facespace-bridge checkpoint show | set | reset` from the outside, as operators run it: on a
file and on the Kafka store (a real broker), refused while a real bridge runs, and end to end:
a restart after `set` republishes exactly the moved camera's sightings (the simulator's
ground truth), and after `reset` the next start backfills again."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from facespace_bridge.checkpoints import Backfill, Checkpoint, FileCheckpointStore, Position
from facespace_bridge.checkpoints.kafka import OFFSETS_TOPIC, KafkaCheckpointStore
from tests.commands.test_run_cli import CLI, cli, one_line_error

T = datetime(2023, 10, 24, 12, 0, 0, tzinfo=timezone.utc)  # "12:00 24/10/23"
HEARTBEAT = T + timedelta(hours=6)
START = T - timedelta(hours=12)


def running_checkpoint() -> Checkpoint:
    """As a bridge leaves it: A has a position past the heartbeat, B one behind it."""
    return Checkpoint(
        cameras={
            "A": Position(HEARTBEAT + timedelta(seconds=30), 2),
            "B": Position(T + timedelta(hours=1), 1),
        },
        through=HEARTBEAT,
        backfill=Backfill(START, HEARTBEAT - timedelta(minutes=5), complete=True),
    )


def save(path: Path, checkpoint: Checkpoint) -> None:
    async def write() -> None:
        store = FileCheckpointStore(path)
        await store.open()
        try:
            await store.save(checkpoint)
        finally:
            await store.close()

    asyncio.run(write())


def load(path: Path) -> Checkpoint | None:
    return asyncio.run(FileCheckpointStore(path).load())


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stdout


# -- the file store ------------------------------------------------------------------------------------


def test_show_prints_each_cameras_resume_point_the_heartbeat_and_the_backfill(tmp_path):
    path = tmp_path / "cp.json"
    saved = datetime.now(timezone.utc).replace(microsecond=0)
    save(path, running_checkpoint())
    lines = ok(cli("checkpoint", "show", "--checkpoint", str(path))).splitlines()
    assert lines[0] == f"checkpoint  file {path} (instance default)"
    assert lines[1].startswith("written     ") and lines[1].endswith(" s ago) by bridge")
    assert lines[2] == f"running     no: nobody holds {tmp_path / '.cp.json.lock'}"
    assert lines[3] == "heartbeat   2023-10-24T18:00:00Z (every camera is complete before it)"
    assert lines[4] == "backfill    from 2023-10-24T00:00:00Z to 2023-10-24T17:55:00Z, complete"
    assert lines[5] == "next start  reads from 2023-10-24T18:00:00Z"
    assert lines[8:] == [
        "A       2023-10-24T18:00:30Z #2",
        "B       2023-10-24T18:00:00Z #0  (heartbeat)",  # its own position is behind the heartbeat
        "cameras not listed resume at the heartbeat",
    ]

    shown = orjson.loads(ok(cli("checkpoint", "show", "--checkpoint", str(path), "--json")))
    written = datetime.fromisoformat(shown.pop("written_at"))
    assert saved <= written <= datetime.now(timezone.utc)
    assert shown == {
        "format": 1,
        "instance_id": "default",
        "store": {"kind": "file", "description": f"file {path}", "path": str(path)},
        "exists": True,
        "written_by": "bridge",
        "running": {"detected": False, "how": "lock", "detail": f"nobody holds {tmp_path / '.cp.json.lock'}"},
        "through": "2023-10-24T18:00:00Z",
        "earliest": "2023-10-24T18:00:00Z",
        "backfill": {"from": "2023-10-24T00:00:00Z", "to": "2023-10-24T17:55:00Z", "complete": True},
        "cameras": {
            "A": {"seen_at": "2023-10-24T18:00:30Z", "count": 2, "source": "camera"},
            "B": {"seen_at": "2023-10-24T18:00:00Z", "count": 0, "source": "heartbeat"},
        },
    }


def test_no_checkpoint_yet_is_said_and_nothing_is_created(tmp_path):
    path = tmp_path / "state" / "cp.json"
    assert ok(cli("checkpoint", "show", "--checkpoint", str(path))).startswith(
        f"no checkpoint yet for instance default (file {path}): the next start is a fresh one"
    )
    shown = orjson.loads(ok(cli("checkpoint", "show", "--checkpoint", str(path), "--json")))
    assert shown["exists"] is False and shown["cameras"] == {} and shown["backfill"] is None
    assert "nothing to reset" in ok(cli("checkpoint", "reset", "--checkpoint", str(path)))
    assert "nothing to move" in one_line_error(
        cli("checkpoint", "set", "--to", "24/10/23", "--checkpoint", str(path))
    )
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("to", ["12:00 24/10/23", "2023-10-24T12:00:00Z", "2023-10-24T14:00:00+02:00"])
def test_set_one_camera_back_keeps_the_others(tmp_path, to):
    path = tmp_path / "cp.json"
    before = running_checkpoint()
    save(path, before)
    out = ok(cli("checkpoint", "set", "--to", to, "--camera-id", "B", "--checkpoint", str(path)))
    assert out.splitlines() == [
        "B: 2023-10-24T18:00:00Z #0 (heartbeat) -> 2023-10-24T12:00:00Z #0 (rewound)",
        f"written to file {path}; the next start reads from 2023-10-24T12:00:00Z",
    ]
    after = load(path)
    assert after is not None
    assert after.position("B") == Position(T, 0) and after.rewound == {"B"}
    assert after.position("A") == before.position("A") and after.position("C") == before.position("C")
    assert after.written_by == "checkpoint set"
    assert "B       2023-10-24T12:00:00Z #0  (rewound)" in ok(
        cli("checkpoint", "show", "--checkpoint", str(path))
    )


def test_set_every_camera_and_reset_one_to_the_backfill_start(tmp_path):
    path = tmp_path / "cp.json"
    save(path, running_checkpoint())
    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--checkpoint", str(path)))
    moved = load(path)
    assert moved is not None and moved.through == T and moved.cameras == {}
    assert moved.position("A") == moved.position("B") == Position(T, 0)

    save(path, running_checkpoint())
    out = ok(cli("checkpoint", "reset", "--camera-id", "A", "--checkpoint", str(path)))
    assert out.splitlines()[0] == "A: 2023-10-24T18:00:30Z #2 -> 2023-10-24T00:00:00Z #0 (rewound)"
    reset = load(path)
    assert reset is not None and reset.position("A") == Position(START, 0)
    assert reset.position("B") == running_checkpoint().position("B")


def test_reset_removes_the_checkpoint(tmp_path):
    path = tmp_path / "cp.json"
    save(path, running_checkpoint())
    assert ok(cli("checkpoint", "reset", "--checkpoint", str(path))).startswith(
        f"removed the checkpoint (file {path}): the next start is a fresh one"
    )
    assert not path.exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["set", "--to", "01/01/99"], "--to: must not be in the future"),
        (["set", "--to", "31/02/23"], "invalid date '31/02/23'"),
        (["set"], "Missing option '--to'"),
        (
            ["set", "--to", "24/10/23", "--camera-id", "Cmaera1"],
            "'Cmaera1' has no position in this checkpoint",
        ),
        (["reset", "--camera-id", "Cmaera1"], "'Cmaera1' has no position in this checkpoint (cameras: A, B)"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, args, needle):
    path = tmp_path / "cp.json"
    save(path, running_checkpoint())
    before = path.read_bytes()
    assert needle in one_line_error(cli("checkpoint", *args, "--checkpoint", str(path)))
    assert path.read_bytes() == before


def test_reset_of_one_camera_needs_a_recorded_backfill(tmp_path):
    path = tmp_path / "cp.json"
    save(
        path, Checkpoint(cameras={"A": Position(T, 1)}, through=HEARTBEAT)
    )  # started without --backfill-from
    before = path.read_bytes()
    assert "records no backfill start" in one_line_error(
        cli("checkpoint", "reset", "--camera-id", "A", "--checkpoint", str(path))
    )
    assert path.read_bytes() == before


def test_the_configuration_of_run_chooses_the_checkpoint(tmp_path):
    """The TOML file and environment written for `run` work unchanged; run's camera filter
    (`camera_id`) does not choose the camera to move."""
    path = tmp_path / "site-a.json"
    save(path, running_checkpoint())
    config = tmp_path / "bridge.toml"
    config.write_text(
        f'broker = ["file"]\noutput = "out.jsonl"\nrefresh = 2.0\ncamera_id = "A"\n'
        f'instance-id = "site-a"\ncheckpoint = "{path}"\n'
    )
    shown = orjson.loads(ok(cli("checkpoint", "show", "--config", str(config), "--json")))
    assert shown["instance_id"] == "site-a" and shown["store"]["path"] == str(path)
    ok(cli("checkpoint", "set", "--config", str(config), "--to", "12:00 24/10/23"))
    moved = load(path)
    assert moved is not None and moved.through == T and moved.cameras == {}  # every camera, not only A

    by_env = cli("checkpoint", "show", "--json", env={"FACESPACE_BRIDGE_CHECKPOINT": str(path)})
    assert orjson.loads(ok(by_env))["through"] == "2023-10-24T12:00:00Z"
    config.write_text("chekpoint = 'x.json'\n")
    assert "unknown setting 'chekpoint'" in one_line_error(cli("checkpoint", "show", "--config", str(config)))


# -- the Kafka store ------------------------------------------------------------------------------------


async def write_record(bootstrap: str, instance: str, checkpoint: Checkpoint, written_at: datetime) -> None:
    """The record a bridge wrote at `written_at` (to_bytes stamps the time of writing)."""
    from aiokafka import AIOKafkaProducer

    value = {**orjson.loads(checkpoint.to_bytes()), "written_at": written_at.isoformat()}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(OFFSETS_TOPIC, orjson.dumps(value), key=instance.encode())
    finally:
        await producer.stop()


async def kafka_load(bootstrap: str, instance: str) -> Checkpoint | None:
    return await KafkaCheckpointStore(bootstrap, instance).load()


async def test_show_set_reset_on_the_kafka_store(kafka, kafka_topic):
    instance = kafka_topic  # a key no other test uses
    where = ["--checkpoint", "kafka", "--bootstrap-servers", kafka.bootstrap, "--instance-id", instance]
    shown = orjson.loads(ok(cli("checkpoint", "show", "--json", *where)))
    assert shown["exists"] is False and shown["store"]["kind"] == "kafka"

    store = KafkaCheckpointStore(kafka.bootstrap, instance)
    await store.open()  # creates the compacted topic, as a bridge does
    await store.close()
    an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    await write_record(kafka.bootstrap, instance, running_checkpoint(), an_hour_ago)
    text = ok(cli("checkpoint", "show", *where))
    assert f"checkpoint  kafka topic {OFFSETS_TOPIC} key {instance} (instance {instance})" in text
    assert "running     probably not: last written 60 min ago" in text
    assert "B       2023-10-24T18:00:00Z #0  (heartbeat)" in text

    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--camera-id", "B", *where))
    moved = await kafka_load(kafka.bootstrap, instance)
    assert moved is not None and moved.position("B") == Position(T, 0) and moved.rewound == {"B"}
    assert moved.position("A") == running_checkpoint().position("A")
    shown = orjson.loads(ok(cli("checkpoint", "show", "--json", *where)))
    assert shown["written_by"] == "checkpoint set" and shown["running"]["detected"] is False
    assert shown["store"] == {
        "kind": "kafka",
        "description": f"kafka topic {OFFSETS_TOPIC} key {instance}",
        "topic": OFFSETS_TOPIC,
        "key": instance,
        "bootstrap_servers": kafka.bootstrap,
    }

    # A bridge wrote a moment ago: it probably runs. Refused, unless forced.
    await write_record(kafka.bootstrap, instance, running_checkpoint(), datetime.now(timezone.utc))
    refusal = one_line_error(cli("checkpoint", "set", "--to", "12:00 24/10/23", *where))
    assert f"instance {instance} looks running" in refusal and "--force" in refusal
    assert "looks running" in one_line_error(cli("checkpoint", "reset", *where))
    assert await kafka_load(kafka.bootstrap, instance) == running_checkpoint()
    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--force", *where))
    forced = await kafka_load(kafka.bootstrap, instance)
    assert forced is not None and forced.through == T

    assert "removed the checkpoint" in ok(cli("checkpoint", "reset", *where))
    assert await kafka_load(kafka.bootstrap, instance) is None
    assert "no checkpoint yet" in ok(cli("checkpoint", "show", *where))


def test_bad_kafka_settings_are_bad_input(tmp_path):
    result = cli(
        "checkpoint", "show", "--checkpoint", "kafka", "--bootstrap-servers", "127.0.0.1:1",
        "--kafka-sasl-mechanism", "PLAIN",
    )  # fmt: skip
    assert "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD" in one_line_error(result)


# -- with a real bridge ------------------------------------------------------------------------------------

_started: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def no_bridge_left_running() -> Iterator[None]:
    yield
    while _started:
        proc = _started.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class BridgeRun:
    """`facespace-bridge run --broker file` in a subprocess, against the simulator."""

    def __init__(self, sim: Any, checkpoint: list[str], output: Path, *extra: str) -> None:
        self.output = output
        self.log = output.with_suffix(".log")
        args = [*CLI, "run", "--broker", "file", "--output", str(output), *checkpoint,
                "--no-realtime", "--tail-interval", "0.3", *extra]  # fmt: skip
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))},
            "FACESPACE_API_KEY": sim.api_key,
            "FACESPACE_API_URL": sim.base_url,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(args, env=env, stdout=log, stderr=log)
        _started.append(self.proc)

    def wait(self, predicate: Callable[[], bool], timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; log tail:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()[-3000:]
        assert "Traceback" not in self.log.read_text()

    def sightings(self) -> Counter:
        values = [orjson.loads(line) for line in self.output.read_bytes().splitlines()]
        return Counter(
            (v["camera_id"], v["person"], datetime.fromisoformat(v["seen_at"].replace("Z", "+00:00")))
            for v in values
            if v["schema"].startswith("facespace.sighting/")
        )

    def event_ids(self) -> set[str]:
        return {orjson.loads(line)["event_id"] for line in self.output.read_bytes().splitlines()}


def backfilled(path: Path) -> Callable[[], bool]:
    def done() -> bool:
        checkpoint = load(path) if path.exists() else None
        return bool(checkpoint and checkpoint.backfill and checkpoint.backfill.complete)

    return done


def truth(sim: Any, start: datetime, camera_id: str | None = None) -> Counter:
    return Counter(sim.world.entries(start, None, camera_id))


def test_set_and_reset_are_refused_while_the_bridge_runs_and_so_is_a_second_bridge(simulator, tmp_path):
    path = tmp_path / "cp.json"
    where = ["--checkpoint", str(path)]
    bridge = BridgeRun(simulator, where, tmp_path / "out.jsonl", "--backfill-from", "24/10/23")
    bridge.wait(backfilled(path))
    lock = tmp_path / ".cp.json.lock"
    assert f"running     yes: pid {bridge.proc.pid} holds {lock}" in ok(cli("checkpoint", "show", *where))

    refusal = one_line_error(
        cli("checkpoint", "set", "--to", "12:00 24/10/23", "--camera-id", "Camera2", *where)
    )
    assert refusal == (
        f"facespace-bridge: error: checkpoint {path} is in use by pid {bridge.proc.pid}, which holds {lock}: "
        "a bridge with this checkpoint is running; stop it first"
    )
    assert "in use by" in one_line_error(cli("checkpoint", "reset", *where))
    assert path.exists() and "Camera2" not in load(path).rewound  # type: ignore[union-attr]

    second = BridgeRun(simulator, where, tmp_path / "second.jsonl")
    assert second.proc.wait(timeout=60) == 1
    lines = [line for line in second.log.read_text().splitlines() if line.strip()]
    assert lines[-1] == (
        f"facespace-bridge: error: checkpoint {path} is in use by pid {bridge.proc.pid}, which holds {lock}: "
        "a bridge with this checkpoint is running"
    )
    assert not (tmp_path / "second.jsonl").exists()  # it stopped before its sinks started

    # `check` with the bridge's settings reads the checkpoint without taking the lock.
    api = {"FACESPACE_API_KEY": simulator.api_key, "FACESPACE_API_URL": simulator.base_url}
    checked = ok(cli("check", "--broker", "file", "--output", str(tmp_path / "check.jsonl"), *where, env=api))
    assert f"ok   checkpoint: file {path}: resumes at " in checked
    assert checked.rstrip().endswith(
        f"; in use by pid {bridge.proc.pid} (a bridge with this checkpoint is running)"
    )

    bridge.stop()
    assert "running     no: nobody holds" in ok(cli("checkpoint", "show", *where))
    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--camera-id", "Camera2", *where))


async def test_a_recent_write_to_the_kafka_store_counts_as_running(simulator, kafka, kafka_topic, tmp_path):
    """The Kafka store has no lock: a bridge is taken to run while its record is fresh."""
    where = ["--checkpoint", "kafka", "--bootstrap-servers", kafka.bootstrap, "--instance-id", kafka_topic]
    bridge = BridgeRun(simulator, where, tmp_path / "out.jsonl", "--backfill-from", "24/10/23")

    def backfilled_in_kafka() -> bool:
        checkpoint = asyncio.run(kafka_load(kafka.bootstrap, kafka_topic))
        return bool(checkpoint and checkpoint.backfill and checkpoint.backfill.complete)

    await asyncio.to_thread(bridge.wait, backfilled_in_kafka)
    assert "running     probably: last written" in ok(cli("checkpoint", "show", *where))
    assert "looks running" in one_line_error(cli("checkpoint", "set", "--to", "12:00 24/10/23", *where))
    bridge.stop()
    # Its last write at the stop is fresh too: only --force moves it now (the documented limit).
    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--force", *where))
    moved = await kafka_load(kafka.bootstrap, kafka_topic)
    assert moved is not None and moved.through == T


def test_a_camera_set_back_is_republished_from_then_and_a_reset_backfills_again(simulator, tmp_path):
    path = tmp_path / "cp.json"
    where = ["--checkpoint", str(path)]
    first = BridgeRun(simulator, where, tmp_path / "first.jsonl", "--backfill-from", "24/10/23")
    first.wait(backfilled(path))
    first.stop()
    assert first.sightings() == truth(simulator, datetime(2023, 10, 24, tzinfo=timezone.utc))

    ok(cli("checkpoint", "set", "--to", "12:00 24/10/23", "--camera-id", "Camera2", *where))
    expected = truth(simulator, T, "Camera2")
    assert 0 < sum(expected.values()) < sum(first.sightings().values())
    again = BridgeRun(simulator, where, tmp_path / "again.jsonl")
    again.wait(
        lambda: (
            again.output.exists() and len(again.output.read_bytes().splitlines()) >= sum(expected.values())
        )
    )
    time.sleep(1.0)  # a few more tail polls: room for anything that should not come
    again.stop()
    assert again.sightings() == expected, "exactly Camera2's sightings from 12:00, nothing of the others"
    assert again.event_ids() <= first.event_ids(), "the same events again (same ids)"

    ok(cli("checkpoint", "reset", *where))
    start = datetime(2023, 10, 24, 18, 0, tzinfo=timezone.utc)
    fresh = BridgeRun(simulator, where, tmp_path / "fresh.jsonl", "--backfill-from", "18:00 24/10/23")
    fresh.wait(backfilled(path))
    fresh.stop()
    backfill = truth(simulator, start)
    assert fresh.sightings() == backfill and sum(backfill.values()) > 0
