"""Kafka sink (aiokafka): sightings, presence and dead letters as keyed records, acks=all.

Key = camera id, so one camera's events stay ordered in one partition (aiokafka sends
at most one batch per partition at a time, so a retry cannot reorder a partition even
without idempotence). Headers `content-type`, `schema`, `event-id`, and the CloudEvents
`ce_` attributes (facespace_bridge/cloudevents.py) unless `--no-cloudevents`; the record
timestamp is the ingest time, never part of the payload (DESIGN §3, §5).

aiokafka has no producer memory bound, so `publish` holds one of `max_in_flight`
slots per unacknowledged record: a slow broker pushes back on the sources (DESIGN §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import click
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka import codec as _codec
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.protocol.coordination import FindCoordinatorRequest
from aiokafka.protocol.transaction import InitProducerIdRequest
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_delay, wait_exponential

from facespace_bridge.cloudevents import CloudEvents, source_from_config
from facespace_bridge.events import Event
from facespace_bridge.sinks.base import Ack, Sink, SinkError

if TYPE_CHECKING:
    from aiokafka.producer.message_accumulator import BatchBuilder  # what create_batch() returns

log = logging.getLogger(__name__)

DEFAULT_TOPICS = {
    "sighting": "facespace.sightings",
    "presence": "facespace.presence",
    "deadletter": "facespace.deadletter",
}
# Defaults chosen by measurement (bench/kafka_replay.py --tune, figures in bench/README.md).
DEFAULT_LINGER_MS = 0
DEFAULT_BATCH_SIZE = 256 * 1024
DEFAULT_MAX_IN_FLIGHT = 16_000
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_PARTITIONS = 3
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Only the codecs the installed libraries can write (snappy/lz4/zstd need cramjam).
COMPRESSIONS = (
    "none",
    *(name for name in ("gzip", "snappy", "lz4", "zstd") if getattr(_codec, f"has_{name}")()),
)
# A transactional id used only to ask the broker whether it can do transactions; no
# producer ever writes with it, and Kafka expires it after transactional.id.expiration.ms.
_PROBE_TRANSACTIONAL_ID = "facespace-bridge.capability-probe"
_CONTENT_TYPE = ("content-type", b"application/json")
_MAX_PLACEMENTS = 100_000
_partitioner = DefaultPartitioner()


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    """What the broker can do, asked of it rather than assumed (Tansu advertises the APIs
    in ApiVersions but fails InitProducerId)."""

    idempotence: bool
    transactions: bool
    brokers: int  # how many brokers the cluster metadata lists


@dataclass(frozen=True)
class KafkaSettings:
    """Everything the Kafka sink needs; `from_config` builds it from the CLI options."""

    bootstrap_servers: str = "localhost:9092"
    topics: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TOPICS))
    partitions: int = DEFAULT_PARTITIONS
    replication_factor: int | None = None  # None: min(3, brokers in the cluster)
    linger_ms: int = DEFAULT_LINGER_MS
    batch_size: int = DEFAULT_BATCH_SIZE
    compression: str = "none"
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    request_timeout_ms: int = 40_000
    security_protocol: str = "PLAINTEXT"
    ssl_context: ssl.SSLContext | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = field(default=None, repr=False)
    sasl_password: str | None = field(default=None, repr=False)
    idempotence: bool = True  # asked for; used only where the broker supports it
    # --exactly-once: events go out in transactions that the bridge commits together with
    # the checkpoint (`transaction_boundary`). A second producer with the same id fences this one.
    transactional_id: str | None = None
    # The CloudEvents `source` of the records' ce_ headers (the FaceSpace API, see
    # cloudevents.source_uri); None: no ce_ headers (--no-cloudevents).
    cloudevents_source: str | None = None

    def connection_kwargs(self) -> dict[str, Any]:
        """The arguments every aiokafka client of this sink shares (bootstrap, TLS, SASL)."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs


# -- capability probes ---------------------------------------------------------------------------


