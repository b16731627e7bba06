"""`facespace-bridge check`: validate the configuration and reach the API and every broker.

Takes exactly the options of `run`, prints one line per check, exits 0 when all pass
and 1 otherwise (bad input still exits 2 before any check).

A side client (sinks/base.Role.CHECK): it may run beside the bridge it checks, so its sinks
connect with their own client ids, publish no availability, run no extensions, retain
nothing and take no Kafka transactional id; the transactions probe of `--exactly-once`
writes only to its own probe topic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import click

from facespace_bridge.checkpoints import store_from_config
from facespace_bridge.commands import run
from facespace_bridge.commands._common import (
    page_host,
    preflight,
    prepare,
    require_transactions,
    warn_if_short,
)
from facespace_bridge.sinks import Role, Sink
from facespace_bridge.web import can_bind


def _check(**config: Any) -> int:
    api_key, sinks, _ = prepare(config, Role.CHECK)
    warn_if_short(api_key)
    return asyncio.run(_reach(config, api_key, sinks))


async def _reach(config: dict[str, Any], api_key: str, sinks: list[Sink]) -> int:
    failures = 0

    def line(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")

    line("config", True, f"brokers {', '.join(config['broker'])}")
    try:
        snapshot = await preflight(config, api_key)
        line("api", True, f"{config['api_url']} answered ({len(snapshot)} cameras in view)")
    except click.UsageError as exc:
        line("api", False, exc.format_message())
    if config["exactly_once"]:
        try:
            why = await require_transactions(sinks)
            line("exactly-once", True, f"the Kafka broker's transactions work: {why}")
        except click.UsageError as exc:
            line("exactly-once", False, exc.format_message())
    for sink in sinks:
        try:
            await sink.start()
            line(sink.name, True, "connected")
        except Exception as exc:  # report every failure as one line; nothing else to do here
            line(sink.name, False, str(exc) or type(exc).__name__)
        finally:
            try:
                await sink.close()
            except Exception:  # closing a sink that never started
                pass
    try:
        store = store_from_config(config)
        # A running bridge holds the file store's lock: then only read, as `checkpoint show` does.
        holder = store.holder()
        if holder is None:
            await store.open()
        checkpoint = await store.load()
        await store.close()
        where = "none yet" if checkpoint is None else f"resumes at {checkpoint.earliest()}"
        if holder is not None:
            where += f"; in use by {holder} (a bridge with this checkpoint is running)"
        line("checkpoint", True, f"{store.describe()}: {where}")
    except Exception as exc:
        line("checkpoint", False, str(exc))
    if config.get("web_port") is not None:
        host = page_host(config)
        where = f"{host}:{config['web_port']}"
        problem = can_bind(host, config["web_port"])
        line(
            "web",
            problem is None,
            f"the page can listen on {where}" if problem is None else f"{where}: {problem}",
        )
    return 1 if failures else 0


command = click.Command(
    "check",
    params=list(run.command.params),
    callback=_check,
    help="Validate the configuration and reach the API and each broker (one line per check).",
)
