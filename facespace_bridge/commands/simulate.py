"""`facespace-bridge simulate`: serve the FaceSpace API simulator until SIGINT/SIGTERM.

Prints exactly one line on stdout, `FACESPACE_API_URL=<base url>`, once it listens;
everything else goes to stderr. See docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from datetime import datetime, timezone
from typing import Any

import click

from facespace_bridge.commands._common import register_secret, setup_logging, with_env
from facespace_bridge.simulator import DEMO_API_KEY, AsyncSimulator, Faults, WorldConfig

log = logging.getLogger("facespace_bridge.simulator")

_RATE = click.FloatRange(0.0, 1.0)


def _parse_now(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not ISO 8601, e.g. 2023-10-25T00:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _simulate(**options: Any) -> None:
    api_key = options["api_key"]
    if not api_key:
        raise click.BadParameter("must not be empty", param_hint="--api-key")
    try:
        config = WorldConfig(
            seed=options["seed"],
            cameras=options["cameras"],
            camera_ids=tuple(options["camera_id"]) or None,
            people=options["people"],
            history_hours=options["history_hours"],
            visits_per_hour=options["visits_per_hour"],
            now=options["now"],
            speed=options["speed"],
            odd_names=options["odd_names"],
            companion=options["companion"],
        )
        faults = Faults(
            error_rate=options["error_rate"],
            throttle_rate=options["throttle_rate"],
            drop_rate=options["drop_rate"],
            retry_after=options["retry_after"],
            latency_ms=options["latency_ms"],
            malformed_rate=options["malformed_rate"],
            flicker_rate=options["flicker_rate"],
            stop_signal=options["stop_signal"],
            seed=options["fault_seed"] if options["fault_seed"] is not None else options["seed"],
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(log_level=options["log_level"])
    register_secret(api_key)
    simulator = AsyncSimulator(
        config, api_key=api_key, host=options["host"], port=options["port"], faults=faults
    )
    asyncio.run(_serve(simulator))


async def _serve(simulator: AsyncSimulator) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await simulator.start()
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from None
    world = simulator.world
    log.info(
        "serving %d cameras, %d people, clock at %s running at %gx, history from %s",
        len(world.cameras()),
        len(world.people()),
        f"{world.now():%Y-%m-%dT%H:%M:%SZ}",
        world.clock.speed,
        f"{datetime.fromtimestamp(world.origin, timezone.utc):%Y-%m-%dT%H:%M:%SZ}",
    )
    sys.stdout.write(f"FACESPACE_API_URL={simulator.base_url}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await simulator.stop()


command = with_env(
    click.Command(
        "simulate",
        callback=_simulate,
        help=(
            "Serve the FaceSpace API simulator (deterministic world, fault injection, admin API).\n\n"
            "Prints FACESPACE_API_URL=<base url> on stdout when it listens; runs until SIGINT/SIGTERM."
        ),
        params=[
            click.Option(["--host"], default="127.0.0.1", show_default=True, help="Address to listen on."),
            click.Option(
                ["--port"],
                type=click.IntRange(0, 65535),
                default=8123,
                show_default=True,
                help="Port to listen on; 0 picks a free one.",
            ),
            click.Option(
                ["--api-key"],
                envvar="FACESPACE_API_KEY",
                default=DEMO_API_KEY,
                show_default=True,
                help="The key clients must send in x-api-key. Prefer env FACESPACE_API_KEY (ps shows argv).",
            ),
            click.Option(["--seed"], type=int, default=0, show_default=True, help="Seed of the world."),
            click.Option(
                ["--cameras"],
                type=click.IntRange(min=1),
                default=4,
                show_default=True,
                help="Number of cameras, Camera1..CameraN.",
            ),
            click.Option(
                ["--camera-id"],
                multiple=True,
                help="Explicit camera id (repeatable); replaces Camera1..N.",
            ),
            click.Option(["--people"], type=click.IntRange(min=1), default=20, show_default=True),
            click.Option(
                ["--companion"],
                metavar="NAME",
                help="A person seen on every camera, in the same second as half of the others' "
                "visits (for trying the filters: docs/privacy.md).",
            ),
            click.Option(
                ["--history-hours"],
                type=click.FloatRange(min=0),
                default=24.0,
                show_default=True,
                help="History before the start of the clock.",
            ),
            click.Option(
                ["--visits-per-hour"],
                type=click.FloatRange(min=0),
                default=60.0,
                show_default=True,
                help="Visits (history entries) per camera per simulated hour, on average.",
            ),
            click.Option(
                ["--now"],
                callback=_parse_now,
                help="ISO 8601 UTC start of the simulated clock (default: the real time).",
            ),
            click.Option(
                ["--speed"],
                type=click.FloatRange(min=0),
                default=1.0,
                show_default=True,
                help="Simulated seconds per real second; 0 freezes the clock.",
            ),
            click.Option(
                ["--odd-names"], is_flag=True, help="Add people and cameras with '@', '/', '+', '#'."
            ),
            click.Option(["--stop-signal"], is_flag=True, help="/recognition answers the stop reply."),
            click.Option(
                ["--error-rate"],
                type=_RATE,
                default=0.0,
                show_default=True,
                help="Share of requests answered 500/503.",
            ),
            click.Option(
                ["--throttle-rate"],
                type=_RATE,
                default=0.0,
                show_default=True,
                help="Share of requests answered 429 with Retry-After.",
            ),
            click.Option(
                ["--retry-after"],
                type=click.IntRange(min=0),
                default=1,
                show_default=True,
                help="Retry-After seconds of a 429.",
            ),
            click.Option(
                ["--drop-rate"],
                type=_RATE,
                default=0.0,
                show_default=True,
                help="Share of requests whose connection is closed without a reply.",
            ),
            click.Option(
                ["--latency-ms"],
                type=click.FloatRange(min=0),
                default=0.0,
                show_default=True,
                help="Delay before every API reply.",
            ),
            click.Option(
                ["--malformed-rate"],
                type=_RATE,
                default=0.0,
                show_default=True,
                help="Share of /logs camera lists with a junk value mixed in.",
            ),
            click.Option(
                ["--flicker-rate"],
                type=_RATE,
                default=0.0,
                show_default=True,
                help="Share of present people left out of a /recognition reply.",
            ),
            click.Option(
                ["--fault-seed"], type=int, default=None, help="Seed of the faults (default: --seed)."
            ),
            click.Option(
                ["--log-level"],
                type=click.Choice(["debug", "info", "warning", "error"]),
                default="info",
                show_default=True,
            ),
        ],
    )
)