async def probe_capabilities(client: AIOKafkaClient) -> BrokerCapabilities:
    """Ask a bootstrapped client's cluster whether it supports idempotent and transactional
    producers: InitProducerId without, then with, a transactional id."""
    node = client.get_random_node()
    brokers = len(client.cluster.brokers())
    idempotence = await _init_producer_id(client, node, None)
    transactions = False
    if idempotence:  # transactions need an idempotent producer id first
        reply = await client.send(node, FindCoordinatorRequest(_PROBE_TRANSACTIONAL_ID, 1))
        if reply.error_code == 0:
            transactions = await _init_producer_id(client, reply.coordinator_id, _PROBE_TRANSACTIONAL_ID)
    return BrokerCapabilities(idempotence=idempotence, transactions=transactions, brokers=brokers)


async def _init_producer_id(client: AIOKafkaClient, node: int, transactional_id: str | None) -> bool:
    try:
        reply = await client.send(node, InitProducerIdRequest(transactional_id, 60_000))
    except kafka_errors.KafkaError as exc:
        log.debug("InitProducerId(%s) failed: %r", transactional_id, exc)
        return False
    return bool(reply.error_code == 0 and reply.producer_id >= 0)


async def broker_capabilities(settings: KafkaSettings) -> BrokerCapabilities:
    """Connect once (no retries) and probe the broker; raises aiokafka's errors."""
    client = AIOKafkaClient(**settings.connection_kwargs())
    try:
        await client.bootstrap()
        return await probe_capabilities(client)
    finally:
        await client.close()


# -- the sink ------------------------------------------------------------------------------------


@contextmanager
def _quiet_aiokafka_bootstrap() -> Iterator[None]:
    """aiokafka logs every failed bootstrap at ERROR; during our retries we log one line per
    attempt ourselves instead."""
    loggers = [logging.getLogger(name) for name in ("aiokafka", "aiokafka.client", "aiokafka.conn")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, (asyncio.TimeoutError, OSError)) or (
        isinstance(exc, kafka_errors.KafkaError) and exc.retriable
    )


def _reason(exc: BaseException) -> str:
    """One short line for a user; aiokafka's texts repeat the class name and list sockets."""
    if isinstance(exc, kafka_errors.KafkaConnectionError):
        return "no broker answered"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    name = type(exc).__name__
    text = str(exc).strip()
    if text.startswith(name):
        return text
    return f"{name}: {text}" if text else name


_backoff = wait_exponential(multiplier=0.5, max=5.0)


