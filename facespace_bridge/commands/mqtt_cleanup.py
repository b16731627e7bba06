"""`facespace-bridge mqtt-cleanup`: remove ghost Home Assistant entities and stale retained state.

What exists is learnt from the broker: the retained topics the bridge publishes — its
presence and person topics (`TopicLayout.retained_filters`) and, with discovery on, the
Home Assistant extension's configs in either discovery form (origin facespace-bridge) and
device tracker states, read back by sinks/mqtt/homeassistant_retained.py (`retained_filters`,
`owns`, `expected`). What should exist is computed from the known cameras and people, taken
from the FaceSpace API (`/recognition` now, plus `/logs` over the last `--history-days`) or,
with `--keep FILE`, from a JSON file `{"cameras": [...], "people": [...]}` ("-" for stdin)
without the API. Everything found and not expected is removed by publishing an empty
retained payload.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import orjson

from facespace_bridge.client import AsyncLogsAPI, LogEntry, StopLogsSignal
from facespace_bridge.commands._common import (
    api_key_from,
    api_options,
    broker_timeout_option,
    config_option,
    dry_run_option,
    logging_options,
    setup_logging,
    with_env,
)
from facespace_bridge.sinks import Role, SinkError
from facespace_bridge.sinks.mqtt import (
    OPTIONS as MQTT_OPTIONS,
)
from facespace_bridge.sinks.mqtt import MqttConnection, TopicLayout, homeassistant, side_connection
from facespace_bridge.sinks.mqtt.settings import settings_from_config
from facespace_bridge.sinks.mqtt.traces import sweep


@dataclass(frozen=True)
class Known:
    cameras: frozenset[str]
    people: frozenset[str]


def stale_topics(
    found: dict[str, bytes], known: Known, layout: TopicLayout, ha: homeassistant.HomeAssistant | None
) -> list[str]:
    """The retained topics found that the bridge would not publish for the known names: never
    the availability, never a config some other tool wrote."""
    expected = layout.retained_topics(known.cameras, known.people)
    if ha is not None:
        expected |= ha.retained_reader.expected(known.cameras, known.people)
    stale = []
    for topic, payload in found.items():
        if topic in expected or topic == layout.bridge_state:
            continue
        if ha is not None and not ha.retained_reader.owns(topic, payload):
            continue
        stale.append(topic)
    return sorted(stale)


async def clean(
    connection: MqttConnection, filters: list[str], known: Known, layout: TopicLayout,
    ha: homeassistant.HomeAssistant | None, *, dry_run: bool, timeout: float,
) -> tuple[list[str], int]:  # fmt: skip
    """Connect, read what the broker retains under `filters`, clear what is stale (unless
    `dry_run`); returns the stale topics and how many were found in all."""
    await connection.start()
    try:
        return await sweep(
            connection, filters, lambda found: stale_topics(found, known, layout, ha),
            timeout=timeout, dry_run=dry_run,
        )  # fmt: skip
    except asyncio.TimeoutError:
        raise SinkError(
            f"MQTT broker {connection.address} did not acknowledge within {timeout:g} s"
        ) from None
    finally:
        await connection.close()


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
@dry_run_option("List what would be removed; change nothing.")
@broker_timeout_option
@api_options
@logging_options
def command(**config: Any) -> None:
    """Remove retained Home Assistant configs and states of cameras and people the bridge no longer knows."""
    setup_logging(config["log_format"], config["log_level"])
    settings = settings_from_config(config)  # validates everything (exit 2) before any side effect
    layout = TopicLayout(settings.topic_prefix)
    ha = homeassistant.from_config(config, layout)  # the bridge's topics, to know them: never started
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

    timeout = config["mqtt_timeout"]
    connection = side_connection(settings, Role.CLEANUP, timeout)
    filters = layout.retained_filters() + (ha.retained_reader.retained_filters() if ha is not None else [])
    try:
        stale, found = asyncio.run(
            clean(connection, filters, known, layout, ha, dry_run=config["dry_run"], timeout=timeout)
        )
    except SinkError as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would remove" if config["dry_run"] else "removing"
    for topic in stale:
        click.echo(f"{verb} {topic}")
    click.echo(
        f"{len(stale)} stale retained topic(s) {'found' if config['dry_run'] else 'removed'}; "
        f"{found - len(stale)} kept ({len(known.cameras)} cameras, {len(known.people)} people known)",
        err=True,
    )


for _option in reversed(MQTT_OPTIONS):
    command = _option(command)
command = with_env(command)
