"""One `/logs` listing into numbered events: the one implementation replay, backfill and tail use.

Each sighting gets two numbers (docs/architecture.md, "Contracts and where they live": event
id, position):

- `k`, how many identical (camera, person, second) entries came before it in the listing,
  which goes into its event id;
- its position `(second, n)`, the n-th entry of its camera at that second, which goes into
  the checkpoint once the sighting is acknowledged.

Windows are minute-aligned, so a second is never split between two listings and every
listing numbers its seconds afresh: a tail, a backfill and a replay give a sighting the
same id. A listing is sorted, so entries come in runs of one camera's second: what depends
on the second is looked up once per run, and an entry costs a split, a count, a hash and a
concatenation.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.client import BadEntry, format_entry, parse_entry
from facespace_bridge.client.entries import Second, read_listing
from facespace_bridge.events import SIGHTINGS, SightingPair, deadletter_event, unpublishable_sighting
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.sources.base import Batch

# Events per batch at most (a batch ends at the end of a run, so it may hold a few more).
# Sinks acknowledge a batch as a whole and the checkpoint moves per batch: small enough that
# the checkpoint follows closely, large enough that per-batch work is noise.
BATCH_EVENTS = 1000


class TailMemory:
    """What the tail remembers between polls of its look-back window: the sightings it handed
    over, by identity (person, k) per camera and second, and the previous poll's dead letters
    (junk stays in the window too, and must not be dead-lettered again)."""

    def __init__(self) -> None:
        self.handed: dict[str, dict[datetime, set[tuple[str, int]]]] = defaultdict(dict)
        self.bad_before: Counter[tuple[str, str]] = Counter()
        self.bad_now: Counter[tuple[str, str]] = Counter()
        # A quick poll (from the cameras' newest minute, for someone in view) leaves the dead
        # letters to the full polls, which count every bad entry in the whole window.
        self.quick = False

    def full_poll_done(self) -> None:
        self.bad_before, self.bad_now = self.bad_now, Counter()

    def forget_before(self, moment: datetime) -> None:
        """The window moved on: what lies before `moment` is never read again."""
        for seconds in self.handed.values():
            for second in [s for s in seconds if s < moment]:
                del seconds[second]

    def new_dead_letter(self, bad: BadEntry) -> bool:
        """Count a bad entry of this poll; True unless an earlier poll dead-lettered it already."""
        if self.quick:
            return False
        key = (bad.camera_id, repr(bad.raw))
        self.bad_now[key] += 1
        return self.bad_now[key] > self.bad_before[key]


def number_listing(
    reply: dict[str, Any],
    start: datetime | None,
    end: datetime | None,
    *,
    resume: Checkpoint | None = None,
    memory: TailMemory | None = None,
    newest: dict[str, datetime] | None = None,
    batch_events: int | None = None,
    entry_filter: EntryFilter | None = None,
) -> Iterator[Batch]:
    """The events of a listing's entries in `[start, end)`, in the API's order, in batches.

    `resume`: entries at or before their camera's resume position were published before and are
    skipped (numbered all the same, so the rest keep their numbers). `memory`: the tail's; a
    sighting it handed over before is skipped, the others are remembered. `newest` is updated
    with the latest second read per camera. A bad entry becomes a dead letter unless it sits
    before the resume position (after it, or with nothing to place it by: a repeat beats a loss).

    `entry_filter` (privacy/filters.py): a camera left out is skipped whole; an entry whose person
    is left out is numbered as ever (so everyone else's k and n, hence event ids and positions,
    are what they are without the filter) but builds nothing, and its position is recorded as if
    published, so the checkpoint moves past it; a malformed entry that names someone left out
    is dropped, not dead-lettered. Each is counted in the filter, never logged.

    The per-entry path of every backfill and replay: `client.entries.read_listing` splits the
    canonical form and gives each entry its cached `Second` (anything else goes through
    `parse_entry`), and what depends only on the camera or on the second is looked up once
    per camera or per second.
    """
    batch_events = batch_events or BATCH_EVENTS
    encoder = SIGHTINGS
    batch = Batch()
    events, positions = batch.events, batch.positions
    filtering = entry_filter if entry_filter is not None and entry_filter.active else None
    by_person = filtering if filtering is not None and filtering.by_person else None
    for camera, raws in reply.items():
        if filtering is not None and not filtering.camera_kept(camera):
            filtering.left_out("camera", len(raws) if isinstance(raws, list) else 1)
            continue
        floor = resume.position(camera) if resume is not None else None
        if not isinstance(raws, list):
            if by_person is not None and not by_person.raw_kept(raws):
                by_person.left_out("person")
                continue
            bad = BadEntry(camera, raws, f"camera's entries are a {type(raws).__name__}, not a list")
            if memory is None or memory.new_dead_letter(bad):
                events.append(deadletter_event(camera, bad.raw, bad.reason, "logs"))
            continue
        # Names numbered so far per second (by its text, whose hash is cheaper than an aware
        # datetime's): n is the length, k a count in it. A listing is sorted, so a second is
        # usually one run of entries; any order is numbered right.
        at_second: dict[str, list[str]] = {}
        pairs = encoder.pairs(camera)
        handed_by_second = memory.handed[camera] if memory is not None else None
        latest = newest.get(camera) if newest is not None else None
        moment: Second | None = None  # the current second's texts (one object per second read)
        second: datetime | None = None  # the current second, and what depends on it:
        names: list[str] = []  # names numbered at it
        keep = False  # it lies in [start, end)
        skip = 0  # its entries numbered up to `skip` are at or before the resume position
        handed: set[tuple[str, int]] | None = None
        numbered: tuple[datetime, int] | None = None  # position of the latest numbered entry
        published: datetime | None = None  # second and n of the latest published entry
        published_n = 0
        for raw, canonical in zip(raws, read_listing(raws), strict=True):
            if canonical is not None:
                name, entry_second = canonical
            else:
                entry = parse_entry(camera, raw)
                if type(entry) is BadEntry:
                    if second is not None and names:
                        numbered = (second, len(names))
                    # (counted by the memory first: the next poll must know it was seen here)
                    unseen = memory is None or memory.new_dead_letter(entry)
                    if unseen and (numbered is None or floor is None or numbered >= floor):
                        if by_person is not None and not by_person.raw_kept(entry.raw):
                            by_person.left_out("person")  # it names someone left out: dropped
                        else:
                            events.append(deadletter_event(camera, entry.raw, entry.reason, "logs"))
                    continue
                name, entry_second = entry.person, Second.of(entry.seen_at)
            if entry_second is not moment and entry_second.at != second:  # a new second
                if names:
                    numbered = (second, len(names))  # type: ignore[assignment]
                moment, second = entry_second, entry_second.at
                keep = (start is None or second >= start) and (end is None or second < end)
                names = at_second.setdefault(entry_second.text, [])
                if floor is None or second > floor[0]:
                    skip = 0
                elif second == floor[0]:
                    skip = floor[1]
                else:
                    skip = sys.maxsize  # all of it was published before
                if handed_by_second is not None:
                    handed = handed_by_second.get(second)
                    if handed is None:
                        handed = handed_by_second[second] = set()
                if newest is not None and (latest is None or second > latest):
                    latest = newest[camera] = second
            if not keep:
                continue
            k = names.count(name) if names else 0  # a second holds a handful of entries
            names.append(name)
            n = len(names)
            if handed is not None:  # (before the resume check: what it skips was handed over too)
                if (name, k) in handed:
                    continue
                handed.add((name, k))
            if n <= skip:
                continue
            if by_person is not None and not by_person.person_kept(name):
                by_person.left_out("person")
                published, published_n = second, n  # the checkpoint moves past it all the same
                continue
            pair = pairs.get(name) or encoder.pair(camera, name)
            if type(pair) is SightingPair:
                events.append(encoder.event(pair, moment, k))  # type: ignore[arg-type]
            else:
                events.append(unpublishable_sighting(camera, name, second, k, format_entry(name, second)))
            published, published_n = second, n
            if len(events) >= batch_events:
                positions[camera] = (published, n)
                yield batch
                batch = Batch()
                events, positions = batch.events, batch.positions
                published = None
        if published is not None:
            positions[camera] = (published, published_n)
    if events or positions:  # (positions alone: entries left out by a filter, to move past)
        yield batch
