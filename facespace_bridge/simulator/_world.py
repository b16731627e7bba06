"""The simulated world: cameras, people, visits and a clock — deterministic from a seed.

A visit is (camera, person, start, end): it gives one history entry at its start and
presence in `/recognition` while it lasts. Visits are generated lazily per bucket
(one camera, one UTC hour) from an RNG seeded by (seed, camera, hour), so the world
extends as the clock runs and any range costs only the buckets it touches. Generated
buckets are cached (LRU, bounded by entry count) together with their wire strings, so
serving a range is list slicing.

Times inside are integer epoch seconds (UTC); the public methods take and return
aware datetimes.
"""

from __future__ import annotations

import math
import random
import threading
import time
from array import array
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain
from operator import itemgetter
from typing import Any, cast

HOUR = 3600
MAX_VISIT_SECONDS = 1800  # presence lasts at most this long, so /recognition looks one bucket back
_FIRST_KEY = itemgetter(0)
_SAME_PERSON_SHARE = 0.04  # of visits that log their person twice in the same second
_EXTRA_SHARE = 0.16  # of visits that bring a second entry in the same second (incl. the above)
_COMPANION_SHARE = 0.5  # of visits the companion (WorldConfig.companion) shares the second of
_COMPANION_TWICE = 0.2  # of those, where the companion is logged twice in that second
# Visit lengths: exponential quantiles (mean about two minutes), at least 5 s, capped.
_DURATIONS = tuple(
    min(MAX_VISIT_SECONDS, 5 + int(-120 * math.log(1 - (i + 0.5) / 1024))) for i in range(1024)
)

# Shown first so that every world, however small, has names with spaces and unicode.
_SHOWCASE_PEOPLE = (
    "Zoë Ångström",
    "Mary Ann Smith",
    "José María García",
    "Siobhán O'Neill",
    "Łukasz Żółkiewski",
    "Nguyễn Văn An",
    "Björk",
    "Jean-Luc Picard",
)
_FIRST_NAMES = (
    "Alice",
    "Bob",
    "Charlie",
    "Dana",
    "Eve",
    "Frank",
    "Grace",
    "Heidi",
    "Ivan",
    "Judy",
    "Mallory",
    "Niaj",
    "Olivia",
    "Peggy",
    "Rupert",
    "Sybil",
    "Trent",
    "Victor",
    "Walter",
    "Amélie",
    "Søren",
    "Chloé",
    "Håkon",
    "Ingrid",
    "Mei",
    "Yusuf",
    "Aiko",
    "Émile",
    "Noor",
)
_LAST_NAMES = (
    "Smith",
    "Jones",
    "Müller",
    "Dubois",
    "Rossi",
    "Kowalski",
    "Tanaka",
    "Okafor",
    "Silva",
    "Novák",
    "Ørsted",
    "Van der Berg",
    "de la Cruz",
    "Ó Briain",
    "Fernández",
    "Lindqvist",
)
# Only with odd_names: names and camera ids that stress parsers and topic sanitisers.
_ODD_PEOPLE = ("Ann @ Reception", "Dr. Who/Where", "Plus+Hash#Name", "李小龍")
_ODD_CAMERAS = ("Lobby/East", "Door #2", "Gate+3")

# "MM:SS" for every second of an hour: wire strings are built without strftime (fast path).
_MMSS = tuple(f"{s // 60:02d}:{s % 60:02d}" for s in range(HOUR))


