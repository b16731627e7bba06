"""`facespace-bridge demo` (and `make demo`): the whole pipeline on one machine.

The simulator (live clock), an embedded Kafka-protocol broker (Tansu), an MQTT broker
(Mosquitto, or amqtt), and the bridge publishing to both, with a live view of events per
camera and the web page (docs/web.md) on a free loopback port. Ctrl-C stops everything
cleanly. Nothing is written outside a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from facespace_bridge.bridge import Bridge
from facespace_bridge.checkpoints import store_from_config
from facespace_bridge.commands import run
from facespace_bridge.commands._common import make_client, page_state, prepare, serve_page, setup_logging
from facespace_bridge.embedded import EmbeddedBrokerError, MqttBroker, TansuBroker
from facespace_bridge.events import Event, parse_rfc3339, seen_at_text
from facespace_bridge.sinks.base import Ack, Sink


@dataclass
class CameraRow:
    sightings: int = 0
    last: str = ""
    people: tuple[str, ...] = ()
    # When the recent sightings happened (seen_at, epoch seconds): "per min" counts those of the
    # last minute, so the backfilled history never shows up as a burst of live traffic.
    times: list[float] = field(default_factory=list)


class ViewSink(Sink):
    """The live view is one more sink: it sees every event the bridge hands over."""

    name = "view"

    def __init__(self) -> None:
        self.cameras: dict[str, CameraRow] = {}
        self.kinds: Counter[str] = Counter()

    async def publish(self, events: Sequence[Event]) -> Ack:
        for event in events:
            self._show(event)
        done: Ack = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def _show(self, event: Event) -> None:
        self.kinds[event.kind] += 1
        if event.camera_id:
            row = self.cameras.setdefault(event.camera_id, CameraRow())
            if event.kind == "sighting":
                fields = event.fields
                row.sightings += 1
                row.last = f"{fields['person']} @ {fields['seen_at'][11:19]}"
                seen_at = parse_rfc3339(fields["seen_at"]).timestamp()
                if time.time() - seen_at < 60:
                    row.times.append(seen_at)
                    del row.times[:-200]
            elif event.kind == "presence":
                row.people = tuple(event.fields["people"])


def _acked(bridge: Bridge) -> dict[str, int]:
    totals: Counter[str] = Counter()
    for metric in bridge.metrics.published.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                totals[sample.labels["sink"]] += int(sample.value)
    return dict(totals)


def _table(view: ViewSink, bridge: Bridge, brokers: str) -> Table:
    now = time.time()
    table = Table(title=f"facespace-bridge demo — {brokers} — Ctrl-C to stop", expand=False)
    for column in ("camera", "sightings", "per min", "in view now", "last sighting"):
        table.add_column(column, justify="right" if column in ("sightings", "per min") else "left")
    for camera in sorted(view.cameras):
        row = view.cameras[camera]
        per_min = sum(1 for t in row.times if now - t < 60)
        here = ", ".join(row.people[:3]) + (f" +{len(row.people) - 3}" if len(row.people) > 3 else "")
        table.add_row(camera, str(row.sightings), str(per_min), here or "—", row.last)
    acked = ", ".join(f"{sink} {count}" for sink, count in sorted(_acked(bridge).items()) if sink != "view")
    in_flight = bridge.tracker.in_flight if bridge.tracker else 0
    table.caption = (
        f"acknowledged: {acked or '—'} · presence events {view.kinds['presence']} · "
        f"dead letters {view.kinds['deadletter']} · in flight {in_flight}"
    )
    return table


def watch_commands(bootstrap: str | None, mqtt: MqttBroker | None) -> list[str]:
    """Commands that show the demo's brokers at work, runnable as printed from the current
    directory. Kafka: the example consumer (Debian's kcat, librdkafka 2.0, cannot read
    Tansu's ApiVersions reply), where the source tree is at hand; MQTT: mosquitto_sub."""
    hints = []
    example = Path(__file__).resolve().parents[2] / "examples" / "kafka_consumer.py"
    if bootstrap and example.exists():
        hints.append(
            f"{_path(sys.executable)} {_path(str(example))} --bootstrap-servers {bootstrap} --db :memory:"
        )
    if mqtt is not None and shutil.which("mosquitto_sub"):
        hints.append(f"mosquitto_sub -h {mqtt.host} -p {mqtt.port} -t 'facespace/#' -v")
    return hints


def _path(path: str) -> str:
    """`path` relative to the current directory when it lies below it (shorter to read), else as is."""
    relative = os.path.relpath(path)
    if relative.startswith(".."):
        return path
    return relative if os.sep in relative else os.path.join(".", relative)


@click.command("demo")
@click.option("--cameras", type=click.IntRange(1, 100), default=4, show_default=True)
@click.option("--people", type=click.IntRange(1, 1000), default=12, show_default=True)
@click.option(
    "--visits-per-hour", type=click.FloatRange(min=1), default=600.0, show_default=True, help="Per camera."
)
@click.option(
    "--backfill-minutes",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="History published first, before the live tail.",
)
@click.option(
    "--duration", type=click.FloatRange(min=1), help="Stop after this many seconds (default: Ctrl-C)."
)
@click.option("--kafka/--no-kafka", default=True, show_default=True, help="Run the embedded Kafka broker.")
@click.option("--mqtt/--no-mqtt", default=True, show_default=True, help="Run the embedded MQTT broker.")
def command(cameras: int, people: int, visits_per_hour: float, backfill_minutes: float,
            duration: float | None, kafka: bool, mqtt: bool) -> int:  # fmt: skip
    """The whole pipeline on this machine: simulator, Kafka, MQTT, the bridge, a live view."""
    from facespace_bridge.simulator import SimulatorServer

    if not (kafka or mqtt):
        raise click.UsageError("the demo needs --kafka or --mqtt (or both)")
    setup_logging("text", "warning")
    console = Console(stderr=True)
    workdir = Path(tempfile.mkdtemp(prefix="facespace-demo-"))
    started: list[Any] = []
    broker: MqttBroker | None = None
    try:
        with console.status("starting the simulator and the brokers ..."):
            simulator = SimulatorServer(
                cameras=cameras, people=people, visits_per_hour=visits_per_hour,
                history_hours=backfill_minutes / 60 + 0.5, now=None, speed=1.0, seed=int(time.time()) % 1000,
            ).start()  # fmt: skip
            started.append(simulator)
            argv = ["--api-url", simulator.base_url, "--checkpoint", str(workdir / "checkpoint.json"),
                    "--tail-interval", "2", "--refresh", "1", "--presence-timeout", "5",
                    "--web-port", "0"]  # fmt: skip
            if backfill_minutes:
                since = datetime.now(timezone.utc) - timedelta(minutes=backfill_minutes)
                argv += ["--backfill-from", seen_at_text(since)]
            if kafka:
                (workdir / "kafka").mkdir()
                tansu = TansuBroker(workdir / "kafka", own_session=True).start()
                started.append(tansu)
                tansu.wait_for_metadata()
                argv += ["--broker", "kafka", "--bootstrap-servers", tansu.bootstrap]
            if mqtt:
                (workdir / "mqtt").mkdir()
                broker = MqttBroker(workdir / "mqtt", own_session=True).start()
                started.append(broker)
                argv += ["--broker", "mqtt", "--mqtt-url", broker.url]
        # The same option parsing and validation as `facespace-bridge run`.
        os.environ.setdefault("FACESPACE_API_KEY", simulator.api_key)
        with run.command.make_context("run", argv) as ctx:
            config = ctx.params
        api_key, sinks, options = prepare(config)
        where = " · ".join(
            [f"Kafka {config['bootstrap_servers']}"] * kafka + [f"MQTT {config['mqtt_url']}"] * mqtt
        )
        console.print(f"simulator {simulator.base_url} · {where}", soft_wrap=True)
        hints = watch_commands(config.get("bootstrap_servers") if kafka else None, broker)
        if hints:
            console.print("watch it from another terminal, in this directory:", soft_wrap=True)
            for hint in hints:
                console.print(f"  {hint}", soft_wrap=True, markup=False, highlight=False)
        view = ViewSink()
        return asyncio.run(_show(config, api_key, [*sinks, view], options, view, where, duration, console))
    except EmbeddedBrokerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        for part in reversed(started):
            part.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def _show(config: dict[str, Any], api_key: str, sinks: list[Sink], options: Any, view: ViewSink,
                where: str, duration: float | None, console: Console) -> int:  # fmt: skip
    client = make_client(config, api_key)
    state = page_state(config)
    bridge = Bridge(client, sinks, store_from_config(config), options, page=state)
    page = None
    if state is not None:
        page, url = await serve_page(config, state, bridge)
        console.print(f"web page: {url}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if duration:
        loop.call_later(duration, stop.set)
    task = asyncio.create_task(bridge.run(stop))
    try:
        with Live(_table(view, bridge, where), console=console, refresh_per_second=2) as live:
            while not task.done():
                await asyncio.wait([task], timeout=0.5)
                live.update(_table(view, bridge, where))
        await task
    finally:
        if page is not None:
            await page.close()
        await client.aclose()
    acked = _acked(bridge)
    console.print(
        f"\nstopped: {view.kinds['sighting']} sightings, {view.kinds['presence']} presence events, "
        f"{view.kinds['deadletter']} dead letters; acknowledged "
        + ", ".join(f"{sink} {n}" for sink, n in sorted(acked.items()) if sink != "view"),
        soft_wrap=True,
    )
    return 0
