"""`facespace-bridge replay` end to end: the simulator over HTTP, a real Kafka broker, the CLI
in a subprocess for exit codes and output."""

from __future__ import annotations

import os
import pty
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from facespace_bridge.events import parse_rfc3339
from facespace_bridge.schemas import validate
from facespace_bridge.simulator import SimulatorServer
from tests.fixtures.kafka import KafkaBroker, free_port

CLI = [sys.executable, "-m", "facespace_bridge"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("FACESPACE_", "KAFKA_")) and k not in ("COLUMNS", "LINES")
    }
    env.update(extra)
    return env


@pytest.fixture
def sentinel() -> Iterator[socket.socket]:
    """A listening socket nobody should connect to: proof that bad input has no side effect."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener


def nobody_connected(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


def address(listener: socket.socket) -> str:
    host, port = listener.getsockname()
    return f"{host}:{port}"


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("facespace-bridge: error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("args", "env_key", "problem"),
    [
        (["--start-time", "31/02/23", "--broker", "kafka"], True, "--start-time"),
        (
            ["--start-time", "23/10/23", "--end-time", "10:99 23/10/23", "--broker", "kafka"],
            True,
            "--end-time",
        ),
        (["--start-time", "24/10/23", "--end-time", "23/10/23", "--broker", "kafka"], True, "not before"),
        (["--start-time", "23/10/23", "--broker", "kafka"], False, "FACESPACE_API_KEY"),
        (["--start-time", "23/10/23", "--broker", "kafak"], True, "--broker"),
        (["--start-time", "23/10/23"], True, "--broker"),
        (
            ["--start-time", "23/10/23", "--broker", "kafka", "--bootstrap-servers", "nohost"],
            True,
            "host:port",
        ),
        (
            ["--start-time", "23/10/23", "--broker", "kafka", "--kafka-sasl-mechanism", "PLAIN"],
            True,
            "KAFKA_SASL",
        ),
        (["--end-time", "23/10/23", "--broker", "kafka"], True, "--start-time"),
        (["--start-time", "23/10/23", "--broker", "kafka", "--pseudonymize"], True, "PSEUDONYM_KEY"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_side_effect(args, env_key, problem, sentinel, tmp_path):
    api, kafka = sentinel, sentinel
    env = clean_env(FACESPACE_API_URL=f"http://{address(api)}", FACESPACE_API_KEY="k-123" if env_key else "")
    if not env_key:
        del env["FACESPACE_API_KEY"]
    result = run_cli(["replay", "--bootstrap-servers", address(kafka), *args], env)
    assert result.returncode == 2, result.stderr
    assert problem in one_error_line(result)
    assert result.stdout == ""
    assert nobody_connected(sentinel)


def test_unreadable_api_key_file_is_bad_input(sentinel, tmp_path: Path):
    missing = tmp_path / "nope"
    env = clean_env(FACESPACE_API_URL=f"http://{address(sentinel)}")
    result = run_cli(["replay", "--start-time", "23/10/23", "--dry-run", "--api-key-file", str(missing)], env)
    assert result.returncode == 2
    assert "--api-key-file" in one_error_line(result)
    assert nobody_connected(sentinel)


# -- against the simulator and a real broker -----------------------------------------------------

DAY_START = datetime(2023, 10, 23, tzinfo=timezone.utc)
DAY_LAST_SECOND = datetime(2023, 10, 23, 23, 59, 59, tzinfo=timezone.utc)


def replay_env(sim: SimulatorServer) -> dict[str, str]:
    return clean_env(FACESPACE_API_URL=sim.base_url, FACESPACE_API_KEY=sim.api_key)


def replay_to(
    kafka: KafkaBroker, sim: SimulatorServer, topic: str, *args: str
) -> subprocess.CompletedProcess[str]:
    result = run_cli(
        [
            "replay", "--broker", "kafka", "--bootstrap-servers", kafka.bootstrap,
            "--topic", topic, "--deadletter-topic", f"{topic}.deadletter", "--kafka-connect-timeout", "10",
            *args,
        ],
        replay_env(sim),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def summary(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    """(published, dead-lettered) from the one summary line on stdout."""
    (line,) = result.stdout.strip().splitlines()
    match = re.fullmatch(
        r"published (\d+) sightings and (\d+) dead letters in [\d.]+ s \([\d,]+ events/s\)", line
    )
    assert match, line
    return int(match[1]), int(match[2])


async def test_replay_publishes_exactly_the_ground_truth(kafka, kafka_topic, read_topic, simulator):
    result = replay_to(kafka, simulator, kafka_topic, "--start-time", "23/10/23", "--end-time", "23/10/23")
    truth = Counter(simulator.world.entries(DAY_START, DAY_LAST_SECOND))
    assert sum(truth.values()) > 500  # a day of a small world: enough to mean something
    assert summary(result) == (sum(truth.values()), 0)
    assert "━" not in result.stderr and "\r" not in result.stderr  # no progress bar off a terminal

    records = await read_topic(kafka_topic)
    payloads = [orjson.loads(r.value) for r in records]
    assert Counter((p["camera_id"], p["person"], parse_rfc3339(p["seen_at"])) for p in payloads) == truth
    assert len({p["event_id"] for p in payloads}) == len(payloads)
    last_seen: dict[tuple[int, str], str] = {}
    for record, payload in zip(records, payloads, strict=True):  # (partition, offset) order
        assert validate(record.value) == []
        assert record.key == payload["camera_id"].encode()
        assert record.headers == {
            "content-type": b"application/json",
            "schema": payload["schema"].encode(),
            "event-id": payload["event_id"].encode(),
            # CloudEvents (facespace_bridge/cloudevents.py); the source is the --api-url
            # (http://127.0.0.1:<port>/facespace: already in its normal form)
            "ce_specversion": b"1.0",
            "ce_id": payload["event_id"].encode(),
            "ce_source": simulator.base_url.encode(),
            "ce_type": b"one.automa.facespace.sighting.v1",
            "ce_dataschema": b"urn:facespace-bridge:schema:sighting/v1",
            "ce_subject": payload["camera_id"].encode(),
            "ce_time": payload["seen_at"].encode(),
        }
        assert payload["schema"] == "facespace.sighting/v1"
        at = (record.partition, payload["camera_id"])
        assert payload["seen_at"] >= last_seen.get(at, "")  # RFC 3339 Z strings sort as times
        last_seen[at] = payload["seen_at"]
    assert await read_topic(f"{kafka_topic}.deadletter") == []

    # The same range again, into a second topic: the very same (key, value) records.
    again = f"{kafka_topic}.again"
    replay_to(kafka, simulator, again, "--start-time", "2023-10-23", "--end-time", "2023-10-23T23:59:59Z")
    first = Counter((r.key, r.value) for r in records)
    assert Counter((r.key, r.value) for r in await read_topic(again)) == first


async def test_replay_bounds_at_the_resolution_given_for_one_camera(
    kafka, kafka_topic, read_topic, simulator
):
    replay_to(
        kafka, simulator, kafka_topic,
        "--start-time", "10:15:30 23/10/23", "--end-time", "2023-10-23T13:20", "--camera-id", "Camera2",
    )  # fmt: skip
    start = datetime(2023, 10, 23, 10, 15, 30, tzinfo=timezone.utc)
    end = datetime(2023, 10, 23, 13, 20, 59, tzinfo=timezone.utc)  # HH:MM: that whole minute
    truth = Counter(simulator.world.entries(start, end, "Camera2"))
    assert sum(truth.values()) > 10
    records = await read_topic(kafka_topic)
    got = Counter(
        (p["camera_id"], p["person"], parse_rfc3339(p["seen_at"]))
        for p in map(orjson.loads, (r.value for r in records))
    )
    assert got == truth


async def test_unparsable_entries_are_dead_lettered_not_dropped(kafka, kafka_topic, read_topic, simulator):
    world = simulator.world
    bad = {
        "Camera1": ("Alice @ 25:61:00 23/10/23", datetime(2023, 10, 23, 9, 0, 5, tzinfo=timezone.utc)),
        "TestCamera": ({"not": "a string"}, datetime(2023, 10, 23, 17, 30, 0, tzinfo=timezone.utc)),
    }
    for camera, (value, at) in bad.items():
        world.insert_malformed(camera, value, at)
    result = replay_to(kafka, simulator, kafka_topic, "--start-time", "23/10/23", "--end-time", "23/10/23")
    truth = world.count(DAY_START, DAY_LAST_SECOND)
    assert summary(result) == (truth, 2)
    assert len(await read_topic(kafka_topic)) == truth

    letters = await read_topic(f"{kafka_topic}.deadletter")
    payloads = {orjson.loads(r.value)["camera_id"]: orjson.loads(r.value) for r in letters}
    assert sorted(payloads) == sorted(bad)
    for record in letters:
        assert validate(record.value) == []
        assert record.headers["schema"] == b"facespace.deadletter/v1"
    assert payloads["Camera1"]["raw"] == "Alice @ 25:61:00 23/10/23"
    assert orjson.loads(payloads["TestCamera"]["raw"]) == {"not": "a string"}
    assert all(p["reason"] for p in payloads.values())


def test_dry_run_counts_without_a_broker(simulator, sentinel):
    result = run_cli(
        ["replay", "--start-time", "23/10/23", "--end-time", "24/10/23", "--dry-run", "--broker", "kafka",
         "--bootstrap-servers", address(sentinel)],
        replay_env(simulator),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    truth = simulator.world.count(DAY_START, datetime(2023, 10, 24, 23, 59, 59, tzinfo=timezone.utc))
    assert line.startswith(f"dry run: would publish {truth} sightings and 0 dead letters in ")
    assert nobody_connected(sentinel)


def test_unreachable_broker_exits_1_with_one_line_after_the_connect_timeout(simulator):
    port = free_port()  # nothing listens there
    began = time.monotonic()
    result = run_cli(
        ["replay", "--start-time", "23/10/23", "--end-time", "23/10/23", "--broker", "kafka",
         "--bootstrap-servers", f"127.0.0.1:{port}", "--kafka-connect-timeout", "2"],
        replay_env(simulator),
        timeout=60,
    )  # fmt: skip
    elapsed = time.monotonic() - began
    assert result.returncode == 1
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"facespace-bridge: error: Kafka broker 127.0.0.1:{port} unreachable after 2 s"
    )
    assert "facespace_bridge.replay: replaying 2023-10-23 00:00:00Z .. 2023-10-23 23:59:59Z" in lines[0]
    retries = [line for line in lines[1:-1] if "not reachable" in line]
    assert retries and len(retries) == len(lines) - 2  # one log line per failed attempt, nothing else
    # It gives up at its own deadline, not after aiokafka's 40 s request timeout (loose bound:
    # interpreter start-up on a busy machine).
    assert elapsed < 2 + 20


def test_a_refused_api_key_is_bad_input_before_the_broker_is_touched(simulator, sentinel):
    env = replay_env(simulator) | {"FACESPACE_API_KEY": "wrong-key"}
    result = run_cli(
        ["replay", "--start-time", "23/10/23", "--broker", "kafka", "--bootstrap-servers", address(sentinel)],
        env,
    )
    assert result.returncode == 2
    assert "key" in one_error_line(result)
    assert "wrong-key" not in result.stderr
    assert nobody_connected(sentinel)


# -- what a replay tells its user ------------------------------------------------------------------


def log_lines(stderr: str, logger: str = "facespace_bridge.replay") -> list[str]:
    """The messages of `logger`'s lines, without time and level."""
    return [line.split(f"{logger}: ", 1)[1] for line in stderr.splitlines() if f" {logger}: " in line]


