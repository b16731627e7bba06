"""Kafka sink: sightings, presence and dead letters as keyed records, acks=all.

Two client libraries behind one `Sink` contract, chosen by `--kafka-client`:

- `librdkafka` (the default): confluent-kafka's `Producer`, librdkafka's C producer in
  threads of its own (`_librdkafka.py`);
- `aiokafka`: the pure-Python asyncio client (`_aiokafka.py`).

What both do alike lives here: the options and settings, topic routing (one topic per
event kind), keys (the camera id, so that one camera's events stay ordered in one partition:
both choose it as the Java client does, murmur2 of the key), the headers (`content-type`,
`schema`, `event-id`, and the CloudEvents `ce_` attributes of facespace_bridge/cloudevents.py
unless `--no-cloudevents`), topic creation, connecting with retries at start, and the
record timestamp: the ingest time, never part of the payload. The connection (bootstrap,
TLS, SASL) and what the broker can do come from facespace_bridge.kafka, shared with the
Kafka checkpoint store.

An acknowledgement resolves only from the broker's delivery report of every record of the
batch; a record the broker never takes fails its batch (the publisher sends it again). At
most `max_in_flight` records are unacknowledged: `publish` waits beyond that, so a slow
broker pushes back on the sources instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any

import click
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from facespace_bridge import kafka as kafka_connection
from facespace_bridge.cloudevents import KAFKA_ID, KAFKA_TIME, CloudEvents, source_from_config
from facespace_bridge.events import Event
from facespace_bridge.kafka import (
    CLIENTS,
    CONNECTION_OPTIONS,
    DEFAULT_BOOTSTRAP,
    Client,
    KafkaConnection,
    TopicError,
    connection_from_config,
    ensure_topic,
)
from facespace_bridge.settings import cli_options, flag, from_options, setting
from facespace_bridge.sinks.base import Role, Sink, SinkError
from facespace_bridge.sinks.kafka.properties import check_properties, parse_properties

if TYPE_CHECKING:
    from facespace_bridge.kafka import BrokerCapabilities

log = logging.getLogger(__name__)

DEFAULT_CLIENT: Client = "librdkafka"
# How long a record may wait for the broker's acknowledgement before its batch fails (and
# the publisher sends it again); the Java client's delivery.timeout.ms.
DEFAULT_DELIVERY_TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class ClientDefaults:
    """Batching defaults of one client library (chosen by measurement, bench/README.md)."""

    linger_ms: int
    batch_size: int


CLIENT_DEFAULTS: dict[Client, ClientDefaults] = {
    # librdkafka sends from its own threads: a few ms of linger fill its batches (its defaults).
    "librdkafka": ClientDefaults(linger_ms=5, batch_size=1_000_000),
    # aiokafka's batches are built by the sink and sent when the publisher yields.
    "aiokafka": ClientDefaults(linger_ms=0, batch_size=256 * 1024),
}
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
# Kafka's own rule for topic names.
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_CONTENT_TYPE = ("content-type", b"application/json")


_MAX_HEADS = 100_000  # cameras per schema whose record heads are kept (a flood of ids must not grow memory)


@dataclass(frozen=True, slots=True)
class RecordHead:
    """What every Kafka record of one schema and camera shares: its topic, its key (the camera
    id: a camera stays in one partition) and the headers before the per-event ones."""

    topic: str
    key: bytes
    headers: tuple[tuple[str, bytes], ...]  # content-type, schema, and the fixed ce_ ones
    cloudevents: bool  # whether the per-event ce_ headers follow

    def headers_of(self, event: Event) -> list[tuple[str, bytes]]:
        """The record's headers: the shared ones, `ce_id` and `ce_time` (CloudEvents, when on;
        `ce_time` when the event has a time), then `event-id`."""
        event_id = event.event_id.encode()
        if not self.cloudevents:
            return [*self.headers, ("event-id", event_id)]
        time = event.time
        if time:
            return [*self.headers, (KAFKA_ID, event_id), (KAFKA_TIME, time.encode()), ("event-id", event_id)]
        return [*self.headers, (KAFKA_ID, event_id), ("event-id", event_id)]


def compressions(client: Client) -> tuple[str, ...]:
    """The codecs `client` can write here."""
    return COMPRESSIONS if client == "librdkafka" else _aiokafka_compressions()


@cache
def _aiokafka_compressions() -> tuple[str, ...]:
    """librdkafka's wheels carry every codec; aiokafka writes snappy/lz4/zstd only with cramjam
    (asked when a sink is configured: importing this module loads no Kafka library)."""
    from aiokafka import codec

    return ("none", *(name for name in COMPRESSIONS[1:] if getattr(codec, f"has_{name}")()))


@dataclass(frozen=True)
class KafkaSettings:
    """Everything the Kafka sink needs; its CLI options are made from the fields declared with
    `setting` (facespace_bridge/settings.py), and `from_config` builds it from them.

    `bootstrap_servers` alone (no `connection`) is a plaintext connection to those brokers.
    `linger_ms` and `batch_size` None: the client library's default (CLIENT_DEFAULTS).
    """

    connection: KafkaConnection | None = None
    bootstrap_servers: str | None = None
    client: Client = setting(  # noqa: RUF009 - a dataclasses.field, like the others
        "--kafka-client",
        default=DEFAULT_CLIENT,
        type=click.Choice(CLIENTS),
        help="Kafka client library: librdkafka (confluent-kafka) or aiokafka (docs/kafka.md).",
    )
    sighting_topic: str = setting("--topic", default="facespace.sightings", help="Kafka topic for sightings.")
    presence_topic: str = setting(
        "--presence-topic", default="facespace.presence", help="Kafka topic for presence changes."
    )
    deadletter_topic: str = setting(
        "--deadletter-topic",
        default="facespace.deadletter",
        help="Kafka topic for entries that could not be published as events.",
    )
    partitions: int = setting(
        "--partitions",
        default=3,
        type=click.IntRange(min=1),
        help="Partitions of a topic the bridge creates (existing topics are used as they are).",
    )
    replication_factor: int | None = setting(  # None: min(3, brokers in the cluster)
        "--replication-factor",
        default=None,
        type=click.IntRange(min=1),
        help="Replication factor of a Kafka topic the bridge creates [default: min(3, brokers)].",
    )
    linger_ms: int | None = setting(
        "--kafka-linger-ms",
        default=None,
        type=click.IntRange(min=0),
        help="How long the producer waits to fill a batch "
        f"[default: {CLIENT_DEFAULTS['librdkafka'].linger_ms} with librdkafka, "
        f"{CLIENT_DEFAULTS['aiokafka'].linger_ms} with aiokafka].",
    )
    batch_size: int | None = setting(
        "--kafka-batch-size",
        default=None,
        type=click.IntRange(min=1024),
        help="Maximum bytes of one producer batch (per partition) "
        f"[default: {CLIENT_DEFAULTS['librdkafka'].batch_size} with librdkafka, "
        f"{CLIENT_DEFAULTS['aiokafka'].batch_size} with aiokafka].",
    )
    compression: str = setting(
        "--kafka-compression",
        default="none",
        type=click.Choice(COMPRESSIONS),
        help="Compression of producer batches (aiokafka writes snappy, lz4 and zstd only with cramjam).",
    )
    max_in_flight: int = setting(
        "--kafka-max-in-flight",
        default=16_000,
        type=click.IntRange(min=1),
        help="Unacknowledged records before publishing waits (bounds memory).",
    )
    connect_timeout: float = setting(
        "--kafka-connect-timeout",
        default=30.0,
        type=click.FloatRange(min=0),
        help="Seconds to keep retrying an unreachable broker at start.",
    )
    properties: tuple[str, ...] = setting(
        "--kafka-property",
        "kafka_properties",
        default=(),
        multiple=True,
        metavar="KEY=VALUE",
        show_default=False,
        help="A librdkafka producer property, as kcat's -X (repeatable; mapped for aiokafka where "
        "it has one): docs/kafka.md.",
    )
    delivery_timeout_ms: int = DEFAULT_DELIVERY_TIMEOUT_MS
    idempotence: bool = True  # asked for; used only where the broker grants it
    # --exactly-once: events go out in transactions that the bridge commits together with
    # the checkpoint (`transaction_boundary`). A second producer with the same id fences this one.
    transactional_id: str | None = None
    # The CloudEvents `source` of the records' ce_ headers (the FaceSpace API, see
    # cloudevents.source_uri); None: no ce_ headers (--no-cloudevents).
    cloudevents_source: str | None = None

    def producer_properties(self) -> dict[str, str]:
        """`--kafka-property` as a dict (checked by `from_config`)."""
        return parse_properties(self.properties)

    @property
    def topics(self) -> dict[str, str]:
        """The topic of each event kind."""
        return {
            "sighting": self.sighting_topic,
            "presence": self.presence_topic,
            "deadletter": self.deadletter_topic,
        }

    def __post_init__(self) -> None:
        connection = self.connection
        if connection is None:
            connection = KafkaConnection(bootstrap_servers=self.bootstrap_servers or DEFAULT_BOOTSTRAP)
        elif self.bootstrap_servers not in (None, connection.bootstrap_servers):
            connection = replace(connection, bootstrap_servers=self.bootstrap_servers)
        if self.client not in CLIENTS:
            raise ValueError(f"{self.client!r} is not one of {', '.join(CLIENTS)}")
        defaults = CLIENT_DEFAULTS[self.client]
        object.__setattr__(self, "connection", connection)
        object.__setattr__(self, "bootstrap_servers", connection.bootstrap_servers)
        if self.linger_ms is None:
            object.__setattr__(self, "linger_ms", defaults.linger_ms)
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", defaults.batch_size)

    @property
    def kafka(self) -> KafkaConnection:
        """The connection (never None once built)."""
        assert self.connection is not None
        return self.connection


# -- what both clients share ---------------------------------------------------------------------

_backoff = wait_exponential(multiplier=0.5, max=5.0)


def _wait_until(deadline: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff, cut short so that the last attempt happens at the deadline."""

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(_backoff(state), deadline - time.monotonic()))

    return wait


