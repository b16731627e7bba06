"""The MQTT sink's settings: one declaration per option (facespace_bridge/settings.py), from
which its CLI options and `from_config` are made; the connection's part is read by
`mqtt-cleanup` too."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import click

from facespace_bridge.client import redactor
from facespace_bridge.privacy.filters import FilterSettings, camera_passes, normalized
from facespace_bridge.privacy.pseudonyms import Pseudonyms, pseudonyms_for
from facespace_bridge.settings import flag, from_options, option_name, setting
from facespace_bridge.sinks.mqtt.address import BrokerAddress, TlsFiles, parse_mqtt_url
from facespace_bridge.sinks.mqtt.connection import PROTOCOLS
from facespace_bridge.sinks.mqtt.outbox import DEFAULT_MAX_INFLIGHT, DEFAULT_MAX_QUEUED
from facespace_bridge.sinks.mqtt.topics import check_base_topic

DEFAULT_MESSAGE_EXPIRY = 3600  # seconds (MQTT 5): a sighting nobody fetched within an hour is stale

_FILE = click.Path(exists=True, dir_okay=False)


@dataclass(frozen=True)
class MqttSettings:
    """Where and how the MQTT sink connects, and its base topic. The password comes from the
    URL or env MQTT_PASSWORD, never from a flag."""

    url: str = setting(
        "--mqtt-url",
        default="mqtt://localhost:1883",
        envvar="MQTT_URL",
        help="mqtt://[user[:password]@]host[:port] or mqtts:// for TLS. A password in the URL "
        "shows in `ps`: prefer env MQTT_URL or MQTT_PASSWORD.",
    )
    username: str | None = setting(
        "--mqtt-username", default=None, envvar="MQTT_USERNAME", help="Broker user (password: MQTT_PASSWORD)."
    )
    password: str | None = None  # env MQTT_PASSWORD (`settings_from_config`), or the URL's
    cafile: str | None = setting("--mqtt-cafile", default=None, type=_FILE, help="CA bundle for mqtts://.")
    certfile: str | None = setting(
        "--mqtt-certfile", default=None, type=_FILE, help="Client certificate (PEM)."
    )
    keyfile: str | None = setting(
        "--mqtt-keyfile", default=None, type=_FILE, help="Key of the client certificate (PEM)."
    )
    client_id: str | None = setting(
        "--mqtt-client-id", default=None, help="MQTT client id [default: facespace-bridge-<topic prefix>]."
    )
    keepalive: int = setting(
        "--mqtt-keepalive",
        default=30,
        type=click.IntRange(5, 65535),
        help="Seconds between keepalive pings.",
    )
    qos: int = setting(
        "--mqtt-qos",
        default=1,
        type=click.Choice([0, 1, 2]),
        help="QoS of every message; acks (and checkpoints) follow it.",
    )
    protocol: str = setting(
        "--mqtt-protocol",
        default="3.1.1",
        type=click.Choice(list(PROTOCOLS)),
        help="MQTT version; 5 adds message expiry, user properties and content type to sightings.",
    )
    message_expiry: int = setting(
        "--mqtt-message-expiry",
        default=DEFAULT_MESSAGE_EXPIRY,
        cli_default=None,  # given or not: it needs MQTT 5 only when given
        type=click.IntRange(1, 2**32 - 1),
        help="Seconds (MQTT 5 only) after which the broker drops a sighting not yet delivered; "
        "never on retained topics.",
    )
    max_inflight: int = setting(
        "--mqtt-max-inflight",
        default=DEFAULT_MAX_INFLIGHT,
        type=click.IntRange(1, 65000),
        help="Messages awaiting PUBACK at once.",
    )
    max_queued: int = setting(
        "--mqtt-max-queued",
        default=DEFAULT_MAX_QUEUED,
        type=click.IntRange(1, 10_000_000),
        help="Unacknowledged messages held before sources are made to wait.",
    )
    topic_prefix: str = setting("--topic-prefix", default="facespace", help="Base MQTT topic.")
    # `--exclude-person` (privacy/filters.py), NFC-normalised: people the bridge never publishes,
    # whom the Home Assistant extension removes at start if they were announced before.
    excluded_people: frozenset[str] = frozenset()
    # `--person`, NFC-normalised: when given, everyone else is left out, and removed at start too.
    kept_people: frozenset[str] = frozenset()
    # `--exclude-camera` and `--camera-id`: cameras left out, whose retained presence and Home
    # Assistant configs the sink clears at start if it published them before.
    excluded_cameras: frozenset[str] = frozenset()
    kept_cameras: frozenset[str] = frozenset()  # when given, every other camera is left out
    # `--pseudonymize` (privacy/pseudonyms.py): what was published stands for each person.
    pseudonyms: Pseudonyms | None = None

    @property
    def leaves_out(self) -> bool:
        """Whether the filters leave out anyone or any camera (whose traces a start clears)."""
        return bool(self.excluded_people or self.kept_people or self.excluded_cameras or self.kept_cameras)

    def camera_kept(self, camera: str) -> bool:
        """Whether the camera filters keep `camera` (privacy/filters.py, the sources' rule)."""
        return camera_passes(camera, self.kept_cameras, self.excluded_cameras)

    def as_published(self, people: Iterable[str]) -> frozenset[str]:
        """`people` as the bridge published them, to find their traces by: NFC-normalised, and
        under `--pseudonymize` their pseudonyms too (a request may name a person either way)."""
        names = frozenset(map(normalized, people))
        if self.pseudonyms is None:
            return names
        return names | frozenset(map(self.pseudonyms.of, names))

    @property
    def address(self) -> BrokerAddress:
        """The broker's address (raises ValueError for a bad URL)."""
        return parse_mqtt_url(self.url, self.username, self.password)

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.cafile, self.certfile, self.keyfile)


