"""What several commands share: API connection options, configuration sources, logging.

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
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from facespace_bridge.client import DEFAULT_BASE_URL, redactor
from facespace_bridge.client.redaction import MIN_SAFE_LENGTH

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "FACESPACE_BRIDGE"

F = TypeVar("F", bound=Callable[..., Any])


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
    ignored = set(also_known()) - known
    defaults = {}
    for key, item in data.items():
        name = key.replace("-", "_")
        if name in ignored:
            continue
        if name not in known:
            raise click.BadParameter(f"{value}: unknown setting {key!r}", param_hint="--config")
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
    return command


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
