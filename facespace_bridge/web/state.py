"""What the page shows, kept up to date by the bridge as it runs, off its hot path.

The bridge feeds a `PageState`:
- at start, with the `/recognition` reply and the last 24 hours of history that it reads
  anyway to announce everyone to the sinks (`presence_now`, `history_entry`, `history_done`):
  after a restart the chart, the recent sightings and everyone's last seen are back at once;
- with each presence batch as the realtime source hands it over (`presence`);
- with each batch once every sink has acknowledged it (`acknowledged`): the recent
  sightings, the per-minute counts behind the chart and the last hour, last seen;
- with the people a sink forgot on request (`forget`, docs/privacy.md): they leave the
  people, the recent sightings and each camera's list of who is in view (the counts stay:
  they hold no names) until they are seen again.

What the bridge pays per batch is bounded and small: a batch whose sightings all came with
the history read (a backfill, the tail's look-back after a restart: per camera, at or before
the newest sighting that read found) is recognised by its positions and skipped whole;
otherwise one pass counts the new sightings per camera and minute. Everything kept is
bounded: `RECENT` sightings, one count per camera and minute for the last `HOURS` hours
(older ones are not counted and are pruned), one record per camera and person.

What the page reads are JSON documents: `snapshot(status)` (everything, for a page that
connects or falls behind) and `update(status)` (what changed since the last update), where
`status` is the bridge's status document (status.py). The web server (server.py) sends them.
An update names the people forgotten since the last one (`forgotten`), so that an open page
drops them from its lists too.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import orjson

from facespace_bridge.client import LogEntry
from facespace_bridge.events import Event, parse_rfc3339, seen_at_text
from facespace_bridge.privacy.filters import matching
from facespace_bridge.sinks.base import LastSeen
from facespace_bridge.sources.base import Batch
from facespace_bridge.web.words import explain
from facespace_bridge.whereabouts import Whereabouts

RECENT = 300  # sightings the page gets (it shows at least 200)
HOURS = 24  # the chart's span
HOUR = 3600
RATE_WINDOW = 10.0  # seconds of samples behind a backfill's rate and time left


@dataclass(frozen=True, slots=True)
class Sighting:
    seq: int  # the order the page got it in: a page that has seen `seq` skips it
    camera: str
    person: str
    seen_at: str  # RFC 3339, UTC, seconds


def _minute(seen_at: str) -> str:
    """`2023-10-25T10:41:07Z` -> `2023-10-25T10:41`: the key a sighting is counted under."""
    return seen_at[:16]


def _hour_text(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H", time.gmtime(epoch))


def _utc(epoch: float) -> str:
    return seen_at_text(datetime.fromtimestamp(epoch, timezone.utc))


class PageState:
    """The page's data; see the module docstring. One per bridge, on the bridge's loop."""

    def __init__(
        self,
        away_after: float,
        *,
        recent: int = RECENT,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.whereabouts = Whereabouts(away_after, clock=clock, on_change=self._person_changed)
        self.in_view: dict[str, list[str]] = {}  # camera -> who it sees now, sorted
        self.minutes: dict[tuple[str, str], int] = {}  # (camera, minute) -> sightings
        self.recent: deque[Sighting] = deque(maxlen=recent)
        self.acknowledged_events = 0  # events every sink acknowledged (the backfill's rate)
        self.seq = 0
        # Per camera, the newest sighting the history read at start found (as RFC 3339 text and
        # as a datetime): sightings at or before it were counted then.
        self.read_until: dict[str, str] = {}
        self._read_until_at: dict[str, datetime] = {}
        self._history_recent: dict[str, deque[tuple[str, str]]] = {}  # camera -> (seen_at, person)
        self._floor = _utc(clock() - (HOURS + 1) * HOUR)  # older sightings are not counted
        self._pruned_at = 0.0
        self._samples: deque[tuple[float, int, float]] = deque()  # (monotonic, acknowledged, progress)
        # What changed since the last update.
        self._people_changed: set[str] = set()
        self._forgotten: set[str] = set()
        self._pushed_seq = 0
        self._sent: dict[str, bytes] = {}  # section -> its bytes as last sent
        self._chart_changed = True

    # -- fed by the bridge ------------------------------------------------------------------------

    def presence_now(self, reply: Mapping[str, Iterable[str]]) -> None:
        """The `/recognition` reply read at start: who each camera sees."""
        for camera, people in reply.items():
            self.in_view[camera] = sorted(set(people))

    def history_entry(self, entry: LogEntry) -> None:
        """One entry of the history read at start (the last 24 hours, in time order)."""
        seen_at = seen_at_text(entry.seen_at)
        if seen_at <= self._floor:
            return
        camera = entry.camera_id
        key = (camera, _minute(seen_at))
        self.minutes[key] = self.minutes.get(key, 0) + 1
        if seen_at > self.read_until.get(camera, ""):
            self.read_until[camera] = seen_at
            self._read_until_at[camera] = entry.seen_at
        latest = self._history_recent.get(entry.camera_id)
        if latest is None:
            latest = self._history_recent[entry.camera_id] = deque(maxlen=self.recent.maxlen)
        latest.append((seen_at, entry.person))

    def history_done(self, last_seen: Mapping[str, LastSeen]) -> None:
        """The history read is over (or failed part way: its windows are in time order, so what
        it found per camera is still all there is up to that camera's newest); `last_seen` per
        person."""
        newest = sorted(
            (
                (seen_at, camera, person)
                for camera, rows in self._history_recent.items()
                for seen_at, person in rows
            ),
        )[-(self.recent.maxlen or RECENT) :]
        self._history_recent.clear()
        for seen_at, camera, person in newest:
            self._add_recent(camera, person, seen_at)
        for person, seen in last_seen.items():
            self.whereabouts.seen(person, seen.camera_id, seen.at)
        for person in last_seen:
            self.whereabouts.update(person)
        self._chart_changed = True

    def presence(self, batch: Batch) -> None:
        """A batch of the realtime source, as the bridge hands it to the sinks."""
        for event in batch.events:
            if event.kind != "presence" or event.people is None or event.seen_at is None:
                continue
            people = list(event.people)
            self.in_view[event.camera_id] = people
            self._known(event.camera_id)
            self.whereabouts.presence(event.camera_id, people, event.seen_at)

    def acknowledged(self, batch: Batch) -> None:
        """A batch every sink has acknowledged."""
        events = batch.events
        self.acknowledged_events += len(events)
        read = self._read_until_at
        positions = batch.positions
        if positions and all(camera in read and p[0] <= read[camera] for camera, p in positions.items()):
            return  # the history read at start counted all of them
        floors: dict[str, str] = {}
        minutes = self.minutes
        new: list[Event] = []
        for event in events:
            seen_at = event.time
            if seen_at is None or event.person is None or event.kind != "sighting":
                continue
            camera = event.camera_id
            floor = floors.get(camera)
            if floor is None:
                floor = floors[camera] = max(self._floor, self.read_until.get(camera, ""))
            if seen_at <= floor:
                continue
            key = (camera, seen_at[:16])
            minutes[key] = minutes.get(key, 0) + 1
            new.append(event)
        if not new:
            return
        self._chart_changed = True
        newest: dict[str, Event] = {}
        for index, event in enumerate(new):
            person = event.person or ""
            known = newest.get(person)
            if known is None or (event.time or "") > (known.time or ""):
                newest[person] = event
            if index >= len(new) - (self.recent.maxlen or RECENT):
                self._add_recent(event.camera_id, person, event.time or "")
        for person, event in newest.items():
            if event.seen_at is not None:
                self.whereabouts.sighting(person, event.camera_id, event.seen_at)

    def forget(self, people: Collection[str]) -> None:
        """The bridge forgot `people` (NFC-normalised, as a sink was asked for them): they leave
        the people, the recent sightings and each camera's list of who is in view, under every
        form of their name the API sent; the per-minute counts stay (they hold no names)."""
        held = {p.name for p in self.whereabouts} | {s.person for s in self.recent}
        held.update(name for names in self.in_view.values() for name in names)
        gone = set(matching(held, people))
        if not gone:
            return
        for name in gone:
            self.whereabouts.forget(name)
        self._people_changed -= gone
        self._forgotten |= gone
        self.recent = deque((s for s in self.recent if s.person not in gone), maxlen=self.recent.maxlen)
        for camera, names in self.in_view.items():
            if not gone.isdisjoint(names):
                self.in_view[camera] = [name for name in names if name not in gone]

    def _known(self, camera: str) -> None:
        """Make `camera` known (with no sightings yet, it still has a row and a series)."""
        self.in_view.setdefault(camera, [])

    def _add_recent(self, camera: str, person: str, seen_at: str) -> None:
        self.seq += 1
        self.recent.append(Sighting(self.seq, camera, person, seen_at))
        self.in_view.setdefault(camera, [])

    def _person_changed(self, person: str, document: bytes) -> None:
        self._people_changed.add(person)

    def close(self) -> None:
        self.whereabouts.close()

    # -- read by the page -------------------------------------------------------------------------

    def tick(self, status: Mapping[str, Any]) -> None:
        """Once per push interval, pages open or not: the backfill's progress is sampled (its
        rate and time left) and what is too old is pruned (once a minute)."""
        now = self.monotonic()
        backfill = status.get("backfill")
        if backfill and not backfill["done"]:
            self._samples.append((now, self.acknowledged_events, float(backfill["progress"])))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW:
                self._samples.popleft()
        else:
            self._samples.clear()
        if now - self._pruned_at >= 60:
            self._pruned_at = now
            self._prune()

    def snapshot(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """Everything the page shows (what other pages were sent is not touched: they get the
        changes since their last update as before)."""
        sections = self._sections(status)
        return {
            "type": "snapshot",
            **sections,
            "people": [self._person(p.name) for p in sorted(self.whereabouts, key=lambda p: p.name)],
            "sightings": [self._sighting(s) for s in self.recent],
        }

    def update(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """What changed since the last `update` or `snapshot` (only `type` when nothing did)."""
        message: dict[str, Any] = {"type": "update"}
        for name, value in self._sections(status, chart=self._chart_changed).items():
            encoded = orjson.dumps(value)
            if self._sent.get(name) != encoded:
                self._sent[name] = encoded
                message[name] = value
        self._chart_changed = False
        if self._forgotten:  # (a page drops them before it takes `people` and `sightings`)
            message["forgotten"] = sorted(self._forgotten)
            self._forgotten.clear()
        if self._people_changed:
            message["people"] = [self._person(name) for name in sorted(self._people_changed)]
            self._people_changed.clear()
        if self.seq > self._pushed_seq:
            # The newest, by their order (a forget may have taken some from before them).
            fresh = list(itertools.takewhile(lambda s: s.seq > self._pushed_seq, reversed(self.recent)))
            if fresh:
                message["sightings"] = [self._sighting(s) for s in reversed(fresh)]
            self._pushed_seq = self.seq
        return message

    def _sections(self, status: Mapping[str, Any], chart: bool = True) -> dict[str, Any]:
        sections = {"bridge": self._bridge(status), "cameras": self._cameras(status)}
        if chart or "chart" not in self._sent:
            sections["chart"] = self._chart()
        return sections

    def _bridge(self, status: Mapping[str, Any]) -> dict[str, Any]:
        backfill = status.get("backfill")
        if backfill is not None:
            backfill = {**backfill, **self._backfill_pace(backfill)}
        return {
            "state": status["state"],
            "problems": explain(status),
            "api": status["sources"],
            "sinks": status["sinks"],
            "backfill": backfill,
        }

    def _backfill_pace(self, backfill: Mapping[str, Any]) -> dict[str, Any]:
        """Events per second and seconds left, over the last RATE_WINDOW seconds of samples."""
        if backfill["done"] or len(self._samples) < 2:
            return {"rate": None, "seconds_left": None}
        (t0, acked0, progress0), (t1, acked1, progress1) = self._samples[0], self._samples[-1]
        elapsed = t1 - t0
        if elapsed < 1.0:
            return {"rate": None, "seconds_left": None}
        pace = (progress1 - progress0) / elapsed
        left = (1.0 - progress1) / pace if pace > 0 else None
        return {
            "rate": round((acked1 - acked0) / elapsed, 1),
            "seconds_left": None if left is None else round(left),
        }

    def _cameras(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """Per camera: who it sees now, sightings in the last hour, checkpoint and lag."""
        checkpoints: Mapping[str, Any] = status.get("cameras") or {}
        since = _minute(_utc(self.clock() - HOUR))
        last_hour = dict.fromkeys(self.in_view, 0)
        for (camera, minute), count in self.minutes.items():
            if minute > since:
                last_hour[camera] = last_hour.get(camera, 0) + count
        cameras = {}
        for camera in sorted(set(self.in_view) | set(checkpoints) | set(last_hour)):
            checkpoint = checkpoints.get(camera) or {}
            cameras[camera] = {
                "in_view": self.in_view.get(camera, []),
                "last_hour": last_hour.get(camera, 0),
                "position": checkpoint.get("position"),
                "lag_seconds": checkpoint.get("lag_seconds"),
            }
        return cameras

    def _chart(self) -> dict[str, Any]:
        """Sightings per hour per camera over the last HOURS hours (up to the current hour, or
        the newest hour with sightings when the API's clock runs ahead)."""
        current = int(self.clock() // HOUR) * HOUR
        newest = max((minute for _, minute in self.minutes), default="")
        if newest[:13] > _hour_text(current):
            current = int(parse_rfc3339(newest[:13] + ":00:00Z").timestamp())
        hours = [current - HOUR * back for back in range(HOURS - 1, -1, -1)]
        index = {_hour_text(hour): i for i, hour in enumerate(hours)}
        series = {camera: [0] * HOURS for camera in sorted(self.in_view)}
        for (camera, minute), count in self.minutes.items():
            slot = index.get(minute[:13])
            if slot is not None:
                series.setdefault(camera, [0] * HOURS)[slot] += count
        return {"hours": [_utc(hour) for hour in hours], "cameras": series}

    def _prune(self) -> None:
        self._floor = _utc(self.clock() - (HOURS + 1) * HOUR)
        floor = _minute(self._floor)
        for key in [key for key in self.minutes if key[1] < floor]:
            del self.minutes[key]

    def _person(self, name: str) -> dict[str, Any]:
        person = self.whereabouts.person(name)
        return {
            "name": name,
            "home": person.home,
            "cameras": sorted(person.cameras),
            "camera": person.camera,
            "seen_at": None if person.seen_at is None else seen_at_text(person.seen_at),
        }

    @staticmethod
    def _sighting(sighting: Sighting) -> dict[str, Any]:
        return {
            "seq": sighting.seq,
            "camera": sighting.camera,
            "person": sighting.person,
            "seen_at": sighting.seen_at,
        }
