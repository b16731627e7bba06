"""Which sinks exist, their CLI options, and how `--broker NAME` becomes a `Sink`.

Each sink module (sinks/<name>.py) provides, beside its `Sink` subclass:

    OPTIONS: list of click.option decorators -- the flags it adds to `run` and `replay`
    def from_config(config: Mapping[str, Any], *, replay: bool = False) -> Sink
        builds the sink from the parsed options (all commands' options, by click
        parameter name). It validates and raises `click.BadParameter` /
        `click.UsageError` for bad input, and does no I/O: connecting is `start()`.
        `replay` is True for `facespace-bridge replay`: the events are history published
        again, not happening now (a sink that triggers actions, such as Home Assistant
        event entities, must not act on them).

Options that several sinks read are defined once, beside the code that reads them, and
listed in SHARED_OPTIONS: `--no-cloudevents` (facespace_bridge/cloudevents.py) turns off
the CloudEvents headers of the Kafka and the webhook sink alike.

Adding a sink is one new file plus one line in SINK_MODULES.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from facespace_bridge import cloudevents
from facespace_bridge.sinks.base import Sink

SINK_MODULES: dict[str, str] = {
    "kafka": "facespace_bridge.sinks.kafka",
    "mqtt": "facespace_bridge.sinks.mqtt",
    "webhook": "facespace_bridge.sinks.webhook",
    "file": "facespace_bridge.sinks.file",
}

# Added once to each command, after every sink's own options.
SHARED_OPTIONS: list[Callable[[Any], Any]] = [*cloudevents.OPTIONS]

F = TypeVar("F", bound=Callable[..., Any])


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(SINK_MODULES[name])
    except ModuleNotFoundError as exc:  # a sink not written yet
        if exc.name == SINK_MODULES[name]:
            return None
        raise


def sink_options(command: F) -> F:
    """Decorate a click command with every sink's options, then the shared ones."""
    for option in reversed(SHARED_OPTIONS):
        command = option(command)
    for name in reversed(list(SINK_MODULES)):
        module = _module(name)
        for option in reversed(getattr(module, "OPTIONS", []) if module else []):
            command = option(command)
    return command


def build_sinks(names: Iterable[str], config: Mapping[str, Any], *, replay: bool = False) -> list[Sink]:
    """One sink per distinct `--broker` name, validated, not yet started (`replay`: see above)."""
    sinks = []
    for name in dict.fromkeys(names):
        module = _module(name)
        if module is None:
            raise KeyError(name)
        sinks.append(module.from_config(config, replay=replay))
    return sinks
