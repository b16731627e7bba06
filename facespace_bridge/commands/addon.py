"""`facespace-bridge addon`: the bridge as Home Assistant's add-on runs it (addon/, addon/DOCS.md).

The Supervisor writes the options the household set to /data/options.json and gives the
container a token for its API. This command reads the options, asks the Supervisor's
services API for the MQTT broker (the Mosquitto broker add-on's address and an account made
for this add-on), and runs `run` with the MQTT sink, Home Assistant discovery, the checkpoint
in the add-on's data folder, and the web page on the ingress port: the same `run`, called
with the flags ADDON_OPTIONS maps the options to. Secrets (the API key, the broker's
password) go to `run` through the environment variables it reads, never as flags.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import httpx
import jsonschema_rs
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from facespace_bridge.commands import run
from facespace_bridge.commands._common import register_secret, setup_logging
from facespace_bridge.events import seen_at_text

log = logging.getLogger("facespace_bridge.addon")

OPTIONS_FILE = "/data/options.json"
DATA_DIR = "/data"
INGRESS_PORT = 8099  # config.yaml's ingress_port
SUPERVISOR_URL = "http://supervisor"
SUPERVISOR_URL_VARIABLE = "SUPERVISOR_URL"  # another Supervisor (tests)
TOKEN_VARIABLE = "SUPERVISOR_TOKEN"
INSTANCE_ID = "home-assistant-addon"  # one add-on per Home Assistant: its checkpoint's name
CHECKPOINT = "checkpoint.json"
NO_BROKER = "no MQTT broker: install the Mosquitto broker add-on or set mqtt_url in the options"


@dataclass(frozen=True)
class Context:
    """What an option's value may depend on besides itself."""

    first_start: bool  # no checkpoint yet in the data folder
    now: datetime


def _as_text(value: Any, _: Context) -> list[str]:
    return [str(value)]


def _backfill_from(hours: int, context: Context) -> list[str]:
    """History to publish on the very first start; later starts resume from the checkpoint."""
    if not hours or not context.first_start:
        return []
    start = context.now - timedelta(hours=hours)
    return [seen_at_text(start)]


@dataclass(frozen=True)
class AddonOption:
    """One add-on option: its type as config.yaml's schema declares it (the Supervisor's type
    language; `?` marks an optional one, a one-item list a list of that type), and the flag
    of `run` it becomes, or the environment variable of `run` for a secret."""

    name: str
    schema: str | list[str]
    flag: str | None = None
    env: str | None = None
    render: Callable[[Any, Context], list[str]] = _as_text

    @property
    def optional(self) -> bool:
        return isinstance(self.schema, list) or self.schema.endswith("?")


# Adding an option is one line here, its default in addon/config.yaml's `options` and its
# words in addon/translations/en.yaml and addon/DOCS.md (tests/addon checks they agree).
ADDON_OPTIONS: tuple[AddonOption, ...] = (
    AddonOption("api_key", "password(1,)", env="FACESPACE_API_KEY"),
    AddonOption("api_url", "url?", "--api-url"),
    AddonOption("mqtt_url", "str?", "--mqtt-url"),
    AddonOption("mqtt_username", "str?", "--mqtt-username"),
    AddonOption("mqtt_password", "password?", env="MQTT_PASSWORD"),
    AddonOption("discovery_mode", "list(entity|device)", "--ha-discovery-mode"),
    AddonOption("away_after", "int(0,)", "--away-after"),
    AddonOption("event_max_age", "int(0,)", "--ha-event-max-age"),
    AddonOption("backfill_hours", "int(0,720)", "--backfill-from", render=_backfill_from),
    AddonOption("cameras", ["str"], "--camera-id"),
    AddonOption("exclude_cameras", ["str"], "--exclude-camera"),
    AddonOption("people", ["str"], "--person"),
    AddonOption("exclude_people", ["str"], "--exclude-person"),
    AddonOption("log_level", "list(debug|info|warning|error)", "--log-level"),
)

# The part of the Supervisor's type language the options use, as JSON Schema.
_RANGE = re.compile(r"(?P<kind>int|str|password)(?:\((?P<low>-?\d+)?,(?P<high>-?\d+)?\))?")
_CHOICE = re.compile(r"list\((?P<choices>[^)]+)\)")


