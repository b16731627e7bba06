"""Each person's whereabouts: home or away, where and when they were last seen.

A person is `home` while any camera sees them (presence, debounced by the realtime source's
presence timeout) and until `away_after` seconds after they were last seen (by presence or by
a sighting), `not_home` after that. A timer per person turns `home` into `not_home` when that
time comes, so the state changes even when nothing else happens.

The state is a `facespace.whereabouts/v1` document (schemas/whereabouts/v1.json), made here
and handed to `on_change` whenever it differs from the last one: Home Assistant's device
tracker (sinks/mqtt/homeassistant.py) retains it on the person's tracker topic, the web page
(web/) shows it. Each reader keeps its own `Whereabouts`, fed with the events it sees.

Not thread-safe; the timers run on the asyncio loop that is running when they are set.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from facespace_bridge.events import seen_at_text

WHEREABOUTS_SCHEMA = "facespace.whereabouts/v1"
# Under --pseudonymize: the names are pseudonyms and the document says so (docs/privacy.md).
PSEUDONYMOUS_WHEREABOUTS_SCHEMA = "facespace.whereabouts/v2"
HOME, NOT_HOME = "home", "not_home"


@dataclass
class Person:
    """What is known of one person's whereabouts."""

    name: str
    cameras: set[str] = field(default_factory=set)  # cameras that see the person now
    camera: str | None = None  # the last camera that saw them
    seen_at: datetime | None = None  # when they were last seen (UTC, seconds)
    seen_ts: float = float("-inf")  # the same as a POSIX time, never later than the clock then
    home: bool = False
    document: bytes | None = None  # the last state handed to `on_change`
    timer: asyncio.TimerHandle | None = None


class Whereabouts:
    """Every person's whereabouts; `on_change(person, document)` hears each new state."""

    def __init__(
        self,
        away_after: float,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[str, bytes], None] | None = None,
        pseudonymous: bool = False,
    ) -> None:
        self.away_after = away_after
        # The names it is given are pseudonyms: `facespace.whereabouts/v2`, `"pseudonymous": true`.
        self.pseudonymous = pseudonymous
        self.clock = clock
        self.on_change = on_change
        self._people: dict[str, Person] = {}

    def __contains__(self, person: object) -> bool:
        return person in self._people

    def __iter__(self) -> Iterator[Person]:
        return iter(self._people.values())

    def __len__(self) -> int:
        return len(self._people)

    def person(self, name: str) -> Person:
        """The person's record (created, unseen and away, the first time)."""
        found = self._people.get(name)
        if found is None:
            found = self._people[name] = Person(name)
        return found

    # -- what happened ----------------------------------------------------------------------------

    def seen(self, name: str, camera_id: str, seen_at: datetime) -> bool:
        """Note a sighting (or a presence) of `name`; True if it is newer than what was known.
        The state is not recomputed: call `update` (or use `sighting`)."""
        person = self.person(name)
        if person.seen_at is not None and seen_at <= person.seen_at:
            return False
        person.seen_at, person.camera = seen_at, camera_id
        # Not later than now: an API whose clock runs ahead must not keep someone home longer.
        person.seen_ts = min(seen_at.timestamp(), self.clock())
        return True

    def sighting(self, name: str, camera_id: str, seen_at: datetime) -> None:
        """A sighting: noted, and the state updated if it is the newest."""
        if self.seen(name, camera_id, seen_at):
            self.update(name)

    def presence(self, camera_id: str, people: Iterable[str], observed_at: datetime) -> None:
        """Who `camera_id` sees now: they are in view there, everyone else is not."""
        in_view = set(people)
        for name in in_view | {p.name for p in self._people.values() if camera_id in p.cameras}:
            self.seen(name, camera_id, observed_at)
            person = self._people[name]
            if name in in_view:
                person.cameras.add(camera_id)
            else:
                person.cameras.discard(camera_id)
            self.update(name)

    # -- the state --------------------------------------------------------------------------------

    def update(self, name: str) -> None:
        """Recompute the person's state, hand it to `on_change` if it changed, and set the timer
        that turns `home` into `not_home` once they have not been seen for `away_after`."""
        person = self.person(name)
        if person.timer is not None:
            person.timer.cancel()
            person.timer = None
        left = person.seen_ts + self.away_after - self.clock()
        person.home = bool(person.cameras) or left > 0
        if person.home and not person.cameras:
            person.timer = asyncio.get_running_loop().call_later(left, self.update, name)
        document = self.document(person)
        if document != person.document:
            person.document = document
            if self.on_change is not None:
                self.on_change(name, document)

    def document(self, person: Person) -> bytes:
        """The person's `facespace.whereabouts/v1` state (v2 when pseudonymous)."""
        fields: dict[str, object] = {
            "schema": PSEUDONYMOUS_WHEREABOUTS_SCHEMA if self.pseudonymous else WHEREABOUTS_SCHEMA,
            "person": person.name,
            "state": HOME if person.home else NOT_HOME,
            "cameras": sorted(person.cameras),
            "camera_id": person.camera,
            "seen_at": None if person.seen_at is None else seen_at_text(person.seen_at),
        }
        if self.pseudonymous:
            fields["pseudonymous"] = True
        return orjson.dumps(fields)

    def forget(self, name: str) -> None:
        """Drop `name` and their timer: no state of theirs is handed over again until they are
        seen again."""
        person = self._people.pop(name, None)
        if person is not None and person.timer is not None:
            person.timer.cancel()

    def close(self) -> None:
        """Cancel the timers (at shutdown)."""
        for person in self._people.values():
            if person.timer is not None:
                person.timer.cancel()
                person.timer = None
