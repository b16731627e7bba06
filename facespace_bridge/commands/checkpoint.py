"""`facespace-bridge checkpoint show | set | reset`: read and move a bridge instance's resume point.

The store is chosen exactly as `run` chooses it (`checkpoints.store_from_config`), from the same
options (`--checkpoint`, `--instance-id`, `--exactly-once`, the Kafka connection options),
environment variables and `--config` file; a file written for `run` works here unchanged.
Changes are written by the store's own `save` / `forget`, as the bridge writes them.

`set` and `reset` refuse (exit 2) while the instance runs, as far as the store can tell:
the file store's lock is held by a running bridge for its whole run (never overridden);
for the Kafka store, a checkpoint record written within the last RECENT_WRITE seconds
means a bridge is probably running (`--force` overrides that guess).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import click
import orjson

from facespace_bridge import kafka
from facespace_bridge.bridge import BridgeOptions
from facespace_bridge.checkpoints import (
    Checkpoint,
    CheckpointError,
    CheckpointInUse,
    CheckpointStore,
    FileCheckpointStore,
    Position,
    rfc3339,
    store_from_config,
)
from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore
from facespace_bridge.client import FaceSpaceError, parse_user_time
from facespace_bridge.commands import run
from facespace_bridge.commands._common import config_option_sharing, register_secret, setup_logging

# The options of `run` that say where the checkpoint lives and how to reach it.
STORE_OPTIONS = (
    "checkpoint",
    "instance_id",
    "exactly_once",  # an --exactly-once bridge keeps its checkpoint in Kafka
    "bootstrap_servers",
    "replication_factor",  # of the offsets topic, should `set` be the first to write it
    "kafka_security_protocol",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "kafka_sasl_mechanism",
)
# A running bridge writes its checkpoint at least every heartbeat; a record younger than three
# heartbeats means one is probably running.
RECENT_WRITE = timedelta(seconds=3 * BridgeOptions.heartbeat)
JSON_FORMAT = 1  # the version of `show --json`'s shape (docs/operations.md)


class Refused(click.ClickException):
    """Not now or not like this: bad input for the state the checkpoint is in (exit 2)."""

    exit_code = 2


@dataclass(frozen=True)
class Activity:
    """Whether a bridge seems to be running as this instance, and what says so."""

    running: bool
    how: str  # "lock" (the store knows) or "recent write" (a guess)
    detail: str

    def summary(self) -> str:
        if self.how == "lock":
            return f"{'yes' if self.running else 'no'}: {self.detail}"
        return f"{'probably' if self.running else 'probably not'}: {self.detail}"


@click.group("checkpoint")
def command() -> None:
    """Show or move a bridge instance's resume point (its checkpoint).

    Takes the options of `run` that choose the checkpoint store (and the same environment
    variables and --config file). `set` and `reset` refuse while the instance is running.
    """


def _with_store_options(subcommand: click.Command) -> click.Command:
    """`run`'s own parameters for the store (with their env vars), after --config.

    The subcommands' own options (--to, --camera-id, --force, --json) get no FACESPACE_BRIDGE_*
    variable: they say what to do now, not how the bridge is set up, and a bridge's environment
    (FACESPACE_BRIDGE_CAMERA_ID is `run`'s camera filter) must not choose what to move.
    """
    by_name = {param.name: param for param in run.command.params}
    subcommand.params[1:1] = [by_name[name] for name in STORE_OPTIONS]
    command.add_command(subcommand)
    return subcommand


@click.command("show")
@config_option_sharing(run.command)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (shape: docs/operations.md).")
def show(**config: Any) -> int:
    """Each camera's resume point, the heartbeat, the backfill, and whether the bridge runs."""
    store = _store(config)
    return asyncio.run(_show(store, config))


@click.command("set")
@config_option_sharing(run.command)
@click.option(
    "--to",
    "to",
    metavar="TIME",
    required=True,
    help="The new resume point: the next start publishes from TIME (day-first or ISO 8601, "
    "read as --backfill-from is).",
)
@click.option("--camera-id", "camera", help="Only this camera; the others keep their resume points.")
@click.option(
    "--force", is_flag=True, help="Kafka store: write even though a recent record suggests a bridge runs."
)
def set_(**config: Any) -> int:
    """Move the resume point: the next start republishes from TIME (or skips to it)."""
    to = _past_time(config["to"], "--to")
    camera = config["camera"]
    store = _store(config)

    def change(checkpoint: Checkpoint) -> Checkpoint:
        _known_camera(checkpoint, camera)
        return checkpoint.moved(to, camera)

    return asyncio.run(_edit(store, config, change, "checkpoint set"))


@click.command("reset")
@config_option_sharing(run.command)
@click.option(
    "--camera-id",
    "camera",
    help="Only this camera: back to the start of the recorded backfill; the others keep theirs.",
)
@click.option(
    "--force", is_flag=True, help="Kafka store: write even though a recent record suggests a bridge runs."
)
def reset(**config: Any) -> int:
    """Forget the resume point: the next start is a fresh one (backfills from --backfill-from)."""
    camera = config["camera"]
    store = _store(config)
    if camera is None:
        return asyncio.run(_edit(store, config, None, "checkpoint reset"))

    def change(checkpoint: Checkpoint) -> Checkpoint:
        _known_camera(checkpoint, camera)
        if checkpoint.backfill is None:
            raise Refused(
                f"the checkpoint records no backfill start to reset {camera} to (the bridge started "
                "without --backfill-from); use `checkpoint set --to TIME --camera-id` instead"
            )
        return checkpoint.moved(checkpoint.backfill.start, camera)

    return asyncio.run(_edit(store, config, change, "checkpoint reset"))


for _subcommand in (show, set_, reset):
    _with_store_options(_subcommand)


# -- input -----------------------------------------------------------------------------------------


def _store(config: dict[str, Any]) -> CheckpointStore:
    """The store `run` would use with these options; bad TLS / SASL settings are bad input."""
    setup_logging(log_level="warning")  # no library chatter on stderr, secrets redacted
    for variable in kafka.SECRET_VARIABLES:
        register_secret(os.environ.get(variable))
    try:
        return store_from_config(config)
    except CheckpointError as exc:
        raise click.UsageError(str(exc)) from None


def _past_time(text: str, hint: str) -> datetime:
    try:
        moment = parse_user_time(text)
    except FaceSpaceError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None
    if moment > datetime.now(timezone.utc):
        raise click.BadParameter("must not be in the future", param_hint=hint)
    return moment


def _known_camera(checkpoint: Checkpoint, camera: str | None) -> None:
    """A camera with no position of its own is most likely a typo: refuse rather than invent one."""
    if camera is not None and camera not in checkpoint.cameras:
        known = ", ".join(sorted(checkpoint.cameras)) or "none yet"
        raise click.BadParameter(
            f"{camera!r} has no position in this checkpoint (cameras: {known})", param_hint="--camera-id"
        )


# -- show ------------------------------------------------------------------------------------------


async def _show(store: CheckpointStore, config: dict[str, Any]) -> int:
    try:
        checkpoint = await store.load()
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    now = datetime.now(timezone.utc)
    activity = _activity(store, checkpoint, now)
    if config["as_json"]:
        click.echo(orjson.dumps(_as_json(store, config, checkpoint, activity), option=orjson.OPT_INDENT_2))
        return 0
    instance = config["instance_id"]
    if checkpoint is None:
        click.echo(
            f"no checkpoint yet for instance {instance} ({store.describe()}): the next start is a fresh "
            "one (it backfills from --backfill-from, or starts at now)"
        )
        return 0
    rows: list[tuple[str, str]] = [("checkpoint", f"{store.describe()} (instance {instance})")]
    if checkpoint.written_at is not None:
        age = _ago(now - checkpoint.written_at)
        rows.append(("written", f"{rfc3339(checkpoint.written_at)} ({age}) by {checkpoint.written_by}"))
    rows.append(("running", activity.summary()))
    if checkpoint.through is not None:
        which = "every camera not rewound" if checkpoint.rewound else "every camera"
        rows.append(("heartbeat", f"{rfc3339(checkpoint.through)} ({which} is complete before it)"))
    if checkpoint.backfill is not None:
        backfill = checkpoint.backfill
        state = "complete" if backfill.complete else "not complete"
        rows.append(("backfill", f"from {rfc3339(backfill.start)} to {rfc3339(backfill.t0)}, {state}"))
    earliest = checkpoint.earliest()
    if earliest is not None:
        rows.append(("next start", f"reads from {rfc3339(earliest)}"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value}")
    cameras = _cameras(checkpoint)
    if cameras:
        name_width = max(len("camera"), *(len(name) for name in cameras))
        click.echo(
            f"\n{'camera':<{name_width}}  resume point (published up to the #n-th sighting at that second)"
        )
        for name, (position, source) in cameras.items():
            note = "" if source == "camera" else f"  ({source})"
            click.echo(f"{name:<{name_width}}  {rfc3339(position.seen_at)} #{position.count}{note}")
    click.echo("cameras not listed resume at the heartbeat")
    return 0


def _cameras(checkpoint: Checkpoint) -> dict[str, tuple[Position, str]]:
    """Each camera's resume point, and whose it is: the camera's own position ("camera"), the
    heartbeat's ("heartbeat", later than the camera's own), or set back behind the heartbeat
    ("rewound")."""
    cameras = {}
    for name in sorted(checkpoint.cameras):
        position = checkpoint.position(name)
        assert position is not None  # the camera has a position of its own
        if name in checkpoint.rewound:
            source = "rewound"
        elif position == checkpoint.cameras[name]:
            source = "camera"
        else:
            source = "heartbeat"
        cameras[name] = (position, source)
    return cameras


def _as_json(
    store: CheckpointStore, config: dict[str, Any], checkpoint: Checkpoint | None, activity: Activity
) -> dict[str, Any]:
    def moment(value: datetime | None) -> str | None:
        return rfc3339(value) if value is not None else None

    location: dict[str, Any] = {"kind": store.name, "description": store.describe()}
    if isinstance(store, FileCheckpointStore):
        location["path"] = str(store.path)
    elif isinstance(store, KafkaCheckpointStore):
        location.update(topic=store.topic, key=store.key.decode(), bootstrap_servers=store.bootstrap_servers)
    backfill = checkpoint.backfill if checkpoint is not None else None
    return {
        "format": JSON_FORMAT,
        "instance_id": config["instance_id"],
        "store": location,
        "exists": checkpoint is not None,
        "written_at": moment(checkpoint.written_at) if checkpoint else None,
        "written_by": checkpoint.written_by if checkpoint else None,
        "running": {"detected": activity.running, "how": activity.how, "detail": activity.detail},
        "through": moment(checkpoint.through) if checkpoint else None,
        "earliest": moment(checkpoint.earliest()) if checkpoint else None,
        "backfill": {
            "from": rfc3339(backfill.start),
            "to": rfc3339(backfill.t0),
            "complete": backfill.complete,
        }
        if backfill is not None
        else None,
        "cameras": {
            name: {"seen_at": rfc3339(position.seen_at), "count": position.count, "source": source}
            for name, (position, source) in _cameras(checkpoint).items()
        }
        if checkpoint is not None
        else {},
    }


def _activity(store: CheckpointStore, checkpoint: Checkpoint | None, now: datetime) -> Activity:
    if store.exclusive:
        try:
            holder = store.holder()
        except CheckpointError as exc:
            raise click.ClickException(str(exc)) from None
        lock = getattr(store, "lock_path", "its lock")
        if holder is not None:
            return Activity(True, "lock", f"{holder} holds {lock}")
        return Activity(False, "lock", f"nobody holds {lock}")
    if checkpoint is None or checkpoint.written_at is None:
        return Activity(False, "recent write", "no checkpoint record to tell by")
    if checkpoint.written_by != "bridge":
        return Activity(False, "recent write", f"last written by {checkpoint.written_by}, not by a bridge")
    age = now - checkpoint.written_at
    detail = (
        f"last written {_ago(age)}; a running bridge writes it at least every {BridgeOptions.heartbeat:g} s"
    )
    return Activity(age < RECENT_WRITE, "recent write", detail)


def _ago(age: timedelta) -> str:
    seconds = max(0, int(age.total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} days ago"


# -- set / reset -----------------------------------------------------------------------------------


async def _edit(
    store: CheckpointStore,
    config: dict[str, Any],
    change: Callable[[Checkpoint], Checkpoint] | None,
    writer: str,
) -> int:
    """Apply `change` to the stored checkpoint, or forget it (`change` None), unless the
    instance is running; `writer` is the command, as the record names it. Every refusal
    comes before anything is written."""
    instance = config["instance_id"]
    try:
        # Read first, without the lock: with no checkpoint or a refused change, nothing is
        # created, not even the lock file.
        before = await store.load()
        if before is None:
            if change is None:
                click.echo(f"no checkpoint for instance {instance} ({store.describe()}): nothing to reset")
                return 0
            raise Refused(
                f"no checkpoint yet for instance {instance} ({store.describe()}): nothing to move; "
                "start the bridge with --backfill-from TIME instead"
            )
        if change is not None:
            change(before)  # bad input for this checkpoint: refused here
        if not store.exclusive and not config["force"]:
            activity = _activity(store, before, datetime.now(timezone.utc))
            if activity.running:
                raise Refused(
                    f"instance {instance} looks running ({store.describe()}: {activity.detail}); "
                    "stop it first, or pass --force if it is not running"
                )
        try:
            await store.open()
        except CheckpointInUse as exc:
            raise Refused(f"{exc}; stop it first") from None
        try:
            current = await store.load() if store.exclusive else before  # again, under the lock
            if current is None:
                raise Refused(f"the checkpoint of instance {instance} was removed meanwhile")
            if change is None:
                await store.forget()
                after = None
            else:
                after = replace(change(current), written_by=writer)
                await store.save(after)
        finally:
            await store.close()
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    _report(store, current, after)
    return 0


def _report(store: CheckpointStore, before: Checkpoint, after: Checkpoint | None) -> None:
    if after is None:
        click.echo(
            f"removed the checkpoint ({store.describe()}): the next start is a fresh one "
            "(it backfills from --backfill-from, or starts at now)"
        )
        return
    old, new = _cameras(before), _cameras(after)
    for name in sorted(set(old) | set(new)):
        was = old.get(name)
        now = new.get(name)
        if was is None or now is None or was[0] != now[0]:
            click.echo(f"{name}: {_describe(was)} -> {_describe(now)}")
    if before.through != after.through:
        click.echo(f"heartbeat: {_moment(before.through)} -> {_moment(after.through)}")
    click.echo(f"written to {store.describe()}; the next start reads from {_moment(after.earliest())}")


def _describe(entry: tuple[Position, str] | None) -> str:
    if entry is None:
        return "the heartbeat"
    position, source = entry
    note = "" if source == "camera" else f" ({source})"
    return f"{rfc3339(position.seen_at)} #{position.count}{note}"


def _moment(value: datetime | None) -> str:
    return rfc3339(value) if value is not None else "none"
