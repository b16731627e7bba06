"""The sink registry: every sink's options and the shared ones, once on `run` and on `replay`."""

from __future__ import annotations

import click
import pytest

from facespace_bridge.commands import replay, run
from facespace_bridge.sinks import Role
from facespace_bridge.sinks.kafka import KafkaSink
from facespace_bridge.sinks.mqtt import MqttSink
from facespace_bridge.sinks.registry import build_sinks
from facespace_bridge.sinks.webhook import WebhookSink

COMMANDS = {"run": run.command, "replay": replay.command}
ROLES = {"run": Role.BRIDGE, "replay": Role.REPLAY}
API_URL = "https://user:pw@VisionAPI.Automa.One/facespace/"
SINK_ARGS = [
    "--broker", "kafka", "--broker", "webhook", "--webhook-url", "http://127.0.0.1:9/hook",
    "--api-url", API_URL,
]  # fmt: skip


def parsed(name: str, *args: str) -> dict[str, object]:
    extra = ["--start-time", "23/10/23"] if name == "replay" else []
    with COMMANDS[name].make_context(name, [*extra, *args]) as ctx:
        return dict(ctx.params)


def cloudevents_sources(config: dict[str, object], role: Role) -> list[str | None]:
    sinks = build_sinks(config["broker"], config, role=role)  # type: ignore[arg-type]
    kafka, webhook = sinks  # (the Kafka sink is its client library's subclass of KafkaSink)
    assert isinstance(kafka, KafkaSink) and isinstance(webhook, WebhookSink)
    return [kafka.settings.cloudevents_source, webhook.cloudevents_source]


@pytest.mark.parametrize("name", COMMANDS)
def test_no_cloudevents_is_one_flag_for_every_sink(name: str) -> None:
    flags = [
        p
        for p in COMMANDS[name].params
        if isinstance(p, click.Option) and "--no-cloudevents" in p.secondary_opts
    ]
    assert len(flags) == 1 and flags[0].is_flag
    on = cloudevents_sources(parsed(name, *SINK_ARGS), ROLES[name])
    assert on == ["https://visionapi.automa.one/facespace"] * 2
    off = cloudevents_sources(parsed(name, *SINK_ARGS, "--no-cloudevents"), ROLES[name])
    assert off == [None, None]


def test_run_and_replay_give_events_of_one_api_one_source() -> None:
    live = cloudevents_sources(parsed("run", *SINK_ARGS), Role.BRIDGE)
    history = cloudevents_sources(parsed("replay", *SINK_ARGS), Role.REPLAY)
    assert live == history


def test_every_sink_module_is_found_by_itself() -> None:
    from facespace_bridge.sinks.registry import SINK_MODULES

    assert list(SINK_MODULES) == ["file", "kafka", "mqtt", "webhook"]
    for name, module in SINK_MODULES.items():
        config = {"webhook_url": "http://127.0.0.1:9/hook", "output": "-", "bootstrap_servers": "127.0.0.1:9"}
        sinks = build_sinks([name], config)
        assert [type(s).__module__.startswith(module) for s in sinks] == [True], name


@pytest.mark.parametrize("role", list(Role))
def test_only_the_bridge_touches_what_the_bridge_owns(role: Role) -> None:
    """A side client's sinks: their own MQTT client id, no availability, no extensions, no
    Kafka transactional id (a bridge running with the same options would be disturbed)."""
    config = {
        **parsed("run", "--broker", "kafka", "--broker", "mqtt", "--exactly-once"),
        "broker": ["kafka", "mqtt"],
    }
    kafka, mqtt = build_sinks(["kafka", "mqtt"], config, role=role)
    assert isinstance(kafka, KafkaSink) and isinstance(mqtt, MqttSink)
    connection = mqtt.connection
    if role is Role.BRIDGE:
        assert connection.client_id == "facespace-bridge-facespace"
        assert connection.availability == "facespace/bridge/state"
        assert [e.name for e in mqtt.extensions] == ["homeassistant"]
        assert kafka.settings.transactional_id == "facespace-bridge.default"
    else:
        assert connection.client_id == f"facespace-bridge-facespace-{role.value}"
        assert connection.availability is None and mqtt.extensions == []
        assert kafka.settings.transactional_id is None