def _json_type(schema: str) -> dict[str, Any]:
    schema = schema.removesuffix("?")
    if schema == "url":
        return {"type": "string", "pattern": r"^https?://\S+$"}
    if match := _CHOICE.fullmatch(schema):
        return {"enum": match["choices"].split("|")}
    if match := _RANGE.fullmatch(schema):
        integer = match["kind"] == "int"
        low, high = ("minimum", "maximum") if integer else ("minLength", "maxLength")
        out: dict[str, Any] = {"type": "integer" if integer else "string"}
        if match["low"] is not None:
            out[low] = int(match["low"])
        if match["high"] is not None:
            out[high] = int(match["high"])
        return out
    raise ValueError(f"no JSON Schema for the add-on option type {schema!r}")


def options_schema() -> dict[str, Any]:
    """ADDON_OPTIONS as a JSON Schema for options.json (what the Supervisor checks, and more:
    no unknown option)."""
    properties = {
        option.name: (
            {"type": "array", "items": _json_type(option.schema[0])}
            if isinstance(option.schema, list)
            else _json_type(option.schema)
        )
        for option in ADDON_OPTIONS
    }
    required = [option.name for option in ADDON_OPTIONS if not option.optional]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


OPTIONS_VALIDATOR = jsonschema_rs.validator_for(options_schema())


def read_options(path: Path) -> dict[str, Any]:
    """The options file, checked against ADDON_OPTIONS; bad input is one line (exit 2)."""
    try:
        options = orjson.loads(path.read_bytes())
    except OSError as exc:
        raise click.UsageError(f"cannot read the options file {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise click.UsageError(f"the options file {path} is not JSON: {exc}") from None
    for error in OPTIONS_VALIDATOR.iter_errors(options):
        where = "/".join(str(part) for part in error.instance_path)
        if not where:  # a missing or unknown option, or no object at all
            raise click.UsageError(f"add-on options in {path}: {error.message}")
        secret = next(o.env for o in ADDON_OPTIONS if o.name == where.split("/")[0]) is not None
        # jsonschema's words quote the value: not a secret's
        message = "not a valid value" if secret else error.message
        raise click.UsageError(f"add-on option {where}: {message}")
    return dict(options)


# -- the Supervisor's services API ----------------------------------------------------------------


@dataclass(frozen=True)
class MqttService:
    """The broker the Supervisor's services API names (the Mosquitto broker add-on's)."""

    host: str
    port: int
    ssl: bool
    username: str | None
    password: str | None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.ssl else 'mqtt'}://{host}:{self.port}"


async def mqtt_service(
    base_url: str,
    token: str,
    *,
    attempts: int = 5,
    first_wait: float = 0.5,
    transport: httpx.AsyncBaseTransport | None = None,
) -> MqttService | None:
    """`GET /services/mqtt`: the broker, or None when the Supervisor has no MQTT service (it
    answers 400 with `result: error`). Decided by the status and `result`, never the message
    text. Transport errors are retried (the Supervisor may be restarting); any other answer
    is one line for the user (exit 1)."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(httpx.TransportError),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=first_wait, max=5.0),
        reraise=True,
    )
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0, transport=transport) as client:
            async for attempt in retrying:
                with attempt:
                    reply = await client.get("/services/mqtt", headers={"Authorization": f"Bearer {token}"})
    except httpx.TransportError as exc:
        raise click.ClickException(f"cannot reach the Supervisor at {base_url}: {exc}") from None
    try:
        body = orjson.loads(reply.content)
    except orjson.JSONDecodeError:
        body = None
    result = body.get("result") if isinstance(body, dict) else None
    if reply.status_code == 400 and result == "error":
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if reply.status_code != 200 or result != "ok" or not isinstance(data, dict):
        raise click.ClickException(
            f"the Supervisor's services API answered HTTP {reply.status_code} to GET /services/mqtt"
            + (" (does config.yaml declare services: mqtt:need?)" if reply.status_code == 403 else "")
        )
    try:
        return MqttService(
            host=str(data["host"]),
            port=int(data["port"]),
            ssl=bool(data.get("ssl", False)),
            username=data.get("username") or None,
            password=data.get("password") or None,
        )
    except (KeyError, TypeError, ValueError):
        raise click.ClickException("the Supervisor's MQTT service names no host and port") from None


# -- the command ------------------------------------------------------------------------------------


def run_arguments(
    options: Mapping[str, Any], context: Context, run_params: Mapping[str, click.Parameter]
) -> tuple[list[str], dict[str, str]]:
    """`run`'s flags and the environment variables for the secrets, from the options.
    `run_params`: run's options by flag, so that a list option maps to a repeatable flag
    only, and an option this version's `run` lacks is one line (exit 2), not a surprise."""
    argv: list[str] = []
    env: dict[str, str] = {}
    for option in ADDON_OPTIONS:
        value = options.get(option.name)
        if value is None or value == "" or value == []:
            continue
        if option.env is not None:
            env[option.env] = str(value)
            continue
        assert option.flag is not None
        param = run_params.get(option.flag)
        values = value if isinstance(value, list) else [value]
        if param is None or (len(values) > 1 and not getattr(param, "multiple", False)):
            raise click.UsageError(
                f"add-on option {option.name}: this version of the bridge cannot take it ({option.flag})"
            )
        for item in values:
            for rendered in option.render(item, context):
                argv += [option.flag, rendered]
    return argv, env


