"""`facespace-bridge run` (the default command) and `check` from the outside: exit codes,
configuration sources, secrets, metrics. The CLI runs in a subprocess, as users run it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import httpx
import orjson
import pytest

from facespace_bridge.commands import run
from facespace_bridge.commands._common import prepare

CLI = [sys.executable, "-m", "facespace_bridge"]


def cli(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE", "KAFKA", "MQTT"))}
    return subprocess.run(
        [*CLI, *args], env={**base, **(env or {})}, capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("facespace-bridge: error: ")
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--broker", "file", "--output", "x.jsonl"], {}, "no API key"),
        (["--broker", "carrier-pigeon"], {"FACESPACE_API_KEY": "k"}, "carrier-pigeon"),
        (["--broker", "file"], {"FACESPACE_API_KEY": "k"}, "--output"),
        (
            ["--broker", "file", "--output", "x.jsonl", "--backfill-from", "31/02/23"],
            {"FACESPACE_API_KEY": "k"},
            "--backfill-from",
        ),
        (
            ["--broker", "file", "--output", "x.jsonl", "--refresh", "0"],
            {"FACESPACE_API_KEY": "k"},
            "--refresh",
        ),
        (
            ["--broker", "file", "--output", "x.jsonl", "--backfill-from", "01/01/99"],
            {"FACESPACE_API_KEY": "k"},
            "must be in the past",
        ),
        (
            ["--broker", "file", "--output", "x.jsonl", "--output-mode", "truncate"],
            {"FACESPACE_API_KEY": "k"},
            "truncate is for replay",
        ),
        (
            ["--broker", "file", "--output", "x.jsonl", "--exactly-once"],
            {"FACESPACE_API_KEY": "k"},
            "--exactly-once needs --broker kafka",
        ),
        (
            [
                "--broker",
                "kafka",
                "--broker",
                "file",
                "--output",
                "x.jsonl",
                "--exactly-once",
                "--bootstrap-servers",
                "127.0.0.1:1",
            ],
            {"FACESPACE_API_KEY": "k"},
            "and no other broker",
        ),
        (
            [
                "--broker",
                "kafka",
                "--bootstrap-servers",
                "127.0.0.1:1",
                "--exactly-once",
                "--checkpoint",
                "c.json",
            ],
            {"FACESPACE_API_KEY": "k"},
            "drop --checkpoint",
        ),
        # Producer properties are checked against librdkafka, without a broker: each named.
        (
            ["--broker", "kafka", "--kafka-property", "linger.ms=5", "--kafka-property", "lingr.ms=5"],
            {"FACESPACE_API_KEY": "k"},
            'No such configuration property: "lingr.ms"',
        ),
        (
            ["--broker", "kafka", "--kafka-property", "compression.type=brotli"],
            {"FACESPACE_API_KEY": "k"},
            'Invalid value "brotli"',
        ),
        (["--broker", "kafka", "--kafka-property", "linger.ms"], {"FACESPACE_API_KEY": "k"}, "KEY=VALUE"),
        (
            ["--broker", "kafka", "--kafka-property", "acks=1"],
            {"FACESPACE_API_KEY": "k"},
            "acks is set by the bridge",
        ),
        (
            ["--broker", "kafka", "--kafka-property", "sasl.password=hunter2"],
            {"FACESPACE_API_KEY": "k"},
            "KAFKA_SASL_PASSWORD",
        ),
        (
            [
                "--broker",
                "kafka",
                "--kafka-client",
                "aiokafka",
                "--kafka-property",
                "message.copy.max.bytes=1",
            ],
            {"FACESPACE_API_KEY": "k"},
            "message.copy.max.bytes has no equivalent in aiokafka",
        ),
        (
            ["--broker", "kafka", "--kafka-client", "aiokafka", "--kafka-property", "linger.ms=soon"],
            {"FACESPACE_API_KEY": "k"},
            "--kafka-property",  # librdkafka's own words: an invalid value of linger.ms
        ),
        (["--broker", "mqtt", "--mqtt-qos", "3"], {"FACESPACE_API_KEY": "k"}, "--mqtt-qos"),
        (
            ["--broker", "file", "--output", "x.jsonl", "--web-port", "8099", "--web-host", "0.0.0.0"],
            {"FACESPACE_API_KEY": "k"},
            "--web-host 0.0.0.0 would show people's names beyond this machine without a password",
        ),
        (
            ["--broker", "file", "--output", "x.jsonl", "--web-ingress"],
            {"FACESPACE_API_KEY": "k"},
            "--web-ingress serves the page on --web-port: set it",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_side_effect(tmp_path, args, env, needle):
    env = {**env, "XDG_STATE_HOME": str(tmp_path / "state")}
    result = cli(*args, env=env)
    assert needle in one_line_error(result)
    assert not (tmp_path / "state").exists() and not Path("x.jsonl").exists()


def test_check_says_whether_the_web_page_can_listen(simulator, tmp_path):
    env = {"FACESPACE_API_KEY": simulator.api_key, "FACESPACE_API_URL": simulator.base_url}
    args = [
        "check",
        "--broker",
        "file",
        "--output",
        str(tmp_path / "o.jsonl"),
        "--checkpoint",
        str(tmp_path / "c"),
    ]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = cli(*args, "--web-port", port, env=env)
    assert busy.returncode == 1
    assert f"FAIL web: 127.0.0.1:{port}: Address already in use" in busy.stdout
    free = cli(*args, "--web-port", port, env=env)
    assert free.returncode == 0 and f"ok   web: the page can listen on 127.0.0.1:{port}" in free.stdout


def test_unreachable_api_exits_2_quickly(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    result = cli(
        "--broker", "file", "--output", str(tmp_path / "out.jsonl"),
        "--api-url", f"http://127.0.0.1:{port}/facespace",
        env={"FACESPACE_API_KEY": "k", "XDG_STATE_HOME": str(tmp_path / "state")},
    )  # fmt: skip
    assert "cannot reach the FaceSpace API" in one_line_error(result)
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "state").exists()


def test_refused_key_exits_2(simulator, tmp_path):
    result = cli(
        "--broker", "file", "--output", str(tmp_path / "out.jsonl"), "--api-url", simulator.base_url,
        env={"FACESPACE_API_KEY": "wrong-key"},
    )  # fmt: skip
    assert "refused the key" in one_line_error(result)
    assert "wrong-key" not in result.stderr


def test_settings_precedence_is_flag_then_env_then_file(tmp_path, monkeypatch):
    config = tmp_path / "bridge.toml"
    config.write_text('refresh = 3.0\ntail-interval = 7.0\nlateness = 30\nbroker = ["file"]\n')
    monkeypatch.setenv("FACESPACE_BRIDGE_TAIL_INTERVAL", "8.5")
    monkeypatch.setenv("FACESPACE_BRIDGE_LATENESS", "45")
    with run.command.make_context("run", ["--config", str(config), "--lateness", "60"]) as ctx:
        params = ctx.params
    assert params["refresh"] == 3.0  # file
    assert params["tail_interval"] == 8.5  # env beats file
    assert params["lateness"] == 60.0  # flag beats env
    assert params["broker"] == ("file",)


@pytest.mark.parametrize(("flags", "expected"), [([], True), (["--no-quick-polls"], False)])
def test_quick_polls_are_on_by_default_and_can_be_turned_off(tmp_path, monkeypatch, flags, expected):
    monkeypatch.setenv("FACESPACE_API_KEY", "k")
    args = ["--broker", "file", "--output", str(tmp_path / "out.jsonl"), *flags]
    with run.command.make_context("run", args) as ctx:
        _, _, options = prepare(ctx.params)
    assert options.quick_polls is expected


@pytest.mark.parametrize(
    ("flags", "file", "env", "expected"),
    [
        ([], "", {}, True),
        (["--no-realtime"], "", {}, False),
        (["--realtime"], "realtime = false\n", {}, True),
        ([], "realtime = false\n", {}, False),
        # Today's spellings of the key in a file and in the environment, turned around.
        ([], "no_realtime = true\n", {}, False),
        ([], "", {"FACESPACE_BRIDGE_NO_REALTIME": "1"}, False),
        ([], "no_realtime = true\n", {"FACESPACE_BRIDGE_REALTIME": "true"}, True),
        (["--realtime"], "", {"FACESPACE_BRIDGE_NO_REALTIME": "1"}, True),
    ],
)
def test_boolean_options_take_both_spellings(tmp_path, monkeypatch, flags, file, env, expected):
    config = tmp_path / "bridge.toml"
    config.write_text(file)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with run.command.make_context("run", ["--config", str(config), "--broker", "file", *flags]) as ctx:
        assert ctx.params["realtime"] is expected


def test_producer_properties_reach_the_client_library(monkeypatch):
    from facespace_bridge.sinks.kafka import from_config

    monkeypatch.setenv("FACESPACE_API_KEY", "k")
    args = ["--broker", "kafka", "--kafka-linger-ms", "7", "--kafka-property", "linger.ms=20",
            "--kafka-property", "queue.buffering.max.kbytes=2048",
            "--kafka-property", "client.id=door"]  # fmt: skip
    with run.command.make_context("run", list(args)) as ctx:
        config = ctx.params
    librdkafka = from_config(config)._config()  # type: ignore[attr-defined]
    assert (librdkafka["linger.ms"], librdkafka["queue.buffering.max.kbytes"], librdkafka["client.id"]) == (
        "20",  # the property wins over --kafka-linger-ms
        "2048",
        "door",
    )
    with run.command.make_context("run", [*args[:6], *args[8:], "--kafka-client", "aiokafka"]) as ctx:
        sink = from_config(ctx.params)
    from facespace_bridge.sinks.kafka.properties import aiokafka_kwargs

    assert aiokafka_kwargs(sink.settings.producer_properties()) == {"linger_ms": 20, "client_id": "door"}


def test_mqtt_qos_is_an_integer():
    with run.command.make_context("run", ["--broker", "mqtt", "--mqtt-qos", "0"]) as ctx:
        assert ctx.params["mqtt_qos"] == 0


def test_bare_command_prints_usage_and_exits_2():
    result = cli()
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("Usage: facespace-bridge [OPTIONS] COMMAND [ARGS]...")
    assert "run " in result.stderr and "Traceback" not in result.stderr
    # The default command still takes `run`'s options without its name.
    assert "no API key" in one_line_error(cli("--broker", "kafka"))


def test_unknown_setting_in_config_file_is_bad_input(tmp_path):
    config = tmp_path / "bridge.toml"
    config.write_text("refrsh = 3.0\n")
    with pytest.raises(click.BadParameter, match="refrsh"):
        run.command.make_context("run", ["--config", str(config)])


def test_default_command_is_run_and_check_reports_each_part(simulator, tmp_path):
    env = {"FACESPACE_API_KEY": simulator.api_key, "FACESPACE_API_URL": simulator.base_url}
    out = tmp_path / "out.jsonl"
    result = cli(
        "check", "--broker", "file", "--output", str(out), "--checkpoint", str(tmp_path / "c.json"), env=env
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == ["config", "api", "file", "checkpoint"]
    assert all(line.startswith("ok") for line in lines)
    bad = cli(
        "check", "--broker", "kafka", "--bootstrap-servers", "127.0.0.1:1", "--kafka-connect-timeout", "1",
        env=env,
    )  # fmt: skip
    assert bad.returncode == 1 and any(line.startswith("FAIL kafka") for line in bad.stdout.splitlines())


def test_run_serves_metrics_health_and_keeps_secrets_out_of_logs(simulator, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out.jsonl"
    env = {
        **os.environ,
        "FACESPACE_API_KEY": simulator.api_key,
        "FACESPACE_API_URL": simulator.base_url,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    proc = subprocess.Popen(
        [*CLI, "--broker", "file", "--output", str(out),
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
         "--log-format", "json", "--log-level", "debug", "--tail-interval", "0.3", "--refresh", "0.3",
         "--backfill-from", "24/10/23"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        for name in (
            'facespace_bridge_events_published_total{sink="file",type="sighting"}',
            "facespace_bridge_api_requests_total",
            "facespace_bridge_camera_lag_seconds",
            "facespace_bridge_checkpoint_saved_timestamp_seconds",
            "facespace_bridge_in_flight_events",
        ):
            assert name in metrics
        assert f"{simulator.api_key}" not in " ".join(
            Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert simulator.api_key not in stderr
    assert simulator.api_key.encode() not in out.read_bytes()


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
def test_exactly_once_on_a_broker_whose_transactions_do_not_work_is_refused(
    client, simulator, kafka, kafka_topic, tmp_path
):
    if kafka.supports_transactions:
        pytest.skip("this broker's transactions work")  # never the case with Tansu (the machines here)
    env = {
        "FACESPACE_API_KEY": simulator.api_key,
        "FACESPACE_API_URL": simulator.base_url,
        "XDG_STATE_HOME": str(tmp_path / "state"),
    }
    result = cli(
        "--broker", "kafka", "--bootstrap-servers", kafka.bootstrap, "--topic", kafka_topic, "--exactly-once",
        "--kafka-client", client,
        env=env,
    )  # fmt: skip
    line = one_line_error(result)  # exit 2, no traceback
    assert [text for text in result.stderr.splitlines() if text.strip()] == [line], result.stderr
    assert "--exactly-once: the Kafka broker at" in line and "has no working transactions" in line
    if kafka.kind == "tansu" and client == "librdkafka":
        assert "a read_committed reader sees the records of an aborted transaction" in line
    assert not (tmp_path / "state").exists()


def test_a_short_api_key_is_warned_about_and_masked_only_where_it_stands_alone(simulator_factory, tmp_path):
    sim = simulator_factory(api_key="heck")  # letters that occur inside ordinary words ("checkpoint")
    out = tmp_path / "out.jsonl"
    result = cli(
        "check", "--broker", "file", "--output", str(out), "--checkpoint", str(tmp_path / "checkpoint.json"),
        env={"FACESPACE_API_KEY": "heck", "FACESPACE_API_URL": sim.base_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "the API key has fewer than 8 characters" in result.stderr
    assert "checkpoint" in result.stdout  # the key inside a word is not garbled
