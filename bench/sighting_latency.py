"""Sighting latency: from a visit's start in the simulator to its sighting at a Kafka consumer and
at an MQTT subscriber, with `facespace-bridge run --broker kafka --broker mqtt` at its default
settings, with and without quick polls; API requests per minute beside it (target:
p99 <= --refresh + 250 ms with at most twice the requests without quick polls).

    .venv/bin/python bench/sighting_latency.py [--visits 300] [--cameras 20] [--people 200]
                                               [--visits-per-hour 120] [--modes on,off,tail-1]

1. Starts Tansu (memory storage), Mosquitto and the simulator in its own process on a live
   clock (1 % fast, see 2): `--cameras` cameras, `--people` people, `--visits-per-hour` visits per
   camera-hour. The same world is built here (visits are generated per camera-hour from the
   seed and the config alone), so this process knows every visit in advance: its camera, its
   person and its start, which is the second its history entry carries and the second its
   person appears on `/recognition`.
2. Per mode, a fresh bridge: `run --broker kafka --broker mqtt --refresh 1 --tail-interval 5`
   (the defaults, written out; `--lateness`, `--presence-timeout`, the Kafka client and HA
   discovery at theirs). Modes: `on` (the defaults: quick polls on), `off`
   (`--no-quick-polls`: /logs every --tail-interval only) and, when asked, `tail-1`
   (`--tail-interval 1 --no-quick-polls`: a full /logs poll every second instead).
   The simulator's clock is set to this machine's wall clock once, before the first bridge
   (`POST /admin/clock`); it takes the time sent somewhere within the request's round trip,
   so a latency below is too long by at most that round trip (printed). It runs at speed
   1.01 (`--speed`): visits start on whole simulator seconds, and with a clock of exactly
   real speed every one of them would fall at the same phase of the bridge's 1 s polls;
   1 % faster sweeps them through every phase each 100 s, as real arrivals fall. A
   confluent-kafka consumer (`fetch.wait.max.ms` 10) reads the bridge's sightings topic and
   a paho subscriber its `<prefix>/+/sighting`, each stamping arrivals with the wall clock.
3. After `--warmup` seconds the next `--visits` visits (distinct camera, person, start second)
   are measured: latency = first arrival of a sighting with that camera, person and
   `seen_at`, minus the visit's start. API requests per minute come from the simulator's own
   counts (`GET /admin/stats`) over the span of the measured visits, and the bridge's CPU
   (% of one core, /proc) over the same span.
4. Each visit is classified from the world: "arrival" when its person was not in view of that
   camera during the `--presence-timeout` (30 s) before it, so `/recognition` shows an arrival
   the bridge can react to; "already in view" otherwise (an overlapping visit of the same
   person, or a return that the bridge's debounced presence still counts as present).

Not a timed test: it prints figures side by side. The 2 cores are shared by the bridge, the
simulator and both brokers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import orjson
import paho.mqtt.client as paho
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bridge_harness import (
    API_KEY,
    CLI,
    Probe,
    admin,
    admin_url,
    child_env,
    start_simulator,
    stop,
    wait_until,
)

from facespace_bridge.embedded import MqttBroker, TansuBroker, free_port
from facespace_bridge.simulator import World, WorldConfig

REFRESH = 1.0  # the bridge's defaults, written out on its command line
TAIL_INTERVAL = 5.0
PRESENCE_TIMEOUT = 30  # the bridge's default --presence-timeout, for the classification
SLACK = 0.25  # the target: p99 <= refresh + 250 ms
REQUEST_FACTOR = 2.0  # ... with at most twice the API requests of the bridge without quick polls
# mode -> (what the tables call it, flags besides the defaults)
MODES = {
    "on": ("defaults (quick polls on)", ["--tail-interval", str(TAIL_INTERVAL)]),
    "off": ("`--no-quick-polls`", ["--tail-interval", str(TAIL_INTERVAL), "--no-quick-polls"]),
    # Only when asked: a full /logs poll every second instead of quick polls.
    "tail-1": ("`--tail-interval 1 --no-quick-polls`", ["--tail-interval", "1", "--no-quick-polls"]),
}
Key = tuple[str, str, str]  # camera, person, seen_at as the payload writes it


@dataclass
class Arrivals:
    """First arrival (wall clock) of each (camera, person, seen_at), from one reader."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    first: dict[Key, float] = field(default_factory=dict)
    messages: int = 0

    def add(self, payload: bytes, at: float) -> None:
        fields = orjson.loads(payload)
        key = (fields["camera_id"], fields["person"], fields["seen_at"])
        with self.lock:
            self.messages += 1
            self.first.setdefault(key, at)

    def get(self, key: Key) -> float | None:
        with self.lock:
            return self.first.get(key)


