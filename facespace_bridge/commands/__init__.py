"""One module per CLI command; `facespace_bridge.cli` assembles them."""

from __future__ import annotations

import importlib
import pkgutil

import click


def load_all() -> list[click.Command]:
    """Every command: each module here exports one click command named `command`."""
    commands = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "command", None)
        if isinstance(command, click.Command):
            commands.append(command)
    return commands