def _quiet_unretrieved_kafka_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiokafka fails its internal futures with a fatal producer error (fenced, say) that the
    sink has already turned into one clear line; garbage collection would then print each of
    them with a traceback ("exception was never retrieved"). Those go to the debug log."""
    error = context.get("exception")
    if isinstance(error, kafka_errors.KafkaError) and "never retrieved" in str(context.get("message")):
        log.debug("aiokafka left an error unretrieved (reported already): %r", error)
        return
    loop.default_exception_handler(context)


def _wait_until(deadline: float) -> Callable[[RetryCallState], float]:
    """Exponential backoff, cut short so that the last attempt happens at the deadline."""

    def wait(state: RetryCallState) -> float:
        return max(0.0, min(_backoff(state), deadline - time.monotonic()))

    return wait


class KafkaSink(Sink):
    """Publishes events to Kafka. `start()` connects (with retries), probes the broker and
    starts an idempotent producer where the broker supports one."""

    name = "kafka"

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.capabilities: BrokerCapabilities | None = None
        self.idempotent = False  # what the running producer really is
        self.failed = 0  # records the broker never acknowledged
        self._producer: AIOKafkaProducer | None = None
        self._ready_topics: set[str] = set()
        self._topic_lock = asyncio.Lock()
        # schema -> (topic, headers without event-id, camera -> (key, its partition's batches))
        self._routes: dict[str, tuple[str, list[tuple[str, bytes]], dict[str, tuple[bytes, _Batches]]]] = {}
        self._partitions: dict[tuple[str, int], _Batches] = {}
        self._unacked = 0  # records handed over and not yet acknowledged or failed
        self._acks: deque[asyncio.Future[None]] = deque()  # one per batch, in the order opened
        self._send_pending = False  # a task to send the open batches is scheduled
        self._tasks: set[asyncio.Task[None]] = set()
        # Transactions (--exactly-once): a batch is published whole between two commits, so the
        # checkpoint of a transaction covers exactly its batches: publish and the commit take turns.
        self._turns = asyncio.Lock()
        self._in_transaction = False
        self._begin_lock = asyncio.Lock()
        source = settings.cloudevents_source
        self._cloudevents = CloudEvents(source) if source is not None else None

    @property  # type: ignore[override]
    def transactional(self) -> bool:
        return self.settings.transactional_id is not None

    @property
    def producer(self) -> AIOKafkaProducer | None:
        """The running producer (the Kafka checkpoint store writes with it inside transactions)."""
        return self._producer

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(_quiet_unretrieved_kafka_errors)
        settings = self.settings
        timeout = settings.connect_timeout
        deadline = time.monotonic() + timeout
        attempts = 0

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "Kafka broker %s not reachable (attempt %d: %s); retrying in %.1f s",
                settings.bootstrap_servers,
                state.attempt_number,
                _reason(exc) if exc else "?",
                wait,
            )

        try:
            with _quiet_aiokafka_bootstrap():
                async for attempt in AsyncRetrying(
                    stop=stop_after_delay(timeout),
                    wait=_wait_until(deadline),
                    retry=retry_if_exception(_retriable),
                    before_sleep=before_sleep,
                    reraise=True,
                ):
                    with attempt:
                        attempts += 1
                        remaining = max(0.1, deadline - time.monotonic())
                        await asyncio.wait_for(self._connect(), remaining)
        except (asyncio.TimeoutError, OSError, kafka_errors.KafkaError) as exc:
            await self._discard_producer()
            if _retriable(exc):
                raise SinkError(
                    f"Kafka broker {settings.bootstrap_servers} unreachable after {timeout:g} s "
                    f"({attempts} attempts): {_reason(exc)}"
                ) from None
            raise SinkError(f"Kafka broker {settings.bootstrap_servers} refused us: {_reason(exc)}") from None

    async def _connect(self) -> None:
        """One attempt: probe the broker, then start the producer it can support."""
        await self._discard_producer()
        probe = AIOKafkaClient(**self.settings.connection_kwargs())
        try:
            await probe.bootstrap()
            caps = await probe_capabilities(probe)
        finally:
            await probe.close()
        if self.capabilities is None and self.settings.idempotence and not caps.idempotence:
            log.warning(
                "Kafka broker %s does not support idempotent producers (InitProducerId fails); "
                "continuing with acks=all without idempotence: a retried send may be duplicated "
                "(duplicates carry the same event-id)",
                self.settings.bootstrap_servers,
            )
        self.capabilities = caps
        s = self.settings
        if s.transactional_id is not None and not caps.transactions:
            raise SinkError(f"--exactly-once: the Kafka broker at {s.bootstrap_servers} has no transactions")
        self.idempotent = (s.idempotence and caps.idempotence) or s.transactional_id is not None
        producer = AIOKafkaProducer(
            **s.connection_kwargs(),
            acks="all",
            enable_idempotence=self.idempotent,
            transactional_id=s.transactional_id,
            linger_ms=s.linger_ms,
            max_batch_size=s.batch_size,
            max_request_size=max(s.batch_size, 1_048_576),
            compression_type=None if s.compression == "none" else s.compression,
            client_id="facespace-bridge",
        )
        self._producer = producer
        await producer.start()

    async def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except (asyncio.TimeoutError, kafka_errors.KafkaError, OSError):
                pass

    async def _begin_transaction(self) -> None:
        # Batches of several partitions are sent concurrently: one of them begins it.
        async with self._begin_lock:
            if not self._in_transaction and self._producer is not None:
                await self._producer.begin_transaction()
                self._in_transaction = True

    def _transaction_error(self, exc: BaseException) -> SinkError:
        if isinstance(exc, kafka_errors.ProducerFenced):
            return SinkError(
                f"another bridge with transactional id {self.settings.transactional_id} took over "
                "(same --instance-id); this one stops"
            )
        return SinkError(f"Kafka transaction failed: {_reason(exc)}")

    async def supports_transactions(self) -> bool:
        """Whether the broker can run transactions (for `--exactly-once`); probed at start."""
        if self.capabilities is None:
            raise SinkError("the Kafka sink is not started")
        return self.capabilities.transactions

    async def flush(self) -> None:
        """Wait until every record handed over so far is acknowledged (or failed)."""
        if self._producer is None:
            return
        await self._send_open_batches()
        acks = self._acks
        if acks:
            await asyncio.wait(list(acks))
        while acks and acks[0].done():  # (batches opened meanwhile by other publishers stay)
            acks.popleft()
        if self.failed:
            raise SinkError(f"{self.failed} records were not acknowledged by Kafka")

    async def close(self) -> None:
        try:
            if not self.transactional:
                await self.flush()
            elif self._in_transaction and self._producer is not None:
                # Not committed by the bridge: none of it may become visible. (The broker would
                # abort it on its timeout, or when this instance starts again, anyway.)
                self._in_transaction = False
                with contextlib.suppress(kafka_errors.KafkaError, asyncio.TimeoutError):
                    await asyncio.wait_for(self._producer.abort_transaction(), 5)
        finally:
            await self._discard_producer()

    @asynccontextmanager
    async def transaction_boundary(self) -> AsyncIterator[None]:
        """`--exactly-once`: commit what was published so far, together with what the caller
        writes inside the block (the checkpoint record, written with `self.producer`).

        Publishers wait meanwhile; every record handed over is sent and acknowledged before
        the block runs, so the caller's checkpoint covers exactly this transaction's events.
        Raises SinkError when the commit fails (fenced by another instance, broker errors):
        the transaction is then aborted, and a restart resumes from the last commit.
        """
        producer = self._producer
        if producer is None or not self.transactional:
            raise SinkError("the Kafka sink is not transactional")
        await self._turns.acquire()
        try:
            await self.flush()
            await self._begin_transaction()  # (the checkpoint record needs one, events or not)
            yield
            await producer.commit_transaction()
            self._in_transaction = False
        except kafka_errors.KafkaError as exc:
            raise self._transaction_error(exc) from None
        finally:
            self._turns.release()

    async def write_in_transaction(self, topic: str, key: bytes, value: bytes | None) -> None:
        """One record into the open transaction (the checkpoint store's), acknowledged."""
        if self._producer is None or not self.transactional:
            raise SinkError("the Kafka sink is not transactional")
        try:
            await self._producer.send_and_wait(topic, value, key=key)
        except kafka_errors.KafkaError as exc:
            raise self._transaction_error(exc) from None

    # -- topics ------------------------------------------------------------------------------------

    async def ensure_topic(self, topic: str, config: Mapping[str, str] | None = None) -> None:
        """Create `topic` when it is missing (`partitions`, `replication_factor`); an existing
        topic is used as it is."""
        async with self._topic_lock:
            if topic in self._ready_topics:
                return
            s = self.settings
            admin = AIOKafkaAdminClient(**s.connection_kwargs())
            try:
                await admin.start()
                if topic not in await admin.list_topics():
                    brokers = self.capabilities.brokers if self.capabilities else 1
                    replication = s.replication_factor or min(3, max(1, brokers))
                    reply = await admin.create_topics(
                        [NewTopic(topic, s.partitions, replication, topic_configs=dict(config or {}))]
                    )
                    for _name, code, message in reply.topic_errors:
                        error = kafka_errors.for_code(code)
                        if error not in (kafka_errors.NoError, kafka_errors.TopicAlreadyExistsError):
                            why = message or error.__name__
                            raise SinkError(f"cannot create Kafka topic {topic!r}: {why}")
                    log.info(
                        "created Kafka topic %s (%d partitions, replication %d)",
                        topic,
                        s.partitions,
                        replication,
                    )
            except kafka_errors.KafkaError as exc:
                raise SinkError(f"cannot create Kafka topic {topic!r}: {_reason(exc)}") from None
            finally:
                await admin.close()
            self._ready_topics.add(topic)

    # -- the hot path ------------------------------------------------------------------------------

    def _route(self, event: Event) -> tuple[str, list[tuple[str, bytes]], dict[str, tuple[bytes, _Batches]]]:
        """(topic, headers without event-id, placements) of a schema; made once per schema."""
        route = self._routes.get(event.schema)
        if route is None:
            topic = self.settings.topics.get(event.kind)
            if topic is None:
                raise SinkError(f"the Kafka sink has no topic for {event.schema!r} events")
            route = (topic, [_CONTENT_TYPE, ("schema", event.schema.encode())], {})
            self._routes[event.schema] = route
        return route

    async def _place(
        self, topic: str, camera_id: str, placements: dict[str, tuple[bytes, _Batches]]
    ) -> tuple[bytes, _Batches]:
        """The key bytes and partition of a camera's records in `topic`.

        The partition is the default partitioner's (murmur2 of the key, as the Java client),
        computed once per camera. Partitions are only ever added, so a cached choice stays
        valid and keeps the camera's records in one partition.
        """
        if topic not in self._ready_topics:
            await self.ensure_topic(topic)
        assert self._producer is not None
        partitions = sorted(await self._producer.partitions_for(topic))
        key = camera_id.encode()
        partition = _partitioner(key, partitions, partitions)
        batches = self._partitions.get((topic, partition))
        if batches is None:
            batches = self._partitions[(topic, partition)] = _Batches(topic, partition)
        if len(placements) >= _MAX_PLACEMENTS:  # a flood of camera ids must not grow memory
            placements.clear()
        placements[camera_id] = placed = (key, batches)
        return placed

    async def publish(self, events: Sequence[Event]) -> Ack:
        """Append each record to its partition's open batch; the ack is that of every batch
        the records went into."""
        acks: list[asyncio.Future[None]] = []
        async with self._turns if self.transactional else contextlib.nullcontext():
            for event in events:
                ack = await self._append(event)
                if not acks or acks[-1] is not ack:
                    acks.append(ack)
        return asyncio.gather(*acks)

    async def _append(self, event: Event) -> asyncio.Future[None]:
        """Append the record to its partition's open batch; returns that batch's ack.

        Records go into aiokafka batches built here (`create_batch` / `send_batch`) rather
        than one `send()` each: per record that is an append to a C buffer instead of a
        future, two callbacks and a partitioner call -- 4x the throughput (bench/README.md).
        A batch is sent when full, and otherwise as soon as the publisher yields to the
        event loop (after `linger_ms` when that is set).
        """
        producer = self._producer
        if producer is None:
            raise SinkError("the Kafka sink is not started")
        topic, headers, placements = self._routes.get(event.schema) or self._route(event)
        placed = placements.get(event.camera_id)
        if placed is None:
            placed = await self._place(topic, event.camera_id, placements)
        if self._unacked >= self.settings.max_in_flight:
            await self._make_room()  # back-pressure: at most max_in_flight unacknowledged
        key, batches = placed
        if self._cloudevents is None:
            record_headers = [*headers, ("event-id", event.event_id.encode())]
        else:
            record_headers = self._cloudevents.kafka_headers(event, headers)
            record_headers.append(("event-id", event.event_id.encode()))
        timestamp = int(time.time() * 1000)
        builder = batches.builder or self._open(batches)
        if builder.append(timestamp=timestamp, key=key, value=event.payload, headers=record_headers) is None:
            await self._send(batches)  # full: waits while the partition's previous batch is queued
            builder = batches.builder or self._open(batches)
            # An empty batch takes any record, however large.
            builder.append(timestamp=timestamp, key=key, value=event.payload, headers=record_headers)
        batches.count += 1
        self._unacked += 1
        return cast("asyncio.Future[None]", batches.ack)

    def _open(self, batches: _Batches) -> BatchBuilder:
        assert self._producer is not None
        loop = asyncio.get_running_loop()
        batches.builder = builder = self._producer.create_batch()
        batches.ack = ack = loop.create_future()
        batches.count = 0
        acks = self._acks
        while acks and acks[0].done():  # settled batches: a long run must not pile them up
            acks.popleft()
        acks.append(ack)
        if not self._send_pending:
            self._send_pending = True
            if self.settings.linger_ms:
                loop.call_later(self.settings.linger_ms / 1000, self._start_sending)
            else:
                loop.call_soon(self._start_sending)
        return builder

    def _start_sending(self) -> None:
        self._send_pending = False
        task = asyncio.get_running_loop().create_task(self._send_open_batches())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_open_batches(self) -> None:
        for batches in list(self._partitions.values()):
            if batches.builder is not None:
                try:
                    await self._send(batches)
                except SinkError:
                    pass  # the batch's ack carries the error to the publishers

    async def _send(self, batches: _Batches) -> None:
        """Hand the partition's open batch to aiokafka; its ack follows the delivery."""
        builder, ack, count = batches.builder, batches.ack, batches.count
        batches.builder = batches.ack = None
        batches.count = 0
        if builder is None or ack is None or self._producer is None:
            return
        # One batch at a time per partition, in the order they were closed (Lock is FIFO).
        async with batches.lock:
            try:
                if self.transactional:
                    await self._begin_transaction()
                delivery = await self._producer.send_batch(
                    builder, batches.topic, partition=batches.partition
                )
            except kafka_errors.KafkaError as exc:
                error = (
                    self._transaction_error(exc)
                    if self.transactional
                    else SinkError(f"Kafka send to {batches.topic} failed: {_reason(exc)}")
                )
                self._settle(ack, count, error)
                raise error from None
        delivery.add_done_callback(partial(self._delivered, ack, count))

    def _delivered(self, ack: asyncio.Future[None], count: int, delivery: asyncio.Future[Any]) -> None:
        error = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if self.transactional and isinstance(error, kafka_errors.KafkaError):
            error = self._transaction_error(error)
        self._settle(ack, count, error)

    def _settle(self, ack: asyncio.Future[None], count: int, error: BaseException | None) -> None:
        self._unacked -= count
        if ack.done():
            return
        if error is None:
            ack.set_result(None)
        else:
            self.failed += count
            ack.set_exception(error)
            ack.exception()  # counted here; publishers that await the ack still see the error

    async def _make_room(self) -> None:
        """Wait, oldest batch first, until fewer than max_in_flight records are unacknowledged."""
        acks, limit = self._acks, self.settings.max_in_flight
        while self._unacked >= limit:
            while acks and acks[0].done():
                acks.popleft()
            if not acks:
                return
            await asyncio.wait((acks[0],))


@dataclass(eq=False, slots=True)
class _Batches:
    """One topic-partition: its open batch (records appended, not yet sent) and that batch's ack."""

    topic: str
    partition: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    builder: BatchBuilder | None = None
    ack: asyncio.Future[None] | None = None
    count: int = 0


# -- CLI ------------------------------------------------------------------------------------------

OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--bootstrap-servers",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        default="localhost:9092",
        show_default=True,
        help="Kafka brokers, host:port[,host:port] (env KAFKA_BOOTSTRAP_SERVERS).",
    ),
    click.option(
        "--topic", default=DEFAULT_TOPICS["sighting"], show_default=True, help="Kafka topic for sightings."
    ),
    click.option(
        "--presence-topic",
        default=DEFAULT_TOPICS["presence"],
        show_default=True,
        help="Kafka topic for presence changes.",
    ),
    click.option(
        "--deadletter-topic",
        default=DEFAULT_TOPICS["deadletter"],
        show_default=True,
        help="Kafka topic for entries that could not be published as events.",
    ),
    click.option(
        "--partitions",
        type=click.IntRange(min=1),
        default=DEFAULT_PARTITIONS,
        show_default=True,
        help="Partitions of a topic the bridge creates (existing topics are used as they are).",
    ),
    click.option(
        "--replication-factor",
        type=click.IntRange(min=1),
        default=None,
        help="Replication factor of a Kafka topic the bridge creates [default: min(3, brokers)].",
    ),
    click.option(
        "--kafka-linger-ms",
        type=click.IntRange(min=0),
        default=DEFAULT_LINGER_MS,
        show_default=True,
        help="How long the producer waits to fill a batch.",
    ),
    click.option(
        "--kafka-batch-size",
        type=click.IntRange(min=1024),
        default=DEFAULT_BATCH_SIZE,
        show_default=True,
        help="Maximum bytes of one producer batch (per partition).",
    ),
    click.option(
        "--kafka-compression",
        type=click.Choice(COMPRESSIONS),
        default="none",
        show_default=True,
        help="Compression of producer batches (codecs the installed libraries support).",
    ),
    click.option(
        "--kafka-max-in-flight",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_IN_FLIGHT,
        show_default=True,
        help="Unacknowledged records before publishing waits (bounds memory).",
    ),
    click.option(
        "--kafka-connect-timeout",
        type=click.FloatRange(min=0),
        default=DEFAULT_CONNECT_TIMEOUT,
        show_default=True,
        help="Seconds to keep retrying an unreachable broker at start.",
    ),
    click.option(
        "--kafka-security-protocol",
        type=click.Choice(SECURITY_PROTOCOLS, case_sensitive=False),
        default=None,
        help="[default: SASL_SSL with SASL, SSL with a TLS file, else PLAINTEXT]",
    ),
    click.option(
        "--kafka-ssl-cafile",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="CA bundle that signed the broker's certificate (TLS).",
    ),
    click.option(
        "--kafka-ssl-certfile",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Client certificate (PEM) for mutual TLS.",
    ),
    click.option(
        "--kafka-ssl-keyfile",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Client private key (PEM); its password, if any, from env KAFKA_SSL_KEY_PASSWORD.",
    ),
    click.option(
        "--kafka-sasl-mechanism",
        type=click.Choice(SASL_MECHANISMS, case_sensitive=False),
        default=None,
        help="SASL mechanism; credentials from env KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD.",
    ),
]