class KafkaReader:
    """A confluent-kafka consumer on every partition of the sightings topic, from the beginning."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.arrivals = Arrivals()
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"bench-latency-{topic}", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10, "fetch.min.bytes": 1, "topic.metadata.refresh.interval.ms": 1000,
        })  # fmt: skip
        # The bridge creates the topic with its first sighting; from the beginning, nothing is missed.
        deadline = time.monotonic() + 60
        while not (
            partitions := sorted(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ):
            if time.monotonic() > deadline:
                raise SystemExit(f"topic {topic} was not created within 60 s")
            time.sleep(0.2)
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            for message in self.consumer.consume(1000, 0.05):
                if message.error() is None and message.value() is not None:
                    self.arrivals.add(message.value(), time.time())

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.consumer.close()


class MqttReader:
    """A paho subscriber on `<prefix>/+/sighting` at QoS 1."""

    def __init__(self, broker: MqttBroker, prefix: str) -> None:
        self.arrivals = Arrivals()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-latency-{prefix}")
        self.client.on_message = lambda _c, _u, message: self.arrivals.add(message.payload, time.time())
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(f"{prefix}/+/sighting", qos=1)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("the MQTT subscriber was not subscribed within 10 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class Visit:
    camera: str
    person: str
    start: int  # epoch second
    in_view: bool  # the person was in view of the camera in the presence timeout before

    @property
    def key(self) -> Key:
        seen_at = datetime.fromtimestamp(self.start, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self.camera, self.person, seen_at


def visits_from(world: World, first: int, count: int) -> list[Visit]:
    """The first `count` distinct visits starting at or after epoch second `first`."""
    presence: dict[int, dict[str, list[str]]] = {}

    def present(second: int) -> dict[str, list[str]]:
        if second not in presence:
            presence[second] = world.present(datetime.fromtimestamp(second, timezone.utc))
        return presence[second]

    found: dict[tuple[str, str, int], Visit] = {}
    begin = datetime.fromtimestamp(first, timezone.utc)
    span = timedelta(minutes=10)
    while len(found) < count:
        entries = sorted(
            world.entries(begin, begin + span - timedelta(seconds=1)), key=lambda e: (e[2], e[0])
        )
        for camera, person, seen_at in entries:
            start = int(seen_at.timestamp())
            if (camera, person, start) in found:
                continue  # the same person logged twice in that second: one visit
            in_view = any(
                person in present(s).get(camera, ()) for s in range(start - PRESENCE_TIMEOUT, start)
            )
            found[(camera, person, start)] = Visit(camera, person, start, in_view)
            if len(found) == count:
                break
        begin += span
    return sorted(found.values(), key=lambda v: v.start)


@dataclass(frozen=True)
class Clock:
    """The simulator's clock against our wall clock: `sim = origin + speed * (wall - origin)`."""

    origin: float
    speed: float
    round_trip: float  # of the request that set it: a latency is too long by at most this

    def wall(self, sim: float) -> float:
        return self.origin + (sim - self.origin) / self.speed

    def sim(self, wall: float) -> float:
        return self.origin + self.speed * (wall - self.origin)


