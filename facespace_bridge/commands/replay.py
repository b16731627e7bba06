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
import shlex
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.client import APIKeyError, AsyncLogsAPI, FaceSpaceError, LogEntry, parse_user_time
from facespace_bridge.commands._common import (
    api_options,
    config_option,
    filter_options,
    filters_key_and_names,
    logging_options,
    pseudonymize_option,
    setup_logging,
    tune_gc,
    warn_if_short,
    with_env,
)
from facespace_bridge.events import DEADLETTER_SCHEMA, seen_at_text
from facespace_bridge.metrics import Metrics
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.publisher import Publisher
from facespace_bridge.sinks import Role, Sink, SinkError
from facespace_bridge.sinks.registry import SINK_MODULES, broker_help, build_sinks, sink_options
from facespace_bridge.sources.base import Barrier, Batch
from facespace_bridge.sources.logs import LogsSource

log = logging.getLogger("facespace_bridge.replay")

STOP_WAIT = 10.0  # seconds an interrupted replay waits for what it handed over to be acknowledged
INTERRUPTED = 130  # the exit code of a replay stopped by Ctrl-C (128 + SIGINT), as a shell reports one
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)  # where the search for the API's history starts


@dataclass
class Tally:
    published: int = 0
    deadlettered: int = 0
    # Everything before `through` is acknowledged by every sink (a dry run: read); None: nothing yet.
    through: datetime | None = None
    interrupted: bool = False  # Ctrl-C (or SIGTERM) ended it before the end of the range
    note: str | None = None  # why nothing was there, when nothing was
    filtered: int = 0  # entries the filters left out (privacy/filters.py)

    @property
    def entries(self) -> int:
        return self.published + self.deadlettered


class _Progress:
    """A rich progress bar on a terminal (time of the range done, entries, rate; with an end,
    the percentage and the time left); nothing otherwise. While it shows, log lines go through
    its console, above it (setup_logging's handler writes to whatever sys.stderr is)."""

    def __init__(self, enabled: bool, start: datetime, end: datetime | None) -> None:
        self.start, self.end = start, end
        self.bar: Progress | None = None
        if enabled:
            bounded = [TaskProgressColumn(), TimeRemainingColumn()] if end is not None else []
            self.bar = Progress(
                TextColumn("[bold]replay"),
                BarColumn(),
                *bounded,
                TextColumn("{task.fields[entries]:,} entries"),
                TextColumn("{task.fields[rate]:,.0f}/s"),
                TimeElapsedColumn(),
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


async def publish_range(
    chunks: AsyncIterator[Batch | Barrier],
    sinks: list[Sink],
    bar: _Progress,
    stop: asyncio.Event | None = None,
) -> Tally:
    """Publish what the logs source reads; a dry run (no sinks) only counts. `stop` set: stop
    reading at the end of the window being published, let it land (within STOP_WAIT), and say
    how far it got."""
    tracker = AckTracker(Checkpoint())
    metrics = Metrics()
    publisher = Publisher(sinks, tracker, metrics, redeliver=False) if sinks else None
    tally = Tally()
    stop = stop or asyncio.Event()
    # A stop lets the window being published finish (within STOP_WAIT), so that the range
    # published ends at a window's end, where the command to continue starts: nothing twice.
    in_window = finished = False

    async def publish_all() -> None:
        nonlocal in_window, finished
        async for chunk in chunks:
            if isinstance(chunk, Barrier):
                if publisher is None:
                    tally.through = chunk.through  # a dry run: read is done
                else:
                    tracker.barrier(chunk.through)
                bar.update(chunk.through, tally.entries)
                in_window = False
                if stop.is_set():
                    return
                continue
            in_window = True
            for event in chunk.events:  # (the publisher counts the same; a dry run has none)
                if event.schema == DEADLETTER_SCHEMA:
                    tally.deadlettered += 1
            tally.published += len(chunk.events)
            if publisher is not None:
                await publisher.publish(chunk)
        finished = True

    try:
        await _until_stopped(publish_all(), stop, lambda: in_window)
        tally.interrupted = not finished

        async def land() -> None:
            for sink in sinks:
                await sink.flush()
            await tracker.idle()

        try:
            await asyncio.wait_for(land(), STOP_WAIT if tally.interrupted else None)
        except asyncio.TimeoutError:
            log.warning("%d events still unacknowledged when it stopped", tracker.in_flight)
    finally:
        bar.stop()
    tally.published -= tally.deadlettered
    if publisher is not None:
        tally.through = tracker.checkpoint.through
        if tally.interrupted:  # what every sink acknowledged, not what was handed over
            tally.published = _acknowledged(metrics, sinks, "sighting")
            tally.deadlettered = _acknowledged(metrics, sinks, "deadletter")
    for name, stats in (publisher.stats if publisher is not None else {}).items():
        if stats.failed:
            raise SinkError(
                f"{stats.failed} events were not acknowledged by the {name} sink: {stats.first_error}"
            )
    return tally


def _acknowledged(metrics: Metrics, sinks: list[Sink], kind: str) -> int:
    """Events of `kind` that every sink acknowledged."""
    counts = dict.fromkeys((sink.name for sink in sinks), 0)
    for metric in metrics.published.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels["type"] == kind:
                counts[sample.labels["sink"]] = int(sample.value)
    return min(counts.values(), default=0)


async def _until_stopped(
    work: Coroutine[Any, Any, None], stop: asyncio.Event, busy: Callable[[], bool]
) -> None:
    """Run `work` until it ends or `stop` is set. Stopped, work that is not `busy` is cancelled
    at once; `busy` work gets up to STOP_WAIT to end by itself (seeing `stop`)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and busy():
            await asyncio.wait([task], timeout=STOP_WAIT)
    finally:
        stopper.cancel()
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise task.exception()  # type: ignore[misc]


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
@filter_options
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
@pseudonymize_option
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
    entry_filter, api_key, names = filters_key_and_names(config)
    dry_run = config["dry_run"]
    if not config["broker"] and not dry_run:
        raise click.UsageError("--broker is required (or --dry-run)")
    sinks = build_sinks(config["broker"], config, role=Role.REPLAY)
    progress = config["progress"]
    if progress is None:
        progress = sys.stderr.isatty()
    warn_if_short(api_key)
    day_first = "/" in config["start_time"] or "/" in (config["end_time"] or "")
    understood = f"replaying {range_text(start, end)} (UTC{', day first' if day_first else ''})"
    client = AsyncLogsAPI(api_key, base_url=config["api_url"], timeout=config["api_timeout"], names=names)
    began = time.monotonic()
    pseudonymous = names is not None
    tally = asyncio.run(
        _main(client, [] if dry_run else sinks, start, end, entry_filter, progress, understood, pseudonymous)
    )
    seconds = time.monotonic() - began
    rate = tally.entries / seconds if seconds > 0 else 0.0
    verb = "dry run: would publish" if dry_run else "published"
    if tally.interrupted:
        resume = tally.through or start
        log.warning(
            "interrupted after %s sightings and %s dead letters; everything before %s is %s; to continue: %s",
            f"{tally.published:,}",
            f"{tally.deadlettered:,}",
            _moment(resume),
            "read" if dry_run else "published",
            continue_command(sys.argv[1:], resume),
        )
        sys.exit(INTERRUPTED)
    left_out = f" ({tally.filtered} entries left out by the filters)" if tally.filtered else ""
    click.echo(
        f"{verb} {tally.published} sightings and {tally.deadlettered} dead letters{left_out} "
        f"in {seconds:.1f} s ({rate:,.0f} events/s)"
    )
    if tally.note:
        log.warning("%s", tally.note)


def range_text(start: datetime, end: datetime | None) -> str:
    """`2024-02-01 00:00:00Z .. 2024-02-02 23:59:59Z`: the range as understood, both ends inclusive."""
    last = _moment(end - timedelta(seconds=1)) if end is not None else "the latest entry"
    return f"{_moment(start)} .. {last}"


def _moment(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def continue_command(argv: list[str], resume: datetime) -> str:
    """This replay's command line with `--start-time` moved to `resume`, ready to paste. It
    appends: `--output-mode truncate` would empty the file of what was published before."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--start-time", "--output-mode"):
            skip = True
        elif not arg.startswith(("--start-time=", "--output-mode=")):
            args.append(arg)
    if args[:1] == ["replay"]:
        args = args[1:]
    return shlex.join(["facespace-bridge", "replay", "--start-time", seen_at_text(resume), *args])