@dataclass(frozen=True)
class _Security:
    protocol: str
    ssl_context: ssl.SSLContext | None
    sasl_mechanism: str | None
    sasl_username: str | None = field(repr=False)
    sasl_password: str | None = field(repr=False)


def connection_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """TLS / SASL keyword arguments for any aiokafka client, from the same CLI options and env
    as the sink (for the Kafka checkpoint store). Raises click errors for bad input."""
    security = _security(config)
    options: dict[str, Any] = {"security_protocol": security.protocol}
    if security.ssl_context is not None:
        options["ssl_context"] = security.ssl_context
    if security.sasl_mechanism is not None:
        options.update(
            sasl_mechanism=security.sasl_mechanism,
            sasl_plain_username=security.sasl_username,
            sasl_plain_password=security.sasl_password,
        )
    return options


def _security(config: Mapping[str, Any]) -> _Security:
    """TLS files are read here so that a bad certificate is bad input (exit 2), not a run-time
    failure; SASL credentials come only from the environment, never from argv."""
    mechanism = config.get("kafka_sasl_mechanism")
    mechanism = mechanism.upper() if mechanism else None
    cafile, certfile, keyfile = (
        config.get("kafka_ssl_cafile"),
        config.get("kafka_ssl_certfile"),
        config.get("kafka_ssl_keyfile"),
    )
    protocol = config.get("kafka_security_protocol")
    if protocol:
        protocol = protocol.upper()
    elif mechanism:
        protocol = "SASL_SSL"
    elif cafile or certfile or keyfile:
        protocol = "SSL"
    else:
        protocol = "PLAINTEXT"
    if keyfile and not certfile:
        raise click.BadParameter("needs --kafka-ssl-certfile as well", param_hint="--kafka-ssl-keyfile")
    if protocol.startswith("SASL") and not mechanism:
        raise click.UsageError(f"--kafka-security-protocol {protocol} needs --kafka-sasl-mechanism")
    if mechanism and not protocol.startswith("SASL"):
        raise click.UsageError(f"--kafka-sasl-mechanism needs a SASL security protocol, not {protocol}")
    if not protocol.endswith("SSL") and (cafile or certfile or keyfile):
        raise click.UsageError(f"--kafka-ssl-* files need an SSL security protocol, not {protocol}")

    username = password = None
    if mechanism:
        username, password = os.environ.get("KAFKA_SASL_USERNAME"), os.environ.get("KAFKA_SASL_PASSWORD")
        if not username or not password:
            raise click.UsageError(
                f"--kafka-sasl-mechanism {mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                "in the environment"
            )

    context = None
    if protocol.endswith("SSL"):
        try:
            context = create_ssl_context(
                cafile=cafile,
                certfile=certfile,
                keyfile=keyfile,
                password=os.environ.get("KAFKA_SSL_KEY_PASSWORD") or None,
            )
        except (ssl.SSLError, OSError) as exc:
            raise click.UsageError(f"cannot load the Kafka TLS files: {exc}") from None
    return _Security(protocol, context, mechanism, username, password)


