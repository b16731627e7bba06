"""The bridge loop in-process, against the simulator over real HTTP, into the file sink.

The Kafka and MQTT paths, kills and outages are in tests/test_crash_safety.py; here a
frozen simulator clock and the bridge's injectable clock make every run exact.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import orjson
import pytest

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import FileCheckpointStore
from facespace_bridge.client import AsyncLogsAPI
from facespace_bridge.schemas import validate
from facespace_bridge.simulator import STOP_MESSAGE
from facespace_bridge.sinks import Sink, SinkError
from facespace_bridge.sinks.file import FileSink
from facespace_bridge.sinks.kafka import KafkaSettings, KafkaSink, create_sink
from facespace_bridge.sinks.mqtt import MqttSink
from facespace_bridge.sinks.mqtt.settings import MqttSettings
from facespace_bridge.web.state import PageState
from tests.fixtures.mqtt import MqttCollector
from tests.fixtures.simulator import SIM_NOW

BACKFILL = timedelta(hours=3)


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    complete = path.read_bytes().split(b"\n")[:-1]  # the sink may be mid-line: whole lines only
    return [orjson.loads(line) for line in complete if line]


def truth(sim, start: datetime, end: datetime) -> Counter:
    return Counter((cam, person, seen_at) for cam, person, seen_at in sim.world.entries(start, end))


def sightings(events: list[dict]) -> Counter:
    return Counter(
        (e["camera_id"], e["person"], datetime.fromisoformat(e["seen_at"].replace("Z", "+00:00")))
        for e in events
        if e["schema"].startswith("facespace.sighting/")
    )


def make_bridge(sim, tmp_path: Path, sinks: list[Sink] | None = None, **options) -> Bridge:
    """A bridge on the frozen simulator clock, into `sinks` (default: events.jsonl)."""
    defaults = dict(
        backfill_from=SIM_NOW - BACKFILL,
        tail_interval=0.2,
        refresh=0.2,
        heartbeat=0.5,
    )
    return Bridge(
        AsyncLogsAPI(sim.api_key, base_url=sim.base_url),
        sinks or [FileSink(str(tmp_path / "events.jsonl"))],
        FileCheckpointStore(tmp_path / "checkpoint.json"),
        BridgeOptions(**{**defaults, **options}),
        clock=lambda: SIM_NOW,
    )


class Run:
    """One bridge run in the background; `stop()` is the SIGTERM path."""

    def __init__(self, sim, tmp_path: Path, sinks: list[Sink] | None = None, **options) -> None:
        self.output = tmp_path / "events.jsonl"
        self.bridge = make_bridge(sim, tmp_path, sinks, **options)
        self.client = self.bridge.client
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.bridge.run(self.stop_event))

    async def wait_for(self, predicate, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(read_events(self.output)):
            if self.task.done():
                self.task.result()
                raise AssertionError("the bridge stopped early")
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("timed out waiting for the bridge")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 10)
        await self.client.aclose()


async def test_backfill_then_tail_publishes_every_sighting_once(simulator_factory, tmp_path):
    sim = simulator_factory(visits_per_hour=120)
    expected = truth(sim, SIM_NOW - BACKFILL, SIM_NOW)
    same_second = Counter((camera, seen_at) for camera, _, seen_at in expected.elements())
    assert max(same_second.values()) > 1  # the world has entries sharing a second
    run = Run(sim, tmp_path)
    await run.wait_for(lambda events: sum(sightings(events).values()) >= sum(expected.values()))
    polls = run.bridge.logs_source.polls
    # Three more tail polls, each re-reading the look-back window: nothing may be repeated.
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= polls + 3)
    await run.stop()
    events = read_events(run.output)
    assert sightings(events) == expected
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids))
    assert all(validate(e) == [] for e in events)
    presence = [e for e in events if e["schema"].startswith("facespace.presence/")]
    assert {e["camera_id"] for e in presence} == set(sim.world.cameras())  # once per camera at start


async def test_stop_and_restart_mid_backfill_repeats_nothing_and_loses_nothing(simulator_factory, tmp_path):
    # Dense enough for several windows, each slowed down, so the stop lands mid-backfill.
    sim = simulator_factory(visits_per_hour=4000, faults={"latency_ms": 150})
    expected = truth(sim, SIM_NOW - BACKFILL, SIM_NOW)
    total = sum(expected.values())
    run = Run(sim, tmp_path, realtime=False)
    await run.wait_for(lambda events: len(events) >= total // 3)
    await run.stop()
    first = len(read_events(run.output))
    assert first < total, "the first run should have been stopped mid-backfill"
    checkpoint = orjson.loads((tmp_path / "checkpoint.json").read_bytes())
    assert checkpoint["backfill"]["complete"] is False
    run = Run(sim, tmp_path, realtime=False)
    await run.wait_for(lambda events: len(events) >= total)
    await asyncio.sleep(0.5)
    await run.stop()
    events = read_events(run.output)
    assert sightings(events) == expected
    assert len({e["event_id"] for e in events}) == len(events) == total


async def test_late_inserted_entry_is_published_once(simulator_factory, tmp_path):
    sim = simulator_factory(visits_per_hour=30)
    run = Run(sim, tmp_path, backfill_from=SIM_NOW - timedelta(minutes=10), realtime=False)
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= 2)
    before = len(read_events(run.output))
    late_at = (SIM_NOW - timedelta(seconds=50)).replace(microsecond=0)
    sim.insert("Camera1", "Late Comer", late_at)
    await run.wait_for(lambda events: any(e.get("person") == "Late Comer" for e in events))
    polls = run.bridge.logs_source.polls
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= polls + 3)
    await run.stop()
    events = read_events(run.output)
    late = [e for e in events if e.get("person") == "Late Comer"]
    assert len(late) == 1 and late[0]["seen_at"] == late_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(events) == before + 1


def next_arrival(sim) -> tuple[datetime, str, str]:
    """The first visit after SIM_NOW whose person is not in view of its camera at SIM_NOW: its
    start (a history entry) and a presence arrival on /recognition at once."""
    before = sim.world.present(SIM_NOW)
    previous = before
    for step in range(1, 7200):
        at = SIM_NOW + timedelta(seconds=step)
        now = sim.world.present(at)
        for camera, people in now.items():
            # In view now and not a second ago: a visit starts at `at` (the world has no flicker).
            for person in people:
                if person not in previous[camera] and person not in before[camera]:
                    return at, camera, person
        previous = now
    raise AssertionError("no arrival within two hours")


@pytest.mark.parametrize("quick_polls", [True, False])
async def test_an_arrival_polls_its_camera_at_once_unless_quick_polls_are_off(
    simulator_factory, tmp_path, quick_polls
):
    sim = simulator_factory()
    at, camera, person = next_arrival(sim)
    run = Run(sim, tmp_path, backfill_from=None, tail_interval=60.0, quick_polls=quick_polls)
    bridge = run.bridge
    await run.wait_for(lambda events: bridge.logs_source.polls >= 1 and bridge.realtime_source.polls >= 1)
    sim.advance((at - SIM_NOW).total_seconds())  # the visit starts; the next regular poll is a minute away

    def published(events: list[dict]) -> list[dict]:
        return [e for e in events if (e.get("camera_id"), e.get("person"), e.get("seen_at")) == key]

    key = (camera, person, at.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if quick_polls:
        await run.wait_for(lambda events: published(events), timeout=5)
        assert bridge.logs_source.quick_polls >= 1
    else:
        polls = bridge.realtime_source.polls
        await run.wait_for(lambda events: bridge.realtime_source.polls >= polls + 10)  # ~2 s
        assert bridge.logs_source.quick_polls == 0
    await asyncio.sleep(0.5)
    await run.stop()
    assert len(published(read_events(run.output))) == (1 if quick_polls else 0)
    assert bridge.logs_source.polls == 1


async def test_a_visit_of_someone_already_in_view_is_polled_at_once_too(simulator_factory, tmp_path):
    """/recognition shows no arrival for a person who is still in view, yet their new visit is a
    new history entry: the camera is polled while someone is there, not only at arrivals."""
    sim = simulator_factory()
    camera, people = next((c, ps) for c, ps in sim.world.present().items() if ps)
    run = Run(sim, tmp_path, backfill_from=None, tail_interval=60.0)
    bridge = run.bridge
    # Past the start, whose arrivals (everyone, seen for the first time) bring a quick poll.
    await run.wait_for(lambda events: bridge.logs_source.polls >= 1 and bridge.realtime_source.polls >= 10)
    seen_at = sim.insert(camera, people[0])  # a visit of someone the camera already sees
    key = (camera, people[0], seen_at.strftime("%Y-%m-%dT%H:%M:%SZ"))

    def published(events: list[dict]) -> list[dict]:
        return [e for e in events if (e.get("camera_id"), e.get("person"), e.get("seen_at")) == key]

    await run.wait_for(lambda events: published(events), timeout=5)
    await run.stop()
    assert len(published(read_events(run.output))) == 1
    assert bridge.logs_source.polls == 1  # the regular poll is a minute away: a quick poll read it


async def test_malformed_entries_are_dead_lettered_once_and_counted(simulator_factory, tmp_path):
    sim = simulator_factory(visits_per_hour=60)
    # Stored junk: one in the backfilled range, one in the tail's look-back window.
    sim.world.insert_malformed("Camera1", "Alice at noon", SIM_NOW - timedelta(minutes=20))
    sim.world.insert_malformed("Camera2", 42, SIM_NOW - timedelta(seconds=30))
    run = Run(sim, tmp_path, backfill_from=SIM_NOW - timedelta(minutes=30), realtime=False)
    expected = truth(sim, SIM_NOW - timedelta(minutes=30), SIM_NOW)
    await run.wait_for(lambda events: sum(sightings(events).values()) >= sum(expected.values()))
    polls = run.bridge.logs_source.polls
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= polls + 2)
    # ... and one that appears while tailing.
    sim.world.insert_malformed("Camera1", "@ 99:99:99 99/99/99", SIM_NOW - timedelta(seconds=10))
    polls = run.bridge.logs_source.polls
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= polls + 3)
    await run.stop()
    events = read_events(run.output)
    dead = [e for e in events if e["schema"].startswith("facespace.deadletter/")]
    assert sorted(e["raw"] for e in dead) == sorted(["Alice at noon", "42", "@ 99:99:99 99/99/99"])
    assert all(e["reason"] and e["source"] == "logs" for e in dead)
    assert sightings(events) == expected
    assert run.bridge.metrics.dead_letters.labels(source="logs")._value.get() == len(dead)


@pytest.mark.parametrize(("stop_reply", "realtime_state"), [(True, "stopped"), (False, "polling")])
async def test_stop_reply_is_not_an_error(simulator_factory, tmp_path, stop_reply, realtime_state):
    """The API's stop reply on /recognition pauses presence, not the bridge: the history tail
    goes on, and /status shows the realtime source stopped but no problem (beside a run
    without it, which must differ only there)."""
    sim = simulator_factory(visits_per_hour=30)
    sim.set_faults(stop_signal=stop_reply)
    run = Run(sim, tmp_path, backfill_from=None)
    bridge = run.bridge
    await run.wait_for(lambda events: bridge.realtime_source.polls >= 2 and bridge.logs_source.polls >= 2)
    status = bridge.status()
    assert status["sources"]["realtime"]["state"] == realtime_state
    assert status["sources"]["realtime"]["stop_reply"] == (STOP_MESSAGE if stop_reply else None)
    assert status["sources"]["logs"]["state"] == "polling"
    assert (status["state"], status["problems"]) == ("RUNNING", [])
    assert not run.task.done()
    await run.stop()


async def test_api_fault_storm_changes_nothing_in_what_is_published(simulator_factory, tmp_path):
    sim = simulator_factory(visits_per_hour=200)
    sim.set_faults(error_rate=0.3, throttle_rate=0.1, retry_after=0, drop_rate=0.05, latency_ms=20, seed=3)
    start = SIM_NOW - timedelta(minutes=40)
    expected = truth(sim, start, SIM_NOW)
    run = Run(sim, tmp_path, backfill_from=start)
    await run.wait_for(lambda events: sum(sightings(events).values()) >= sum(expected.values()), timeout=60)
    polls = run.bridge.logs_source.polls
    await run.wait_for(lambda events: run.bridge.logs_source.polls >= polls + 2, timeout=60)
    await run.stop()
    events = read_events(run.output)
    assert sightings(events) == expected
    stats = sim.stats()
    assert sum(n for path in stats.values() for status, n in path.items() if status != "200") > 0, stats


# -- a first start that never reached its sinks -------------------------------------------------


async def failed_then_good_start(sim, tmp_path: Path, make_sink, broker_down, broker_up) -> None:
    """The broker is not up yet: the first start gives up (SinkError) and leaves no checkpoint,
    so the second start, with the broker up, still backfills the hour it was asked for."""
    checkpoint = tmp_path / "checkpoint.json"
    broker_down()
    try:
        first = make_bridge(sim, tmp_path, [make_sink()], backfill_from=SIM_NOW - timedelta(hours=1))
        with pytest.raises(SinkError):
            await first.run(asyncio.Event())
        await first.client.aclose()
    finally:
        broker_up()
    assert not checkpoint.exists()


def until_tailing(run: Run) -> Callable[[list[dict]], bool]:
    """The backfill is saved complete and the tail has polled twice (the frozen clock: nothing new)."""

    def done(_events: list[dict]) -> bool:
        saved = run.bridge.saved_checkpoint
        return bool(
            saved and saved.backfill and saved.backfill.complete and run.bridge.logs_source.polls >= 2
        )

    return done


async def test_a_start_that_never_reached_kafka_leaves_the_backfill_to_the_next(
    simulator_factory, kafka, kafka_topic, read_topic, tmp_path
):
    sim = simulator_factory(visits_per_hour=120)
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap,
        sighting_topic=kafka_topic,
        presence_topic=f"{kafka_topic}.presence",
        deadletter_topic=f"{kafka_topic}.dl",
        connect_timeout=1.0,
    )

    def sink() -> KafkaSink:
        return create_sink(settings)

    await failed_then_good_start(sim, tmp_path, sink, kafka.down, kafka.up)
    run = Run(sim, tmp_path, [sink()], backfill_from=SIM_NOW - timedelta(hours=1), realtime=False)
    await run.wait_for(until_tailing(run))
    await run.stop()
    records = await read_topic(kafka_topic)
    assert sightings([orjson.loads(r.value) for r in records]) == truth(
        sim, SIM_NOW - timedelta(hours=1), SIM_NOW
    )


async def test_a_start_that_never_reached_mqtt_leaves_the_backfill_to_the_next(
    simulator_factory, mqtt_broker, tmp_path
):
    sim = simulator_factory(visits_per_hour=120)

    def sink() -> MqttSink:
        return MqttSink(MqttSettings(url=mqtt_broker.url), connect_timeout=1.0, reconnect_delay=(0.1, 0.5))

    await failed_then_good_start(sim, tmp_path, sink, mqtt_broker.stop, mqtt_broker.start)
    with MqttCollector(mqtt_broker, "facespace/+/sighting", persistent=True) as collector:
        run = Run(sim, tmp_path, [sink()], backfill_from=SIM_NOW - timedelta(hours=1), realtime=False)
        await run.wait_for(until_tailing(run))
        await run.stop()
        expected = truth(sim, SIM_NOW - timedelta(hours=1), SIM_NOW)
        messages = await collector.wait_for(lambda ms: len(ms) >= sum(expected.values()), what="the backfill")
    assert sightings([orjson.loads(m.payload) for m in messages]) == expected


async def test_a_checkpoint_that_overrides_backfill_from_says_so(simulator_factory, tmp_path, caplog):
    sim = simulator_factory()
    run = Run(sim, tmp_path, backfill_from=None, realtime=False, instance_id="kitchen")
    await run.wait_for(
        lambda _: run.bridge.saved_checkpoint is not None and run.bridge.logs_source.polls >= 1
    )
    await run.stop()
    first = orjson.loads((tmp_path / "checkpoint.json").read_bytes())
    written = datetime.fromisoformat(first["written_at"].replace("Z", "+00:00")).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    caplog.clear()
    run = Run(
        sim, tmp_path, backfill_from=SIM_NOW - timedelta(hours=1), realtime=False, instance_id="kitchen"
    )
    await run.wait_for(lambda _: run.bridge.logs_source.polls >= 1)
    await run.stop()
    said = [r.getMessage() for r in caplog.records if "--backfill-from ignored" in r.getMessage()]
    assert said == [
        f"checkpoint of kitchen exists (written {written}): --backfill-from ignored; to start over, "
        "stop the bridge and run: facespace-bridge checkpoint reset --instance-id kitchen"
    ]
    resumed_at = datetime.fromisoformat(first["through"].replace("Z", "+00:00"))
    assert all(seen_at >= resumed_at for _, _, seen_at in sightings(read_events(run.output)))  # no backfill


def page_chart(page: PageState) -> Counter:
    """(camera, hour) -> sightings, as the page's chart has them."""
    chart = page.snapshot({"state": "RUNNING", "problems": [], "sinks": {}, "sources": {}, "cameras": {}})[
        "chart"
    ]
    return Counter(
        {
            (camera, hour): n
            for camera, counts in chart["cameras"].items()
            for hour, n in zip(chart["hours"], counts, strict=True)
            if n
        }
    )


