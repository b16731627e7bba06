"""`facespace-bridge replay`: publish a date range of history into the sinks, then exit.

The range streams through the client's windows (one or two in memory, never the whole
range); every entry becomes the same event a tail or backfill would publish (same id,
same bytes: k counts identical (camera, person, second) entries per window, and windows
never split a second). Entries that do not parse and payloads that fail their schema go
to the dead-letter destination. The summary is printed once every event is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
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

from facespace_bridge.client import (
    APIKeyError,
    AsyncLogsAPI,
    FaceSpaceError,
    Window,
    parse_user_time,
)
from facespace_bridge.commands._common import (
    api_key_from,
    api_options,
    config_option,
    logging_options,
    setup_logging,
    tune_gc,
    with_env,
)
from facespace_bridge.events import DEADLETTER_SCHEMA, listing_events
from facespace_bridge.sinks import Sink, SinkError
from facespace_bridge.sinks.registry import SINK_MODULES, build_sinks, sink_options

log = logging.getLogger("facespace_bridge.replay")

SOURCE = "logs"  # sightings carry the same bytes however they were read (DESIGN §3)


class AckTracker:
    """Collects one sink's acknowledgements without keeping them all: settled ones are dropped
    from the left, and past `limit` unsettled ones `make_room` waits for the oldest, so memory
    stays flat however long the range. No callback per ack (they cost more than a send)."""

    def __init__(self, sink: str, limit: int = 8192) -> None:
        self.sink = sink
        self.limit = limit
        self.failed = 0
        self.first_error: BaseException | None = None
        self._acks: deque[asyncio.Future[Any]] = deque()

    def add(self, ack: Awaitable[Any]) -> bool:
        """Track an ack; True when over the limit (then await `make_room()`)."""
        acks = self._acks
        if acks and acks[-1] is ack:  # a batching sink hands out one ack per batch
            return False
        acks.append(ack if asyncio.isfuture(ack) else asyncio.ensure_future(ack))
        return len(acks) > self.limit

    async def make_room(self) -> None:
        acks = self._acks
        self._reap()
        while len(acks) > self.limit:
            await asyncio.wait((acks[0],))
            self._reap()

    def _reap(self) -> None:
        acks = self._acks
        while acks and acks[0].done():
            future = acks.popleft()
            error = asyncio.CancelledError() if future.cancelled() else future.exception()
            if error is not None:
                self.failed += 1
                self.first_error = self.first_error or error

    async def settled(self) -> None:
        """Until every tracked acknowledgement has arrived or failed."""
        if self._acks:
            await asyncio.wait(list(self._acks))
        self._reap()


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


async def replay(
    client: AsyncLogsAPI,
    sinks: list[Sink],
    start: datetime,
    end: datetime | None,
    camera_id: str | None = None,
    *,
    progress: bool = False,
) -> Tally:
    """Publish `[start, end)` (end None: up to the latest entry) to every started sink and wait
    for every acknowledgement. With no sinks, only counts (a dry run). Raises SinkError when a
    sink failed to acknowledge some events, the client's errors when the API fails."""
    windows = client.iter_windows(start, end, camera_id, read_ahead=True)
    return await publish_windows(windows, sinks, _Progress(progress, start, end))


async def publish_windows(
    windows: AsyncIterator[Window], sinks: list[Sink], bar: _Progress | None = None
) -> Tally:
    tally = Tally()
    trackers = [AckTracker(sink.name) for sink in sinks]
    pairs = list(zip(sinks, trackers, strict=True))
    try:
        async for window in windows:
            # One numbering for tail, backfill and replay (k per camera, person, second);
            # `sighting_event` validates each payload, a failing one becomes a dead letter.
            for event in listing_events(window.entries, SOURCE):
                if event.schema == DEADLETTER_SCHEMA:
                    tally.deadlettered += 1
                else:
                    tally.published += 1
                for sink, tracker in pairs:
                    if tracker.add(await sink.publish(event)):
                        await tracker.make_room()
            if bar is not None:
                bar.update(window.end, tally.entries)
        for sink, tracker in pairs:
            await sink.flush()
            await tracker.settled()
    finally:
        if bar is not None:
            bar.stop()
    for tracker in trackers:
        if tracker.failed:
            raise SinkError(
                f"{tracker.failed} events were not acknowledged by the {tracker.sink} sink: "
                f"{tracker.first_error}"
            )
    return tally


async def _then(first: Window | None, rest: AsyncIterator[Window]) -> AsyncIterator[Window]:
    if first is None:
        return
    yield first
    async for window in rest:
        yield window


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
    help="Where events go; repeat for several. Not needed with --dry-run.",
)
@click.option("--dry-run", is_flag=True, help="Read, number and validate the range; publish nothing.")
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
    try:
        sinks = build_sinks(config["broker"], config, replay=True)
    except KeyError as exc:
        raise click.UsageError(f"the {exc.args[0]} sink is not available in this build") from None
    progress = config["progress"]
    if progress is None:
        progress = sys.stderr.isatty()
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
    windows = client.iter_windows(start, end, camera_id, read_ahead=True)
    try:
        # The first window before the first sink: a refused key or an unreachable API
        # ends the run before any topic is created.
        first = await anext(windows, None)
        for sink in sinks:
            await sink.start()
            started.append(sink)
        return await publish_windows(_then(first, windows), started, _Progress(progress, start, end))
    except SinkError as exc:
        raise click.ClickException(str(exc)) from None
    except APIKeyError as exc:
        raise click.UsageError(str(exc)) from None  # "the FaceSpace API refused the key (HTTP 401): ..."
    finally:
        await windows.aclose()
        for sink in reversed(started):
            try:
                await sink.close()
            except SinkError as exc:
                log.warning("%s", exc)
        await client.aclose()


with_env(command)
