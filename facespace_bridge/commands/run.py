"""`facespace-bridge run` (the default command): realtime + tail + backfill into the sinks."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import click

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.checkpoints import CheckpointError, CheckpointStore, FileCheckpointStore, default_path
from facespace_bridge.client import (
    APIKeyError,
    AsyncLogsAPI,
    FaceSpaceError,
    HTTPRequestError,
    parse_user_time,
)
from facespace_bridge.commands._common import (
    api_key_from,
    api_options,
    config_option,
    logging_options,
    setup_logging,
    tune_gc,
    warn_if_short,
    with_env,
)
from facespace_bridge.metrics import CountingTransport, Metrics, serve_metrics
from facespace_bridge.sinks import Sink, SinkError
from facespace_bridge.sinks.registry import SINK_MODULES, broker_help, build_sinks, sink_options

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
@click.option("--camera-id", help="Only this camera (default: all).")
@click.option("--no-realtime", is_flag=True, help="Do not poll /recognition (no presence events).")
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
    "--exactly-once",
    is_flag=True,
    help="Kafka only: events and checkpoint in one transaction (needs a broker with transactions).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve /status, /metrics, /healthz and /readyz on this port.",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address for --metrics-port.")
@logging_options
@sink_options
def command(**config: Any) -> int:
    """Run the bridge: realtime presence, history tail and backfill, into the sinks."""
    setup_logging(config["log_format"], config["log_level"])
    tune_gc()
    api_key, sinks, options = prepare(config)
    warn_if_short(api_key)
    return asyncio.run(_run(config, api_key, sinks, options))


def prepare(config: dict[str, Any]) -> tuple[str, list[Sink], BridgeOptions]:
    """Everything that can be checked without the network, checked before any side effect;
    bad input raises click's usage errors (exit 2)."""
    api_key = api_key_from(config)
    backfill_from = None
    if config["backfill_from"]:
        try:
            backfill_from = parse_user_time(config["backfill_from"])
        except FaceSpaceError as exc:
            raise click.BadParameter(str(exc), param_hint="--backfill-from") from None
        if backfill_from >= datetime.now(timezone.utc):
            raise click.BadParameter("must be in the past", param_hint="--backfill-from")
    if config["exactly_once"]:
        if tuple(config["broker"]) != ("kafka",):
            raise click.UsageError("--exactly-once needs --broker kafka and no other broker")
        if config.get("checkpoint") not in (None, "kafka"):
            raise click.UsageError(
                "--exactly-once keeps the checkpoint in Kafka, in the events' transaction; drop --checkpoint"
            )
    if config.get("checkpoint") == "kafka" and not config.get("bootstrap_servers"):
        raise click.UsageError("--checkpoint kafka needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
    sinks = build_sinks(config["broker"], config)
    options = BridgeOptions(
        refresh=config["refresh"],
        tail_interval=config["tail_interval"],
        backfill_from=backfill_from,
        lateness=timedelta(seconds=config["lateness"]),
        presence_timeout=config["presence_timeout"],
        camera_id=config["camera_id"],
        realtime=not config["no_realtime"],
        quick_polls=config["quick_polls"],
        instance_id=config["instance_id"],
    )
    return api_key, sinks, options


def make_client(
    config: dict[str, Any], api_key: str, metrics: Metrics | None = None, **retry: Any
) -> AsyncLogsAPI:
    return AsyncLogsAPI(
        api_key,
        base_url=config["api_url"],
        timeout=config["api_timeout"],
        transport=CountingTransport(metrics) if metrics else None,
        **retry,
    )


async def preflight(config: dict[str, Any], api_key: str) -> dict[str, list[str]]:
    """Reach the API once: a wrong key or URL is a configuration error (exit 2), before any side effect.
    A short retry budget: this answers "is it there at all", the run itself retries patiently."""
    api_url = config["api_url"]
    client = make_client(config, api_key, max_retries=2, retry_max_seconds=5.0)
    try:
        return await client.get_realtime()
    except APIKeyError as exc:
        raise click.UsageError(str(exc)) from None  # "the FaceSpace API refused the key (HTTP 401): ..."
    except HTTPRequestError as exc:
        raise click.UsageError(f"cannot reach the FaceSpace API at {api_url}: {exc}") from None
    except FaceSpaceError:
        return {}  # the stop reply: the API is there, just idle
    finally:
        await client.aclose()


async def require_transactions(sinks: list[Sink]) -> str:
    """`--exactly-once` needs a broker whose transactions work: an aborted write that a
    read_committed reader must not see (the Kafka sink's probe). Say so at start rather than
    pretend; returns the probe's words when they work."""
    from facespace_bridge.sinks.kafka import KafkaSink

    for sink in sinks:
        if isinstance(sink, KafkaSink):
            try:
                works, why = await sink.transactions_work()
            except Exception as exc:
                raise click.UsageError(f"--exactly-once: cannot ask the Kafka broker: {exc}") from None
            if not works:
                raise click.UsageError(
                    f"--exactly-once: the Kafka broker at {sink.settings.bootstrap_servers} has no working "
                    f"transactions ({why}); run without it (at-least-once: duplicates carry the same "
                    "event_id)"
                )
            return why
    return "no Kafka sink"


def checkpoint_store(config: dict[str, Any], sinks: Sequence[Sink] = ()) -> CheckpointStore:
    target = config.get("checkpoint")
    if target == "kafka" or config.get("exactly_once"):
        from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore

        # Exactly once: written with the sink's producer, in the events' transaction.
        transactions = next((sink for sink in sinks if sink.transactional), None)
        return KafkaCheckpointStore.from_config(config, transactions=transactions)
    return FileCheckpointStore(target or default_path(config["instance_id"]))


async def _run(config: dict[str, Any], api_key: str, sinks: list[Sink], options: BridgeOptions) -> int:
    metrics = Metrics()
    client = make_client(config, api_key, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = None
    try:
        await preflight(config, api_key)
        if config["exactly_once"]:
            await require_transactions(sinks)
        store = checkpoint_store(config, sinks)
        bridge = Bridge(client, sinks, store, options, metrics)
        if config["metrics_port"] is not None:
            runner = await serve_metrics(
                metrics, config["metrics_port"], bridge.status, config["metrics_host"]
            )
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
        if runner is not None:
            await runner.cleanup()
        await client.aclose()


with_env(command)