def to_epoch(moment: datetime) -> float:
    """Epoch seconds of a datetime; naive means UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _hour_suffixes(hour: int) -> tuple[str, str]:
    """("HH", "DD/MM/YY") of an epoch hour, for building `Name @ HH:MM:SS DD/MM/YY`."""
    tm = time.gmtime(hour * HOUR)
    return f"{tm.tm_hour:02d}", f"{tm.tm_mday:02d}/{tm.tm_mon:02d}/{tm.tm_year % 100:02d}"


def wire_entry(person: str, seconds: int) -> str:
    """The wire form of an entry, equal to `client.entries.format_entry` (tested) but cheaper."""
    hour = seconds // HOUR
    hh, date = _hour_suffixes(hour)
    return f"{person} @ {hh}:{_MMSS[seconds - hour * HOUR]} {date}"


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """What a world is made of. The same config (and `now`) always gives the same world."""

    seed: int = 0
    cameras: int = 4  # Camera1..CameraN
    camera_ids: tuple[str, ...] | None = None  # explicit camera ids instead of Camera1..N
    people: int = 20
    history_hours: float = 24.0
    visits_per_hour: float = 60.0  # per camera
    now: datetime | None = None  # start of the simulated clock; None = the real time
    speed: float = 1.0  # simulated seconds per real second; 0 freezes the clock
    odd_names: bool = False  # add people and cameras with '@', '/', '+', '#' in their names
    # A person seen on every camera, in the same second as half of everyone else's visits
    # (before or after them, sometimes twice), with a random stream of their own: everyone
    # else's visits are the same with or without them. For testing filters against the truth.
    companion: str | None = None
    cache_entries: int = 3_000_000  # bound of the bucket cache, in entries

    def __post_init__(self) -> None:
        if self.camera_ids is not None:
            ids = tuple(self.camera_ids)
            object.__setattr__(self, "camera_ids", ids)  # a list given by a caller: keep it hashable
            if not ids or len(set(ids)) != len(ids) or not all(isinstance(c, str) and c for c in ids):
                raise ValueError("camera_ids must be distinct non-empty strings")
        checks = [
            (self.cameras >= 1, "cameras must be at least 1"),
            (self.people >= 1, "people must be at least 1"),
            (self.history_hours >= 0, "history_hours must not be negative"),
            (self.visits_per_hour >= 0, "visits_per_hour must not be negative"),
            (self.speed >= 0, "speed must not be negative"),
            (self.cache_entries >= 0, "cache_entries must not be negative"),
            (
                self.companion is None or (bool(self.companion) and self.companion == self.companion.strip()),
                "companion must be non-empty without leading or trailing spaces",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class SimClock:
    """Simulated time: `start` at creation, running at `speed` simulated seconds per real second."""

    def __init__(self, start: float, speed: float) -> None:
        self._lock = threading.Lock()
        self._anchor_sim = start
        self._anchor_real = time.monotonic()
        self._speed = speed

    @property
    def speed(self) -> float:
        return self._speed

    def now(self) -> float:
        with self._lock:  # the three anchors change together in `set`
            return self._anchor_sim + (time.monotonic() - self._anchor_real) * self._speed

    def set(self, *, now: float | None = None, speed: float | None = None, advance: float = 0.0) -> None:
        """Re-anchor: jump to `now`, change `speed`, and/or move forward by `advance` seconds."""
        if speed is not None and speed < 0:
            raise ValueError("speed must not be negative")
        with self._lock:
            real = time.monotonic()
            current = self._anchor_sim + (real - self._anchor_real) * self._speed
            self._anchor_sim = (now if now is not None else current) + advance
            self._anchor_real = real
            if speed is not None:
                self._speed = speed


@dataclass(slots=True)
class _Bucket:
    """One camera's hour: entries in wire order and the visits behind them."""

    stamps: array  # epoch second of each entry, non-decreasing (bisect for range bounds)
    wire: list[object]  # what /logs sends: strings, or stored malformed values
    names: list[str | None]  # the person of each entry; None marks a stored malformed value
    visit_starts: array  # start of each generated visit, sorted
    visits: list[tuple[int, int, str]]  # (start, end, person)

    def insert(self, seconds: int, wire: object, name: str | None) -> None:
        # After the entries already in that second: a late entry comes last in its second.
        index = bisect_right(self.stamps, seconds)
        self.stamps.insert(index, seconds)
        self.wire.insert(index, wire)
        self.names.insert(index, name)


@dataclass(frozen=True, slots=True)
class StoredMalformed:
    """A malformed value stored in the world (served by /logs, never part of the truth)."""

    camera_id: str
    seen_at: datetime
    value: object


@dataclass(slots=True)
class _Overlay:
    """Late inserts and stored malformed values of one bucket, re-applied when it is regenerated."""

    items: list[tuple[int, object, str | None]] = field(default_factory=list)


