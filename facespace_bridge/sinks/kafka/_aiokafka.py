"""The Kafka sink on aiokafka (`--kafka-client aiokafka`).

aiokafka sends at most one batch per partition at a time, so a retry cannot reorder a
partition even without idempotence. It has no producer memory bound: `publish` holds one of
`max_in_flight` slots per record until the whole batch it came in is acknowledged (a record
acknowledged in a batch still waiting for another partition is published again after a
kill too, so it counts).

Records go into aiokafka batches built here (`create_batch` / `send_batch`) rather than one
`send()` each: per record that is an append to a C buffer instead of a future, two
callbacks and a partitioner call (bench/README.md). The partition is the default
partitioner's (murmur2 of the key, as the Java client and librdkafka's murmur2_random),
computed once per camera.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.partitioner import DefaultPartitioner

from facespace_bridge.events import Event
from facespace_bridge.sinks.base import Ack, SinkError
from facespace_bridge.sinks.kafka import KafkaSettings, KafkaSink
from facespace_bridge.sinks.kafka.properties import aiokafka_kwargs

if TYPE_CHECKING:
    from aiokafka.producer.message_accumulator import BatchBuilder  # what create_batch() returns

log = logging.getLogger(__name__)

_MAX_PLACEMENTS = 100_000
_partitioner = DefaultPartitioner()


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


def _quiet_unretrieved_kafka_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """aiokafka fails its internal futures with a fatal producer error (fenced, say) that the
    sink has already turned into one clear line; garbage collection would then print each of
    them with a traceback ("exception was never retrieved"). Those go to the debug log."""
    error = context.get("exception")
    if isinstance(error, kafka_errors.KafkaError) and "never retrieved" in str(context.get("message")):
        log.debug("aiokafka left an error unretrieved (reported already): %r", error)
        return
    loop.default_exception_handler(context)


class AiokafkaSink(KafkaSink):
    """The Kafka sink with aiokafka's producer."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings)
        self._producer: AIOKafkaProducer | None = None
        # schema -> camera -> (key, its partition's batches)
        self._placements: dict[str, dict[str, tuple[bytes, _Batches]]] = {}
        self._partitions: dict[tuple[str, int], _Batches] = {}
        self._in_flight = 0  # records of published batches not yet acknowledged (or failed) whole
        self._room = asyncio.Event()  # set whenever a batch is done
        self._acks: deque[asyncio.Future[None]] = deque()  # one per batch, in the order opened
        self._send_pending = False  # a task to send the open batches is scheduled
        self._tasks: set[asyncio.Task[None]] = set()
        self._begin_lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.get_exception_handler() is None:
            loop.set_exception_handler(_quiet_unretrieved_kafka_errors)
        with _quiet_aiokafka_bootstrap():
            await super().start()

    async def _connect(self, timeout: float) -> None:
        await self._discard_producer()
        await self._probe()
        s = self.settings
        kwargs = s.kafka.aiokafka_kwargs()
        # A batch fails when the broker has not acknowledged it within the request timeout.
        kwargs["request_timeout_ms"] = min(s.delivery_timeout_ms, s.kafka.request_timeout_ms)
        kwargs.update(
            acks="all",
            enable_idempotence=self.idempotent,
            transactional_id=s.transactional_id,
            linger_ms=s.linger_ms,
            max_batch_size=s.batch_size,
            max_request_size=max(s.batch_size or 0, 1_048_576),
            compression_type=None if s.compression == "none" else s.compression,
            client_id="facespace-bridge",
        )
        kwargs.update(aiokafka_kwargs(s.producer_properties()))  # --kafka-property: it wins
        producer = AIOKafkaProducer(**kwargs)
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
            return self.fenced_error()
        return SinkError(f"Kafka transaction failed: {self._reason(exc)}")

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
        writes inside the block (the checkpoint record, with `write_in_transaction`).

        Publishers wait meanwhile; every record handed over is sent and acknowledged before
        the block runs, so the caller's checkpoint covers exactly this transaction's events.
        Raises SinkError when the commit fails (fenced by another instance, broker errors):
        a restart resumes from the last commit.
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

    # -- the hot path ------------------------------------------------------------------------------

    async def _key_and_batches(
        self, topic: str, camera_id: str, placements: dict[str, tuple[bytes, _Batches]]
    ) -> tuple[bytes, _Batches]:
        """The key bytes and partition of a camera's records in `topic`. Partitions are only
        ever added, so a cached choice stays valid and keeps the camera in one partition."""
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
        limit, appended = self.settings.max_in_flight, 0
        try:
            async with self._turns if self.transactional else contextlib.nullcontext():
                for event in events:
                    if self._in_flight and self._in_flight + appended >= limit:
                        await self._make_room(appended)  # back-pressure: see _make_room
                    ack = await self._append(event)
                    appended += 1
                    if not acks or acks[-1] is not ack:
                        acks.append(ack)
        except SinkError as exc:  # (a topic that cannot be created): the batch fails
            if self._producer is None:
                raise
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            acks.append(failed)
        self._count_down(acks, appended)
        return asyncio.gather(*acks)

    def _count_down(self, acks: list[asyncio.Future[None]], records: int) -> None:
        """The batch's records are in flight until every partition batch they went into is done."""
        self._in_flight += records
        left = len(acks)

        def one_done(_: asyncio.Future[None]) -> None:
            nonlocal left
            left -= 1
            if not left:
                self._in_flight -= records
                self._room.set()

        for ack in acks:
            ack.add_done_callback(one_done)

    async def _append(self, event: Event) -> asyncio.Future[None]:
        """Append the record to its partition's open batch; returns that batch's ack.

        A batch is sent when full, and otherwise as soon as the publisher yields to the
        event loop (after `linger_ms` when that is set).
        """
        producer = self._producer
        if producer is None:
            raise SinkError("the Kafka sink is not started")
        head = self.record_head(event)
        topic = head.topic
        placements = self._placements.get(event.schema)
        if placements is None:
            placements = self._placements[event.schema] = {}
        placed = placements.get(event.camera_id)
        if placed is None:
            placed = await self._key_and_batches(topic, event.camera_id, placements)
        key, batches = placed
        record_headers = head.headers_of(event)
        timestamp = int(time.time() * 1000)
        builder = batches.builder or self._open(batches)
        if builder.append(timestamp=timestamp, key=key, value=event.payload, headers=record_headers) is None:
            await self._send(batches)  # full: waits while the partition's previous batch is queued
            builder = batches.builder or self._open(batches)
            # An empty batch takes any record, however large.
            builder.append(timestamp=timestamp, key=key, value=event.payload, headers=record_headers)
        batches.count += 1
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
                    else SinkError(f"Kafka send to {batches.topic} failed: {self._reason(exc)}")
                )
                self._settle(ack, count, error)
                raise error from None
        delivery.add_done_callback(partial(self._delivered, ack, count, batches.topic))

    def _delivered(
        self, ack: asyncio.Future[None], count: int, topic: str, delivery: asyncio.Future[Any]
    ) -> None:
        error = asyncio.CancelledError() if delivery.cancelled() else delivery.exception()
        if isinstance(error, kafka_errors.KafkaError):
            error = (
                self._transaction_error(error)
                if self.transactional
                else SinkError(f"Kafka did not acknowledge records of {topic}: {self._reason(error)}")
            )
        self._settle(ack, count, error)

    def _settle(self, ack: asyncio.Future[None], count: int, error: BaseException | None) -> None:
        if ack.done():
            return
        if error is None:
            self._reachable()
            ack.set_result(None)
        else:
            self.failed += count
            self._unreachable(error)
            ack.set_exception(error)
            ack.exception()  # counted here; publishers that await the ack still see the error

    async def _make_room(self, appended: int) -> None:
        """Wait while earlier batches are in flight and, with the `appended` records of this
        one, make `max_in_flight`: a batch larger than the limit goes alone. (The open
        partition batches are sent meanwhile: `_open` scheduled it.)"""
        limit = self.settings.max_in_flight
        while self._in_flight and self._in_flight + appended >= limit:
            self._room.clear()
            await self._room.wait()


@dataclass(eq=False, slots=True)
class _Batches:
    """One topic-partition: its open batch (records appended, not yet sent) and that batch's ack."""

    topic: str
    partition: int
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    builder: BatchBuilder | None = None
    ack: asyncio.Future[None] | None = None
    count: int = 0
