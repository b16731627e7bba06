"""`facespace-bridge replay` end to end: the simulator over HTTP, a real Kafka broker, the CLI
in a subprocess for exit codes and output."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
