"""The bridge: sources → events → sinks → acks → checkpoint (DESIGN §4).

Two positions, as in Kafka Connect: each source keeps its own read cursor and moves
on every poll; the durable checkpoint is the low watermark of what *every* sink has
acknowledged, contiguous per camera, and is written behind the stream by one task.
A kill therefore repeats at most what was in flight, and never loses anything.

With a transactional sink (Kafka, --exactly-once) each save is a commit instead: the sink
pauses publishers and flushes, the checkpoint of everything acknowledged is written into the
same transaction, and both commit together. A kill then repeats nothing a read_committed
consumer sees; any failure of the transaction ends the run (a restart resumes at the last commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from functools import partial
from operator import attrgetter, itemgetter
from typing import Any

from facespace_bridge.checkpoints import Backfill, Checkpoint, CheckpointError, CheckpointStore, Position
from facespace_bridge.client import AsyncLogsAPI, FaceSpaceError, LogEntry
from facespace_bridge.events import DEADLETTER_SCHEMA, Event, schema_kind
from facespace_bridge.metrics import Metrics
from facespace_bridge.sinks import Sink
from facespace_bridge.sources.base import Barrier, Item, sleep_or_stop
from facespace_bridge.sources.logs import LogsSource, utcnow
from facespace_bridge.sources.realtime import RealtimeSource

log = logging.getLogger(__name__)


@dataclass
class BridgeOptions:
    refresh: float = 1.0  # seconds between /recognition polls
    tail_interval: float = 5.0  # seconds between /logs polls
    backfill_from: datetime | None = None  # None: start at "now", no backfill
    lateness: timedelta = timedelta(minutes=2)  # look-back window for late-inserted entries
    presence_timeout: float = 30.0
    camera_id: str | None = None
    realtime: bool = True
    logs: bool = True
    heartbeat: float = 10.0  # the checkpoint is rewritten at least this often
    safety_lag: timedelta = timedelta(seconds=5)  # T0 = now - safety_lag: the API may still be writing "now"
    shutdown_timeout: float = 3.0  # how long a stop waits for outstanding acks
    # Acknowledged events not yet in a saved checkpoint, at most: a kill repeats at most this
    # many plus what the sinks had in flight. Publishing waits for the checkpoint beyond it.
    max_unsaved: int = 2000
    save_delay: float = 0.2  # seconds a changed checkpoint may wait for more acks before its write
    commit_interval: float = 0.1  # exactly once: seconds between transaction commits (Kafka Streams' default)
    announce_history: timedelta = timedelta(hours=24)  # people known from this much history are announced


# Fields of an Item and of its event, for loops over a whole group that run in C (map, zip).
_event_of = itemgetter(0)
_position_of = itemgetter(1)
_camera_of = attrgetter("camera_id")
_schema_of = attrgetter("schema")


@dataclass(eq=False, slots=True)
class AckGroup:
    """Consecutive events that every sink acknowledges with the same acks (a Kafka batch, a
    file write): settled together, with one callback per sink instead of one per event."""

    seq: int
    acks: tuple[object, ...]  # the ack of each sink
    waiting: int  # sinks that have not acknowledged the group yet
    items: list[Item] = field(default_factory=list)  # in publish order, while the group is open
    # Once sealed: the items' events, kept for redelivery until every sink acknowledged them
    # (only the events: fewer objects per event in flight for the GC and the caches), each
    # camera's last position, and the events per kind (for the metrics).
    events: list[Event] = field(default_factory=list)
    positions: dict[str, tuple[datetime, int]] = field(default_factory=dict)
    kinds: dict[str, int] = field(default_factory=dict)
    sealed: bool = False  # no more items: its cameras are registered with the tracker
    closed: bool = False  # an ack fired: later events start a new group
    done: bool = False


class AckTracker:
    """Turns acknowledgements into a durable checkpoint.

    A camera's position only moves over a contiguous run of acknowledged groups, and the
    heartbeat time (`through`) only moves past a Barrier once everything before it is acked.
    Items join a group with a bare list append (the per-event hot path); the group's
    cameras are worked out once, when the next group opens or when it settles.
    """

    def __init__(self, checkpoint: Checkpoint, on_change: Callable[[], None]) -> None:
        self._positions: dict[str, tuple[datetime, int]] = dict(checkpoint.cameras)
        self._through = checkpoint.through
        self._backfill = checkpoint.backfill
        self._rewound = checkpoint.rewound
        self._on_change = on_change
        self._seq = 0
        self._open: AckGroup | None = None  # the newest group, still taking items
        self._per_camera: dict[str, deque[AckGroup]] = {}
        self._outstanding: set[int] = set()
        self._heap: list[int] = []
        self._barriers: deque[tuple[int, datetime]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sealed_in_flight = 0

    @property
    def in_flight(self) -> int:
        """Events handed over, not yet acknowledged by every sink."""
        return self._sealed_in_flight + (len(self._open.items) if self._open else 0)

    @property
    def checkpoint(self) -> Checkpoint:
        """The durable resume point as of now (a snapshot)."""
        cameras = {camera: Position._make(position) for camera, position in self._positions.items()}
        return Checkpoint(
            cameras=cameras, through=self._through, backfill=self._backfill, rewound=self._rewound
        )

    def open(self, acks: tuple[object, ...]) -> AckGroup:
        if self._open is not None:
            self._seal(self._open)
        self._seq += 1
        group = self._open = AckGroup(self._seq, acks, len(acks))
        self._outstanding.add(group.seq)
        heapq.heappush(self._heap, group.seq)
        self._idle.clear()
        return group

    def _seal(self, group: AckGroup) -> None:
        """The group takes no more items: note each camera's last position in it, and queue
        it behind that camera's earlier groups. Groups are sealed in the order they opened."""
        group.sealed = True
        items = group.items
        self._sealed_in_flight += len(items)
        # Done here, while the items were just made (in the CPU's caches), and in C loops.
        # Each camera's last position: a dict built from (camera, position) pairs keeps the last
        # pair per camera. Items without a position (presence) must not hide an earlier one of
        # their camera: a group with any takes the plain loop.
        group.events = events = list(map(_event_of, items))
        positions = dict(zip(map(_camera_of, events), map(_position_of, items), strict=True))
        if None in positions.values():
            positions = {event.camera_id: position for event, position in items if position is not None}
        group.positions = positions
        for schema, count in Counter(map(_schema_of, events)).items():  # a Kafka batch: one schema
            kind = schema_kind(schema)
            group.kinds[kind] = group.kinds.get(kind, 0) + count
        group.items = []
        for camera in positions:
            self._per_camera.setdefault(camera, deque()).append(group)
        if self._open is group:
            self._open = None

    def close(self, group: AckGroup) -> None:
        """An ack fired for `group`: it takes no more items."""
        if not group.sealed:  # only the newest group can be unsealed: order is kept
            self._seal(group)

    def barrier(self, through: datetime) -> None:
        self._barriers.append((self._seq, through))
        self._settle_barriers()

    def settled(self, group: AckGroup) -> None:
        """Every sink acknowledged `group`."""
        self.close(group)
        group.done = True
        self._sealed_in_flight -= len(group.events)
        group.events = []
        self._outstanding.discard(group.seq)
        if not self._outstanding:
            self._idle.set()
        moved = False
        for camera in group.positions:
            queue = self._per_camera[camera]
            position = None
            while queue and queue[0].done:
                position = queue.popleft().positions[camera]
            current = self._positions.get(camera)
            if position is not None and (current is None or position > current):
                self._positions[camera] = position
                moved = True
        if moved:
            self._on_change()
        self._settle_barriers()

    def set_backfill(self, backfill: Backfill | None, through: datetime | None = None) -> None:
        self._backfill = backfill
        if through is not None:  # the backfill read every camera, rewound ones too, up to there
            self._through = through
            self._rewound = frozenset()
        self._on_change()

    async def idle(self) -> None:
        await self._idle.wait()

    def _settle_barriers(self) -> None:
        while self._heap and self._heap[0] not in self._outstanding:
            heapq.heappop(self._heap)
        oldest = self._heap[0] if self._heap else None
        moved = None
        while self._barriers and (oldest is None or self._barriers[0][0] < oldest):
            moved = self._barriers.popleft()[1]
        # A rewound camera was read from its own position up to `moved` too: once that reaches
        # the heartbeat, the heartbeat holds for it again.
        if moved is not None and (
            self._through is None or moved > self._through or (self._rewound and moved >= self._through)
        ):
            self._through = moved
            self._rewound = frozenset()
            self._on_change()