class FencedError(SinkError):
    """Another bridge with the same transactional id took over: this one stops."""


class KafkaSink(Sink):
    """Publishes events to Kafka; one subclass per client library (`create_sink` makes the one
    of `settings.client`).

    `start()` connects (with retries for `connect_timeout`), asks the broker whether it
    grants the client an idempotent producer, and starts the producer it can support.
    """

    name = "kafka"

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.capabilities: BrokerCapabilities | None = None
        self.idempotent = False  # what the running producer really is
        self.failed = 0  # records the broker never acknowledged
        self._connected = False
        self._lost = False  # connected once, then not: say so when it comes back
        self._ready_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        # schema -> camera -> what all its records share (`record_head`)
        self._heads: dict[str, dict[str, RecordHead]] = {}
        # Transactions (--exactly-once): a batch is published whole between two commits, so the
        # checkpoint of a transaction covers exactly its batches: publish and the commit take turns.
        self._turns = asyncio.Lock()
        self._in_transaction = False
        source = settings.cloudevents_source
        self._cloudevents = CloudEvents(source) if source is not None else None

    @property  # type: ignore[override]
    def transactional(self) -> bool:
        return self.settings.transactional_id is not None

    @property
    def connected(self) -> bool:
        """False from a failed delivery or a lost cluster until the next acknowledged record."""
        return self._connected

    # -- connecting --------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        timeout = settings.connect_timeout
        deadline = time.monotonic() + timeout
        attempts = 0

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "Kafka broker %s not reachable (attempt %d: %s); retrying in %.1f s, giving up at %g s "
                "(--kafka-connect-timeout)",
                settings.bootstrap_servers,
                state.attempt_number,
                self._reason(exc) if exc else "?",
                wait,
                timeout,
            )

        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_delay(timeout),
                wait=_wait_until(deadline),
                retry=retry_if_exception(self._retriable),
                before_sleep=before_sleep,
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    remaining = max(0.1, deadline - time.monotonic())
                    await asyncio.wait_for(self._connect(remaining), remaining)
        except SinkError:
            await self._discard_producer()
            raise
        except Exception as exc:
            await self._discard_producer()
            if self._retriable(exc):
                raise SinkError(
                    f"Kafka broker {settings.bootstrap_servers} unreachable after {timeout:g} s "
                    f"({attempts} attempts): {self._reason(exc)}"
                ) from None
            raise SinkError(
                f"Kafka broker {settings.bootstrap_servers} refused us: {self._reason(exc)}"
            ) from None
        self._reachable()

    async def _probe(self) -> BrokerCapabilities:
        """What the broker grants this sink's client library (one connection, no retries)."""
        caps = await kafka_connection.broker_capabilities(self.settings.kafka, self.settings.client)
        if self.capabilities is None and self.settings.idempotence and not caps.idempotence:
            log.warning(
                "Kafka broker %s does not grant %s an idempotent producer (InitProducerId fails); "
                "continuing with acks=all without idempotence: a retried send may be duplicated "
                "(duplicates carry the same event-id)",
                self.settings.bootstrap_servers,
                self.settings.client,
            )
        self.capabilities = caps
        self.idempotent = (self.settings.idempotence and caps.idempotence) or self.transactional
        return caps

    @abstractmethod
    async def _connect(self, timeout: float) -> None:
        """One attempt: probe the broker, then start the producer it can support."""

    @abstractmethod
    async def _discard_producer(self) -> None:
        """Drop a producer that a failed start left behind."""

    def _retriable(self, exc: BaseException) -> bool:
        """Whether a failed start attempt is worth another (the broker may come up)."""
        from aiokafka import errors as aiokafka_errors

        return isinstance(exc, (asyncio.TimeoutError, OSError)) or (
            isinstance(exc, aiokafka_errors.KafkaError) and exc.retriable
        )

    def _reason(self, exc: BaseException) -> str:
        """One short line for a user; the libraries' texts repeat class names and list sockets."""
        from aiokafka import errors as aiokafka_errors

        if isinstance(exc, aiokafka_errors.KafkaConnectionError):
            return "no broker answered"
        if isinstance(exc, asyncio.TimeoutError):
            return "timed out"
        name = type(exc).__name__
        text = str(exc).strip()
        if text.startswith(name):
            return text
        return f"{name}: {text}" if text else name

    def _reachable(self) -> None:
        """A record was acknowledged (or the start succeeded)."""
        if not self._connected:
            self._connected = True
            if self._lost:
                self._lost = False
                log.info("Kafka broker %s reachable again", self.settings.bootstrap_servers)

    def _unreachable(self, why: BaseException | str) -> None:
        """The client lost the cluster, or a delivery failed: logged once per outage. Being
        fenced is no outage: the run ends, and its last line says why (once)."""
        self.note_error(why)
        if self._connected:
            self._connected = False
            self._lost = True
            if not isinstance(why, FencedError):
                log.warning("Kafka broker %s: %s", self.settings.bootstrap_servers, why)

    def fenced_error(self) -> FencedError:
        return FencedError(
            f"another bridge with transactional id {self.settings.transactional_id} took over "
            "(same --instance-id); this one stops"
        )

    # -- exactly once --------------------------------------------------------------------------------

    async def transactions_work(self) -> tuple[bool, str]:
        """Whether `--exactly-once` can work with this broker and client library, and why not
        (an aborted write that a read_committed reader must not see: facespace_bridge.kafka)."""
        return await kafka_connection.transactions_work(self.settings.kafka, self.settings.client)

    # -- topics and records ----------------------------------------------------------------------

    async def ensure_topic(self, topic: str, config: Mapping[str, str] | None = None) -> None:
        """Create `topic` when it is missing (`partitions`, `replication_factor`); an existing
        topic is used as it is."""
        if topic in self._ready_topics:
            return
        async with self._topic_lock:
            if topic in self._ready_topics:
                return
            try:
                await ensure_topic(
                    self.settings.kafka,
                    topic,
                    partitions=self.settings.partitions,
                    replication_factor=self.settings.replication_factor,
                    config=config,
                )
            except TopicError as exc:
                raise SinkError(str(exc)) from None
            self._ready_topics.add(topic)

    def record_head(self, event: Event) -> RecordHead:
        """What every record of the event's schema and camera shares; made once per schema and
        camera (the hot loops look `_heads` up first)."""
        by_camera = self._heads.get(event.schema)
        if by_camera is None:
            by_camera = self._heads[event.schema] = {}
        head = by_camera.get(event.camera_id)
        if head is None:
            topic = self.settings.topics.get(event.kind)
            if topic is None:
                raise SinkError(f"the Kafka sink has no topic for {event.schema!r} events")
            headers: tuple[tuple[str, bytes], ...] = (_CONTENT_TYPE, ("schema", event.schema.encode()))
            cloudevents = self._cloudevents
            if cloudevents is not None:
                headers += cloudevents.kafka_fixed(event.schema, event.camera_id)
            if len(by_camera) >= _MAX_HEADS:
                by_camera.clear()
            head = by_camera[event.camera_id] = RecordHead(
                topic, event.camera_id.encode(), headers, cloudevents is not None
            )
        return head