def from_config(config: Mapping[str, Any], *, replay: bool = False) -> KafkaSink:
    """The sink from parsed CLI options (click parameter names). Validates; connects nothing."""
    security = _security(config)
    bootstrap = (config.get("bootstrap_servers") or "").strip()
    if not bootstrap or any(":" not in part for part in bootstrap.split(",")):
        raise click.BadParameter(
            f"expected host:port[,host:port], got {bootstrap!r}", param_hint="--bootstrap-servers"
        )
    compression = config.get("kafka_compression") or "none"
    if compression not in COMPRESSIONS:
        raise click.BadParameter(
            f"{compression!r} is not one of {', '.join(COMPRESSIONS)}", param_hint="--kafka-compression"
        )
    topics = {
        "sighting": config.get("topic") or DEFAULT_TOPICS["sighting"],
        "presence": config.get("presence_topic") or DEFAULT_TOPICS["presence"],
        "deadletter": config.get("deadletter_topic") or DEFAULT_TOPICS["deadletter"],
    }
    settings = KafkaSettings(
        bootstrap_servers=bootstrap,
        topics=topics,
        partitions=int(config.get("partitions") or DEFAULT_PARTITIONS),
        replication_factor=config.get("replication_factor"),
        linger_ms=int(_or(config.get("kafka_linger_ms"), DEFAULT_LINGER_MS)),
        batch_size=int(config.get("kafka_batch_size") or DEFAULT_BATCH_SIZE),
        compression=compression,
        max_in_flight=int(config.get("kafka_max_in_flight") or DEFAULT_MAX_IN_FLIGHT),
        connect_timeout=float(_or(config.get("kafka_connect_timeout"), DEFAULT_CONNECT_TIMEOUT)),
        transactional_id=transactional_id(config) if config.get("exactly_once") else None,
        security_protocol=security.protocol,
        ssl_context=security.ssl_context,
        sasl_mechanism=security.sasl_mechanism,
        sasl_username=security.sasl_username,
        sasl_password=security.sasl_password,
        cloudevents_source=source_from_config(config),
    )
    return KafkaSink(settings)


def transactional_id(config: Mapping[str, Any]) -> str:
    """One per bridge instance: a restarted instance fences its predecessor's open transaction."""
    return f"facespace-bridge.{config.get('instance_id') or 'default'}"


def _or(value: Any, default: Any) -> Any:
    """`value` unless it is None (0 is a real value for linger and timeouts)."""
    return default if value is None else value
