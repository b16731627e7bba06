"""`facespace-bridge run` (the default command): realtime + tail + backfill into the sinks."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import CheckpointError, store_from_config
from facespace_bridge.client import APIKeyError
from facespace_bridge.commands._common import (
    api_options,
    config_option,
    filter_options,
    logging_options,
    make_client,
    page_state,
    preflight,
    prepare,
    require_transactions,
    serve_page,
    setup_logging,
    tune_gc,
    warn_if_short,
    with_env,
)
from facespace_bridge.metrics import Metrics, serve_metrics
from facespace_bridge.sinks import Sink, SinkError
from facespace_bridge.sinks.registry import SINK_MODULES, broker_help, sink_options
from facespace_bridge.web import PageServer

log = logging.getLogger("facespace_bridge")


@click.command("run")
@config_option
@click.option(
    "--broker",
    multiple=True,
    type=click.Choice(list(SINK_MODULES)),
    required=True,
    help=broker_help(),
)
@api_options
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between realtime (/recognition) polls.",
)
@click.option(
    "--tail-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between history (/logs) polls.",
)
@click.option(
    "--backfill-from",
    metavar="TIME",
    help="With no checkpoint yet, publish the history from TIME before tailing (default: now).",
)
@click.option(
    "--lateness",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    help="Seconds of look-back for entries the API inserts late.",
)
@click.option(
    "--presence-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="A person counts as gone after this many seconds unseen.",
)
@filter_options
@click.option(
    "--realtime/--no-realtime",
    default=True,
    show_default=True,
    help="Poll /recognition: presence events, and the quick polls of --quick-polls.",
)
@click.option(
    "--quick-polls/--no-quick-polls",
    default=True,
    show_default=True,
    help="While /recognition shows someone at a camera, poll that camera's /logs at once (at most "
    "one such poll per --refresh) rather than at the next --tail-interval: sightings follow visits "
    "within about --refresh.",
)
@click.option(
    "--checkpoint",
    metavar="PATH|kafka",
    help="Checkpoint file (default $XDG_STATE_HOME/facespace-bridge/<instance>.json), "
    "or 'kafka' for the compacted topic facespace-bridge.offsets.",
)
@click.option(
    "--instance-id",
    default="default",
    show_default=True,
    help="Names this bridge's checkpoint (and its transactional id with --exactly-once).",
)
@click.option(
    "--exactly-once/--no-exactly-once",
    default=False,
    show_default=True,
    help="Kafka only: events and checkpoint in one transaction (needs a broker with transactions).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve /status, /metrics, /healthz and /readyz on this port.",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address for --metrics-port.")
@click.option(
    "--web-port",
    type=click.IntRange(0, 65535),
    help="Serve the live web page on this port (docs/web.md; 0: any free port). Off by default.",
)
@click.option(
    "--web-host",
    default="127.0.0.1",
    show_default=True,
    help="Address for --web-port. Beyond loopback the page needs a password: env "
    "FACESPACE_BRIDGE_WEB_PASSWORD (HTTP basic auth, any user name).",
)
@click.option(
    "--web-ingress/--no-web-ingress",
    default=False,
    show_default=True,
    help="Serve --web-port on every address for Home Assistant's ingress (the add-on does): only "
    "the ingress proxy may connect (172.30.32.2; env FACESPACE_BRIDGE_INGRESS_PROXY names another), "
    "any other client gets 403; no password, Home Assistant has authenticated the user.",
)
@logging_options
@sink_options
def command(**config: Any) -> int:
    """Run the bridge: realtime presence, history tail and backfill, into the sinks."""
    setup_logging(config["log_format"], config["log_level"])
    tune_gc()
    api_key, sinks, options = prepare(config)
    warn_if_short(api_key)
    return asyncio.run(_run(config, api_key, sinks, options))


async def _run(config: dict[str, Any], api_key: str, sinks: list[Sink], options: BridgeOptions) -> int:
    metrics = Metrics()
    client = make_client(config, api_key, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = None
    page: PageServer | None = None
    try:
        await preflight(config, api_key)
        if config["exactly_once"]:
            await require_transactions(sinks)
        # Exactly once: written with the sink's producer, in the events' transaction.
        store = store_from_config(config, next((sink for sink in sinks if sink.transactional), None))
        state = page_state(config)
        bridge = Bridge(client, sinks, store, options, metrics, page=state)
        if config["metrics_port"] is not None:
            runner = await serve_metrics(
                metrics, config["metrics_port"], bridge.status, config["metrics_host"]
            )
        if state is not None:
            page, url = await serve_page(config, state, bridge)
            if config.get("web_ingress"):
                log.info("web page at %s for Home Assistant's ingress proxy only", url)
            else:
                log.info("web page at %s", url)
        log.info(
            "bridge running: %s -> %s (checkpoint: %s)",
            config["api_url"],
            ", ".join(s.name for s in sinks),
            store.describe(),
        )
        await bridge.run(stop)
        log.info("stopped cleanly")
        return 0
    except (SinkError, CheckpointError) as exc:
        raise click.ClickException(str(exc)) from None
    except APIKeyError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if page is not None:
            await page.close()
        if runner is not None:
            await runner.cleanup()
        await client.aclose()


with_env(command)
