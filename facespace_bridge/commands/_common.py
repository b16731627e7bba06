"""What several commands share: API connection options, configuration sources, logging, and
the wiring of `run` that `check` and `demo` repeat (`prepare`, `preflight`,
`require_transactions`).

Configuration precedence is flag > environment > TOML file > default, as click applies
it: every option also reads `FACESPACE_BRIDGE_<OPTION>` (added by `with_env`), and
`--config FILE` fills click's default map from the file.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from click.core import ParameterSource

from facespace_bridge.bridge import Bridge, BridgeOptions
from facespace_bridge.client import (
    DEFAULT_BASE_URL,
    APIKeyError,
    AsyncLogsAPI,
    FaceSpaceError,
    HTTPRequestError,
    parse_user_time,
    redactor,
)
from facespace_bridge.client.redaction import MIN_SAFE_LENGTH
from facespace_bridge.metrics import CountingTransport, Metrics
from facespace_bridge.privacy.filters import EntryFilter, FilterError, FilterSettings
from facespace_bridge.privacy.pseudonyms import KEY_VARIABLE, Pseudonyms, pseudonyms_for
from facespace_bridge.settings import cli_options, from_options
from facespace_bridge.sinks import Role, Sink
from facespace_bridge.sinks.registry import build_sinks
from facespace_bridge.web import Access, PageServer, PageState, exposure_problem, password_from

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "FACESPACE_BRIDGE"
# Boolean options once spelled only as their negation (`--no-realtime`). The pair form
# (`--realtime/--no-realtime`) takes both flags; the old key keeps working, its meaning turned
# around, in a --config file (`no_realtime = true`) and in the environment
# (FACESPACE_BRIDGE_NO_REALTIME=1).
NEGATED_KEYS = {"no_realtime": "realtime", "no_cloudevents": "cloudevents"}

F = TypeVar("F", bound=Callable[..., Any])
# `--web-ingress`: the Supervisor's proxy reaches the add-on's container over its network,
# so the page listens on every address and the access rule, not the address, keeps others out.
INGRESS_HOST = "0.0.0.0"


def _load_config(
    ctx: click.Context,
    _param: click.Parameter,
    value: str | None,
    also_known: Callable[[], Iterable[str]] = tuple,
) -> str | None:
    """`--config FILE`: TOML keys are option names (`bootstrap_servers` or `bootstrap-servers`);
    `also_known` names settings of another command that the file may hold and this one ignores."""
    if not value:
        return value
    try:
        with open(value, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise click.BadParameter(f"cannot read {value}: {exc.strerror}", param_hint="--config") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{value} is not valid TOML: {exc}", param_hint="--config") from None
    known = {p.name for p in ctx.command.params if p.name}
    repeatable = {p.name for p in ctx.command.params if p.name and getattr(p, "multiple", False)}
    ignored = set(also_known()) - known
    defaults = {}
    for key, item in data.items():
        name = key.replace("-", "_")
        if name in ignored:
            continue
        if NEGATED_KEYS.get(name) in known:
            if not isinstance(item, bool):
                raise click.BadParameter(f"{value}: {key} must be true or false", param_hint="--config")
            defaults[NEGATED_KEYS[name]] = not item
            continue
        if name not in known:
            raise click.BadParameter(f"{value}: unknown setting {key!r}", param_hint="--config")
        if name in repeatable and isinstance(item, str):
            item = [item]  # `camera_id = "front"`, as before --camera-id was repeatable
        defaults[name] = item
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _config_option(also_known: Callable[[], Iterable[str]]) -> Callable[[F], F]:
    return click.option(
        "--config",
        type=click.Path(dir_okay=False),
        is_eager=True,
        expose_value=False,
        callback=partial(_load_config, also_known=also_known),
        help="TOML file of settings (keys are option names); flags and env vars override it.",
    )


config_option = _config_option(tuple)


def config_option_sharing(other: click.Command) -> Callable[[F], F]:
    """`--config FILE` for a command that acts on the state of `other`: the file written for
    `other` works here too, the settings only `other` has are ignored."""
    return _config_option(lambda: [p.name for p in other.params if p.name])


def with_env(command: click.Command) -> click.Command:
    """Let every option of `command` also be set by `FACESPACE_BRIDGE_<NAME>` (after its own env var)."""
    for param in command.params:
        if isinstance(param, click.Option) and param.name and param.name not in ("help", "version"):
            ours = f"{ENV_PREFIX}_{param.name.upper()}"
            existing = param.envvar
            if existing is None:
                param.envvar = ours
            elif isinstance(existing, str):
                param.envvar = [existing, ours] if existing != ours else existing
            elif ours not in existing:
                param.envvar = [*existing, ours]
            param.show_envvar = True
            old = next((key for key, name in NEGATED_KEYS.items() if name == param.name), None)
            if old is not None:
                param.callback = partial(_negated_variable, f"{ENV_PREFIX}_{old.upper()}")
    return command


def _negated_variable(variable: str, ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A boolean option left to its default (or the --config file's) takes the old negated
    variable's opposite, if that is set (NEGATED_KEYS)."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP) and os.environ.get(variable):
        return not click.BOOL.convert(os.environ[variable], param, ctx)
    return value


def api_options(command: F) -> F:
    """The FaceSpace API connection. The key comes from env or a file, never from argv (ps shows argv)."""
    for option in reversed(
        [
            click.option(
                "--api-url",
                envvar="FACESPACE_API_URL",
                default=DEFAULT_BASE_URL,
                show_default=True,
                help="Base URL of the FaceSpace API (the simulator prints its own).",
            ),
            click.option(
                "--api-key-file",
                type=click.Path(dir_okay=False),
                help="File holding the API key (default: env FACESPACE_API_KEY).",
            ),
            click.option(
                "--api-timeout",
                type=click.FloatRange(min=0.1),
                default=10.0,
                show_default=True,
                help="Seconds before an API request times out.",
            ),
        ]
    ):
        command = option(command)
    return command


def filter_options(command: F) -> F:
    """`--camera-id`, `--exclude-camera`, `--person`, `--exclude-person` (privacy/filters.py)."""
    for option in reversed(cli_options(FilterSettings)):
        command = option(command)
    return command


def entry_filter_from(config: dict[str, Any]) -> EntryFilter:
    """The filters of a command's options; filters that contradict each other are bad input (exit 2)."""
    try:
        return EntryFilter.from_settings(from_options(FilterSettings, config))
    except FilterError as exc:
        raise click.BadParameter(str(exc), param_hint=exc.option) from None


