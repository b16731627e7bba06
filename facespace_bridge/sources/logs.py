"""The history source: a fixed range of `/logs` (backfill, replay), then a tail with a look-back window.

Both read the range in windows and number each window with `listing.number_listing`, so
every path gives a sighting the same id and position. An entry at or before its camera's
resume position was published before and is skipped.

The tail polls every `tail_interval` seconds, and also at once for the cameras where the
realtime source sees someone (`poll_soon`): an arrival on `/recognition` means a new history
entry, and someone already in view may be making one (a visit of a person still in view
shows on `/logs` only), and waiting for the next regular poll would hold the sighting back
for up to `tail_interval`. Such quick polls are coalesced (at most one per `refresh`) and
read only from the cameras' newest minute; the regular poll still reads the whole look-back
window. Every poll runs in the one tail task, so two polls never overlap, and the tail's
memory of what it handed over keeps a sighting from going out twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timedelta

from facespace_bridge.backoff import Backoff
from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.client import AsyncLogsAPI, HTTPRequestError, Window
from facespace_bridge.events import PSEUDONYMOUS_SIGHTINGS, SIGHTINGS
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.sources.base import Barrier, Batch, Clock, PollHealth, utcnow
from facespace_bridge.sources.listing import TailMemory, number_listing

log = logging.getLogger(__name__)


def minute_floor(dt: datetime) -> datetime:
    return dt.replace(second=0, microsecond=0)


class LogsSource:
    """Reads `/logs` for the bridge and for replay. One instance per run; not thread-safe.

    `entry_filter` leaves cameras and people out (privacy/filters.py); with one `--camera-id`
    the API is asked for that camera alone. `pseudonymous`: the client's names are pseudonyms
    (--pseudonymize), and the sightings say so (`events.PSEUDONYMOUS_SIGHTINGS`)."""

    def __init__(
        self,
        client: AsyncLogsAPI,
        *,
        entry_filter: EntryFilter | None = None,
        lateness: timedelta = timedelta(minutes=2),
        tail_interval: float = 5.0,
        refresh: float = 1.0,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        pseudonymous: bool = False,
    ) -> None:
        self.client = client
        self.entry_filter = entry_filter = entry_filter or EntryFilter()
        self.camera_id = entry_filter.single_camera  # the API's own narrowing, when it can
        self.encoder = PSEUDONYMOUS_SIGHTINGS if pseudonymous else SIGHTINGS  # builds the sightings
        self.lateness = lateness
        self.tail_interval = tail_interval
        self.refresh = refresh
        self.clock = clock
        self.monotonic = monotonic
        self.newest_seen: dict[str, datetime] = {}  # per camera, the latest second read (lag, windows)
        self.polls = 0  # regular tail polls done
        self.quick_polls = 0  # quick polls (someone in view)
        self.health = PollHealth()
        self._quick: set[str] = set()  # cameras to poll at once
        self._wake = asyncio.Event()

    # -- a fixed range ----------------------------------------------------------------------------

    async def read_range(
        self, start: datetime, end: datetime | None, resume: Checkpoint
    ) -> AsyncIterator[Batch | Barrier]:
        """Every entry in [start, end) after its camera's resume position, window by window.

        After each window a Barrier lets the checkpoint's heartbeat time follow, so a crash
        resumes at the last window rather than at the start (and replay shows its progress).
        """
        # The API answers whole minutes: the first window begins at the start's minute, and
        # what that minute holds before `start` is left out (its seconds number nothing after).
        async for window in self.client.iter_windows(
            minute_floor(start), end, self.camera_id, read_ahead=True
        ):
            for batch in self._numbered(window, max(window.start, start), resume=resume):
                yield batch
            yield Barrier(window.end or self._read_through(window.start))

    def _read_through(self, start: datetime) -> datetime:
        """The end of an open window: just after the newest entry read, and not before `start`."""
        newest = max(self.newest_seen.values(), default=None)
        return start if newest is None else max(start, newest + timedelta(seconds=1))

    # -- tail -------------------------------------------------------------------------------------

    def poll_soon(self, cameras: Iterable[str]) -> None:
        """Someone is in view at these cameras: poll their history at once (coalesced)."""
        cameras = [c for c in cameras if self.entry_filter.camera_kept(c)]
        before = len(self._quick)
        self._quick.update(cameras)
        if len(self._quick) > before:
            self._wake.set()

    async def tail(self, resume: Checkpoint, stop: asyncio.Event) -> AsyncIterator[Batch | Barrier]:
        """Poll `/logs` every `tail_interval` seconds, and at once for cameras that see someone,
        until `stop` is set.

        Each regular poll re-reads a look-back window of `lateness` before the newest entry
        seen, so entries the API inserts late are still published; what was already handed
        over inside the window is remembered (by event identity) and skipped. In the first
        poll, entries at or before the resume positions of `resume` were published before
        this run: they are remembered as handed over, not published again.
        """
        memory = TailMemory()
        first: Checkpoint | None = resume
        earliest = resume.earliest()
        query_from = minute_floor((earliest or self.clock()) - self.lateness)
        backoff = Backoff(self.tail_interval, max(self.tail_interval, 60.0))
        next_poll = self.monotonic()
        quiet_until = 0.0  # no quick poll before this (at most one per `refresh`)
        while not stop.is_set():
            now = self.monotonic()
            if now >= next_poll:
                try:
                    async for window in self.client.iter_windows(query_from, None, self.camera_id):
                        for batch in self._numbered(window, window.start, resume=first, memory=memory):
                            yield batch
                except HTTPRequestError as exc:
                    retry_in = backoff.failed()
                    self._failed(exc, retry_in)
                    next_poll = self.monotonic() + retry_in
                    continue
                backoff.succeeded()
                first = None
                memory.full_poll_done()
                self.health.answered()
                self.polls += 1
                self._quick.clear()  # this poll read them
                # Move the window: entries before (newest - lateness) are final from now on.
                newest = max(self.newest_seen.values(), default=None)
                if newest is not None:
                    query_from = max(query_from, minute_floor(newest - self.lateness))
                memory.forget_before(query_from)
                yield Barrier(query_from)
                next_poll = self.monotonic() + self.tail_interval
            elif self._quick and now >= quiet_until:
                cameras, self._quick = sorted(self._quick), set()
                quiet_until = now + self.refresh
                async for batch in self._quick_poll(cameras, query_from, memory):
                    yield batch
            self._wake.clear()
            wake_at = next_poll if not self._quick else min(next_poll, quiet_until)
            await self._sleep(stop, wake_at - self.monotonic())

    async def _quick_poll(
        self, cameras: list[str], query_from: datetime, memory: TailMemory
    ) -> AsyncIterator[Batch]:
        """One request for the cameras where someone is in view (`poll_soon`), from their newest
        minute read (never before the look-back window, whose memory would be gone); one camera
        is asked by id."""
        newest = [minute_floor(self.newest_seen[c]) if c in self.newest_seen else query_from for c in cameras]
        start = max(query_from, min(newest))
        camera = cameras[0] if len(cameras) == 1 else self.camera_id
        memory.quick = True
        try:
            async for window in self.client.iter_windows(start, None, camera):
                for batch in self._numbered(window, window.start, memory=memory):
                    yield batch
        except HTTPRequestError as exc:
            log.debug("quick logs poll for %s failed (the regular poll will read it): %s", cameras, exc)
            return
        finally:
            memory.quick = False
        self.quick_polls += 1
        self.health.answered()

    def _numbered(
        self,
        window: Window,
        start: datetime,
        *,
        resume: Checkpoint | None = None,
        memory: TailMemory | None = None,
    ) -> Iterator[Batch]:
        """The batches of a window's reply from `start` (`number_listing`), through this
        source's filter and encoder, noting the newest second read per camera."""
        return number_listing(
            window.reply,
            start,
            window.end,
            resume=resume,
            memory=memory,
            newest=self.newest_seen,
            entry_filter=self.entry_filter,
            encoder=self.encoder,
        )

    def _failed(self, exc: HTTPRequestError, retry_in: float) -> None:
        log.warning("logs poll failed, retrying in %.0f s: %s", retry_in, exc)
        self.health.failed(exc)

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        """Sleep up to `seconds`, waking at once for `stop` or a camera to poll at once."""
        if seconds <= 0:
            return
        woken = asyncio.ensure_future(self._wake.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((woken, stopped), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            stopped.cancel()