@dataclass
class BridgeStatus:
    """What /readyz reports on."""

    sinks_started: bool = False
    last_logs_poll: float | None = None  # monotonic time of the last completed /logs poll


class Bridge:
    def __init__(
        self,
        client: AsyncLogsAPI,
        sinks: list[Sink],
        store: CheckpointStore,
        options: BridgeOptions | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if not sinks:
            raise ValueError("the bridge needs at least one sink")
        self.client = client
        self.sinks = sinks
        self.store = store
        self.options = options or BridgeOptions()
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.status = BridgeStatus()
        self._changed = asyncio.Event()
        self._full = asyncio.Event()  # max_unsaved acknowledged events wait for a save
        self._redeliveries: set[asyncio.Task[None]] = set()
        self._group: AckGroup | None = None  # the group new items join while its acks match
        self._failing: dict[str, int] = {}  # sink name -> events retried since it stopped acking
        self._save_lock = asyncio.Lock()  # one write at a time: the writer, backfill completion, shutdown
        self._unsaved = 0  # events acknowledged by every sink since the last saved checkpoint
        self._saved = asyncio.Event()  # set after each save
        # Exactly once: the sink whose transactions carry the checkpoint, and the first error
        # that makes committing impossible (it ends the run).
        self._transactional = next((s for s in sinks if s.transactional), None)
        if self._transactional is not None and len(sinks) > 1:
            raise ValueError("a transactional sink must be the only sink")
        self._fatal: asyncio.Future[None] | None = None
        self.tracker: AckTracker | None = None
        self.logs_source = LogsSource(
            client,
            camera_id=self.options.camera_id,
            lateness=self.options.lateness,
            tail_interval=self.options.tail_interval,
            clock=clock,
        )
        self.realtime_source = RealtimeSource(
            client, refresh=self.options.refresh, presence_timeout=self.options.presence_timeout
        )

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set; then flush, write the checkpoint and close the sinks."""
        started: list[Sink] = []
        await self.store.open()
        try:
            if self._transactional is not None:
                # Started first: its producer aborts whatever transaction a killed predecessor
                # left open, which reading the checkpoint would otherwise wait for.
                await self._transactional.start()
                started.append(self._transactional)
            checkpoint = await self._initial_checkpoint()
            self.tracker = AckTracker(checkpoint, self._changed.set)
            for sink in self.sinks:
                if sink not in started:
                    await sink.start()
                    started.append(sink)
            self.status.sinks_started = True
            await self._announce()
            await self._serve(stop)
        finally:
            for sink in reversed(started):
                with contextlib.suppress(Exception):
                    await sink.close()
            await self.store.close()

    async def _serve(self, stop: asyncio.Event) -> None:
        assert self.tracker is not None
        self._fatal = fatal = asyncio.get_running_loop().create_future()
        writer = asyncio.create_task(self._write_checkpoints(stop), name="checkpoint-writer")
        sources = []
        if self.options.logs:
            sources.append(asyncio.create_task(self._logs(stop), name="logs"))
        if self.options.realtime:
            sources.append(asyncio.create_task(self._pump(self.realtime_source.run(stop)), name="realtime"))
        stopper = asyncio.create_task(stop.wait(), name="stop")
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
            stop.set()
            for task in sources:
                task.cancel()
            await asyncio.gather(*sources, return_exceptions=True)
            stopper.cancel()
            # Let what is in flight land, within the shutdown budget, then make it durable
            # (not after a failed transaction: nothing more can commit).
            transaction_failed = failed and self._transactional is not None
            if not transaction_failed:
                try:
                    await asyncio.wait_for(self.tracker.idle(), self.options.shutdown_timeout)
                except asyncio.TimeoutError:
                    log.warning(
                        "%d events still unacknowledged at shutdown; they will be sent again",
                        self.tracker.in_flight,
                    )
            for task in self._redeliveries:
                task.cancel()
            writer.cancel()
            fatal.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            if not transaction_failed:
                await self._final_save()

    async def _initial_checkpoint(self) -> Checkpoint:
        loaded = await self.store.load()
        if loaded is not None:
            log.info("resuming from checkpoint (%s)", self.store.describe())
            return loaded
        now = self.clock()
        if self.options.backfill_from is not None:
            t0 = now - self.options.safety_lag
            start = self.options.backfill_from
            if start >= t0:
                raise CheckpointError("--backfill-from is not in the past")
            checkpoint = Checkpoint(through=start, backfill=Backfill(start, t0))
            log.info("no checkpoint yet: backfilling from %s up to %s, then tailing", _text(start), _text(t0))
        else:
            checkpoint = Checkpoint(through=now - self.options.safety_lag)
            log.info("no checkpoint yet: starting at now, no backfill")
        # Written before anything is published, so a crash during the backfill keeps its T0.
        if self._transactional is not None:  # (the store writes with the sink's producer)
            async with self._transactional.transaction_boundary():
                await self.store.save(checkpoint)
        else:
            await self.store.save(checkpoint)
        return checkpoint

    async def _announce(self) -> None:
        """Tell sinks that care (Home Assistant discovery) which cameras and people exist."""
        announcers = [s for s in self.sinks if type(s).announce is not Sink.announce]
        if not announcers:
            return
        cameras: set[str] = set()
        people: set[str] = set()
        # Best effort: what cannot be read now is announced on its first event instead.
        try:
            for camera, names in (await self.client.get_realtime()).items():
                cameras.add(camera)
                people.update(names)
        except FaceSpaceError as exc:
            log.info("announcing without the current recognition reply: %s", exc)
        try:
            end = self.clock()
            async for entry in self.client.iter_entries(
                end - self.options.announce_history, end, self.options.camera_id
            ):
                if isinstance(entry, LogEntry):
                    cameras.add(entry.camera_id)
                    people.add(entry.person)
        except FaceSpaceError as exc:
            log.warning("could not read the history to announce everyone known: %s", exc)
        for sink in announcers:
            await sink.announce(sorted(cameras), sorted(people))

    # -- the logs source: backfill, then tail ------------------------------------------------------

    async def _logs(self, stop: asyncio.Event) -> None:
        assert self.tracker is not None
        checkpoint = self.tracker.checkpoint
        backfill = checkpoint.backfill
        if backfill is not None and not backfill.complete:
            start = checkpoint.earliest() or backfill.start
            await self._pump(self.logs_source.backfill(start, backfill.t0, checkpoint))
            await self.tracker.idle()
            self.tracker.set_backfill(replace(backfill, complete=True), through=backfill.t0)
            await self._save()
            log.info("backfill complete up to %s; tailing", _text(backfill.t0))
        await self._pump(self.logs_source.tail(self.tracker.checkpoint, stop))

    # -- publishing -------------------------------------------------------------------------------

    async def _pump(self, chunks: AsyncIterator[Iterable[Item] | Barrier]) -> None:
        """Publish what a source yields: chunks of items (a window, a poll) and barriers."""
        assert self.tracker is not None
        async for chunk in chunks:
            if isinstance(chunk, Barrier):
                self.tracker.barrier(chunk.through)
                self.status.last_logs_poll = time.monotonic()
                self._observe_lag()
                continue
            await self.publish(chunk)

    async def publish(self, items: Iterable[Item]) -> None:
        """Hand items to every sink (each may make us wait: back-pressure); their acks feed the
        tracker. Consecutive items acknowledged by the same acks share one group. One loop
        for a whole chunk: this is the per-event hot path of a backfill."""
        assert self.tracker is not None
        sinks = self.sinks
        only = sinks[0] if len(sinks) == 1 else None
        # Exactly once needs no bound: a kill repeats nothing a read_committed consumer sees.
        max_unsaved = self.options.max_unsaved if self._transactional is None else float("inf")
        for item in items:
            while self._unsaved >= max_unsaved:  # let the checkpoint catch up
                self._saved.clear()
                await self._saved.wait()
            event = item[0]
            if only is not None:  # the common case: no tuple of acks per event
                ack = await only.publish(event)
                group = self._group
                if group is None or group.closed or group.acks[0] is not ack:
                    group = self._open_group((ack,))
            else:
                acks = tuple([await sink.publish(event) for sink in sinks])
                group = self._group
                if group is None or group.closed or group.acks != acks:
                    group = self._open_group(acks)
            group.items.append(item)  # in publish order; the tracker reads it when it seals the group
            if event.schema == DEADLETTER_SCHEMA:
                self.metrics.dead_letters.labels(source=str(event.fields.get("source", ""))).inc()

    def _open_group(self, acks: tuple[object, ...]) -> AckGroup:
        """A new group for items acknowledged by `acks`; the acks settle it."""
        assert self.tracker is not None
        group = self._group = self.tracker.open(acks)
        for index, ack in enumerate(acks):
            callback = partial(self._on_ack, index, group)
            asyncio.ensure_future(ack).add_done_callback(callback)  # type: ignore[arg-type]
        return group

    def _on_ack(self, index: int, group: AckGroup, ack: asyncio.Future[Any]) -> None:
        assert self.tracker is not None
        group.closed = True
        self.tracker.close(group)
        if ack.cancelled():
            return
        sink = self.sinks[index]
        error = ack.exception()
        if error is not None and self._transactional is not None:
            # The open transaction cannot commit: end the run (a restart resumes at the last commit).
            if self._fatal is not None and not self._fatal.done():
                self._fatal.set_exception(error)
            return
        if error is not None:
            # Not acknowledged: deliver the group's events again (same ids, so duplicates are
            # harmless) and hold the checkpoint until they land.
            self.metrics.publish_failures.labels(sink=sink.name).inc(len(group.events))
            if sink.name not in self._failing:  # once per outage, not once per event
                self._failing[sink.name] = 0
                log.warning("%s is not acknowledging events (%s); retrying until it does", sink.name, error)
            self._failing[sink.name] += len(group.events)
            task = asyncio.create_task(self._redeliver(index, group))
            self._redeliveries.add(task)
            task.add_done_callback(self._redeliveries.discard)
            return
        self._sink_done(index, group)

    def _sink_done(self, index: int, group: AckGroup) -> None:
        assert self.tracker is not None
        name = self.sinks[index].name
        for kind, count in group.kinds.items():
            self.metrics.published.labels(sink=name, type=kind).inc(count)
        group.waiting -= 1
        if group.waiting == 0:
            self._unsaved += len(group.events)
            self.tracker.settled(group)
            if self._unsaved >= self.options.max_unsaved:
                self._full.set()  # publishing waits for a save: it comes now
                self._changed.set()  # (even when no position moved, say for dead letters)

    async def _redeliver(self, index: int, group: AckGroup) -> None:
        sink = self.sinks[index]
        delay = 0.5
        for event in list(group.events):
            while True:
                try:
                    await (await sink.publish(event))
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # still down: keep trying, slower
                    log.debug("redelivery to %s failed: %s", sink.name, exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        retried = self._failing.pop(sink.name, None)
        if retried is not None:
            log.info("%s acknowledges again (%d events were retried)", sink.name, retried)
        self._sink_done(index, group)

    # -- checkpoints ------------------------------------------------------------------------------

    async def _write_checkpoints(self, stop: asyncio.Event) -> None:
        """Write the latest checkpoint behind the stream: `save_delay` after it changes, at once
        when `max_unsaved` events wait for it, and at least every `heartbeat` seconds (so the
        checkpoint age shows the bridge is alive)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self.options.heartbeat)
            if self._transactional is None and not self._full.is_set():
                # Let more acknowledgements join this write: in a backfill, one file write per
                # `max_unsaved` events rather than one per acknowledged batch.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), timeout=self.options.save_delay)
            await self._save()
            if self._transactional is not None:  # a commit pauses publishing: not after every batch
                await sleep_or_stop(stop, self.options.commit_interval)

    async def _final_save(self) -> None:
        """The save at shutdown, within the shutdown budget: a broker that went away must not
        keep the process alive (a Kafka commit waits for its coordinator without end)."""
        try:
            await asyncio.wait_for(self._save(), self.options.shutdown_timeout)
        except asyncio.TimeoutError:
            raise CheckpointError(
                f"the checkpoint could not be saved at shutdown within {self.options.shutdown_timeout:g} s "
                f"({self.store.describe()}); a restart resumes from the last one saved"
            ) from None

    async def _save(self) -> None:
        assert self.tracker is not None
        async with self._save_lock:
            await self._save_now()

    async def _save_now(self) -> None:
        assert self.tracker is not None
        self._changed.clear()
        self._full.clear()
        if self._transactional is not None:
            # Publishers wait and everything in flight lands, so the checkpoint covers exactly
            # the events of this transaction; both commit together. Errors end the run.
            async with self._transactional.transaction_boundary():
                await self.tracker.idle()
                covered = self._unsaved
                await self.store.save(self.tracker.checkpoint)
        else:
            covered = self._unsaved  # what this snapshot makes durable
            try:
                await self.store.save(self.tracker.checkpoint)
            except CheckpointError as exc:
                log.error("%s", exc)
                return
        self._unsaved -= covered
        self._saved.set()
        self.metrics.checkpoint_saved.set_to_current_time()

    def _observe_lag(self) -> None:
        now = self.clock()
        for camera, newest in self.logs_source.newest_seen.items():
            self.metrics.camera_lag.labels(camera=camera).set((now - newest).total_seconds())
        if self.tracker is not None:
            self.metrics.in_flight.set(self.tracker.in_flight)

    # -- status -----------------------------------------------------------------------------------

    def ready(self) -> bool:
        """Connected and polling: sinks started, and the sources have answered recently."""
        if not self.status.sinks_started:
            return False
        fresh = time.monotonic() - 3 * max(self.options.tail_interval, self.options.refresh) - 30
        logs_ok = not self.options.logs or (self.status.last_logs_poll or 0) > fresh
        realtime_ok = not self.options.realtime or self.realtime_source.status in ("polling", "stopped")
        return logs_ok and realtime_ok


def _text(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