def filters_key_and_names(config: dict[str, Any]) -> tuple[EntryFilter, str, Pseudonyms | None]:
    """What `run` and `replay` read first, checked in this order before any side effect (bad
    input: exit 2): the filters, the API key, and with `--pseudonymize` the pseudonyms. Under
    them the sources see only pseudonyms (the client renames every reply), so `--person` and
    `--exclude-person` match the names' pseudonyms."""
    entry_filter = entry_filter_from(config)
    api_key = api_key_from(config)
    names = pseudonyms_from(config)
    if names is not None and entry_filter.by_person:
        entry_filter = entry_filter.renamed(names.of)
    return entry_filter, api_key, names


def api_key_from(config: dict[str, Any]) -> str:
    """The API key from `--api-key-file` or env FACESPACE_API_KEY (never argv, never the TOML file,
    which is configuration to share, not a secret store)."""
    path = config.get("api_key_file")
    if path:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc.strerror}", param_hint="--api-key-file"
            ) from None
    else:
        key = os.environ.get("FACESPACE_API_KEY", "")
    if not key:
        raise click.UsageError("no API key: set FACESPACE_API_KEY or pass --api-key-file")
    redactor.add(key)
    return key


def warn_if_short(api_key: str) -> None:
    """Once the input is known good (bad input is one line only): a key too short to redact safely."""
    if redactor.too_short(api_key):
        logging.getLogger("facespace_bridge").warning(
            "the API key has fewer than %d characters: it is masked in logs only where it stands "
            "alone, and a key that short is easy to guess",
            MIN_SAFE_LENGTH,
        )


# The MQTT side clients' own options (mqtt-cleanup, forget).
broker_timeout_option = click.option(
    "--timeout",
    "mqtt_timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds to wait for the broker.",
)


def dry_run_option(does_nothing: str) -> Callable[[F], F]:
    """`--dry-run/--no-dry-run`, off by default; `does_nothing` is its help text."""
    return click.option("--dry-run/--no-dry-run", default=False, show_default=True, help=does_nothing)


pseudonymize_option = click.option(
    "--pseudonymize/--no-pseudonymize",
    default=False,
    show_default=True,
    help=f"Replace every name by a keyed pseudonym (p_ and 20 hex digits) everywhere it would "
    f"appear: payloads, event ids, Home Assistant, /status, the page, logs. The key: env "
    f"{KEY_VARIABLE}, at least 32 bytes (docs/privacy.md).",
)


def pseudonyms_from(config: dict[str, Any]) -> Pseudonyms | None:
    """With `--pseudonymize`, the pseudonyms under the key from the environment (never argv or
    the config file); None without. A missing or short key is a usage error (exit 2)."""
    pseudonyms = pseudonyms_for(config)
    if pseudonyms is not None:
        register_secret(os.environ[KEY_VARIABLE])
    return pseudonyms


def logging_options(command: F) -> F:
    for option in reversed(
        [
            click.option(
                "--log-format",
                type=click.Choice(["text", "json"]),
                default="text",
                show_default=True,
                help="Human-readable lines, or one JSON object per line for log collectors.",
            ),
            click.option(
                "--log-level",
                type=click.Choice(["debug", "info", "warning", "error"]),
                default="info",
                show_default=True,
            ),
        ]
    ):
        command = option(command)
    return command


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(data).decode()


