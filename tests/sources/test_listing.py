"""Numbering a listing: k for ids, positions for the checkpoint, resume and tail memory.

`number_listing` is the one implementation replay, backfill and tail use; here it is checked
against the rules written plainly, one entry at a time, on random listings in any order.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from facespace_bridge.checkpoints import Checkpoint, Position
from facespace_bridge.client import BadEntry, parse_entry
from facespace_bridge.events import deadletter_event, sighting_event
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.sources.listing import TailMemory, number_listing

T = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)


def raw(person: str, at: datetime = T) -> str:
    return f"{person} @ {at:%H:%M:%S %d/%m/%y}"


def events_of(reply: dict[str, Any], **kwargs: Any) -> list:
    return [event for batch in number_listing(reply, None, None, **kwargs) for event in batch.events]


def expected_id(camera: str, person: str, seen_at: str, k: int) -> str:
    text = orjson.dumps(["sighting", camera, person, seen_at, k])
    return hashlib.sha256(text).hexdigest()[:32]


def test_k_counts_identical_entries_in_the_same_second() -> None:
    later = T + timedelta(seconds=1)
    reply = {
        "Camera1": [raw("A"), raw("A"), raw("B"), raw("A"), raw("A", later), raw("A")],
        "Camera2": [raw("A")],
    }
    ids = [e.event_id for e in events_of(reply)]
    stamp, stamp2 = "2023-10-23T00:05:22Z", "2023-10-23T00:05:23Z"
    assert ids == [
        expected_id("Camera1", "A", stamp, 0),
        expected_id("Camera1", "A", stamp, 1),
        expected_id("Camera1", "B", stamp, 0),
        expected_id("Camera1", "A", stamp, 2),
        expected_id("Camera1", "A", stamp2, 0),
        expected_id("Camera1", "A", stamp, 3),  # the second came back: counts go on
        expected_id("Camera2", "A", stamp, 0),
    ]


def test_a_reread_gives_the_same_ids_and_bytes() -> None:
    reply = {"Camera1": [raw("A"), raw("A"), raw("B"), "garbage", raw("A")]}
    first, again = events_of(reply), events_of(reply)
    assert [e.payload for e in first] == [e.payload for e in again]
    assert [e.kind for e in first] == ["sighting", "sighting", "sighting", "deadletter", "sighting"]
    assert len({e.event_id for e in first}) == 5


def test_batches_carry_each_cameras_last_position() -> None:
    reply = {"A": [raw("P"), raw("Q"), raw("P", T + timedelta(seconds=1))], "B": [raw("P")]}
    batches = list(number_listing(reply, None, None, batch_events=2))
    assert [len(b.events) for b in batches] == [2, 2]
    assert batches[0].positions == {"A": (T, 2)}
    assert batches[1].positions == {"A": (T + timedelta(seconds=1), 1), "B": (T, 1)}


# -- the reference: the rules one entry at a time --------------------------------------------------


def reference(
    reply: dict[str, Any], start: datetime | None, end: datetime | None, resume: Checkpoint | None
) -> list[tuple[str, tuple[datetime, int] | None]]:
    """(event id, position) of every event, as the rules say, one entry at a time."""
    out: list[tuple[str, tuple[datetime, int] | None]] = []
    for camera, raws in reply.items():
        floor = resume.position(camera) if resume is not None else None
        if not isinstance(raws, list):
            why = f"camera's entries are a {type(raws).__name__}, not a list"
            out.append((deadletter_event(camera, raws, why, "logs").event_id, None))
            continue
        k_counts: Counter[tuple[str, datetime]] = Counter()
        n_counts: Counter[datetime] = Counter()
        last: tuple[datetime, int] | None = None  # latest numbered entry
        for text in raws:
            entry = parse_entry(camera, text)
            if isinstance(entry, BadEntry):
                if last is None or floor is None or last >= floor:
                    out.append((deadletter_event(camera, entry.raw, entry.reason, "logs").event_id, None))
                continue
            if (start is not None and entry.seen_at < start) or (end is not None and entry.seen_at >= end):
                continue
            k = k_counts[entry.person, entry.seen_at]
            k_counts[entry.person, entry.seen_at] += 1
            n_counts[entry.seen_at] += 1
            last = (entry.seen_at, n_counts[entry.seen_at])
            if floor is None or last > floor:
                out.append((sighting_event(entry, k).event_id, last))
    return out


def random_reply(rng: random.Random) -> dict[str, Any]:
    junk = [
        "garbage",
        "",
        5,
        None,
        "Al@10:00:01 01/02/23",
        "  Al  @ 00:05:23 23/10/23",
        " @ 00:05:22 23/10/23",
    ]
    reply: dict[str, Any] = {}
    for camera in "ABC":
        raws: list[Any] = []
        for _ in range(rng.randrange(0, 40)):
            if rng.random() < 0.1:
                raws.append(rng.choice(junk))
                continue
            at = T + timedelta(seconds=rng.randrange(6))
            raws += [raw(rng.choice(["Al", "Bo", "Zoë"]), at)] * rng.randrange(1, 4)
        if rng.random() < 0.5:  # the usual shape: in time order
            raws.sort(key=lambda r: r[-17:] if isinstance(r, str) else "")
        reply[camera] = raws
    if rng.random() < 0.05:
        reply["D"] = "not a list"
    return reply


def test_numbering_follows_the_rules_in_any_order() -> None:
    rng = random.Random(5)
    for trial in range(400):
        reply = random_reply(rng)
        start = T + timedelta(seconds=rng.randrange(-1, 3)) if rng.random() < 0.3 else None
        end = T + timedelta(seconds=rng.randrange(2, 7)) if rng.random() < 0.3 else None
        resume = None
        if trial % 2:
            cameras = {
                c: Position(T + timedelta(seconds=rng.randrange(-1, 7)), rng.randrange(3)) for c in "AB"
            }
            through = T + timedelta(seconds=rng.randrange(-1, 3)) if trial % 4 == 1 else None
            resume = Checkpoint(cameras=cameras, through=through)
        batches = list(number_listing(reply, start, end, resume=resume, batch_events=rng.randrange(1, 30)))
        expected = reference(reply, start, end, resume)
        assert [e.event_id for b in batches for e in b.events] == [i for i, _ in expected], trial
        # Each batch completes, per camera, the position of its last sighting of that camera.
        at = 0
        for batch in batches:
            mine = expected[at : at + len(batch.events)]
            at += len(batch.events)
            last: dict[str, tuple[datetime, int]] = {}
            for event, (_, position) in zip(batch.events, mine, strict=True):
                if position is not None:
                    last[event.camera_id] = position
            assert batch.positions == last, trial


def test_the_tail_memory_skips_what_it_handed_over_and_keeps_numbers() -> None:
    memory = TailMemory()
    first = {"A": [raw("Al"), raw("Bo"), "junk"]}
    assert [e.kind for e in events_of(first, memory=memory)] == ["sighting", "sighting", "deadletter"]
    memory.full_poll_done()
    # The next poll re-reads the window with a late insert and a second Al in the same second.
    later = {"A": [raw("Cy"), raw("Al"), raw("Bo"), raw("Al"), "junk"]}
    again = events_of(later, memory=memory)
    assert [e.fields["person"] for e in again] == ["Cy", "Al"]
    assert again[1].event_id == expected_id("A", "Al", "2023-10-23T00:05:22Z", 1)


def test_the_first_tail_poll_remembers_what_resume_skips() -> None:
    memory = TailMemory()
    resume = Checkpoint(cameras={"A": Position(T, 1)})
    assert [
        e.fields["person"] for e in events_of({"A": [raw("Al"), raw("Bo")]}, resume=resume, memory=memory)
    ] == ["Bo"]
    memory.full_poll_done()
    assert events_of({"A": [raw("Al"), raw("Bo")]}, memory=memory) == []


def test_a_quick_poll_leaves_dead_letters_to_the_full_poll() -> None:
    memory = TailMemory()
    memory.quick = True
    assert [e.kind for e in events_of({"A": [raw("Al"), "junk"]}, memory=memory)] == ["sighting"]
    memory.quick = False
    assert [e.kind for e in events_of({"A": [raw("Al"), "junk"]}, memory=memory)] == ["deadletter"]


# -- filters (privacy/filters.py) -------------------------------------------------------------------


def last_positions(batches: list) -> dict[str, tuple[datetime, int]]:
    out: dict[str, tuple[datetime, int]] = {}
    for batch in batches:
        out.update(batch.positions)
    return out


def test_a_filter_leaves_everyone_elses_ids_and_the_positions_as_they_are() -> None:
    """Left out: camera C, and Zoë (sent decomposed, excluded composed). Everyone else's events
    are the same, with the same ids, and each camera's last position is the same as without the
    filter: the checkpoint moves past what was left out."""
    rng = random.Random(21)
    zoe_nfd = "Zoe\u0308"
    for trial in range(400):
        reply = random_reply(rng)
        for raws in reply.values():
            if isinstance(raws, list):
                for index, text in enumerate(raws):
                    if isinstance(text, str) and text.startswith("Zoë"):
                        raws[index] = zoe_nfd + text[3:]
                if rng.random() < 0.3:
                    raws.insert(rng.randrange(len(raws) + 1), f"{zoe_nfd} @ 99:99:99 junk")
        start = T + timedelta(seconds=rng.randrange(-1, 3)) if rng.random() < 0.3 else None
        resume = None
        if trial % 2:
            cameras = {
                c: Position(T + timedelta(seconds=rng.randrange(-1, 7)), rng.randrange(3)) for c in "AB"
            }
            resume = Checkpoint(cameras=cameras)
        size = rng.randrange(1, 30)
        everything = list(number_listing(reply, start, None, resume=resume, batch_events=size))
        entry_filter = EntryFilter(exclude_cameras=["C"], exclude_people=["Zoë"])
        kept = list(
            number_listing(reply, start, None, resume=resume, batch_events=size, entry_filter=entry_filter)
        )

        def named_zoe(event: Any) -> bool:
            text = event.person if event.kind == "sighting" else str(event.fields.get("raw"))
            return "Zoe\u0308" in (text or "")

        left_out = [e for b in everything for e in b.events if e.camera_id == "C" or named_zoe(e)]
        assert [e.event_id for b in kept for e in b.events] == [
            e.event_id for b in everything for e in b.events if e not in left_out
        ], trial
        assert not any(named_zoe(e) for b in kept for e in b.events)
        expected_positions = {c: p for c, p in last_positions(everything).items() if c != "C"}
        assert last_positions(kept) == expected_positions, trial
        assert entry_filter.counts["person"] == sum(e.camera_id != "C" for e in left_out), trial
        assert entry_filter.counts["camera"] == len(reply["C"]), trial


def test_entries_left_out_at_the_end_still_move_the_position() -> None:
    entry_filter = EntryFilter(exclude_people=["Zoë"])
    batches = list(
        number_listing({"A": [raw("Al"), raw("Zoë"), raw("Zoë")]}, None, None, entry_filter=entry_filter)
    )
    assert [[e.person for e in b.events] for b in batches] == [["Al"]]
    assert batches[0].positions == {"A": (T, 3)}
    only_left_out = list(number_listing({"A": [raw("Zoë")]}, None, None, entry_filter=entry_filter))
    assert [(b.events, b.positions) for b in only_left_out] == [([], {"A": (T, 1)})]


def test_the_tail_moves_past_an_entry_left_out_once() -> None:
    entry_filter = EntryFilter(exclude_people=["Zoë"])
    memory = TailMemory()
    reply = {"A": [raw("Al"), raw("Zoë")]}
    first = list(number_listing(reply, None, None, memory=memory, entry_filter=entry_filter))
    assert first[0].positions == {"A": (T, 2)}
    memory.full_poll_done()
    assert list(number_listing(reply, None, None, memory=memory, entry_filter=entry_filter)) == []
    assert entry_filter.counts["person"] == 1
