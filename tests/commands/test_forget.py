"""`facespace-bridge forget NAME` against real parts: a running bridge beside a real Home
Assistant (the oracle of what is announced), Mosquitto's log (whose session was replaced),
a subscriber on the bridge's availability (every value it takes) and on the whole tree
(every byte published after the forget)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import unicodedata
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from facespace_bridge.client import LogEntry
from facespace_bridge.commands.forget import command
from facespace_bridge.events import presence_event, sighting_event
from facespace_bridge.privacy.pseudonyms import Pseudonyms
from facespace_bridge.simulator import World, WorldConfig
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant as Discovery
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.homeassistant import HomeAssistant
from tests.fixtures.mqtt import MqttBroker, MqttCollector, retained_async
from tests.fixtures.simulator import SMALL_WORLD
from tests.sinks.mqtt._helpers import Bridge, registry_of, sink_for

pytestmark = pytest.mark.timeout(180)

BRIDGE_ID = "facespace-bridge-facespace"  # the default client id for --topic-prefix facespace
STATE = "facespace/bridge/state"
LAYOUT = TopicLayout("facespace")
T0 = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)


WORLD = {"speed": 0.0, "cameras": 2, "people": 4, "history_hours": 1, "visits_per_hour": 30}


def frozen_world_with_someone_in_view() -> dict[str, Any]:
    """A frozen world (nobody is seen again unless we say so) whose clock stands within the
    bridge's announce history of now, where one person with a name beyond ASCII is in view
    and someone is not: the same settings always make the same world (simulator docs)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for minutes in range(0, 12 * 60, 5):
        settings = {**WORLD, "now": now - timedelta(minutes=minutes)}
        world = World(WorldConfig(**{**SMALL_WORLD, **settings, "camera_ids": None}))
        in_view = {p for ps in world.present().values() for p in ps}
        if any(not p.isascii() for p in in_view) and len(in_view) < len(world.people()):
            return settings
    raise AssertionError("no such world in the last 12 hours")


def unique_ids(cameras: list[str], people: set[str]) -> set[str]:
    configs = Discovery(LAYOUT).configs(cameras, sorted(people))
    return {orjson.loads(config)["unique_id"] for config in configs.values()}


async def shown(ha: HomeAssistant, wanted: set[str]) -> bool:
    """Whether Home Assistant has exactly these MQTT entities, all available."""
    registry = await registry_of(ha)
    states = await ha.states()
    return registry.keys() == wanted and all(states[e].state != "unavailable" for e in registry.values())


def names_them(name: str, messages: dict[str, bytes] | list[tuple[str, bytes]]) -> list[str]:
    """The topics of `messages` whose topic or payload holds `name`."""
    items = messages.items() if isinstance(messages, dict) else messages
    return [topic for topic, payload in items if name in topic or name.encode() in payload]