# The young generation's collection threshold (CPython's default is 700) for the commands that
# stream history: `run` and `replay`, so the backfill and its baseline run under one setting.
# Both keep up to two windows of entries alive (~20,000 each, with their numbering keys), and
# the bridge also every unacknowledged event for redelivery (up to a sink's in-flight limit,
# 16,000 for Kafka): tens of thousands of GC-tracked objects that reference counting frees
# anyway. With a lower threshold the collector traverses and promotes them again and again
# (what that costs per event: bench/README.md, "Bridge backfill vs replay"); at 100,000 it
# hardly runs. Cyclic garbage waits for up to this many new objects: some MB at most.
GC_YOUNG_THRESHOLD = 100_000


def tune_gc() -> None:
    """Collect the young generation less often (see GC_YOUNG_THRESHOLD); the older ones as before."""
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(GC_YOUNG_THRESHOLD, young), older, oldest)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a line is logged: while a rich progress bar shows,
    that is the bar's console, which prints the line above the bar rather than across it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # always the current sys.stderr


def setup_logging(log_format: str = "text", log_level: str = "info") -> None:
    """One stderr handler with the secret redactor on it: no line leaves with a key or password."""
    handler = StderrHandler()
    handler.addFilter(redactor)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(log_level.upper())
    # Libraries that log every request, or an error per reconnect attempt during an outage:
    # the sinks and the client report those conditions themselves, once, in plain words.
    for noisy in ("httpx", "httpcore", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for chatty in ("aiokafka", "kafka"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if root.level <= logging.DEBUG else logging.CRITICAL)


def register_secret(secret: str | None) -> None:
    """Broker passwords and the like: redacted from every log line from now on."""
    if secret:
        redactor.add(secret)


# -- the wiring of `run`, which `check` and `demo` share -------------------------------------------


def prepare(config: dict[str, Any], role: Role = Role.BRIDGE) -> tuple[str, list[Sink], BridgeOptions]:
    """Everything that can be checked without the network, checked before any side effect;
    bad input raises click's usage errors (exit 2). The sinks are built for `role`."""
    entry_filter, api_key, names = filters_key_and_names(config)
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
    if config.get("web_ingress") and config.get("web_port") is None:
        raise click.UsageError("--web-ingress serves the page on --web-port: set it (8099 for the add-on)")
    if config.get("web_port") is not None and not config.get("web_ingress"):
        password = password_from()
        problem = exposure_problem(config["web_host"], password)
        if problem:
            raise click.UsageError(problem)
        register_secret(password)
    sinks = build_sinks(config["broker"], config, role=role)
    options = BridgeOptions(
        refresh=config["refresh"],
        tail_interval=config["tail_interval"],
        backfill_from=backfill_from,
        lateness=timedelta(seconds=config["lateness"]),
        presence_timeout=config["presence_timeout"],
        entry_filter=entry_filter,
        realtime=config["realtime"],
        quick_polls=config["quick_polls"],
        instance_id=config["instance_id"],
        pseudonymous=names is not None,
    )
    return api_key, sinks, options


def page_state(config: dict[str, Any]) -> PageState | None:
    """The web page's state when `--web-port` asks for the page; None otherwise."""
    if config.get("web_port") is None:
        return None
    return PageState(away_after=config["away_after"])


def page_host(config: dict[str, Any]) -> str:
    """The address the page listens on: `--web-host`, or every address with `--web-ingress`."""
    return INGRESS_HOST if config.get("web_ingress") else str(config["web_host"])


async def serve_page(config: dict[str, Any], state: PageState, bridge: Bridge) -> tuple[PageServer, str]:
    """Serve the page on `--web-host:--web-port` (the password, if any, from the environment),
    or with `--web-ingress` on every address for the ingress proxy alone; returns the server
    and the page's URL. A port that cannot be bound is one line, exit 1."""
    server = PageServer(state, bridge.status)
    host, port = page_host(config), config["web_port"]
    access = Access.ingress() if config.get("web_ingress") else Access(password=password_from())
    try:
        url = await server.listen(host, port, access)
    except OSError as exc:
        await server.close()
        raise click.ClickException(
            f"cannot serve the web page on {host}:{port}: {exc.strerror or exc}"
        ) from None
    return server, url


def make_client(
    config: dict[str, Any], api_key: str, metrics: Metrics | None = None, **retry: Any
) -> AsyncLogsAPI:
    return AsyncLogsAPI(
        api_key,
        base_url=config["api_url"],
        timeout=config["api_timeout"],
        transport=CountingTransport(metrics) if metrics else None,
        names=pseudonyms_from(config),
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