def settings_from_config(config: Mapping[str, Any]) -> MqttSettings:
    """The settings from a command's parsed options (click parameter names) and env
    MQTT_PASSWORD; raises click's errors for bad input, does no I/O."""
    excluded = config.get(option_name(FilterSettings, "exclude_people")) or ()
    kept = config.get(option_name(FilterSettings, "people")) or ()
    excluded_cameras = config.get(option_name(FilterSettings, "exclude_cameras")) or ()
    kept_cameras = config.get(option_name(FilterSettings, "cameras")) or ()
    pseudonyms = pseudonyms_for(config)
    settings = from_options(
        MqttSettings,
        config,
        password=os.environ.get("MQTT_PASSWORD") or None,
        excluded_people=frozenset(normalized(name) for name in excluded),
        kept_people=frozenset(normalized(name) for name in kept),
        excluded_cameras=frozenset(excluded_cameras),
        kept_cameras=frozenset(kept_cameras),
        pseudonyms=pseudonyms,
    )

    def hint(field: str) -> str:
        return flag(MqttSettings, field)

    try:
        address = settings.address
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint("url")) from None
    if address.password:  # from the URL: redacted like the variables in SECRET_VARIABLES
        redactor.add(address.password)
    problem = check_base_topic(settings.topic_prefix, hint("topic_prefix"))
    if problem:
        raise click.BadParameter(problem, param_hint=hint("topic_prefix"))
    tls = settings.tls
    if tls and not address.tls:
        raise click.BadParameter("TLS files need an mqtts:// URL", param_hint=hint("url"))
    if tls.keyfile and not tls.certfile:
        raise click.BadParameter(f"{hint('keyfile')} needs {hint('certfile')}", param_hint=hint("keyfile"))
    if settings.max_queued < settings.max_inflight:
        raise click.BadParameter(f"must be at least {hint('max_inflight')}", param_hint=hint("max_queued"))
    if config.get(option_name(MqttSettings, "message_expiry")) is not None and settings.protocol != "5":
        raise click.BadParameter(
            f"message expiry needs {hint('protocol')} 5", param_hint=hint("message_expiry")
        )
    return replace(settings, client_id=settings.client_id or None)