def set_clock(api_url: str, speed: float) -> Clock:
    """Sets the simulator's clock to our wall clock and `speed` (`POST /admin/clock`). It takes
    the time sent as its now somewhere within the request's round trip, so it runs behind the
    mapping by at most the round trip: a visit starts at most that much later than `wall()`
    says. Sent again (up to 5 times) while the round trip is over 5 ms."""
    with httpx.Client(headers={"x-api-key": API_KEY}, timeout=10) as session:
        session.get(f"{admin_url(api_url)}/clock").raise_for_status()  # the connection is up
        for _ in range(5):
            sent = time.time()
            now = datetime.fromtimestamp(sent, timezone.utc).isoformat()
            session.post(f"{admin_url(api_url)}/clock", json={"now": now, "speed": speed}).raise_for_status()
            trip = time.time() - sent
            if trip <= 0.005:
                break
    return Clock(sent, speed, trip)


def api_requests(api_url: str) -> dict[str, int]:
    """Requests served so far per FaceSpace endpoint (`logs`, `recognition`)."""
    stats = admin(api_url, "GET", "stats")["requests"]
    counts = {"logs": 0, "recognition": 0}
    for path, codes in stats.items():
        for name in counts:
            if path.endswith(f"/{name}"):
                counts[name] += sum(codes.values())
    return counts