def truth_chart(sim, hours: int = 24) -> Counter:
    first = SIM_NOW.replace(minute=0) - timedelta(hours=hours - 1)
    return Counter(
        (camera, seen_at.replace(minute=0, second=0).strftime("%Y-%m-%dT%H:%M:%SZ"))
        for camera, _, seen_at in sim.world.entries(first, SIM_NOW)
    )


@pytest.mark.parametrize("backfill_hours", [30, 3])
async def test_the_page_gets_the_history_once_from_the_read_or_the_backfill(
    simulator_factory, tmp_path, backfill_hours
):
    sim = simulator_factory(visits_per_hour=60)
    page = PageState(600.0, clock=SIM_NOW.timestamp)
    client = AsyncLogsAPI(sim.api_key, base_url=sim.base_url)
    bridge = Bridge(
        client,
        [FileSink(str(tmp_path / "events.jsonl"))],
        FileCheckpointStore(tmp_path / "checkpoint.json"),
        BridgeOptions(
            backfill_from=SIM_NOW - timedelta(hours=backfill_hours), tail_interval=0.2, refresh=0.2
        ),
        clock=lambda: SIM_NOW,
        page=page,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(bridge.run(stop))
    backfilled = sum(truth(sim, SIM_NOW - timedelta(hours=backfill_hours), SIM_NOW).values())
    while page_chart(page) != truth_chart(sim) or bridge.logs_source.polls < 2:
        assert not task.done(), task
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 10)
    await client.aclose()
    # Every sighting of the last 24 hours counted once, and read from the API once: a backfill
    # of more than a day is the page's only source; a shorter one adds to the read of the rest.
    read = sim.simulator.app.entries_served
    assert backfilled <= read <= backfilled + sum(truth(sim, SIM_NOW - timedelta(hours=24), SIM_NOW).values())
    if backfill_hours > 24:
        assert read < backfilled * 1.05  # the tail's look-back re-reads a few minutes, no more
    page.close()