def create_sink(settings: KafkaSettings) -> KafkaSink:
    """The Kafka sink of `settings.client` (each client library's module is imported only when chosen)."""
    if settings.client == "librdkafka":
        from facespace_bridge.sinks.kafka._librdkafka import LibrdkafkaSink

        return LibrdkafkaSink(settings)
    if settings.client == "aiokafka":
        from facespace_bridge.sinks.kafka._aiokafka import AiokafkaSink

        return AiokafkaSink(settings)
    raise ValueError(f"no Kafka client {settings.client!r}")


# -- CLI ------------------------------------------------------------------------------------------

HELP = "Kafka topics, keyed by camera id"
SECRET_VARIABLES = kafka_connection.SECRET_VARIABLES

OPTIONS: list[Callable[[Any], Any]] = [
    CONNECTION_OPTIONS[0],  # --bootstrap-servers first
    *cli_options(KafkaSettings),
    *CONNECTION_OPTIONS[1:],
]


def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> KafkaSink:
    """The sink from parsed CLI options (click parameter names). Validates; connects nothing.
    Only the bridge takes the instance's transactional id: a side client with it would fence
    the running bridge."""
    try:
        settings = from_options(
            KafkaSettings,
            config,
            connection=connection_from_config(config),
            transactional_id=transactional_id(config)
            if config.get("exactly_once") and not role.side
            else None,
            cloudevents_source=source_from_config(config),
        )
    except ValueError as exc:  # the one thing KafkaSettings itself refuses: an unknown client
        raise click.BadParameter(str(exc), param_hint=flag(KafkaSettings, "client")) from None
    client = settings.client
    if settings.compression not in compressions(client):
        raise click.BadParameter(
            f"{settings.compression!r} is not one of {', '.join(compressions(client))} (with {client})",
            param_hint=flag(KafkaSettings, "compression"),
        )
    try:
        check_properties(settings.producer_properties(), client)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag(KafkaSettings, "properties")) from None
    for kind, topic in settings.topics.items():
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise click.BadParameter(
                f"{topic!r} is not a Kafka topic name (1 to 249 of A-Z a-z 0-9 . _ -)",
                param_hint=flag(KafkaSettings, f"{kind}_topic"),
            )
    return create_sink(settings)


def transactional_id(config: Mapping[str, Any]) -> str:
    """One per bridge instance: a restarted instance fences its predecessor's open transaction."""
    return f"facespace-bridge.{config.get('instance_id') or 'default'}"


__all__ = [
    "CLIENTS",
    "CLIENT_DEFAULTS",
    "COMPRESSIONS",
    "DEFAULT_CLIENT",
    "OPTIONS",
    "KafkaSettings",
    "KafkaSink",
    "compressions",
    "create_sink",
    "from_config",
    "transactional_id",
]