def nearest_rank(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Result:
    mode: str
    visits: list[Visit]
    latencies: dict[str, dict[Visit, float]]  # reader -> visit -> seconds
    missing: dict[str, int]
    requests: dict[str, float]  # endpoint -> per minute
    cpu_percent: float  # the bridge's, of one core, over the measured span
    load: str


def measure(
    mode: str, world: World, clock: Clock, api_url: str, tansu: TansuBroker, mqtt: MqttBroker,
    workdir: Path, count: int, warmup: float,
) -> Result:  # fmt: skip
    """One bridge in `mode` (see MODES) and the next `count` visits after `warmup` seconds."""
    _, flags = MODES[mode]
    name = mode.replace("-", "")
    topics, prefix, port = f"bench.latency.{name}", f"latency{name}", free_port()
    log_path = workdir / f"bridge-{mode}.log"
    command = [
        *CLI, "run", "--broker", "kafka", "--broker", "mqtt", "--refresh", str(REFRESH), *flags,
        "--bootstrap-servers", tansu.bootstrap, "--topic", f"{topics}.sightings",
        "--presence-topic", f"{topics}.presence", "--deadletter-topic", f"{topics}.deadletter",
        "--mqtt-url", mqtt.url, "--topic-prefix", prefix,
        "--checkpoint", str(workdir / f"checkpoint-{mode}.json"),
        "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--log-level", "warning",
    ]  # fmt: skip
    mqtt_reader = MqttReader(mqtt, prefix)
    kafka_reader: KafkaReader | None = None
    with open(log_path, "wb") as log_file:
        bridge = subprocess.Popen(command, env=child_env(api_url), stdout=log_file, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
    try:
        began = time.time()
        wait_until(lambda: ready(port) or bridge.poll() is not None, 60, 0.2, "the bridge to be ready")
        if bridge.poll() is not None:
            raise SystemExit(f"the bridge exited {bridge.returncode}: {log_path.read_text()[-2000:]}")
        kafka_reader = KafkaReader(tansu.bootstrap, f"{topics}.sightings")
        first = math.ceil(clock.sim(began + warmup))  # a simulator second
        visits = visits_from(world, first, count)
        first_at, last_at = clock.wall(first), clock.wall(visits[-1].start)
        print(f"  {mode}: {count} visits over {last_at - first_at:.0f} s, "
              f"from {first_at - time.time():.0f} s on", file=sys.stderr)  # fmt: skip
        time.sleep(max(0.0, first_at - time.time()))
        probe = Probe(bridge.pid)
        requests_before, cpu_before, span_began = api_requests(api_url), probe.cpu(), time.monotonic()
        loads = [Path("/proc/loadavg").read_text().split()[0]]
        time.sleep(max(0.0, last_at - time.time()))
        requests_after, cpu_after = api_requests(api_url), probe.cpu()
        span = time.monotonic() - span_began
        loads.append(Path("/proc/loadavg").read_text().split()[0])
        # The last visits' sightings: within a regular poll, or missing.
        readers = {"Kafka record": kafka_reader.arrivals, "MQTT message": mqtt_reader.arrivals}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(
            r.get(v.key) is not None for r in readers.values() for v in visits
        ):
            time.sleep(0.1)
        if bridge.poll() is not None:
            raise SystemExit(f"the bridge exited {bridge.returncode}: {log_path.read_text()[-2000:]}")
    finally:
        code = stop(bridge)
        if kafka_reader is not None:
            kafka_reader.close()
        mqtt_reader.close()
    if code not in (0, None):
        print(f"the bridge exited {code} at SIGTERM: {log_path.read_text()[-2000:]}", file=sys.stderr)
    latencies: dict[str, dict[Visit, float]] = {}
    missing: dict[str, int] = {}
    for reader, arrivals in readers.items():
        latencies[reader] = {}
        for visit in visits:
            at = arrivals.get(visit.key)
            if at is not None:
                latencies[reader][visit] = at - clock.wall(visit.start)
        missing[reader] = len(visits) - len(latencies[reader])
    per_minute = {path: 60 * (requests_after[path] - requests_before[path]) / span for path in requests_after}
    per_minute["total"] = sum(per_minute.values())
    cpu = 100 * (cpu_after - cpu_before) / span
    return Result(mode, visits, latencies, missing, per_minute, cpu, " → ".join(loads))


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """(p50, p99, max) in ms."""
    ms = [1000 * s for s in seconds]
    return statistics.median(ms), nearest_rank(ms, 0.99), max(ms)


def table(results: list[Result]) -> str:
    lines = [
        "| bridge | to | visits | p50 ms | p99 ms | max ms | missing | API requests/min "
        "(`/recognition` + `/logs`) | bridge CPU % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for reader, values in r.latencies.items():
            p50, p99, most = percentiles(list(values.values())) if values else (math.nan,) * 3
            requests = r.requests
            lines.append(
                f"| {MODES[r.mode][0]} | {reader} | {len(r.visits)} | {p50:.0f} | {p99:.0f} | {most:.0f} "
                f"| {r.missing[reader]} | {requests['total']:.1f} ({requests['recognition']:.1f} "
                f"+ {requests['logs']:.1f}) | {r.cpu_percent:.1f} |"
            )
    return "\n".join(lines)


def by_kind(results: list[Result]) -> str:
    lines = [
        "| bridge | visits | n | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results:
        values = r.latencies["Kafka record"]
        for kind, in_view in (("arrival on `/recognition`", False), ("already in view", True)):
            seconds = [s for v, s in values.items() if v.in_view is in_view]
            if seconds:
                p50, p99, most = percentiles(seconds)
                lines.append(f"| {MODES[r.mode][0]} | {kind} | {len(seconds)} | {p50:.0f} | {p99:.0f} "
                             f"| {most:.0f} |")  # fmt: skip
    return "\n".join(lines)


def check_world(api_url: str, world: World, visits: list[Visit]) -> None:
    """The simulator holds the visits this process computed (same world): its ground truth over
    their span equals ours."""
    first, last = (datetime.fromtimestamp(s, timezone.utc) for s in (visits[0].start, visits[-1].start))
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    theirs = admin(api_url, "GET", f"truth?start={first.strftime(stamp)}&end={last.strftime(stamp)}")[
        "entries"
    ]
    ours = [[c, p, s.strftime(stamp)] for c, p, s in world.entries(first, last)]
    if theirs != ours:
        raise SystemExit(f"the simulator's world differs from ours ({len(theirs)} vs {len(ours)} entries)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=300, help="visits measured per mode")
    parser.add_argument("--cameras", type=int, default=20)
    parser.add_argument("--people", type=int, default=200)
    parser.add_argument("--visits-per-hour", type=float, default=120.0, help="per camera")
    parser.add_argument(
        "--warmup", type=float, default=15.0, help="seconds from a bridge's start to its first visit"
    )
    parser.add_argument("--modes", default="on,off", help=f"bridges to run, of: {', '.join(MODES)}")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--speed", type=float, default=1.01,
                        help="the simulator's clock speed: 1.01 moves the seconds, at which visits start, "
                        "through every phase of the bridge's 1 s polls every 100 s")  # fmt: skip
    options = parser.parse_args()
    modes = [m.strip() for m in options.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: choose from {', '.join(MODES)}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        (workdir / "tansu").mkdir()
        tansu, mqtt = TansuBroker(workdir / "tansu"), MqttBroker(workdir)
        simulator: subprocess.Popen[str] | None = None
        try:
            tansu.start()
            tansu.wait_for_metadata()
            mqtt.start()
            simulator, api_url = start_simulator([
                "--seed", str(options.seed), "--cameras", str(options.cameras),
                "--people", str(options.people), "--visits-per-hour", str(options.visits_per_hour),
                "--history-hours", "1", "--speed", "1",
            ])  # fmt: skip
            # The simulator's visits: they depend on the seed and the config, not on the clock. This
            # copy is frozen hours ahead, so that `entries()` lists the coming visits.
            ahead = datetime.now(timezone.utc) + timedelta(hours=6)
            world = World(WorldConfig(
                seed=options.seed, cameras=options.cameras, people=options.people,
                visits_per_hour=options.visits_per_hour, history_hours=7, now=ahead, speed=0.0,
            ))  # fmt: skip
            clock = set_clock(api_url, options.speed)  # before any bridge: none sees the clock jump
            print(f"Tansu at {tansu.bootstrap}, Mosquitto at {mqtt.url}, simulator at {api_url}: "
                  f"{options.cameras} cameras x {options.visits_per_hour:g} visits/h, {options.people} "
                  f"people, live clock", file=sys.stderr)  # fmt: skip
            for mode in modes:
                result = measure(mode, world, clock, api_url, tansu, mqtt, workdir, options.visits,
                                 options.warmup)  # fmt: skip
                check_world(api_url, world, result.visits)
                results.append(result)
        finally:
            stop(simulator)
            mqtt.stop()
            tansu.stop()

    print(f"\nSighting latency, visit start -> Kafka record / MQTT message; `run --broker kafka --broker "
          f"mqtt --refresh {REFRESH:g}` (--tail-interval 5 unless said); {options.cameras} cameras x "
          f"{options.visits_per_hour:g} visits/h, {options.people} people\n")  # fmt: skip
    print(table(results))
    print("\nTo the Kafka record, by what /recognition shows at the visit's start:\n")
    print(by_kind(results))
    print()
    print(f"simulator clock at speed {clock.speed:g}, set with a round trip of "
          f"{1000 * clock.round_trip:.1f} ms (latencies are too long by at most that)")  # fmt: skip
    for r in results:
        print(f"{r.mode}: load average {r.load} (1 min, at the first and the last visit)")
    on = next((r for r in results if r.mode == "on"), None)
    off = next((r for r in results if r.mode == "off"), None)
    if on is not None:
        limit = REFRESH + SLACK
        for reader, values in on.latencies.items():
            p99 = nearest_rank(list(values.values()), 0.99) if values else math.inf
            if on.missing[reader] > len(on.visits) // 100:
                p99 = math.inf  # over 1 % never arrived
            verdict = "met" if p99 <= limit else "MISSED"
            print(f"with quick polls, -> {reader}: p99 {1000 * p99:.0f} ms (target <= refresh + 250 ms = "
                  f"{1000 * limit:.0f} ms): {verdict}")  # fmt: skip
        if off is not None:
            factor = on.requests["total"] / off.requests["total"]
            verdict = "met" if factor <= REQUEST_FACTOR else "MISSED"
            print(f"API requests: {on.requests['total']:.1f}/min with quick polls, "
                  f"{off.requests['total']:.1f}/min without: {factor:.2f}x (target <= {REQUEST_FACTOR:g}x): "
                  f"{verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
