"""Each person's whereabouts on their own: the states, the documents and the timer.
(Home Assistant's device tracker, which publishes them, is tested in tests/sinks/mqtt.)"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import orjson
import pytest

from facespace_bridge.schemas import errors_against
from facespace_bridge.whereabouts import WHEREABOUTS_SCHEMA, Whereabouts

pytestmark = pytest.mark.timeout(30)

T0 = datetime(2023, 10, 23, 12, 0, 0, tzinfo=timezone.utc)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def recorder() -> tuple[list[dict], Whereabouts, Clock]:
    told: list[dict] = []
    clock = Clock(T0 + timedelta(seconds=10))
    model = Whereabouts(60.0, clock=clock, on_change=lambda person, doc: told.append(orjson.loads(doc)))
    return told, model, clock


async def test_an_unseen_person_is_away_and_every_state_follows_the_schema() -> None:
    told, model, _ = recorder()
    model.update("Zoë")
    model.sighting("Zoë", "Door", T0)
    model.presence("Garden", ["Zoë"], T0 + timedelta(seconds=5))
    assert told[0] == {
        "schema": WHEREABOUTS_SCHEMA,
        "person": "Zoë",
        "state": "not_home",
        "cameras": [],
        "camera_id": None,
        "seen_at": None,
    }
    assert told[1]["state"] == "home" and told[1]["camera_id"] == "Door"
    assert told[2] == {
        **told[1],
        "cameras": ["Garden"],
        "camera_id": "Garden",
        "seen_at": "2023-10-23T12:00:05Z",
    }
    for document in told:
        assert errors_against(WHEREABOUTS_SCHEMA, document) == []
    model.close()


async def test_only_changes_are_told_and_last_seen_never_moves_back() -> None:
    told, model, _ = recorder()
    model.sighting("Ann", "Door", T0)
    model.sighting("Ann", "Garden", T0 - timedelta(minutes=5))  # late history: older, ignored
    model.sighting("Ann", "Door", T0)  # the same second again
    assert len(told) == 1 and told[0]["camera_id"] == "Door"
    assert model.person("Ann").seen_at == T0
    model.close()


async def test_presence_keeps_someone_home_and_leaving_starts_the_countdown() -> None:
    told, model, clock = recorder()
    model.presence("Door", ["Ann"], T0)
    clock.now += 3600  # an hour in view: still home, no timer while a camera sees her
    model.update("Ann")
    assert model.person("Ann").home and model.person("Ann").timer is None
    model.presence("Door", [], T0 + timedelta(hours=1))
    ann = model.person("Ann")
    assert ann.home and ann.cameras == set() and ann.timer is not None  # away_after from now on
    clock.now += 61
    model.update("Ann")
    assert told[-1]["state"] == "not_home" and told[-1]["camera_id"] == "Door"
    model.close()


async def test_the_timer_turns_home_into_not_home_by_itself() -> None:
    changed = asyncio.Event()
    states: list[str] = []

    def heard(person: str, document: bytes) -> None:
        states.append(orjson.loads(document)["state"])
        changed.set()

    model = Whereabouts(0.2, on_change=heard)
    model.sighting("Ann", "Door", datetime.now(timezone.utc))
    assert states == ["home"]
    changed.clear()
    await asyncio.wait_for(changed.wait(), 10)
    assert states == ["home", "not_home"]
    model.close()


async def test_an_api_clock_ahead_keeps_no_one_home_longer() -> None:
    told, model, clock = recorder()
    model.sighting("Ann", "Door", datetime.fromtimestamp(clock.now, timezone.utc) + timedelta(minutes=10))
    assert model.person("Ann").seen_ts == clock.now  # counted from now, not from the API's future
    clock.now += 61
    model.update("Ann")
    assert told[-1]["state"] == "not_home"
    model.close()


def test_a_pseudonymous_whereabouts_document_is_v2_and_says_so() -> None:
    pseudonymous = Whereabouts(600, clock=lambda: 0.0, pseudonymous=True)
    document = orjson.loads(pseudonymous.document(pseudonymous.person("p_0a1b2c3d4e5f60718293")))
    assert errors_against(document["schema"], document) == []
    assert (document["schema"], document["pseudonymous"]) == ("facespace.whereabouts/v2", True)
    plain = Whereabouts(600, clock=lambda: 0.0)
    named = orjson.loads(plain.document(plain.person("Zoë")))
    assert named["schema"] == "facespace.whereabouts/v1" and "pseudonymous" not in named
