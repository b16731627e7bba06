"""The history source: backfill of a fixed range, then a tail of `/logs` with a look-back window.

Both walk per-camera listings in the API's order and give each entry two numbers:
`k`, its occurrence among identical (camera, person, second) entries, which goes
into the event id; and its position (second, n-th entry of that camera at that
second), which goes into the checkpoint. An entry at or before a camera's resume
position was published before and is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from datetime import datetime, timedelta, timezone

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.client import AsyncLogsAPI, BadEntry, HTTPRequestError, LogEntry
from facespace_bridge.events import OccurrenceCounter, deadletter_event, sighting_event
from facespace_bridge.sources.base import Barrier, Item, sleep_or_stop

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def minute_floor(dt: datetime) -> datetime:
    return dt.replace(second=0, microsecond=0)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class _Numbering:
    """Numbers one listing's entries: k (for ids, the events module's OccurrenceCounter, so a
    tail, a backfill and a replay give the same ids) and the checkpoint position (the n-th
    entry of that camera at that second).

    Windows are minute-aligned, so a second is never split between two listings and the
    counts can start afresh for every listing. `LogsSource._fresh` keeps these dicts itself
    (its inlined copy of `number`, once per run of entries rather than per entry).
    """

    def __init__(self) -> None:
        self.occurrences = OccurrenceCounter()
        self._at_second: dict[tuple[str, datetime], int] = {}  # entries numbered so far
        self._last: dict[str, tuple[datetime, int]] = {}  # camera -> position of its latest entry
        self._latest: dict[str, datetime] = {}  # camera -> the latest second numbered

    def number(self, entry: LogEntry) -> tuple[int, tuple[datetime, int]]:
        """k and position of one entry; counts it for the entries that follow."""
        camera, seen_at = entry.camera_id, entry.seen_at
        key = (camera, seen_at)
        n = self._at_second[key] = self._at_second.get(key, 0) + 1
        position = self._last[camera] = (seen_at, n)  # a plain tuple: see sources.base.Item
        latest = self._latest.get(camera)
        if latest is None or seen_at > latest:
            self._latest[camera] = seen_at
        return self.occurrences.number(entry), position

    def newest(self) -> dict[str, datetime]:
        """The latest second numbered per camera."""
        return dict(self._latest)

    def last(self, camera_id: str) -> tuple[datetime, int] | None:
        """Position of the latest good entry of the camera: where a bad entry after it belongs."""
        return self._last.get(camera_id)


def _dead_letter(bad: BadEntry, position: tuple[datetime, int] | None) -> Item:
    return deadletter_event(bad.camera_id, bad.raw, bad.reason, source="logs"), position


def _sighting(entry: LogEntry, k: int, position: tuple[datetime, int]) -> Item:
    # The builder validates the payload; one that fails its schema comes back as a dead letter.
    return sighting_event(entry, k), position


class LogsSource:
    """Reads `/logs` for the bridge. One instance per run; not thread-safe."""

    def __init__(
        self,
        client: AsyncLogsAPI,
        *,
        camera_id: str | None = None,
        lateness: timedelta = timedelta(minutes=2),
        tail_interval: float = 5.0,
        clock: Clock = utcnow,
    ) -> None:
        self.client = client
        self.camera_id = camera_id
        self.lateness = lateness
        self.tail_interval = tail_interval
        self.clock = clock
        self.newest_seen: dict[str, datetime] = {}  # per camera, for the lag metric
        self.polls = 0

    # -- backfill ---------------------------------------------------------------------------------

    async def backfill(
        self, start: datetime, t0: datetime, resume: Checkpoint
    ) -> AsyncIterator[Iterable[Item] | Barrier]:
        """Every entry in [start, t0) after its camera's resume position, a window's items at a time.

        After each window a Barrier lets the checkpoint's heartbeat time follow, so a crash
        resumes at the last window rather than at the start.
        """
        start = minute_floor(start)
        async for window in self.client.iter_windows(start, t0, self.camera_id, read_ahead=True):
            yield self._fresh(window.entries, _Numbering(), resume)
            yield Barrier(window.end)

    def _fresh(
        self, entries: Iterable[LogEntry | BadEntry], numbering: _Numbering, resume: Checkpoint
    ) -> Iterable[Item]:
        # The per-entry hot path of a backfill: `numbering.number` inlined. A listing gives a
        # camera's entries together and in time order, so they come in runs of one (camera,
        # second): the dicts are touched once per run (per camera for the resume point and the
        # latest position), and an entry only counts on. A second later than any numbered for
        # its camera needs no look-up; any other order is still numbered right, from the dicts.
        floors: dict[str, Position | None] = {}  # resume.position per camera, looked up once
        occurrence = numbering.occurrences.number
        at_second, last, latest = numbering._at_second, numbering._last, numbering._latest
        camera: str | None = None  # the current run: camera, second, entries numbered at it
        second: datetime | None = None
        n = 0
        newest: datetime | None = None  # latest second numbered for `camera`
        floor: Position | None = None  # `camera`'s resume position
        skip = 0  # the run's entries numbered up to `skip` are at or before the resume position
        for entry in entries:
            if type(entry) is BadEntry:
                if camera is not None:  # the dicts must be current: they place the dead letter
                    at_second[camera, second] = n  # type: ignore[index]
                    last[camera], latest[camera] = (second, n), newest  # type: ignore[assignment]
                    camera = None  # the next good entry starts a new run
                bad_camera = entry.camera_id
                if bad_camera not in floors:
                    floors[bad_camera] = resume.position(bad_camera)
                bad_floor = floors[bad_camera]
                at = last.get(bad_camera)
                if at is None or bad_floor is None or at >= bad_floor:  # a repeat beats a loss
                    yield _dead_letter(entry, at or bad_floor)
                continue
            if entry.camera_id != camera or entry.seen_at != second:  # a new run
                if camera is not None:
                    at_second[camera, second] = n  # type: ignore[index]
                if entry.camera_id != camera:
                    if camera is not None:
                        last[camera], latest[camera] = (second, n), newest  # type: ignore[assignment]
                    camera = entry.camera_id
                    if camera not in floors:
                        floors[camera] = resume.position(camera)
                    floor, newest = floors[camera], latest.get(camera)
                second = entry.seen_at
                if newest is None or second > newest:
                    newest, n = second, 0
                else:
                    n = at_second.get((camera, second), 0)
                if floor is None or second > floor[0]:
                    skip = 0
                elif second == floor[0]:
                    skip = floor[1]
                else:
                    skip = sys.maxsize  # the whole run is
            k = occurrence(entry)  # every entry counts for k, published or not
            n += 1
            if n > skip:  # (second, n) is after the resume position
                yield sighting_event(entry, k), (second, n)  # type: ignore[misc]  # the builder validates
        if camera is not None:
            at_second[camera, second] = n  # type: ignore[index]
            last[camera], latest[camera] = (second, n), newest  # type: ignore[assignment]
        for newest_camera, newest_second in numbering.newest().items():  # once per window
            self._saw(newest_camera, newest_second)

    def _saw(self, camera_id: str, seen_at: datetime) -> None:
        """Keep the newest second read per camera (the lag metric, the tail's window)."""
        newest = self.newest_seen.get(camera_id)
        if newest is None or seen_at > newest:
            self.newest_seen[camera_id] = seen_at

    # -- tail -------------------------------------------------------------------------------------

    async def tail(self, resume: Checkpoint, stop: asyncio.Event) -> AsyncIterator[Iterable[Item] | Barrier]:
        """Poll `/logs` every `tail_interval` seconds until `stop` is set.

        Each poll re-reads a look-back window of `lateness` before the newest entry seen,
        so entries the API inserts late are still published; what was already handed over
        inside the window is remembered (by event identity) and skipped. In the first
        poll, entries at or before the resume positions of `resume` were published before
        this run: they are remembered as handed over, not published again.
        """
        seen = _TailMemory(resume)
        earliest = resume.earliest()
        query_from = minute_floor((earliest or self.clock()) - self.lateness)
        backoff = self.tail_interval
        while not stop.is_set():
            seen.bad_now = Counter()
            try:
                async for window in self.client.iter_windows(query_from, None, self.camera_id):
                    yield self._unseen(window.entries, seen)
            except HTTPRequestError as exc:
                log.warning("logs poll failed, retrying in %.0f s: %s", backoff, exc)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            backoff = self.tail_interval
            seen.first = False
            seen.bad_before = seen.bad_now
            self.polls += 1
            # Move the window: entries before (newest - lateness) are final from now on.
            newest = max(self.newest_seen.values(), default=None)
            if newest is not None:
                query_from = max(query_from, minute_floor(newest - self.lateness))
            seen.forget_before(query_from)
            yield Barrier(query_from)
            await sleep_or_stop(stop, self.tail_interval)

    def _unseen(self, entries: Iterable[LogEntry | BadEntry], seen: _TailMemory) -> Iterator[Item]:
        """The items of one tail window that were not handed over before."""
        numbering = _Numbering()
        for entry in entries:
            if isinstance(entry, BadEntry):
                key = (entry.camera_id, repr(entry.raw))
                seen.bad_now[key] += 1
                if seen.bad_now[key] > seen.bad_before[key]:  # not dead-lettered by an earlier poll
                    at = numbering.last(entry.camera_id)
                    floor = seen.resume.position(entry.camera_id) if seen.first else None
                    if at is None or floor is None or at >= floor:  # a repeat beats a loss
                        yield _dead_letter(entry, at)
                continue
            k, position = numbering.number(entry)
            done = seen.handed[entry.camera_id].setdefault(entry.seen_at, set())
            if (entry.person, k) in done:
                continue
            done.add((entry.person, k))
            floor = seen.resume.position(entry.camera_id) if seen.first else None
            if floor is not None and position <= floor:
                continue  # published before this run
            self._saw(entry.camera_id, entry.seen_at)
            yield _sighting(entry, k, position)


class _TailMemory:
    """What the tail remembers between polls: what it handed over inside the look-back
    window, and the dead letters of the previous poll (junk stays in the window too)."""

    def __init__(self, resume: Checkpoint) -> None:
        self.resume = resume
        self.first = True  # the first poll skips what `resume` says was published before
        # camera -> second -> {(person, k)} handed over; pruned as the window moves on.
        self.handed: dict[str, dict[datetime, set[tuple[str, int]]]] = defaultdict(dict)
        self.bad_before: Counter[tuple[str, str]] = Counter()
        self.bad_now: Counter[tuple[str, str]] = Counter()

    def forget_before(self, moment: datetime) -> None:
        for seconds in self.handed.values():
            for second in [s for s in seconds if s < moment]:
                del seconds[second]
