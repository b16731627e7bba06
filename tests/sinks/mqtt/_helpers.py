"""What the MQTT sink tests share: a sink on a test broker, with or without the Home
Assistant extension, its delays shortened so that tests do not wait for them; the bridge
as a process (`Bridge`) and Home Assistant's view of its entities."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from facespace_bridge.simulator import SimulatorServer
from facespace_bridge.sinks.mqtt import MqttSettings, MqttSink
from facespace_bridge.sinks.mqtt.homeassistant import HomeAssistant, HomeAssistantSettings
from facespace_bridge.sinks.mqtt.topics import TopicLayout
from tests.fixtures.homeassistant import HomeAssistant as HomeAssistantClient
from tests.fixtures.mqtt import MqttBroker


def ha_for(topic_prefix: str = "facespace", **settings: Any) -> HomeAssistant:
    """The extension with `settings` (HomeAssistantSettings' fields), its delays shortened."""
    return HomeAssistant(
        TopicLayout(topic_prefix),
        HomeAssistantSettings(**settings),
        reannounce_delay=(0.01, 0.05),
        migration_pause=0.05,
    )


def sink_for(
    broker: MqttBroker, *, ha: bool | HomeAssistant = True, topic_prefix: str = "facespace", **kwargs: Any
) -> MqttSink:
    """A sink on `broker`; `ha`: the default extension, none, or this one; `kwargs`: fields of
    MqttSettings and keywords of MqttSink."""
    extension = ha_for(topic_prefix) if ha is True else ha or None
    fields = {f.name for f in dataclasses.fields(MqttSettings)}
    own = {k: v for k, v in kwargs.items() if k in fields}
    settings = MqttSettings(url=broker.url, topic_prefix=topic_prefix, **own)
    options: dict[str, Any] = {"reconnect_delay": (0.05, 0.5), "connect_timeout": 5.0, "close_timeout": 2.0}
    return MqttSink(
        settings,
        extensions=[extension] if extension is not None else [],
        **(options | {k: v for k, v in kwargs.items() if k not in fields}),
    )


class Bridge:
    """`facespace-bridge run --broker mqtt` as a process, logging to a file."""

    def __init__(self, sim: SimulatorServer, broker: MqttBroker, tmp_path: Path, *args: str) -> None:
        run = len(list(tmp_path.glob("bridge-*.log")))
        self.log = tmp_path / f"bridge-{run}.log"
        if "--checkpoint" not in args:
            args = ("--checkpoint", str(tmp_path / "checkpoint.json"), *args)
        #: the options of `run` (`check` takes the same)
        self.options = [
            "--broker", "mqtt", "--mqtt-url", broker.url, "--api-url", sim.base_url,
            "--refresh", "0.2", "--tail-interval", "0.5", "--presence-timeout", "1", *args,
        ]  # fmt: skip
        self.env = {**os.environ, "FACESPACE_API_KEY": sim.api_key}
        command = [sys.executable, "-m", "facespace_bridge", "run", *self.options]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=out, stdin=subprocess.DEVNULL
            )

    def running(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()[-3000:]
        return True

    async def stop(self) -> None:
        self.proc.terminate()
        assert await asyncio.to_thread(self.proc.wait, 30) == 0, self.log.read_text()[-3000:]
        assert "Traceback" not in self.log.read_text()

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(self.proc.wait)


async def registry_of(ha: HomeAssistantClient) -> dict[str, str]:
    """unique id -> entity id, of the MQTT entities Home Assistant has."""
    return {e["unique_id"]: e["entity_id"] for e in await ha.entity_registry("mqtt")}