@pytest.mark.parametrize(
    ("start", "end", "echo"),
    [
        ("01/02/24", "02/02/24", "2024-02-01 00:00:00Z .. 2024-02-02 23:59:59Z (UTC, day first)"),
        (
            "10:15:30 23/10/23",
            "2023-10-23T13:20",
            "2023-10-23 10:15:30Z .. 2023-10-23 13:20:59Z (UTC, day first)",
        ),
        ("2023-10-24T08:00Z", None, "2023-10-24 08:00:00Z .. the latest entry (UTC)"),
    ],
)
def test_replay_echoes_the_range_it_understood(simulator, start, end, echo):
    args = ["replay", "--dry-run", "--start-time", start, *(["--end-time", end] if end else [])]
    result = run_cli(args, replay_env(simulator))
    assert result.returncode == 0, result.stderr
    assert log_lines(result.stderr)[0] == f"replaying {echo}"


def test_an_empty_range_says_where_the_history_starts_and_exits_0(simulator):
    result = run_cli(
        ["replay", "--dry-run", "--start-time", "01/02/23", "--end-time", "02/02/23"], replay_env(simulator)
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("dry run: would publish 0 sightings and 0 dead letters in ")
    first = min(
        seen_at for _, _, seen_at in simulator.world.entries(datetime(2000, 1, 1, tzinfo=timezone.utc))
    )
    assert log_lines(result.stderr)[-1] == (
        f"0 sightings in that range: the API's history starts {first:%Y-%m-%d %H:%M:%S}Z"
    )


def test_ctrl_c_says_how_far_it_got_and_the_printed_command_finishes_the_range(simulator_factory, tmp_path):
    # Dense and slow enough for about ten windows of half a second each: Ctrl-C lands in the middle.
    sim = simulator_factory(visits_per_hour=2000, faults={"latency_ms": 500})
    output = tmp_path / "replay.jsonl"
    args = ["replay", "--start-time", "23/10/23", "--end-time", "23/10/23", "--broker", "file",
            "--output", str(output), "--output-mode", "truncate"]  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, *args], env=replay_env(sim), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (output.exists() and output.stat().st_size > 0):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stdout == "" and "Traceback" not in stderr
    said = log_lines(stderr)[-1]
    match = re.fullmatch(
        r"interrupted after ([\d,]+) sightings and 0 dead letters; everything before (\S+ \S+) is published; "
        r"to continue: (.+)",
        said,
    )
    assert match, said
    written = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert int(match[1].replace(",", "")) == len(written) < simulator_count(sim)
    before = datetime.strptime(match[2], "%Y-%m-%d %H:%M:%SZ").replace(tzinfo=timezone.utc)
    # It stopped at the end of a window: everything before it, and nothing after.
    assert Counter(map(sighting_key, written)) == Counter(
        sim.world.entries(DAY_START, before - timedelta(seconds=1))
    )
    command = shlex.split(match[3])
    assert command[:4] == [
        "facespace-bridge",
        "replay",
        "--start-time",
        before.strftime("%Y-%m-%dT%H:%M:%SZ"),
    ]
    assert "--output-mode" not in command  # the continuation appends to what the first part wrote
    sim.set_faults(latency_ms=0)
    rest = run_cli(command[1:], replay_env(sim))
    assert rest.returncode == 0, rest.stderr
    # Together: the whole day, each sighting once (the continuation starts where the first stopped).
    everything = [orjson.loads(line) for line in output.read_bytes().splitlines()]
    assert len({p["event_id"] for p in everything}) == len(everything)
    assert Counter(map(sighting_key, everything)) == Counter(sim.world.entries(DAY_START, DAY_LAST_SECOND))


