"""The bridge: sources -> events -> sinks -> acks -> checkpoint (docs/architecture.md).

Read top to bottom, `run` is the whole life of a bridge: open the checkpoint store, start
the sinks, tell them who exists, then serve: the logs source (a backfill up to T0 when
one is due, then the tail) and the realtime source hand batches to the publisher, whose
acknowledgements move the checkpoint tracker, whose checkpoint the writer saves behind the
stream. A stop lets what is in flight land (within the shutdown budget), saves once more,
and closes the sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from facespace_bridge.checkpoints import Backfill, Checkpoint, CheckpointError, CheckpointStore
from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.checkpoints.writer import CheckpointWriter
from facespace_bridge.client import AsyncLogsAPI, FaceSpaceError, LogEntry
from facespace_bridge.events import seen_at_text
from facespace_bridge.metrics import Metrics
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.publisher import Publisher
from facespace_bridge.sinks import LastSeen, Sink
from facespace_bridge.sources.base import Barrier, Batch, Clock, utcnow
from facespace_bridge.sources.logs import LogsSource
from facespace_bridge.sources.realtime import RealtimeSource
from facespace_bridge.status import bridge_status

if TYPE_CHECKING:
    from facespace_bridge.web.state import PageState

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class BridgeOptions:
    refresh: float = 1.0  # seconds between /recognition polls
    tail_interval: float = 5.0  # seconds between /logs polls
    backfill_from: datetime | None = None  # None: start at "now", no backfill
    lateness: timedelta = timedelta(minutes=2)  # look-back window for late-inserted entries
    presence_timeout: float = 30.0
    # Whose sightings leave the bridge (privacy/filters.py); the default keeps everyone.
    entry_filter: EntryFilter = field(default_factory=EntryFilter)
    realtime: bool = True
    logs: bool = True
    quick_polls: bool = True  # someone in view on /recognition: that camera's /logs polled at once
    heartbeat: float = 10.0  # the checkpoint is rewritten at least this often
    safety_lag: timedelta = timedelta(seconds=5)  # T0 = now - safety_lag: the API may still be writing "now"
    shutdown_timeout: float = 3.0  # how long a stop waits for outstanding acks
    # Acknowledged events not yet in a saved checkpoint, at most: a kill repeats at most this
    # many plus what the sinks had in flight. Publishing waits for the checkpoint beyond it.
    max_unsaved: int = 2000
    save_delay: float = 0.2  # seconds a changed checkpoint may wait for more acks before its write
    commit_interval: float = 0.1  # exactly once: seconds between transaction commits (Kafka Streams' default)
    announce_history: timedelta = timedelta(hours=24)  # people known from this much history are announced
    instance_id: str = "default"  # names the checkpoint in messages
    # The client's names are pseudonyms (--pseudonymize, privacy/pseudonyms.py): the events say so.
    pseudonymous: bool = False


class Bridge:
    def __init__(
        self,
        client: AsyncLogsAPI,
        sinks: list[Sink],
        store: CheckpointStore,
        options: BridgeOptions | None = None,
        metrics: Metrics | None = None,
        clock: Clock = utcnow,
        page: PageState | None = None,
    ) -> None:
        if not sinks:
            raise ValueError("the bridge needs at least one sink")
        self.client = client
        self.sinks = sinks
        self.store = store
        self.options = options = options or BridgeOptions()
        self.metrics = metrics or Metrics()
        self.metrics.follow(options.entry_filter)
        self.clock = clock
        self.page = page  # the web page's state (web/), fed off the hot path; None without a page
        if page is not None:  # whom a sink forgets on request, the page forgets too
            for sink in sinks:
                sink.on_forget = self._for_page(page.forget)
        # Exactly once: the sink whose transactions carry the checkpoint.
        self.transactional = next((s for s in sinks if s.transactional), None)
        if self.transactional is not None and len(sinks) > 1:
            raise ValueError("a transactional sink must be the only sink")
        self.logs_source = LogsSource(
            client,
            entry_filter=options.entry_filter,
            lateness=options.lateness,
            tail_interval=options.tail_interval,
            refresh=options.refresh,
            clock=clock,
            pseudonymous=options.pseudonymous,
        )
        self.realtime_source = RealtimeSource(
            client,
            refresh=options.refresh,
            presence_timeout=options.presence_timeout,
            on_in_view=self.logs_source.poll_soon if options.logs and options.quick_polls else None,
            pseudonymous=options.pseudonymous,
            entry_filter=options.entry_filter,
        )
        # What /status reports (facespace_bridge/status.py).
        client.on_retry = self._api_retry
        self.sinks_started = False
        self.stopping = False
        self.failure: str | None = None  # why the run ended, when it failed
        self.saved_checkpoint: Checkpoint | None = None  # the last one made durable
        self.tracker: AckTracker | None = None
        self.writer: CheckpointWriter | None = None
        self.publisher: Publisher | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then flush, write the checkpoint and close the sinks."""
        started: list[Sink] = []
        await self.store.open()
        try:
            if self.transactional is not None:
                # Started first: its producer aborts whatever transaction a killed predecessor
                # left open, which reading the checkpoint would otherwise wait for.
                await self.transactional.start()
                started.append(self.transactional)
            checkpoint = await self._initial_checkpoint()
            self.tracker = AckTracker(checkpoint, self._max_unsaved())
            self.writer = CheckpointWriter(
                self.store,
                self.tracker,
                transactional=self.transactional,  # type: ignore[arg-type]
                heartbeat=self.options.heartbeat,
                save_delay=self.options.save_delay,
                commit_interval=self.options.commit_interval,
                on_saved=self._saved,
            )
            self.publisher = Publisher(
                self.sinks,
                self.tracker,
                self.metrics,
                on_acknowledged=self._for_page(self.page.acknowledged) if self.page else None,
            )
            for sink in self.sinks:
                if sink not in started:
                    await sink.start()
                    started.append(sink)
            self.sinks_started = True
            if self.saved_checkpoint is None:
                await self._save_first(checkpoint)
            await self._announce()
            await self._serve(stop)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError | KeyboardInterrupt):
                self.failure = str(exc) or type(exc).__name__
            raise
        finally:
            self.stopping = True
            for sink in reversed(started):
                with contextlib.suppress(Exception):
                    await sink.close()
            await self.store.close()

    def _api_retry(self, endpoint: str, error: BaseException | None) -> None:
        """The client is retrying a request: counted, and the source shows as failing until an
        answer comes (the client retries for up to a minute before its caller hears of it)."""
        self.metrics.api_retries.labels(endpoint=endpoint).inc()
        source = self.realtime_source if endpoint == "recognition" else self.logs_source
        source.health.failed(f"retrying: {error}")

    def _saved(self, checkpoint: Checkpoint) -> None:
        self.saved_checkpoint = checkpoint
        self.metrics.saved(checkpoint)

    def _max_unsaved(self) -> float:
        # Exactly once needs no bound: a kill repeats nothing a read_committed consumer sees.
        return self.options.max_unsaved if self.transactional is None else float("inf")

    async def _serve(self, stop: asyncio.Event) -> None:
        assert self.writer is not None and self.tracker is not None and self.publisher is not None
        writer = asyncio.create_task(self.writer.run(stop), name="checkpoint-writer")
        sources = []
        if self.options.logs:
            sources.append(asyncio.create_task(self._logs(stop), name="logs"))
        if self.options.realtime:
            seen = self._for_page(self.page.presence) if self.page else None
            realtime = self._publish_from(self.realtime_source.run(stop), seen)
            sources.append(asyncio.create_task(realtime, name="realtime"))
        stopper = asyncio.create_task(stop.wait(), name="stop")
        fatal = self.publisher.fatal
        failed = False
        try:
            # A source that fails (say, the API key was refused), or a transaction that cannot
            # commit, ends the run.
            done, _ = await asyncio.wait(
                [*sources, stopper, writer, fatal], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not stopper and not task.cancelled() and task.exception():
                    failed = True
                    raise task.exception()  # type: ignore[misc]
        finally:
            self.stopping = True
            stop.set()
            for task in sources:
                task.cancel()
            await asyncio.gather(*sources, return_exceptions=True)
            stopper.cancel()
            # Let what is in flight land, within the shutdown budget, then make it durable
            # (not after a failed transaction: nothing more can commit).
            transaction_failed = failed and self.transactional is not None
            if not transaction_failed:
                try:
                    await asyncio.wait_for(self.tracker.idle(), self.options.shutdown_timeout)
                except asyncio.TimeoutError:
                    log.warning(
                        "%d events still unacknowledged at shutdown; they will be sent again",
                        self.tracker.in_flight,
                    )
            await self.publisher.cancel()
            writer.cancel()
            fatal.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not transaction_failed:
                await self.writer.final_save(self.options.shutdown_timeout)

    async def _initial_checkpoint(self) -> Checkpoint:
        """The loaded checkpoint, or a new one (T0 fixed now) that `_save_first` makes durable."""
        loaded = await self.store.load()
        backfill_from = self.options.backfill_from
        if loaded is not None:
            log.info("resuming from checkpoint (%s)", self.store.describe())
            if backfill_from is not None and not _holds_backfill_from(loaded, backfill_from):
                written = f" (written {seen_at_text(loaded.written_at)})" if loaded.written_at else ""
                log.warning(
                    "checkpoint of %s exists%s: --backfill-from ignored; to start over, stop the bridge "
                    "and run: facespace-bridge checkpoint reset --instance-id %s",
                    self.options.instance_id,
                    written,
                    shlex.quote(self.options.instance_id),
                )
            self.saved_checkpoint = loaded
            return loaded
        now = self.clock()
        if backfill_from is not None:
            t0 = now - self.options.safety_lag
            if backfill_from >= t0:
                raise CheckpointError("--backfill-from is not in the past")
            log.info(
                "no checkpoint yet: backfilling from %s up to %s, then tailing",
                seen_at_text(backfill_from),
                seen_at_text(t0),
            )
            return Checkpoint(through=backfill_from, backfill=Backfill(backfill_from, t0))
        log.info("no checkpoint yet: starting at now, no backfill")
        return Checkpoint(through=now - self.options.safety_lag)

    async def _save_first(self, checkpoint: Checkpoint) -> None:
        """Make a new checkpoint durable once every sink is connected and before anything is
        published: a crash during the backfill keeps its T0, and a start that never reached
        its sinks leaves no checkpoint behind (its --backfill-from still counts next time)."""
        if self.transactional is not None:  # (the store writes with the sink's producer)
            async with self.transactional.transaction_boundary():
                await self.store.save(checkpoint)
        else:
            await self.store.save(checkpoint)
        self.saved_checkpoint = checkpoint

    async def _announce(self) -> None:
        """Tell sinks that care (Home Assistant discovery) which cameras and people exist, and
        when each person was last seen in the recent history; the web page gets the same
        reads (who is in view, the recent history for its chart and sightings)."""
        announcers = [s for s in self.sinks if type(s).announce is not Sink.announce]
        page = self.page
        if not announcers and page is None:
            return
        cameras: set[str] = set()
        people: set[str] = set()
        last_seen: dict[str, LastSeen] = {}
        entry_filter = self.options.entry_filter
        # Best effort: what cannot be read now is announced on its first event instead.
        try:
            in_view = entry_filter.recognition(await self.client.get_realtime())
            for camera, names in in_view.items():
                cameras.add(camera)
                people.update(names)
            if page is not None:
                page.presence_now(in_view)
        except FaceSpaceError as exc:
            log.info("announcing without the current recognition reply: %s", exc)
        # Up to whatever the API has (an open range), not to this clock: an API whose clock runs
        # ahead has sightings "after now" that the tail will not publish again. With only the
        # page to tell, not what a pending backfill is about to publish: the page takes that
        # from the backfill's acknowledgements rather than from a second read of the same range.
        start = self.clock() - self.options.announce_history
        end = None if announcers else self._backfill_resumes()
        try:
            if end is None or end > start:
                async for entry in self.client.iter_entries(start, end, entry_filter.single_camera):
                    if (
                        isinstance(entry, LogEntry)
                        and entry_filter.camera_kept(entry.camera_id)
                        and entry_filter.person_kept(entry.person)
                    ):
                        cameras.add(entry.camera_id)
                        people.add(entry.person)
                        seen = last_seen.get(entry.person)
                        if seen is None or entry.seen_at >= seen.at:
                            last_seen[entry.person] = LastSeen(entry.seen_at, entry.camera_id)
                        if page is not None:
                            page.history_entry(entry)
        except FaceSpaceError as exc:
            log.warning("could not read the history to announce everyone known: %s", exc)
        if page is not None:
            page.history_done(last_seen)
        for sink in announcers:
            await sink.announce(sorted(cameras), sorted(people), last_seen)

    def _backfill_resumes(self) -> datetime | None:
        """Where a backfill still to run publishes from (after everything published before,
        on every camera), or None when there is none."""
        assert self.tracker is not None
        checkpoint = self.tracker.checkpoint
        backfill = checkpoint.backfill
        if backfill is None or backfill.complete:
            return None
        published = [checkpoint.through or backfill.start, *(p.seen_at for p in checkpoint.cameras.values())]
        return max(published)

    # -- the logs source: backfill, then tail ------------------------------------------------------

    async def _logs(self, stop: asyncio.Event) -> None:
        assert self.tracker is not None and self.writer is not None
        checkpoint = self.tracker.checkpoint
        backfill = checkpoint.backfill
        if backfill is not None and not backfill.complete:
            start = checkpoint.earliest() or backfill.start
            await self._publish_from(self.logs_source.read_range(start, backfill.t0, checkpoint))
            await self.tracker.idle()
            self.tracker.set_backfill(replace(backfill, complete=True), through=backfill.t0)
            await self.writer.save()
            log.info("backfill complete up to %s; tailing", seen_at_text(backfill.t0))
        await self._publish_from(self.logs_source.tail(self.tracker.checkpoint, stop))

    async def _publish_from(
        self, chunks: AsyncIterator[Batch | Barrier], seen: Callable[[Batch], None] | None = None
    ) -> None:
        """Publish what a source yields: batches of events (each shown to `seen` first), and
        barriers."""
        assert self.tracker is not None and self.publisher is not None
        async for chunk in chunks:
            if isinstance(chunk, Barrier):
                self.tracker.barrier(chunk.through)
                self._observe_lag()
            else:
                if seen is not None:
                    seen(chunk)
                await self.publisher.publish(chunk)

    @staticmethod
    def _for_page(feed: Callable[[T], None]) -> Callable[[T], None]:
        """`feed` (a batch, or the people a sink forgot), such that a failure in the page's
        bookkeeping never reaches the bridge (its type is logged, not its text, which may hold
        a name)."""

        def guarded(news: T) -> None:
            try:
                feed(news)
            except Exception as exc:
                log.error("web page: could not take what the bridge handed over (%s)", type(exc).__name__)
                log.debug("web page feed failed", exc_info=True)

        return guarded

    def _observe_lag(self) -> None:
        assert self.tracker is not None
        now = self.clock()
        for camera, newest in self.logs_source.newest_seen.items():
            self.metrics.camera_lag.labels(camera=camera).set((now - newest).total_seconds())
        self.metrics.in_flight.set(self.tracker.in_flight)

    # -- status -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The `/status` document (facespace_bridge/status.py)."""
        return bridge_status(self)


def _holds_backfill_from(checkpoint: Checkpoint, backfill_from: datetime) -> bool:
    """Whether `checkpoint` is of a start with this --backfill-from (a restart of the same command
    in the middle of its backfill): then the option is not ignored, it is being carried out."""
    return checkpoint.backfill is not None and checkpoint.backfill.start == backfill_from
