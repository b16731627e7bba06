"""`facespace-bridge mqtt-cleanup`: remove ghost Home Assistant entities and stale retained state.

What exists is learnt from the broker: the retained discovery configs under this
bridge's node (`<ha-prefix>/+/<node_id>/+/config`, origin facespace-bridge) and the
retained `<prefix>/<camera>/presence` and `<prefix>/person/<person>` topics. What should
exist is computed from the known cameras and people, taken from the FaceSpace API
(`/recognition` now, plus `/logs` over the last `--history-days`) or, with `--keep FILE`,
from a JSON file `{"cameras": [...], "people": [...]}` ("-" for stdin) without the API.
Everything found and not expected is removed by publishing an empty retained payload.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from facespace_bridge.client import AsyncLogsAPI, LogEntry, StopLogsSignal
from facespace_bridge.commands._common import (
    api_key_from,
    api_options,
    config_option,
    logging_options,
    setup_logging,
    with_env,
)
from facespace_bridge.sinks._topics import TopicLayout
from facespace_bridge.sinks.homeassistant import ORIGIN_NAME, HomeAssistantDiscovery
from facespace_bridge.sinks.mqtt import OPTIONS as MQTT_OPTIONS
from facespace_bridge.sinks.mqtt import BrokerAddress, parse_mqtt_url, sink_kwargs


@dataclass(frozen=True)
class Known:
    cameras: frozenset[str]
    people: frozenset[str]


def expected_topics(known: Known, layout: TopicLayout, ha: HomeAssistantDiscovery | None) -> set[str]:
    """Every retained topic the bridge would publish for these cameras and people."""
    topics = {layout.presence(c) for c in known.cameras} | {layout.person(p) for p in known.people}
    topics.add(layout.bridge_state)
    if ha is not None:
        topics |= set(ha.configs(sorted(known.cameras), sorted(known.people)))
    return topics


def retained_on_broker(
    address: BrokerAddress,
    filters: Iterable[str],
    *,
    client_id: str,
    tls: dict[str, Any],
    timeout: float,
) -> dict[str, bytes]:
    """The retained messages under `filters`. Ends deterministically: a marker published after
    the SUBACK on a topic we also subscribe to arrives after every retained message."""
    marker = f"facespace-bridge-cleanup/{uuid.uuid4().hex}"
    found: dict[str, bytes] = {}
    subscribed, done, failed = threading.Event(), threading.Event(), []

    def on_connect(client: paho.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            failed.append(str(reason))
            done.set()
            subscribed.set()
            return
        client.subscribe([(f, 1) for f in (*filters, marker)])

    def on_message(_c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        if message.topic == marker:
            done.set()
        elif message.retain and message.payload:
            found[message.topic] = message.payload

    client = _client(address, client_id, tls)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    _connect(client, address, timeout)
    try:
        if not subscribed.wait(timeout) or failed:
            reason = failed[0] if failed else "no SUBACK"
            raise click.ClickException(f"MQTT broker {address} refused: {reason}")
        client.publish(marker, b"", qos=1)
        if not done.wait(timeout):
            raise click.ClickException(f"MQTT broker {address} did not answer within {timeout:g} s")
        return found
    finally:
        client.disconnect()
        client.loop_stop()


def clear_retained(
    address: BrokerAddress, topics: list[str], *, client_id: str, tls: dict[str, Any], timeout: float
) -> None:
    """Publish an empty retained payload to each topic: the broker forgets it, HA removes the entity."""
    client = _client(address, client_id, tls)
    _connect(client, address, timeout)
    try:
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        for info in infos:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise click.ClickException(f"MQTT broker {address} did not acknowledge within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


def _client(address: BrokerAddress, client_id: str, tls: dict[str, Any]) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=tls.get("cafile"), certfile=tls.get("certfile"), keyfile=tls.get("keyfile"))
    return client


def _connect(client: paho.Client, address: BrokerAddress, timeout: float) -> None:
    connected = threading.Event()
    previous = client.on_connect

    def on_connect(c: paho.Client, u: Any, f: Any, reason: Any, p: Any) -> None:
        if previous is not None:
            previous(c, u, f, reason, p)
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=30)
    except OSError as exc:
        raise click.ClickException(f"cannot connect to MQTT broker {address}: {exc}") from None
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise click.ClickException(f"MQTT broker {address} did not answer within {timeout:g} s")


def known_from_file(path: str) -> Known:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        data = orjson.loads(text)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint="--keep") from None
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"{path} is not JSON: {exc}", param_hint="--keep") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k, []), list) and all(isinstance(n, str) for n in data.get(k, []))
        for k in ("cameras", "people")
    ):
        raise click.BadParameter(
            f'{path} must be {{"cameras": [names...], "people": [names...]}}', param_hint="--keep"
        )
    return Known(frozenset(data.get("cameras", [])), frozenset(data.get("people", [])))


async def known_from_api(client: AsyncLogsAPI, history_days: float) -> Known:
    cameras: set[str] = set()
    people: set[str] = set()
    try:
        for camera, names in (await client.get_realtime()).items():
            cameras.add(camera)
            people.update(n for n in names if isinstance(n, str))
    except StopLogsSignal:
        pass  # no camera active now; the history still says who exists
    end = datetime.now(timezone.utc)
    async for entry in client.iter_entries(end - timedelta(days=history_days), end):
        if isinstance(entry, LogEntry):
            cameras.add(entry.camera_id)
            people.add(entry.person)
    return Known(frozenset(cameras), frozenset(people))


def stale_topics(
    found: dict[str, bytes], expected: set[str], layout: TopicLayout, ha: HomeAssistantDiscovery | None
) -> list[str]:
    stale = []
    for topic, payload in found.items():
        if topic in expected:
            continue
        if ha is not None and topic.startswith(ha.ha_prefix + "/"):
            try:  # only configs we wrote: never someone else's under a colliding node id
                if orjson.loads(payload).get("origin", {}).get("name") != ORIGIN_NAME:
                    continue
            except (orjson.JSONDecodeError, AttributeError):
                continue
        elif topic == layout.bridge_state:
            continue
        stale.append(topic)
    return sorted(stale)


@click.command("mqtt-cleanup")
@config_option
@click.option(
    "--keep",
    "keep_file",
    metavar="FILE",
    help='Known cameras and people as JSON {"cameras": [...], "people": [...]} ("-": stdin) '
    "instead of asking the API.",
)
@click.option(
    "--history-days",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Without --keep: people and cameras seen in this much history are kept.",
)
@click.option("--dry-run", is_flag=True, help="List what would be removed; change nothing.")
@click.option(
    "--timeout",
    "mqtt_timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)
@api_options
@logging_options
def command(**config: Any) -> None:
    """Remove retained Home Assistant configs and states of cameras and people the bridge no longer knows."""
    setup_logging(config["log_format"], config["log_level"])
    kwargs = sink_kwargs(config)  # validates everything (exit 2) before any side effect
    address = parse_mqtt_url(kwargs["url"], kwargs["username"], kwargs["password"])
    layout = TopicLayout(kwargs["topic_prefix"])
    ha = HomeAssistantDiscovery(layout, kwargs["ha_prefix"]) if kwargs["ha_discovery"] else None
    tls = {"cafile": kwargs["cafile"], "certfile": kwargs["certfile"], "keyfile": kwargs["keyfile"]}
    if config["keep_file"]:
        known = known_from_file(config["keep_file"])
    else:
        client = AsyncLogsAPI(api_key_from(config), base_url=config["api_url"], timeout=config["api_timeout"])

        async def fetch() -> Known:
            try:
                return await known_from_api(client, config["history_days"])
            finally:
                await client.aclose()

        known = asyncio.run(fetch())

    filters = [f"{layout.prefix}/+/presence", f"{layout.prefix}/person/+"]
    if ha is not None:
        filters.append(ha.config_filter)
    client_id = f"{kwargs['client_id']}-cleanup"  # never kick the running bridge off the broker
    timeout = config["mqtt_timeout"]
    found = retained_on_broker(address, filters, client_id=client_id, tls=tls, timeout=timeout)
    stale = stale_topics(found, expected_topics(known, layout, ha), layout, ha)
    verb = "would remove" if config["dry_run"] else "removing"
    for topic in stale:
        click.echo(f"{verb} {topic}")
    if stale and not config["dry_run"]:
        clear_retained(address, stale, client_id=client_id, tls=tls, timeout=timeout)
    click.echo(
        f"{len(stale)} stale retained topic(s) {'found' if config['dry_run'] else 'removed'}; "
        f"{len(found) - len(stale)} kept ({len(known.cameras)} cameras, {len(known.people)} people known)",
        err=True,
    )


for _option in reversed(MQTT_OPTIONS):
    command = _option(command)
command = with_env(command)