async def _nothing_there(client: AsyncLogsAPI, camera_id: str | None) -> str:
    """Why a range was empty, as far as the API can tell: where its history starts."""
    whose = f"the API's history of {camera_id}" if camera_id else "the API's history"
    try:
        first = await history_start(client, camera_id)
    except FaceSpaceError as exc:
        return f"0 sightings in that range ({whose} could not be read: {exc})"
    if first is None:
        return f"0 sightings: {whose} is empty"
    return f"0 sightings in that range: {whose} starts {_moment(first)}"


async def history_start(client: AsyncLogsAPI, camera_id: str | None) -> datetime | None:
    """The time of the API's earliest entry (of `camera_id`), None when it has none.

    The windows grow fast while they come back empty and shrink when a reply is too large,
    so this takes a few dozen small requests whatever the history holds.
    """
    async for window in client.iter_windows(EARLIEST, datetime.now(timezone.utc), camera_id):
        times = [entry.seen_at for entry in window.entries if isinstance(entry, LogEntry)]
        if times:
            return min(times)
    return None


async def _main(
    client: AsyncLogsAPI,
    sinks: list[Sink],
    start: datetime,
    end: datetime | None,
    entry_filter: EntryFilter,
    progress: bool,
    understood: str,
    pseudonymous: bool = False,
) -> Tally:
    """`understood` (the range as read) is logged once the API has answered (bad input says only
    what is wrong). `pseudonymous`: the client's names are pseudonyms (--pseudonymize)."""
    started: list[Sink] = []
    chunks = LogsSource(client, entry_filter=entry_filter, pseudonymous=pseudonymous).read_range(
        start, end, Checkpoint()
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        # The first window before the first sink: a refused key or an unreachable API
        # ends the run before any topic is created.
        first = await anext(chunks, None)
        log.info("%s", understood)
        for sink in sinks:
            await sink.start()
            started.append(sink)
        tally = await publish_range(_then(first, chunks), started, _Progress(progress, start, end), stop)
        tally.filtered = sum(entry_filter.counts.values())
        if tally.entries == 0 and not tally.interrupted and not tally.filtered:
            tally.note = await _nothing_there(client, entry_filter.single_camera)
        return tally
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
