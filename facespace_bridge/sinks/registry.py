"""Which sinks exist, their CLI options, and how `--broker NAME` becomes a `Sink`.

Each sink module (sinks/<name>.py) provides, beside its `Sink` subclass:

    HELP: one line for the `--broker` help (what the sink is)
    OPTIONS: list of click.option decorators -- the flags it adds to `run` and `replay`,
        made from its settings dataclass (`settings.cli_options`), whose `from_options`
        `from_config` reads back, so each option's default is written once
    SECRET_VARIABLES: environment variables holding secrets (passwords); their values are
        redacted from every log line once the sink is chosen
    def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> Sink
        builds the sink from the parsed options (all commands' options, by click
        parameter name). It validates and raises `click.BadParameter` /
        `click.UsageError` for bad input, and does no I/O: connecting is `start()`.
        `role` says who runs it (sinks/base.Role): only the bridge touches what the
        bridge owns (client id, availability, extensions, transactions); a replay's events
        are history published again, not happening now (a sink that triggers actions,
        such as Home Assistant event entities, must not act on them); a check only
        connects.

Options that several sinks read are defined once, beside the code that reads them, and
listed in SHARED_OPTIONS: `--no-cloudevents` (facespace_bridge/cloudevents.py) turns off
the CloudEvents headers of the Kafka and the webhook sink alike.

Adding a sink is one new file (or package) under sinks/: every public module there other
than base.py and this one is a sink, named after its file, and found here by itself.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from facespace_bridge import cloudevents
from facespace_bridge.client import redactor
from facespace_bridge.sinks.base import Role, Sink

_NOT_SINKS = frozenset({"base", "registry"})


def _sink_modules() -> dict[str, str]:
    """`--broker` name -> module, for every sink module of this package, by name."""
    package = importlib.import_module("facespace_bridge.sinks")
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if not info.name.startswith("_") and info.name not in _NOT_SINKS
    )
    return {name: f"{package.__name__}.{name}" for name in names}


SINK_MODULES: dict[str, str] = _sink_modules()

# Added once to each command, after every sink's own options.
SHARED_OPTIONS: list[Callable[[Any], Any]] = [*cloudevents.OPTIONS]

F = TypeVar("F", bound=Callable[..., Any])


def _module(name: str) -> ModuleType:
    return importlib.import_module(SINK_MODULES[name])


def broker_help() -> str:
    """The `--broker` help text, from the sinks' own one-line descriptions."""
    return "Where events go; repeat for several: " + "; ".join(
        f"{name} ({getattr(_module(name), 'HELP', name)})" for name in SINK_MODULES
    )


def sink_options(command: F) -> F:
    """Decorate a click command with every sink's options, then the shared ones."""
    for option in reversed(SHARED_OPTIONS):
        command = option(command)
    for name in reversed(list(SINK_MODULES)):
        for option in reversed(getattr(_module(name), "OPTIONS", [])):
            command = option(command)
    return command


def build_sinks(names: Iterable[str], config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> list[Sink]:
    """One sink per distinct `--broker` name, validated, not yet started, for `role` (see above).
    The chosen sinks' secrets are registered for redaction first, before anything can log."""
    modules = [_module(name) for name in dict.fromkeys(names)]
    for module in modules:
        for variable in getattr(module, "SECRET_VARIABLES", ()):
            if os.environ.get(variable):
                redactor.add(os.environ[variable])
    return [module.from_config(config, role=role) for module in modules]
