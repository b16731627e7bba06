"""`facespace-bridge forget NAME`: clear one person's retained MQTT messages, and tell a running
bridge to forget them.

A side client beside the bridge (sinks/base.Role.FORGET): its own client id, no
availability, no extensions. It first asks a running bridge, on
`<prefix>/bridge/request/forget` (`{"person": NAME, "transaction": ...}`, not retained, as
zigbee2mqtt's `bridge/request/device/remove`), to drop the person from what it holds and
clear their traces itself, and waits up to `--wait` seconds for its answer on
`<prefix>/bridge/response/forget`; then it reads what the broker still retains and clears
what names or belongs to the person (sinks/mqtt/traces.py): their last-seen state and
device tracker, their Home Assistant discovery configs in either form, every camera's
presence that names them. Home Assistant removes their device and entities.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid
from dataclasses import dataclass
from typing import Any

import click
import orjson

from facespace_bridge.commands._common import (
    broker_timeout_option,
    config_option,
    dry_run_option,
    logging_options,
    pseudonymize_option,
    pseudonyms_from,
    setup_logging,
    with_env,
)
from facespace_bridge.privacy.filters import normalized
from facespace_bridge.sinks import Role, SinkError
from facespace_bridge.sinks.mqtt import OPTIONS as MQTT_OPTIONS
from facespace_bridge.sinks.mqtt import MqttConnection, TopicLayout, homeassistant, side_connection
from facespace_bridge.sinks.mqtt.settings import MqttSettings, settings_from_config
from facespace_bridge.sinks.mqtt.traces import PersonTraces, Traces, json_object, sweep


@dataclass(frozen=True)
class Forgotten:
    """What `forget` did: the running bridge's answer (None: no bridge answered), what was
    cleared here (or would be, in a dry run), and how many retained topics were read."""

    bridge: dict[str, Any] | None
    traces: Traces
    found: int


async def ask_bridge(
    connection: MqttConnection, layout: TopicLayout, person: str, wait: float
) -> dict[str, Any] | None:
    """Ask a running bridge to forget `person`; its answer, or None when none came within `wait`."""
    transaction = uuid.uuid4().hex
    answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    response = layout.response("forget")

    def on_message(topic: str, payload: bytes) -> None:
        answer = json_object(payload)
        if topic == response and answer.get("transaction") == transaction and not answered.done():
            answered.set_result(answer)

    connection.on_message = on_message
    connection.subscribe(response)
    # Subscribed before asking: a marker read through the same connection ends after the SUBACK.
    await connection.read_retained([response])
    ack = connection.acknowledgement()
    request = orjson.dumps({"person": person, "transaction": transaction})
    connection.send(layout.request("forget"), request, ack)
    connection.drain()
    await ack.seal()
    try:
        return await asyncio.wait_for(answered, wait)
    except asyncio.TimeoutError:
        return None


async def forget(
    connection: MqttConnection,
    layout: TopicLayout,
    traces: PersonTraces,
    settings: MqttSettings,
    person: str,
    *,
    wait: float,
    timeout: float,
    dry_run: bool,
) -> Forgotten:
    # Under --pseudonymize the bridge published the person's pseudonym, and the request names
    # them by it: the name itself does not travel.
    asked = settings.pseudonyms.of(person) if settings.pseudonyms is not None else person
    published = settings.as_published([person])
    await connection.start()
    try:
        bridge = None if dry_run else await ask_bridge(connection, layout, asked, wait)
        cleared, found = await sweep(
            connection, traces.filters(), lambda found: traces.find(published, found),
            timeout=timeout, dry_run=dry_run,
        )  # fmt: skip
        return Forgotten(bridge, cleared, found)
    except asyncio.TimeoutError:
        raise SinkError(
            f"MQTT broker {connection.address} did not acknowledge within {timeout:g} s"
        ) from None
    finally:
        await connection.close()


def person_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not value.strip():
        raise click.BadParameter("must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise click.BadParameter("is not valid UTF-8") from None
    return normalized(value)


@click.command("forget")
@click.argument("name", callback=person_name)
@config_option
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="Seconds to wait for a running bridge to answer.",
)
@dry_run_option("List what would be cleared; change nothing and ask no bridge.")
@broker_timeout_option
@pseudonymize_option
@logging_options
def command(name: str, **config: Any) -> None:
    """Clear a person's retained MQTT messages (Home Assistant removes their device) and tell a
    running bridge to forget them."""
    setup_logging(config["log_format"], config["log_level"])
    pseudonyms_from(config)  # a missing or short key: exit 2 (and the key is kept out of logs)
    settings = settings_from_config(config)  # validates everything (exit 2) before any side effect
    layout = TopicLayout(settings.topic_prefix)
    ha = homeassistant.from_config(config, layout)  # the bridge's topics, to know them: never started
    traces = PersonTraces(layout, [ha] if ha is not None else [])
    timeout = config["mqtt_timeout"]
    connection = side_connection(settings, Role.FORGET, timeout)
    try:
        options = {"wait": config["wait"], "timeout": timeout, "dry_run": config["dry_run"]}
        done = asyncio.run(forget(connection, layout, traces, settings, name, **options))
    except SinkError as exc:
        raise click.ClickException(str(exc)) from None
    if config["dry_run"]:
        for topic in done.traces:
            click.echo(f"would clear {topic}")
        click.echo(f"would clear {done.traces.summary()}; {done.found} retained topic(s) read", err=True)
        return
    request = layout.request("forget")
    failed = False
    if done.bridge is None:
        click.echo(f"no running bridge answered on {request} within {config['wait']:g} s", err=True)
    elif done.bridge.get("status") == "ok":
        data = done.bridge.get("data") or {}
        click.echo(f"the running bridge forgot them and cleared {data.get('cleared', 0)} retained message(s)")
    else:
        failed = True
        click.echo(f"the running bridge could not forget them: {done.bridge.get('error')}", err=True)
    click.echo(f"cleared {done.traces.summary()}")
    click.echo(
        "A bridge announces this person again at their next sighting (a restarted one too, if "
        f"they are in its recent history) unless they are excluded: --exclude-person {shlex.quote(name)}",
        err=True,
    )
    if failed:
        raise SystemExit(1)


for _option in reversed(MQTT_OPTIONS):
    command = _option(command)
command = with_env(command)