def simulator_count(sim: SimulatorServer) -> int:
    return sim.world.count(DAY_START, DAY_LAST_SECOND)


def sighting_key(payload: dict) -> tuple[str, str, datetime]:
    return payload["camera_id"], payload["person"], parse_rfc3339(payload["seen_at"])


def test_output_mode_truncate_starts_the_file_afresh_and_append_adds(simulator, tmp_path):
    output = tmp_path / "replay.jsonl"
    output.write_text("left over from before\n")
    base = [
        "replay",
        "--start-time",
        "23/10/23",
        "--end-time",
        "23/10/23",
        "--broker",
        "file",
        "--output",
        str(output),
    ]
    truth = simulator_count(simulator)
    assert run_cli([*base, "--output-mode", "truncate"], replay_env(simulator)).returncode == 0
    assert len(output.read_bytes().splitlines()) == truth
    assert run_cli(base, replay_env(simulator)).returncode == 0  # append, the default
    assert len(output.read_bytes().splitlines()) == 2 * truth


def on_a_terminal(args: list[str], env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout and stderr: (exit code, what the terminal got)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([*CLI, *args], env={**env, "COLUMNS": "160"}, stdin=subprocess.DEVNULL,
                            stdout=terminal, stderr=terminal)  # fmt: skip
    os.close(terminal)
    received = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the child closed the terminal (EIO)
            break
        if not chunk:
            break
        received += chunk
    os.close(controller)
    return proc.wait(timeout=10), received.decode(errors="replace")


def test_on_a_terminal_the_bar_shows_percent_and_time_left_and_log_lines_get_lines_of_their_own(
    simulator_factory,
):
    # Failing requests make the client log retries while the bar is up.
    sim = simulator_factory(visits_per_hour=2000, faults={"latency_ms": 100, "error_rate": 0.3, "seed": 5})
    code, screen = on_a_terminal(
        ["replay", "--dry-run", "--start-time", "23/10/23", "--end-time", "23/10/23"], replay_env(sim)
    )
    assert code == 0, screen
    bars = [segment for segment in screen.split("\r") if "━" in segment]
    assert any(re.search(r"\b\d+%", bar) for bar in bars), screen[-2000:]
    assert any(re.search(r"\d+:\d\d:\d\d", bar) for bar in bars)  # (time left and elapsed)
    retries = [line for line in screen.split("\n") if "retry" in line]
    assert retries, screen[-2000:]
    for line in retries:
        visible = line.rstrip("\r").split("\r")[-1]  # a carriage return starts the line afresh (the
        # terminal ends each line with one)
        assert "━" not in visible and "%" not in visible, repr(line)