@pytest.mark.parametrize("mode", ["entity", "device"])
async def test_forget_beside_a_running_bridge_then_exclude_at_start(
    simulator_factory, home_assistant: HomeAssistant, mqtt_broker: MqttBroker, tmp_path: Path, mode: str
) -> None:
    ha = home_assistant
    world = frozen_world_with_someone_in_view()
    sim = simulator_factory(**world)
    cameras = sim.world.cameras()
    in_view = {p for ps in sim.world.present().values() for p in ps}
    people = {p for _, p, _ in sim.world.entries()} | in_view
    # The one forgotten is in view (a presence names them beside others, that stays); the one
    # excluded later is someone else.
    forgotten = next(p for p in sorted(in_view) if not p.isascii())
    excluded = next(p for p in sorted(people) if p != forgotten)
    everyone = unique_ids(cameras, people)
    theirs = everyone - unique_ids(cameras, people - {forgotten})
    bridge = Bridge(sim, mqtt_broker, tmp_path, "--ha-discovery-mode", mode)
    try:

        async def announced(wanted: set[str]) -> bool:
            return bridge.running() and await shown(ha, wanted)

        await ha.wait_until(lambda: announced(everyone), 60, "every entity of the bridge, available")
        before = await registry_of(ha)
        with (
            MqttCollector(mqtt_broker, [STATE]) as availability,
            MqttCollector(mqtt_broker, ["facespace/#", "homeassistant/#"]) as tree,
        ):
            # Typed in the other Unicode form than the API sends: the same person.
            typed = unicodedata.normalize("NFD", forgotten)
            assert typed != forgotten
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "facespace_bridge", "forget", typed, "--mqtt-url", mqtt_broker.url],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            assert "the running bridge forgot them and cleared" in done.stdout
            assert "--exclude-person" in done.stderr and "Traceback" not in done.stderr

            # Home Assistant removed their device and entities; everyone else's stay as they were.
            rest = everyone - theirs
            await ha.wait_until(lambda: announced(rest), 30, "their entities gone, the others available")
            after = await registry_of(ha)
            assert {u: after[u] for u in rest} == {u: before[u] for u in rest}
            devices = {d["name"] for d in await ha.device_registry()}
            assert forgotten not in devices and excluded in devices
            assert names_them(forgotten, await retained_async(mqtt_broker)) == []
            # The camera that saw them still counts who is there, but no longer names them.
            people_sensors = [s for e, s in (await ha.states()).items() if e.endswith("_people")]
            assert people_sensors and not any(forgotten in str(s.attributes) for s in people_sensors)

            # Home Assistant restarts: the bridge re-announces everyone it knows, not them.
            await ha.restart()
            await ha.wait_until(
                lambda: asyncio.to_thread(lambda: "re-announcing" in bridge.log.read_text()),
                30,
                "the bridge to re-announce",
            )
            await ha.mqtt_synced()
            await ha.wait_until(lambda: announced(rest), 30, "the others back, them not")
            # Published since the forget (not what the subscription was handed as retained): the
            # request, and empty payloads clearing what was retained.
            published = [(m.topic, m.payload) for m in tree.snapshot() if m.payload and not m.retain]
            assert names_them(forgotten, published) == ["facespace/bridge/request/forget"]
            states = [m.payload for m in availability.on(STATE)]
        # The retained value, again with the re-announce, and never another.
        assert states and set(states) == {b"online"}, states

        broker_log = mqtt_broker.log.read_text()
        assert f"as {BRIDGE_ID}-forget " in broker_log  # the command connected with its own id
        assert f"Client {BRIDGE_ID} already connected" not in broker_log  # the bridge kept its session
        assert broker_log.count(f"as {BRIDGE_ID} ") == 1
        assert "lost MQTT connection" not in bridge.log.read_text()
        assert forgotten not in bridge.log.read_text()  # the bridge does not log whom it forgot
        assert ha.mqtt_problems() == []
    finally:
        await bridge.stop()

    # The bridge starts again with someone and a camera excluded: what the broker retains of
    # them goes, and Home Assistant removes them: the person's device, the camera's, and
    # everyone's occupancy of the camera (in device form, components of each person's device).
    # The forgotten person is announced again if its history at the other camera names them.
    camera, other = cameras[-1], cameras[0]
    seen_at_other = {p for c, p, _ in sim.world.entries() if c == other} | set(sim.world.present()[other])
    kept = people - {excluded, forgotten} | ({forgotten} & seen_at_other)
    bridge = Bridge(
        sim, mqtt_broker, tmp_path, "--ha-discovery-mode", mode,
        "--exclude-person", excluded, "--exclude-camera", camera,
    )  # fmt: skip
    try:
        wanted = unique_ids([other], kept)
        await ha.wait_until(lambda: announced(wanted), 60, "the excluded person's and camera's entities gone")
        retained = await retained_async(mqtt_broker)
        assert names_them(excluded, retained) == []
        assert LAYOUT.presence(camera) not in retained
        devices = {d["name"] for d in await ha.device_registry()}
        assert excluded not in devices and camera not in devices and other in devices
    finally:
        await bridge.stop()


