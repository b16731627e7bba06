"""`facespace-bridge replay`: publish a date range of history into the sinks, then exit.

A replay is the logs source reading a fixed range (as a backfill does, with nothing to
resume from) through the bridge's publisher, without a checkpoint: every entry becomes the
same event a tail or backfill would publish (same id, same bytes), one or two windows in
memory, never the whole range. Entries that do not parse and payloads that fail their
schema go to the dead-letter destination. The summary is printed once every event is
acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.client import APIKeyError, AsyncLogsAPI, FaceSpaceError, parse_user_time
from facespace_bridge.commands._common import (
    api_key_from,
    api_options,
    config_option,
    logging_options,
    setup_logging,
    tune_gc,
    warn_if_short,
    with_env,
)
from facespace_bridge.events import DEADLETTER_SCHEMA
from facespace_bridge.metrics import Metrics
from facespace_bridge.publisher import Publisher
from facespace_bridge.sinks import Role, Sink, SinkError
from facespace_bridge.sinks.registry import SINK_MODULES, broker_help, build_sinks, sink_options
from facespace_bridge.sources.base import Barrier, Batch
from facespace_bridge.sources.logs import LogsSource

log = logging.getLogger("facespace_bridge.replay")


@dataclass
class Tally:
    published: int = 0
    deadlettered: int = 0

    @property
    def entries(self) -> int:
        return self.published + self.deadlettered


class _Progress:
    """A rich progress bar on a terminal (time of the range done, entries, rate, ETA); nothing otherwise."""

    def __init__(self, enabled: bool, start: datetime, end: datetime | None) -> None:
        self.start, self.end = start, end
        self.bar: Progress | None = None
        if enabled:
            self.bar = Progress(
                TextColumn("[bold]replay"),
                BarColumn(),
                TextColumn("{task.fields[entries]:,} entries"),
                TextColumn("{task.fields[rate]:,.0f}/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            total = (end - start).total_seconds() if end is not None else None
            self.task = self.bar.add_task("replay", total=total, entries=0, rate=0.0)
            self.bar.start()
        self.began = time.monotonic()

    def update(self, through: datetime, entries: int) -> None:
        if self.bar is not None:
            rate = entries / max(1e-9, time.monotonic() - self.began)
            done = (through - self.start).total_seconds()
            self.bar.update(self.task, completed=done, entries=entries, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


async def publish_range(chunks: AsyncIterator[Batch | Barrier], sinks: list[Sink], bar: _Progress) -> Tally:
    """Publish what the logs source reads; a dry run (no sinks) only counts."""
    tracker = AckTracker(Checkpoint())
    publisher = Publisher(sinks, tracker, Metrics(), redeliver=False) if sinks else None
    tally = Tally()
    try:
        async for chunk in chunks:
            if isinstance(chunk, Barrier):
                bar.update(chunk.through, tally.entries)
                continue
            for event in chunk.events:  # (the publisher counts the same; a dry run has none)
                if event.schema == DEADLETTER_SCHEMA:
                    tally.deadlettered += 1
            tally.published += len(chunk.events)
            if publisher is not None:
                await publisher.publish(chunk)
        for sink in sinks:
            await sink.flush()
        await tracker.idle()
    finally:
        bar.stop()
    tally.published -= tally.deadlettered
    for name, stats in (publisher.stats if publisher is not None else {}).items():
        if stats.failed:
            raise SinkError(
                f"{stats.failed} events were not acknowledged by the {name} sink: {stats.first_error}"
            )
    return tally


async def _then(
    first: Batch | Barrier | None, rest: AsyncIterator[Batch | Barrier]
) -> AsyncIterator[Batch | Barrier]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


# -- the command ----------------------------------------------------------------------------------


def _time(value: str, option: str, *, end: bool = False) -> datetime:
    try:
        return parse_user_time(value, end=end)
    except FaceSpaceError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


@click.command("replay")
@config_option
@click.option("--start-time", required=True, metavar="TIME", help="First moment of the range (inclusive).")
@click.option(
    "--end-time",
    metavar="TIME",
    help="Last moment of the range, inclusive at the resolution given (a date: that whole day). "
    "Default: up to the latest entry.",
)
@click.option("--camera-id", help="Only this camera (default: all).")
@click.option(
    "--broker",
    multiple=True,
    type=click.Choice(list(SINK_MODULES)),
    help=broker_help() + ". Not needed with --dry-run.",
)
@click.option(
    "--dry-run/--no-dry-run",
    default=False,
    show_default=True,
    help="Read, number and validate the range; publish nothing.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr [default: when stderr is a terminal].",
)
@api_options
@logging_options
@sink_options
def command(**config: Any) -> None:
    """Publish a range of history into the sinks, then print a summary.

    TIME: 'HH:MM:SS DD/MM/YY', 'HH:MM DD/MM/YY', 'DD/MM/YY' (day first) or ISO 8601; UTC
    unless ISO 8601 gives an offset.
    """
    setup_logging(config["log_format"], config["log_level"])
    tune_gc()
    # Every check that needs no network comes first: bad input ends with exit 2, no side effect.
    start = _time(config["start_time"], "--start-time")
    end = _time(config["end_time"], "--end-time", end=True) if config["end_time"] is not None else None
    if end is not None and start >= end:
        raise click.BadParameter(
            f"start {config['start_time']!r} is not before end {config['end_time']!r}",
            param_hint="--start-time",
        )
    api_key = api_key_from(config)
    dry_run = config["dry_run"]
    if not config["broker"] and not dry_run:
        raise click.UsageError("--broker is required (or --dry-run)")
    sinks = build_sinks(config["broker"], config, role=Role.REPLAY)
    progress = config["progress"]
    if progress is None:
        progress = sys.stderr.isatty()
    warn_if_short(api_key)
    client = AsyncLogsAPI(api_key, base_url=config["api_url"], timeout=config["api_timeout"])
    began = time.monotonic()
    tally = asyncio.run(_main(client, [] if dry_run else sinks, start, end, config["camera_id"], progress))
    seconds = time.monotonic() - began
    rate = tally.entries / seconds if seconds > 0 else 0.0
    verb = "dry run: would publish" if dry_run else "published"
    click.echo(
        f"{verb} {tally.published} sightings and {tally.deadlettered} dead letters "
        f"in {seconds:.1f} s ({rate:,.0f} events/s)"
    )


async def _main(
    client: AsyncLogsAPI,
    sinks: list[Sink],
    start: datetime,
    end: datetime | None,
    camera_id: str | None,
    progress: bool,
) -> Tally:
    started: list[Sink] = []
    chunks = LogsSource(client, camera_id=camera_id).read_range(start, end, Checkpoint())
    try:
        # The first window before the first sink: a refused key or an unreachable API
        # ends the run before any topic is created.
        first = await anext(chunks, None)
        for sink in sinks:
            await sink.start()
            started.append(sink)
        return await publish_range(_then(first, chunks), started, _Progress(progress, start, end))
    except SinkError as exc:
        raise click.ClickException(str(exc)) from None
    except APIKeyError as exc:
        raise click.UsageError(str(exc)) from None  # "the FaceSpace API refused the key (HTTP 401): ..."
    finally:
        await chunks.aclose()
        for sink in reversed(started):
            try:
                await sink.close()
            except SinkError as exc:
                log.warning("%s", exc)
        await client.aclose()


with_env(command)
