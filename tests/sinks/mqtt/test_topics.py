"""Names as topic segments and Home Assistant ids; base-topic checks; the sink's CLI options."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest

from facespace_bridge.sinks.mqtt import from_config, parse_mqtt_url
from facespace_bridge.sinks.mqtt.topics import (
    camera_segment,
    check_base_topic,
    id_slug,
    person_segment,
    topic_segment,
    topics_overlap,
)

HOSTILE = [
    "a/b",
    "a_b",
    "a+b",
    "a#b",
    "#",
    "+",
    "/",
    "",
    "$SYS",
    "~",
    "a~b",
    "tab\t",
    "nul\x00",
    "😀",
    "Zoë",
    "Zoe",
]


def test_safe_names_stay_readable() -> None:
    for name in ["Camera1", "Front Door", "Zoë", "😀", "Bob Smith-Jones"]:
        assert topic_segment(name) == name


def test_hostile_names_become_distinct_safe_segments() -> None:
    segments = [topic_segment(n) for n in HOSTILE]
    assert len(set(segments)) == len(HOSTILE)
    for segment in segments:
        assert segment and not re.search(r"[/+#\x00-\x1f\x7f]", segment) and not segment.startswith("$")
    assert topic_segment("a/b") == topic_segment("a/b")  # stable: no per-process hash seed
    assert topic_segment("a/b").startswith("a_b~")


def test_fixed_levels_cannot_be_shadowed_by_a_camera() -> None:
    for reserved in ("person", "bridge", "deadletter"):
        assert camera_segment(reserved) != reserved
    assert person_segment("person") == "person"  # one level deeper, no clash


def test_ids_are_ha_safe_distinct_and_stable() -> None:
    ids = [id_slug(n) for n in HOSTILE]
    assert len(set(ids)) == len(HOSTILE)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", i) for i in ids)
    assert id_slug("Camera1") == "Camera1"
    assert id_slug("Zoë").startswith("Zoe_")


def test_base_topic_checks() -> None:
    assert check_base_topic("facespace", "p") is None
    assert check_base_topic("home/facespace", "p") is None
    for bad in ["", "/x", "x/", "a//b", "a/+", "#", "$SYS/x"]:
        assert check_base_topic(bad, "p")
    assert topics_overlap("ha", "ha") and topics_overlap("ha", "ha/x") and topics_overlap("ha/x", "ha")
    assert not topics_overlap("ha", "hax")


def test_url_parsing_keeps_the_password_out_of_its_text() -> None:
    address = parse_mqtt_url("mqtts://user:s%40cret@broker.lan")
    assert (address.host, address.port, address.tls, address.password) == ("broker.lan", 8883, True, "s@cret")
    assert "s@cret" not in str(address) and "s@cret" not in repr(address)
    assert parse_mqtt_url("mqtt://h", "u", "p").username == "u"
    for bad in ["http://h", "mqtt://", "mqtt://h:99999", "mqtt://h/topic"]:
        with pytest.raises(ValueError):
            parse_mqtt_url(bad)


def test_from_config_validates_without_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_PASSWORD", "hunter2")
    sink = from_config({"mqtt_url": "mqtt://u@127.0.0.1:1", "mqtt_qos": 0, "mqtt_protocol": "5"})
    connection = sink.connection
    assert (sink.address.password, connection.qos, connection.protocol) == ("hunter2", 0, "5")
    assert connection.client_id == "facespace-bridge-facespace"
    assert sink.message_expiry == 3600
    (ha,) = sink.extensions
    assert (ha.mode, ha.event_max_age, ha.away_after) == ("entity", 300.0, 600.0)
    device = from_config({"ha_discovery_mode": "device", "away_after": 60, "mqtt_protocol": "5",
                          "mqtt_message_expiry": 120})  # fmt: skip
    assert (device.extensions[0].mode, device.extensions[0].away_after, device.message_expiry) == (
        "device",
        60,
        120,
    )
    assert from_config({"ha_discovery": False}).extensions == []
    with pytest.raises(click.BadParameter, match="needs --mqtt-protocol 5"):
        from_config({"mqtt_message_expiry": 60})
    with pytest.raises(click.UsageError, match="overlaps"):
        from_config({"topic_prefix": "homeassistant/facespace"})
    with pytest.raises(click.BadParameter):
        from_config({"mqtt_url": "tcp://h"})
    with pytest.raises(click.BadParameter):
        from_config({"topic_prefix": "a/#"})
    with pytest.raises(click.BadParameter):
        from_config({"mqtt_max_inflight": 50, "mqtt_max_queued": 10})


def test_cli_refuses_an_overlapping_prefix_with_exit_2() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "facespace_bridge",
            "mqtt-cleanup",
            "--topic-prefix",
            "homeassistant",
            "--keep",
            "-",
        ],
        capture_output=True,
        text=True,
        input="",
        timeout=60,
        env={"FACESPACE_API_KEY": "k", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2, result.stderr
    assert "overlaps" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
