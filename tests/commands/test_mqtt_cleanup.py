"""`facespace-bridge mqtt-cleanup` against a real Mosquitto: ghosts go, the known stay."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import datetime, timezone

import httpx
import orjson
import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import AsyncLogsAPI, LogEntry
from facespace_bridge.commands.mqtt_cleanup import command, known_from_api
from facespace_bridge.events import presence_event, sighting_event
from tests.fixtures.mqtt import MqttBroker, retained
from tests.sinks.mqtt._helpers import ha_for, sink_for

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
FOREIGN = "homeassistant/sensor/facespace/someone_elses/config"


async def bridge_once(broker: MqttBroker, mode: str = "entity") -> None:
    """What a bridge leaves behind after it knew Camera1, Old, Alice and Ghost / 1."""
    async with sink_for(broker, ha=ha_for(mode=mode)) as sink:
        await sink.announce(["Camera1", "Old"], ["Alice", "Ghost / 1"])
        for event in [
            presence_event("Camera1", ["Alice"], ["Alice"], [], T0),
            presence_event("Old", ["Ghost / 1"], ["Ghost / 1"], [], T0),
            sighting_event(LogEntry("Camera1", "Alice", T0, "raw"), 0),
            sighting_event(LogEntry("Old", "Ghost / 1", T0, "raw"), 0),
        ]:
            await (await sink.publish([event]))
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="someone-else")
    client.connect(broker.host, broker.port)
    client.loop_start()
    payload = orjson.dumps({"origin": {"name": "another-tool"}, "state_topic": "x"})
    client.publish(FOREIGN, payload, qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def ghosts(topics: set[str]) -> set[str]:
    return {t for t in topics if "Old" in t or "Ghost" in t}


@pytest.mark.parametrize("mode", ["entity", "device"])
def test_dry_run_lists_and_cleanup_removes_only_the_unknown(
    mqtt_broker: MqttBroker, tmp_path, mode: str
) -> None:
    asyncio.run(bridge_once(mqtt_broker, mode))
    before = set(retained(mqtt_broker))
    # Old's camera config and presence; Ghost's configs (or device config), tracker and person topic
    assert len(ghosts(before)) >= 5
    assert "facespace/person/Ghost _ 1~669cf3a9/tracker" in ghosts(before)
    keep = tmp_path / "keep.json"
    keep.write_text('{"cameras": ["Camera1"], "people": ["Alice"]}')
    args = ["--mqtt-url", mqtt_broker.url, "--keep", str(keep), "--ha-discovery-mode", mode]
    runner = CliRunner()

    dry = runner.invoke(command, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    listed = {line.removeprefix("would remove ") for line in dry.stdout.splitlines()}
    assert listed == ghosts(before)
    assert set(retained(mqtt_broker)) == before  # nothing changed

    done = runner.invoke(command, args)
    assert done.exit_code == 0, done.output
    after = set(retained(mqtt_broker))
    assert after == before - ghosts(before)
    assert FOREIGN in after and "facespace/Camera1/presence" in after and "facespace/person/Alice" in after
    assert any(
        ("person_Alice_last_seen" if mode == "entity" else "device/facespace/person_Alice") in t
        for t in after
    )
    assert "facespace/person/Alice/tracker" in after

    again = runner.invoke(command, [*args, "--dry-run"])
    assert again.stdout == ""  # idempotent: nothing left to remove


async def test_known_set_from_the_api() -> None:
    def reply(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/recognition"):
            return httpx.Response(200, json={"Door": ["Carol"]})
        return httpx.Response(200, json={"Camera1": ["Alice @ 00:05:22 23/10/23", "garbage"]})

    client = AsyncLogsAPI("key", base_url="http://api.test", transport=httpx.MockTransport(reply))
    try:
        known = await known_from_api(client, history_days=3650)
    finally:
        await client.aclose()
    assert known.cameras == {"Door", "Camera1"}
    assert known.people == {"Carol", "Alice"}


def test_bad_keep_file_and_unreachable_broker_are_one_line_errors(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"cameras": "not a list"}')
    base = [sys.executable, "-m", "facespace_bridge", "mqtt-cleanup", "--keep"]
    result = subprocess.run([*base, str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    keep = tmp_path / "keep.json"
    keep.write_text("{}")
    result = subprocess.run(
        [*base, str(keep), "--mqtt-url", "mqtt://127.0.0.1:9", "--timeout", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "cannot connect to MQTT broker mqtt://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr


def test_configs_of_the_other_form_are_stale(mqtt_broker: MqttBroker, tmp_path) -> None:
    """Left behind by a bridge that ran in entity form (a migration cut short, say): a cleanup in
    device form removes them, and keeps its own."""
    asyncio.run(bridge_once(mqtt_broker, "entity"))
    entity_form = {t for t in retained(mqtt_broker) if t.startswith("homeassistant/") and t != FOREIGN}
    keep = tmp_path / "keep.json"
    keep.write_text('{"cameras": ["Camera1", "Old"], "people": ["Alice", "Ghost / 1"]}')
    args = ["--mqtt-url", mqtt_broker.url, "--keep", str(keep), "--ha-discovery-mode", "device"]
    done = CliRunner().invoke(command, args)
    assert done.exit_code == 0, done.output
    assert {line.removeprefix("removing ") for line in done.stdout.splitlines()} == entity_form
    assert FOREIGN in retained(mqtt_broker)
