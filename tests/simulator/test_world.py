"""The world in-process: determinism, the entries real logs have, clock, late inserts, presence."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from facespace_bridge.client.entries import format_entry, parse_entry
from facespace_bridge.simulator import World, WorldConfig
from facespace_bridge.simulator._world import MAX_VISIT_SECONDS, wire_entry

NOW = datetime(2023, 10, 25, tzinfo=timezone.utc)


def small(**changes: object) -> World:
    settings: dict[str, object] = {
        "seed": 3,
        "cameras": 3,
        "people": 12,
        "history_hours": 24.0,
        "visits_per_hour": 20.0,
        "now": NOW,
        "speed": 0.0,
    }
    settings.update(changes)
    return World(WorldConfig(**settings))  # type: ignore[arg-type]


def test_same_seed_same_world_other_seed_other_world() -> None:
    first, second, other = small(), small(), small(seed=4)
    entries = list(first.entries())
    assert entries == list(second.entries())
    assert first.people() == second.people()
    assert entries != list(other.entries())


def test_history_covers_history_hours_up_to_now_and_is_ordered() -> None:
    world = small()
    entries = list(world.entries())
    assert entries and world.count() == len(entries)
    assert min(seen for _, _, seen in entries) >= NOW - timedelta(hours=24)
    assert max(seen for _, _, seen in entries) <= NOW
    for camera in world.cameras():
        stamps = [seen for cam, _, seen in entries if cam == camera]
        assert stamps == sorted(stamps)
    # visits_per_hour is per camera and exact on average: 3 cameras x 24 h x 20.
    assert 0.8 * 1440 <= len(entries) <= 1.2 * 1440


def test_real_log_oddities_occur() -> None:
    entries = list(small().entries())
    per_second = Counter((cam, seen) for cam, _, seen in entries)
    assert any(n >= 2 for n in per_second.values()), "several entries in one second"
    same_person = Counter(entries)
    assert any(n >= 2 for n in same_person.values()), "the same person twice in one second"
    names = {person for _, person, _ in entries}
    assert any(" " in name and not name.isascii() for name in names)
    assert "Mary Ann Smith" in small().people() and "Zoë Ångström" in small().people()


def test_odd_names_add_odd_people_and_cameras() -> None:
    world = small(odd_names=True, visits_per_hour=200.0)
    assert {"Lobby/East", "Door #2", "Gate+3"} <= set(world.cameras())
    assert "Ann @ Reception" in {person for _, person, _ in world.entries()}


def test_wire_strings_are_format_entry_and_parse_back() -> None:
    world = small()
    lo, hi = int((NOW - timedelta(hours=24)).timestamp()), int(NOW.timestamp())
    for camera in world.cameras():
        wire = world.wire_range(camera, lo, hi)
        truth = [(person, seen) for cam, person, seen in world.entries(camera_id=camera)]
        assert wire == [format_entry(person, seen) for person, seen in truth]
        parsed = [parse_entry(camera, raw) for raw in wire]
        assert [(p.person, p.seen_at) for p in parsed] == truth  # type: ignore[union-attr]
    assert wire_entry("A", int(datetime(2023, 2, 1, 9, 5, 7, tzinfo=timezone.utc).timestamp())) == (
        "A @ 09:05:07 01/02/23"
    )


def test_nothing_after_now_until_the_clock_moves() -> None:
    world = small()
    later = NOW + timedelta(hours=2)
    assert world.count(NOW + timedelta(seconds=1), later) == 0
    world.advance(7200)
    assert world.now() == later
    assert world.count(NOW + timedelta(seconds=1), later) > 0
    # The world extends the same way whatever the clock did: a server started later agrees.
    assert list(world.entries(NOW, later)) == list(small(now=later, history_hours=26.0).entries(NOW, later))


def test_bounds_are_inclusive_seconds_and_camera_filter() -> None:
    world = small()
    _, _, seen = next(iter(world.entries(camera_id="Camera2")))
    exact = list(world.entries(seen, seen, camera_id="Camera2"))
    assert exact and all(s == seen and c == "Camera2" for c, _, s in exact)
    assert list(world.entries(camera_id="NoSuchCamera")) == []
    assert (
        world.count(camera_id="Camera2") + world.count(camera_id="Camera1") + world.count(camera_id="Camera3")
        == world.count()
    )


def test_late_insert_joins_the_truth_last_in_its_second() -> None:
    world = small()
    _, _, seen = next(iter(world.entries(camera_id="Camera1")))
    before = world.count()
    at = world.insert("Camera1", "Late Comer", seen)
    assert at == seen and world.count() == before + 1
    in_second = [person for _, person, _ in world.entries(seen, seen, "Camera1")]
    assert in_second[-1] == "Late Comer"
    with pytest.raises(ValueError):
        world.insert("NoSuchCamera", "X", seen)
    with pytest.raises(ValueError):
        world.insert("Camera1", " padded ", seen)


def test_late_insert_survives_cache_eviction() -> None:
    world = small(cache_entries=10)
    _, _, seen = next(iter(world.entries(camera_id="Camera1")))
    world.insert("Camera1", "Late Comer", seen)
    world.count()  # touches every bucket, evicting the first
    assert "Late Comer" in [person for _, person, _ in world.entries(seen, seen, "Camera1")]
    assert list(small().entries()) == [e for e in world.entries() if e[1] != "Late Comer"]


def test_stored_malformed_is_not_truth() -> None:
    world = small()
    before = list(world.entries())
    world.insert_malformed("Camera1", {"not": "an entry"}, NOW - timedelta(minutes=5))
    assert list(world.entries()) == before
    assert [m.value for m in world.malformed()] == [{"not": "an entry"}]


def test_presence_matches_visits_that_started_recently() -> None:
    world = small(visits_per_hour=120.0)
    seen_anyone = False
    for minute in range(0, 24 * 60, 37):
        at = NOW - timedelta(minutes=minute)
        present = world.present(at)
        assert set(present) == set(world.cameras())
        for camera, people in present.items():
            assert len(people) == len(set(people))
            recent = {p for _, p, _ in world.entries(at - timedelta(seconds=MAX_VISIT_SECONDS), at, camera)}
            assert set(people) <= recent
            seen_anyone |= bool(people)
    assert seen_anyone


def test_bad_config_is_refused() -> None:
    for bad in ({"cameras": 0}, {"people": 0}, {"speed": -1.0}, {"camera_ids": ("A", "A")}):
        with pytest.raises(ValueError):
            WorldConfig(**bad)  # type: ignore[arg-type]


def test_the_companion_is_everywhere_and_everyone_else_is_as_without_them() -> None:
    companion = "Zoe\u0308 Companion"
    plain, accompanied = small(), small(companion=companion)
    assert accompanied.people() == [*plain.people(), companion]
    entries = list(accompanied.entries())
    assert [e for e in entries if e[1] != companion] == list(plain.entries())
    theirs = [(camera, at) for camera, person, at in entries if person == companion]
    assert {camera for camera, _ in theirs} == set(accompanied.cameras())
    others = {(camera, at) for camera, person, at in entries if person != companion}
    assert all(seen in others for seen in theirs)  # always in the same second as someone else
    assert any(count > 1 for count in Counter(theirs).values())  # sometimes twice in one second
    assert len(theirs) > len(others) / 3
    for minutes in range(0, 24 * 60, 17):
        at = NOW - timedelta(minutes=minutes)
        without = {c: [p for p in people if p != companion] for c, people in accompanied.present(at).items()}
        assert without == plain.present(at)


def test_the_companion_must_be_someone_else() -> None:
    with pytest.raises(ValueError, match="companion"):
        small(companion=" padded")
    with pytest.raises(ValueError, match="one of the world's people"):
        small(companion=small().people()[0])