def run_flags() -> dict[str, click.Parameter]:
    """run's options by each of their flags."""
    return {flag: param for param in run.command.params for flag in getattr(param, "opts", [])}


@click.command("addon")
@click.option(
    "--options",
    "options_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=OPTIONS_FILE,
    show_default=True,
    help="The add-on's options, as the Supervisor writes them.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DATA_DIR,
    show_default=True,
    help="The add-on's data folder: the checkpoint is kept here.",
)
@click.option(
    "--ingress-port",
    type=click.IntRange(1, 65535),
    default=INGRESS_PORT,
    show_default=True,
    help="The page's port for Home Assistant's ingress (config.yaml's ingress_port).",
)
def command(options_file: Path, data_dir: Path, ingress_port: int) -> int:
    """Run as the Home Assistant add-on: the options file, the broker from the Supervisor
    (env SUPERVISOR_TOKEN; SUPERVISOR_URL, default http://supervisor), then `run` with MQTT,
    Home Assistant discovery and the page on the ingress port."""
    options = read_options(options_file)
    setup_logging("text", options.get("log_level", "info"))
    register_secret(options.get("api_key"))
    register_secret(options.get("mqtt_password"))
    checkpoint = data_dir / CHECKPOINT
    context = Context(first_start=not checkpoint.exists(), now=datetime.now(timezone.utc))
    flags = run_flags()
    argv, env = run_arguments(options, context, flags)
    if not options.get("mqtt_url"):
        token = os.environ.get(TOKEN_VARIABLE)
        if not token:
            raise click.ClickException(
                f"{NO_BROKER} ({TOKEN_VARIABLE} is not set: not run by the Supervisor?)"
            )
        supervisor = os.environ.get(SUPERVISOR_URL_VARIABLE) or SUPERVISOR_URL
        service = asyncio.run(mqtt_service(supervisor, token))
        if service is None:
            raise click.ClickException(NO_BROKER)
        register_secret(service.password)
        log.info(
            "MQTT broker from the Supervisor: %s%s",
            service.url,
            f" (user {service.username})" if service.username else "",
        )
        # As if typed in the options (the same flags and variables), after them: it wins.
        broker = {
            "mqtt_url": service.url,
            "mqtt_username": service.username,
            "mqtt_password": service.password,
        }
        broker_argv, broker_env = run_arguments(broker, context, flags)
        argv += broker_argv
        env.update(broker_env)
    else:
        log.info("MQTT broker from the options (mqtt_url); the Supervisor's is not asked for")
    os.environ.update(env)
    argv = [
        "--broker", "mqtt",
        "--checkpoint", str(checkpoint),
        "--instance-id", INSTANCE_ID,
        "--web-port", str(ingress_port),
        "--web-ingress",
        *argv,
    ]  # fmt: skip
    code = run.command.main(args=argv, prog_name="facespace-bridge addon", standalone_mode=False)
    return int(code or 0)
