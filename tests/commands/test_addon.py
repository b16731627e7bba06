"""`facespace-bridge addon` as the add-on's container runs it (addon/Dockerfile's CMD).

End to end against real parts: the options file the Supervisor would write, the stand-in for
the Supervisor's services endpoint (tests/fixtures/supervisor.py), a Mosquitto that only the
account the services endpoint names may use, a real Home Assistant that creates the
entities, the simulator as the FaceSpace API, and nginx acting as Home Assistant's ingress
proxy (a path prefix and `X-Ingress-Path`). The Kafka libraries are blocked in the process,
as they are absent from the add-on's image.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import click
import httpx
import orjson
import pytest
import yaml

from facespace_bridge.commands import addon
from facespace_bridge.simulator import SimulatorServer
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant as Discovery
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.browser import Nginx
from tests.fixtures.homeassistant import HomeAssistantFactory
from tests.fixtures.mqtt import MqttBroker, MqttCollector, free_port, publish_marker
from tests.fixtures.supervisor import Supervisor
from tests.sinks.mqtt._helpers import registry_of

pytestmark = pytest.mark.timeout(240)

INFO = re.compile(r"\d\d:\d\d:\d\d INFO ")
REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "addon" / "config.yaml").read_text())
# The Dockerfile's CMD, with this venv's console script (tests/addon/test_image.py checks it).
ADDON = [str(Path(sys.executable).with_name("facespace-bridge")), "addon"]
BLOCK_KAFKA = (
    "import sys\n"
    "# The add-on's image has no Kafka library: any import of one fails here as it would there.\n"
    "for name in ('confluent_kafka', 'aiokafka'):\n"
    "    sys.modules[name] = None\n"
)


def without_kafka(tmp_path: Path) -> dict[str, str]:
    """An environment in which importing confluent_kafka or aiokafka fails (a sitecustomize)."""
    shim = tmp_path / "no-kafka"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(BLOCK_KAFKA)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESPACE_", "MQTT_", "SUPERVISOR_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), str(REPO), env.get("PYTHONPATH")]))
    return env


def addon_env(tmp_path: Path, supervisor: Supervisor, token: str | None = None) -> dict[str, str]:
    """What the Supervisor gives the add-on's container: its URL (here the stand-in's) and token."""
    return {
        **without_kafka(tmp_path),
        "SUPERVISOR_URL": supervisor.url,
        "SUPERVISOR_TOKEN": token or supervisor.token,
    }


def options_file(tmp_path: Path, sim: SimulatorServer, **overrides: Any) -> Path:
    """config.yaml's defaults with the key and the simulator's URL, as the Supervisor writes them."""
    options = {**CONFIG["options"], "api_key": sim.api_key, "api_url": sim.base_url, **overrides}
    path = tmp_path / "options.json"
    path.write_bytes(orjson.dumps(options))
    return path


def run_addon(
    options: Path, data: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ADDON, "--options", str(options), "--data-dir", str(data)],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def start_addon(
    options: Path, data: Path, port: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*ADDON, "--options", str(options), "--data-dir", str(data), "--ingress-port", str(port)],
            env=env, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )  # fmt: skip


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def nothing_published(broker: MqttBroker, collector: MqttCollector) -> None:
    """Nothing but our marker reached the broker (a marker sent after the command exited
    arrives after anything the command published)."""
    marker = f"facespace-tests/marker/{uuid.uuid4().hex}"
    await asyncio.to_thread(publish_marker, broker, marker)
    await collector.wait_topic(marker)
    assert [m.topic for m in collector.snapshot()] == [marker]


def test_the_kafka_shim_blocks_kafka(tmp_path: Path) -> None:
    """The environment of these tests really has no Kafka library (else they prove nothing)."""
    for module in ("confluent_kafka", "aiokafka"):
        done = subprocess.run(
            [sys.executable, "-c", f"import {module}"], env=without_kafka(tmp_path), capture_output=True
        )
        assert done.returncode != 0 and b"ModuleNotFoundError" in done.stderr


async def test_addon_with_the_supervisors_broker_home_assistant_and_ingress(
    simulator_factory,
    home_assistant_factory: HomeAssistantFactory,
    supervisor: Supervisor,
    tmp_path: Path,
) -> None:
    password = f"broker-{uuid.uuid4().hex}"
    (tmp_path / "mqtt").mkdir()
    broker = MqttBroker(tmp_path / "mqtt", credentials=("addons", password)).start()
    try:
        ha = await home_assistant_factory(broker)
        supervisor.provide_mqtt(broker.host, broker.port, "addons", password)
        sim = simulator_factory(now=None, speed=0.0, cameras=2, people=3, history_hours=2, visits_per_hour=30)
        data = tmp_path / "data"
        data.mkdir()
        port = free_port()
        # nginx below is the ingress proxy
        env = {**addon_env(tmp_path, supervisor), "FACESPACE_BRIDGE_INGRESS_PROXY": "127.0.0.1"}
        people = {p for _, p, _ in sim.world.entries()} | {
            p for ps in sim.world.present().values() for p in ps
        }
        left_out = sorted(people)[0]  # through the option exclude_people: run's --exclude-person
        options = options_file(tmp_path, sim, backfill_hours=1, exclude_people=[left_out])
        log = tmp_path / "addon.log"
        proc = start_addon(options, data, port, env, log)
        proxy = Nginx(f"http://127.0.0.1:{port}", "/api/hassio_ingress/token123", tmp_path / "nginx")
        try:
            shown = sorted(people - {left_out})
            configs = Discovery(TopicLayout("facespace")).configs(sim.world.cameras(), shown)
            expected = {orjson.loads(config)["unique_id"] for config in configs.values()}

            async def created() -> bool:
                assert proc.poll() is None, log.read_text()
                return (await registry_of(ha)).keys() == expected

            await ha.wait_until(created, 90, "Home Assistant's entities of the add-on")
            entities = sorted((await registry_of(ha)).values())
            assert any(e.startswith("device_tracker.") for e in entities), entities
            assert supervisor.requests == ["/services/mqtt"]

            # The page through the ingress proxy: its prefix, X-Ingress-Path, the watchdog's /healthz.
            proxy.start()
            async with httpx.AsyncClient(timeout=10) as client:
                page = await client.get(proxy.url)
                assert page.status_code == 200
                assert '<base href="/api/hassio_ingress/token123/">' in page.text
                assert (await client.get(proxy.url + "healthz")).text == "ok\n"
                assert (await client.get(proxy.url + "api/state")).status_code == 200
            # Any other client: 403, whatever headers it sends.
            other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
            async with httpx.AsyncClient(transport=other, timeout=10) as client:
                for path in ("", "healthz", "api/state"):
                    refused = await client.get(
                        f"http://127.0.0.1:{port}/{path}", headers={"X-Ingress-Path": "/x"}
                    )
                    assert refused.status_code == 403, path

            # Secrets: on no command line, in no log line.
            cmdline = command_line(proc.pid)
            for secret in (password, sim.api_key):
                assert secret.encode() not in cmdline
        finally:
            proxy.stop()
            proc.terminate()
            code = await asyncio.to_thread(proc.wait, 30)
        text = log.read_text()
        assert code == 0, text
        assert "Traceback" not in text
        assert password not in text and sim.api_key not in text
        assert left_out not in text  # the option reached run's filter: the name goes nowhere
        assert "MQTT broker from the Supervisor: mqtt://127.0.0.1:" in text
        assert (data / addon.CHECKPOINT).exists()
        # For the closing note: the add-on's log and the entities (pytest -s shows them).
        print("\n--- add-on log ---\n" + text + "--- entities ---\n" + "\n".join(entities))
    finally:
        broker.stop()


async def test_no_mqtt_service_is_one_line_and_nothing_published(
    simulator, mqtt_broker: MqttBroker, supervisor: Supervisor, tmp_path: Path
) -> None:
    env = addon_env(tmp_path, supervisor)
    with MqttCollector(mqtt_broker) as collector:
        done = await asyncio.to_thread(run_addon, options_file(tmp_path, simulator), tmp_path, env)
        await nothing_published(mqtt_broker, collector)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [f"facespace-bridge: error: {addon.NO_BROKER}"]
    assert supervisor.requests == ["/services/mqtt"]


@pytest.mark.parametrize(
    ("overrides", "code", "says"),
    [
        ({"away_after": -5}, 2, "add-on option away_after: -5 is less than the minimum of 0"),
        ({"discovery_mode": "both"}, 2, "add-on option discovery_mode:"),
        ({"api_key": "wrong-key-0123456789"}, 2, "refused the key"),
    ],
    ids=["bad-number", "bad-choice", "wrong-key"],
)
async def test_bad_options_and_a_wrong_key_are_one_line_and_nothing_published(
    simulator,
    mqtt_broker: MqttBroker,
    supervisor: Supervisor,
    tmp_path: Path,
    overrides: dict[str, Any],
    code: int,
    says: str,
) -> None:
    supervisor.provide_mqtt(mqtt_broker.host, mqtt_broker.port, "addons", "unused")
    env = addon_env(tmp_path, supervisor)
    options = options_file(tmp_path, simulator, **overrides)
    with MqttCollector(mqtt_broker) as collector:
        done = await asyncio.to_thread(run_addon, options, tmp_path, env)
        await nothing_published(mqtt_broker, collector)
    assert done.returncode == code, done.stderr
    # One line says what is wrong; before it at most the add-on's info line on the broker.
    problems = [line for line in done.stderr.splitlines() if not INFO.match(line)]
    assert len(problems) == 1 and says in problems[0], done.stderr
    assert "wrong-key-0123456789" not in done.stderr
    if code == 2 and "api_key" not in overrides:
        assert supervisor.requests == []  # checked before anything is asked


def test_every_option_maps_to_a_flag_of_run_or_a_variable_it_reads() -> None:
    flags = addon.run_flags()
    for option in addon.ADDON_OPTIONS:
        assert (option.flag is None) != (option.env is None), option.name
        if option.env is not None:
            continue
        assert option.flag in flags, option.name
        # A list option becomes its flag repeated: run must take it more than once.
        assert isinstance(option.schema, list) == bool(getattr(flags[option.flag], "multiple", False))
    configuration = (REPO / "docs" / "configuration.md").read_text()
    assert {o.env for o in addon.ADDON_OPTIONS if o.env} == {"FACESPACE_API_KEY", "MQTT_PASSWORD"}
    for variable in ("FACESPACE_API_KEY", "MQTT_PASSWORD"):
        assert variable in configuration  # documented as what run reads


def test_backfill_hours_gives_backfill_from_on_the_first_start_only(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    now = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
    options = {**CONFIG["options"], "api_key": "k" * 20, "backfill_hours": 3}
    first, env = addon.run_arguments(options, addon.Context(first_start=True, now=now), addon.run_flags())
    assert ["--backfill-from", "2026-12-07T09:00:00Z"] == first[first.index("--backfill-from") :][:2]
    assert env == {"FACESPACE_API_KEY": "k" * 20}
    later, _ = addon.run_arguments(options, addon.Context(first_start=False, now=now), addon.run_flags())
    assert "--backfill-from" not in later
    assert "k" * 20 not in first + later  # the key only in the environment


async def test_a_broker_in_the_options_overrides_the_supervisors(
    simulator, supervisor: Supervisor, tmp_path: Path
) -> None:
    password = f"own-{uuid.uuid4().hex}"
    (tmp_path / "mqtt").mkdir()
    broker = MqttBroker(tmp_path / "mqtt", credentials=("household", password)).start()
    try:
        options = options_file(
            tmp_path, simulator, mqtt_url=broker.url, mqtt_username="household", mqtt_password=password
        )
        env = addon_env(tmp_path, supervisor)
        data = tmp_path / "data"
        data.mkdir()
        log = tmp_path / "addon.log"
        with MqttCollector(broker, "facespace/bridge/state") as collector:
            proc = start_addon(options, data, free_port(), env, log)
            try:
                await collector.wait_for(
                    lambda ms: any(m.payload == b"online" for m in ms), 30, "the bridge online"
                )
                assert password.encode() not in command_line(proc.pid)
            finally:
                proc.terminate()
                code = await asyncio.to_thread(proc.wait, 30)
        text = log.read_text()
        assert code == 0, text
        assert supervisor.requests == []  # not asked at all
        assert "MQTT broker from the options" in text and password not in text
    finally:
        broker.stop()


async def test_a_supervisor_refusing_the_token_is_one_line(
    simulator, supervisor: Supervisor, tmp_path: Path
) -> None:
    env = addon_env(tmp_path, supervisor, token="not-the-token")
    done = await asyncio.to_thread(run_addon, options_file(tmp_path, simulator), tmp_path, env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "facespace-bridge: error: the Supervisor's services API answered HTTP 401 to GET /services/mqtt"
    ]


def supervisor_answering(*answers: httpx.Response | Exception) -> httpx.MockTransport:
    """A transport that gives `answers` in turn (an exception is raised, as a failed connection)."""
    pending = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/services/mqtt"
        assert request.headers["Authorization"] == "Bearer token"
        answer = pending.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


SUPERVISOR = addon.SUPERVISOR_URL
SERVICE = {"host": "core-mosquitto", "port": 1883, "ssl": False, "username": "addons", "password": "pw"}


async def test_the_services_api_is_asked_again_after_transport_errors() -> None:
    refused = httpx.ConnectError("connection refused")
    transport = supervisor_answering(
        refused, refused, httpx.Response(200, json={"result": "ok", "data": SERVICE})
    )
    service = await addon.mqtt_service("http://supervisor", "token", first_wait=0.01, transport=transport)
    assert service == addon.MqttService("core-mosquitto", 1883, False, "addons", "pw")
    assert service.url == "mqtt://core-mosquitto:1883"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        # No MQTT service: decided by the status and `result`, whatever the message says.
        (httpx.Response(400, json={"result": "error", "message": "anything at all"}), None),
        (httpx.Response(200, json={"result": "ok", "data": {**SERVICE, "ssl": True}}), "mqtts://"),
        (httpx.Response(200, json={"result": "error", "data": SERVICE}), "answered HTTP 200"),
        (httpx.Response(403, json={"result": "error", "message": "No access"}), "mqtt:need"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "answered HTTP 502"),
        (httpx.Response(200, json={"result": "ok", "data": {"port": 1883}}), "names no host and port"),
    ],
)
async def test_the_services_api_answer_decides(answer: httpx.Response, expected: str | None) -> None:
    try:
        service = await addon.mqtt_service(
            "http://supervisor", "token", transport=supervisor_answering(answer)
        )
    except click.ClickException as exc:
        assert expected is not None and expected in exc.message
    else:
        assert expected is None if service is None else service.url.startswith(expected)


async def test_an_unreachable_supervisor_is_one_line_after_the_retries() -> None:
    refused = httpx.ConnectError("connection refused")
    transport = supervisor_answering(*[refused] * 3)
    with pytest.raises(click.ClickException, match="cannot reach the Supervisor at http://supervisor"):
        await addon.mqtt_service(
            "http://supervisor", "token", attempts=3, first_wait=0.01, transport=transport
        )