async def world(broker: MqttBroker) -> None:
    async with sink_for(broker) as sink:
        await sink.announce(["Door"], ["Mary Ann Smith", "José"])
        events = [
            presence_event("Door", ["José"], ["José"], [], T0),
            *(sighting_event(LogEntry("Door", p, T0, "raw"), 0) for p in ["Mary Ann Smith", "José"]),
        ]
        await (await sink.publish(events))


async def test_without_a_bridge_it_clears_and_says_so(mqtt_broker: MqttBroker) -> None:
    await world(mqtt_broker)
    before = await retained_async(mqtt_broker)
    runner = CliRunner()
    args = ["Mary Ann Smith", "--mqtt-url", mqtt_broker.url, "--wait", "0.3"]

    dry = await asyncio.to_thread(runner.invoke, command, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    listed = {line.removeprefix("would clear ") for line in dry.stdout.splitlines()}
    assert listed == set(names_them("Mary Ann Smith", before))
    assert await retained_async(mqtt_broker) == before  # nothing changed

    done = await asyncio.to_thread(runner.invoke, command, args)
    assert done.exit_code == 0, done.output
    assert "no running bridge answered on facespace/bridge/request/forget" in done.stderr
    assert f"cleared {len(listed)} retained message(s): 5 discovery config(s), 2 state(s)" in done.stdout
    after = await retained_async(mqtt_broker)
    assert after == {t: p for t, p in before.items() if t not in listed}
    assert LAYOUT.person("José") in after


KEY = "k" * 32


async def test_under_pseudonymize_it_finds_the_person_by_their_pseudonym(
    mqtt_broker: MqttBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bridge under --pseudonymize published pseudonyms only: `forget NAME --pseudonymize`
    (the same key) clears the person's pseudonymous traces, asks the bridge by the pseudonym,
    and the name travels nowhere; a running bridge asked by the name finds them too."""
    pseudonyms = Pseudonyms(KEY.encode())
    mary, jose = pseudonyms.of("Mary Ann Smith"), pseudonyms.of("José")
    async with sink_for(mqtt_broker) as sink:
        await sink.announce(["Door"], [mary, jose])
        sightings = [sighting_event(LogEntry("Door", p, T0, "raw"), 0) for p in [mary, jose]]
        await (await sink.publish(sightings))
    before = await retained_async(mqtt_broker)
    assert names_them(mary, before)
    monkeypatch.setenv("FACESPACE_BRIDGE_PSEUDONYM_KEY", KEY)
    requests = MqttCollector(mqtt_broker, LAYOUT.request("forget"))
    with requests:
        args = ["Mary Ann Smith", "--pseudonymize", "--mqtt-url", mqtt_broker.url, "--wait", "0.3"]
        done = await asyncio.to_thread(CliRunner().invoke, command, args)
        assert done.exit_code == 0, done.output
        asked = await requests.wait_topic(LAYOUT.request("forget"))
    assert [orjson.loads(m.payload)["person"] for m in asked] == [mary]
    after = await retained_async(mqtt_broker)
    assert names_them(mary, after) == [] and names_them(jose, after) == names_them(jose, before)
    # The bridge's own sink, asked by the name (as Home Assistant's mqtt.publish would); the
    # bridge hears whom it forgot in both forms (its web page holds the pseudonym).
    heard: list[frozenset[str]] = []
    async with sink_for(mqtt_broker, pseudonyms=pseudonyms) as sink:
        sink.on_forget = heard.append
        await sink.announce(["Door"], [jose])
        await sink.forget(["José"])
    assert names_them(jose, await retained_async(mqtt_broker)) == []
    assert heard == [frozenset({"José", jose})]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["   "], "must not be empty"),
        (["Bob", "--pseudonymize"], "FACESPACE_BRIDGE_PSEUDONYM_KEY"),
        (["Bob", "--topic-prefix", "a/#"], "wildcards"),
        (["Bob", "--mqtt-url", "tcp://x"], "mqtt-url"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str) -> None:
    forget = [sys.executable, "-m", "facespace_bridge", "forget"]
    result = subprocess.run([*forget, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
