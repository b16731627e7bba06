"""`facespace-bridge simulate` as a user runs it: one URL line, clean exit on signals, bad flags."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from facespace_bridge.cli import main

SECRET = "cli-secret-key-123"
ARGS = ["--port", "0", "--speed", "0", "--now", "2023-10-25T00:00:00Z", "--seed", "3", "--cameras", "2"]


def start(*extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "facespace_bridge", "simulate", *ARGS, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FACESPACE_API_KEY": SECRET},
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_prints_the_url_serves_and_exits_cleanly(signum: signal.Signals) -> None:
    proc = start("--stop-signal")
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        match = re.fullmatch(r"FACESPACE_API_URL=(http://127\.0\.0\.1:\d+/facespace)\n", line)
        assert match, line
        base = match.group(1)
        reply = httpx.get(f"{base}/logs", params={"end_time": "24/10/23"}, headers={"x-api-key": SECRET})
        assert reply.status_code == 200 and set(reply.json()) == {"Camera1", "Camera2"}
        assert httpx.get(f"{base}/recognition", headers={"x-api-key": SECRET}).json() == {
            "stop": "No cameras active..."
        }
        assert httpx.get(f"{base}/logs", headers={"x-api-key": "demo-key"}).status_code == 401
    finally:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out == ""  # the URL line was the only stdout
    assert "Traceback" not in err and SECRET not in err + line


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        (["--cameras", "0"], "--cameras"),
        (["--error-rate", "1.5"], "--error-rate"),
        (["--now", "25/10/23"], "--now"),
        (["--error-rate", "0.6", "--throttle-rate", "0.6"], "must not exceed 1"),
        (["--api-key", ""], "--api-key"),
        (["--no-such-flag"], "--no-such-flag"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(
    flags: list[str], mentions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process through the console script's own entry point (no subprocess start-up cost).
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", *flags])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1 and mentions in err


@pytest.mark.timeout(60)
def test_port_in_use_is_one_line(simulator) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "facespace_bridge", "simulate", "--port", str(simulator.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot listen" in proc.stderr