class World:
    """Ground truth and the data behind the HTTP app. Thread-safe: tests query it in-process
    while the server's thread serves it."""

    def __init__(self, config: WorldConfig | None = None) -> None:
        self.config = config = config or WorldConfig()
        start = to_epoch(config.now) if config.now is not None else time.time()
        self.clock = SimClock(start, config.speed)
        self.origin = int(start - config.history_hours * HOUR)  # nothing generated before this
        if config.camera_ids is not None:
            self._cameras = list(config.camera_ids)
        else:
            self._cameras = [f"Camera{i}" for i in range(1, config.cameras + 1)]
        if config.odd_names:
            self._cameras += _ODD_CAMERAS
        self._camera_set = frozenset(self._cameras)
        self._people = _make_people(config.seed, config.people, config.odd_names)
        if config.companion is not None and config.companion in self._people:
            raise ValueError(f"the companion {config.companion!r} is one of the world's people already")
        self._lock = threading.RLock()
        self._cache: OrderedDict[tuple[str, int], _Bucket] = OrderedDict()
        self._cached_entries = 0
        self._overlays: dict[tuple[str, int], _Overlay] = {}
        self._malformed: list[StoredMalformed] = []

    # -- what the world holds -------------------------------------------------------------

    def cameras(self) -> list[str]:
        return list(self._cameras)

    def people(self) -> list[str]:
        companion = [self.config.companion] if self.config.companion is not None else []
        return [*self._people, *companion]

    def has_camera(self, camera_id: str) -> bool:
        return camera_id in self._camera_set

    def now(self) -> datetime:
        """The simulated now (aware UTC)."""
        return from_epoch(self.clock.now())

    def visible_until(self) -> int:
        """The last epoch second whose entries are visible (the simulated now, floored)."""
        return int(self.clock.now() // 1)

    # -- clock ----------------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.clock.set(advance=seconds)

    def set_speed(self, speed: float) -> None:
        self.clock.set(speed=speed)

    def freeze(self) -> None:
        self.clock.set(speed=0.0)

    # -- ground truth ---------------------------------------------------------------------

    def entries(
        self, start: datetime | None = None, end: datetime | None = None, camera_id: str | None = None
    ) -> Iterator[tuple[str, str, datetime]]:
        """Ground-truth sightings `(camera_id, person, seen_at)` with start <= seen_at <= end
        (seconds; end defaults to, and is capped at, the simulated now): camera by camera
        in `cameras()` order, each in /logs order. Malformed values are not included."""
        lo, hi = self._bounds(start, end)
        stamp_cache: dict[int, datetime] = {}
        for camera in self._select(camera_id):
            for stamps, names in self._slices(camera, lo, hi, want_names=True):
                for seconds, name in zip(stamps, names, strict=True):
                    if name is None:
                        continue
                    seen_at = stamp_cache.get(seconds)
                    if seen_at is None:
                        seen_at = stamp_cache[seconds] = from_epoch(seconds)
                    yield camera, name, seen_at

    def count(
        self, start: datetime | None = None, end: datetime | None = None, camera_id: str | None = None
    ) -> int:
        """How many ground-truth entries `entries(...)` would give, without building them."""
        lo, hi = self._bounds(start, end)
        total = 0
        for camera in self._select(camera_id):
            for _stamps, names in self._slices(camera, lo, hi, want_names=True):
                total += len(names) - names.count(None)
        return total

    def present(self, at: datetime | None = None) -> dict[str, list[str]]:
        """Who each camera sees at `at` (default now): distinct names in order of arrival."""
        moment = int(to_epoch(at) // 1) if at is not None else self.visible_until()
        reply: dict[str, list[str]] = {}
        for camera in self._cameras:
            here: dict[str, None] = {}
            hour = moment // HOUR
            for h in (hour - 1, hour):
                if (h + 1) * HOUR <= self.origin:
                    continue
                bucket = self._bucket(camera, h)
                # Visits started at most MAX_VISIT_SECONDS ago can still be going on.
                first = bisect_left(bucket.visit_starts, moment - MAX_VISIT_SECONDS)
                last = bisect_right(bucket.visit_starts, moment)
                for start, end, person in bucket.visits[first:last]:
                    if start <= moment < end:
                        here[person] = None
            reply[camera] = list(here)
        return reply

    def malformed(self) -> list[StoredMalformed]:
        """Malformed values stored with `insert_malformed` (served by /logs, not truth)."""
        with self._lock:
            return list(self._malformed)

    # -- changes at run time --------------------------------------------------------------

    def insert(self, camera_id: str, person: str, seen_at: datetime | None = None) -> datetime:
        """A late insert: a sighting stored now, possibly with a past timestamp. It becomes part
        of /logs and of the truth. Returns its timestamp (whole seconds)."""
        if not person or person != person.strip():
            raise ValueError("person must be non-empty without leading or trailing spaces")
        seconds = self._insert_seconds(camera_id, seen_at)
        self._store(camera_id, seconds, wire_entry(person, seconds), person)
        return from_epoch(seconds)

    def insert_malformed(self, camera_id: str, value: object, seen_at: datetime | None = None) -> datetime:
        """Store a malformed value that /logs serves among the entries of `seen_at`'s second."""
        seconds = self._insert_seconds(camera_id, seen_at)
        self._store(camera_id, seconds, value, None)
        with self._lock:
            self._malformed.append(StoredMalformed(camera_id, from_epoch(seconds), value))
        return from_epoch(seconds)

    # -- serving --------------------------------------------------------------------------

    def wire_range(self, camera_id: str, lo: int, hi: int) -> list[object]:
        """What /logs sends for one camera over [lo, hi] (epoch seconds, already capped at now)."""
        parts = [wire for wire, _ in self._slices(camera_id, lo, hi, want_names=False)]
        if len(parts) == 1:
            return cast("list[object]", parts[0])  # already a fresh slice of the bucket
        return list(chain.from_iterable(parts))

    # -- internals ------------------------------------------------------------------------

    def _select(self, camera_id: str | None) -> list[str]:
        if camera_id is None:
            return self._cameras
        return [camera_id] if camera_id in self._camera_set else []

    def _bounds(self, start: datetime | None, end: datetime | None) -> tuple[int, int]:
        lo = int(to_epoch(start) // 1) if start is not None else -(2**62)
        now = self.visible_until()
        hi = min(int(to_epoch(end) // 1), now) if end is not None else now
        return lo, hi

    def _first_hour(self, camera_id: str) -> int:
        # Late inserts may sit before the origin; generated entries never do.
        first = self.origin // HOUR
        with self._lock:
            for camera, hour in self._overlays:
                if camera == camera_id and hour < first:
                    first = hour
        return first

    def _slices(
        self, camera_id: str, lo: int, hi: int, *, want_names: bool
    ) -> Iterator[tuple[Sequence[Any], list[str | None]]]:
        """Per bucket, for entries with lo <= t <= hi: (stamps, names) slices when `want_names`,
        else (wire, [])."""
        if lo > hi:
            return
        first = max(lo // HOUR, self._first_hour(camera_id))
        for hour in range(first, hi // HOUR + 1):
            with self._lock:  # a late insert must not shift the lists between bisect and slice
                bucket = self._bucket(camera_id, hour)
                stamps = bucket.stamps
                if not stamps:
                    continue
                a = 0 if stamps[0] >= lo else bisect_left(stamps, lo)
                b = len(stamps) if stamps[-1] <= hi else bisect_right(stamps, hi)
                if a >= b:
                    continue
                part = (stamps[a:b], bucket.names[a:b]) if want_names else (bucket.wire[a:b], [])
            yield part

    def _bucket(self, camera_id: str, hour: int) -> _Bucket:
        key = (camera_id, hour)
        with self._lock:
            bucket = self._cache.get(key)
            if bucket is not None:
                self._cache.move_to_end(key)
                return bucket
            bucket = self._generate(camera_id, hour)
            overlay = self._overlays.get(key)
            if overlay is not None:
                for seconds, wire, name in overlay.items:
                    bucket.insert(seconds, wire, name)
            self._cache[key] = bucket
            self._cached_entries += len(bucket.stamps)
            while self._cached_entries > self.config.cache_entries and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cached_entries -= len(evicted.stamps)
            return bucket

    def _generate(self, camera_id: str, hour: int) -> _Bucket:
        config = self.config
        # A string seed is hashed with SHA-512 by `random`: stable across runs and processes.
        rand = random.Random(f"{config.seed}|{camera_id}|{hour}").random
        people = self._people
        n_people = len(people)
        base = hour * HOUR
        # Whole-list comprehensions, not a loop of appends: generation is what a cold range costs.
        primary = int(config.visits_per_hour / (1 + _EXTRA_SHARE) + rand())
        starts = [base + int(rand() * HOUR) for _ in range(primary)]
        persons = [people[int(n_people * rand() ** 1.5)] for _ in range(primary)]  # some come more often
        lengths = [_DURATIONS[int(rand() * len(_DURATIONS))] for _ in range(primary)]
        visits = [(s, s + d, p) for s, d, p in zip(starts, lengths, persons, strict=True)]
        for index, roll in enumerate([rand() for _ in range(primary)]):
            if roll < _SAME_PERSON_SHARE:
                # Real logs hold the same person twice in one second (two detections).
                visits.append(visits[index])
            elif roll < _EXTRA_SHARE and n_people > 1:
                # Several people arriving in the same second.
                start, end, person = visits[index]
                other = people[int(n_people * rand())]
                if other != person:
                    visits.append((start, min(start + MAX_VISIT_SECONDS, end + int(rand() * 60)), other))
        visits.sort(key=_FIRST_KEY)  # stable: generation order inside a second
        if base < self.origin:
            visits = [v for v in visits if v[0] >= self.origin]
        if config.companion is not None:
            visits = self._with_companion(visits, camera_id, hour, config.companion)
        visit_starts = array("q", [v[0] for v in visits])
        hh, date = _hour_suffixes(hour)
        mmss = _MMSS
        wire: list[object] = [f"{person} @ {hh}:{mmss[start - base]} {date}" for start, _, person in visits]
        names: list[str | None] = [person for _, _, person in visits]
        return _Bucket(array("q", visit_starts), wire, names, visit_starts, visits)

    def _with_companion(
        self, visits: list[tuple[int, int, str]], camera_id: str, hour: int, companion: str
    ) -> list[tuple[int, int, str]]:
        """`visits` (sorted) with the companion beside some of them, in the same second; drawn
        from a stream of its own, so that everyone else's visits are what they are without it."""
        rand = random.Random(f"{self.config.seed}|{camera_id}|{hour}|companion").random
        out: list[tuple[int, int, str]] = []
        for visit in visits:
            roll = rand()
            if roll >= _COMPANION_SHARE:
                out.append(visit)
                continue
            theirs = (visit[0], visit[1], companion)
            times = 2 if roll < _COMPANION_SHARE * _COMPANION_TWICE else 1
            if rand() < 0.5:
                out += [theirs] * times + [visit]
            else:
                out += [visit] + [theirs] * times
        return out

    def _insert_seconds(self, camera_id: str, seen_at: datetime | None) -> int:
        if camera_id not in self._camera_set:
            raise ValueError(f"unknown camera {camera_id!r}")
        return int(to_epoch(seen_at) // 1) if seen_at is not None else self.visible_until()

    def _store(self, camera_id: str, seconds: int, wire: object, name: str | None) -> None:
        key = (camera_id, seconds // HOUR)
        with self._lock:
            self._overlays.setdefault(key, _Overlay()).items.append((seconds, wire, name))
            bucket = self._cache.get(key)
            if bucket is not None:
                bucket.insert(seconds, wire, name)
                self._cached_entries += 1


def _make_people(seed: int, count: int, odd_names: bool) -> list[str]:
    """`count` distinct names (showcase names first, then seeded first/last combinations),
    plus the odd names on top when asked."""
    pool = list(_SHOWCASE_PEOPLE[:count])
    rng = random.Random(f"{seed}|people")
    seen = set(pool) | set(_ODD_PEOPLE)
    attempts = 0
    while len(pool) < count:
        attempts += 1
        name = f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}"
        if attempts > 20 * len(_FIRST_NAMES) * len(_LAST_NAMES):
            name = f"{name} {len(pool)}"  # more people than combinations: number them
        if name not in seen:
            seen.add(name)
            pool.append(name)
    return [*_ODD_PEOPLE, *pool] if odd_names else pool
