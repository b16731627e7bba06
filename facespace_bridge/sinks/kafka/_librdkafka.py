"""The Kafka sink on librdkafka (`--kafka-client librdkafka`, the default): confluent-kafka's
`Producer`, whose wheels carry the C library.

librdkafka batches, compresses, sends and retries in threads of its own; Python sees only
`produce()` (a copy into its queue) and the delivery reports, which run as callbacks inside
`poll()`. A poller task calls `poll(0)` on the event loop's thread, so every callback runs
there and may settle futures directly; it sleeps a millisecond when nothing is due, and a
tenth of a second while nothing is in flight (librdkafka's error callbacks and log lines
still need serving then).

One `_Delivery` per published batch counts its records' reports down and settles the
batch's acknowledgement after the last: resolved when every record was acknowledged,
failed when any one was not (the publisher sends the batch again). A batch's records count
as in flight until its last report (`--kafka-max-in-flight` bounds them): a record that the
broker acknowledged in a batch still waiting for others is published again after a kill
too, so it counts. The partitioner is
`murmur2_random`, the Java client's (and the aiokafka sink's) choice for a key, so a camera
stays in one partition whichever client wrote it. Without idempotence librdkafka sends one
request per broker at a time, so that a retry cannot reorder a partition.

`--exactly-once`: `transactional.id` from `--instance-id`; `init_transactions` at start
fences an older producer with the same id (and aborts its open transaction). The blocking
transactional calls run in a worker thread while the poller goes on serving callbacks on
the loop; a commit begins only once every record of the transaction is acknowledged, so
librdkafka has no delivery report left to serve inside the worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from facespace_bridge.events import Event
from facespace_bridge.kafka.rdlog import LibrdkafkaLog
from facespace_bridge.sinks.base import Ack, SinkError
from facespace_bridge.sinks.kafka import KafkaSettings, KafkaSink

log = logging.getLogger(__name__)

_BUSY_POLL_SECONDS = 0.001  # records in flight, no report due yet
_IDLE_POLL_SECONDS = 0.1  # nothing in flight: error callbacks and log lines only
_CLOSE_SECONDS = 5.0
_TRANSACTION_TIMEOUT_MS = 60_000
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
_RETRIABLE_AT_START = frozenset(
    {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
)


class _Delivery:
    """The delivery reports of one batch's records, counted down to its acknowledgement.

    `expected` grows while the batch is produced; `sealed` once it all is (a report may
    arrive before the last record of a large batch is produced, while `publish` waits).
    """

    __slots__ = ("ack", "error", "expected", "reported", "sealed", "sink")

    def __init__(self, sink: LibrdkafkaSink, ack: asyncio.Future[None]) -> None:
        self.sink = sink
        self.ack = ack
        self.expected = 0
        self.reported = 0
        self.sealed = False
        self.error: KafkaError | None = None

    def __call__(self, error: KafkaError | None, _message: Any) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.reported += 1
        if self.sealed and self.reported == self.expected:
            self._done()

    def seal(self) -> None:
        self.sealed = True
        if self.reported == self.expected:
            self._done()

    def _done(self) -> None:
        """Every record of the batch was reported on (once per batch)."""
        sink = self.sink
        sink._completed += self.expected
        sink._settle(self)


class LibrdkafkaSink(KafkaSink):
    """The Kafka sink with librdkafka's producer."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(settings)
        self._producer: Producer | None = None
        self._poller: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._work = asyncio.Event()  # set by publish: the poller stops idling
        self._produced = 0  # records handed to librdkafka ...
        self._completed = 0  # ... and those of them whose batch has every delivery report
        self._acks: deque[asyncio.Future[None]] = deque()  # one per batch, for flush
        self._fatal: SinkError | None = None  # librdkafka's producer can no longer send
        self._diagnosis: asyncio.Future[SinkError] | None = None  # why a transaction failed
        self._log = LibrdkafkaLog(log)

    @property
    def in_flight(self) -> int:
        """Records handed over whose batch is not yet reported on whole."""
        return self._produced - self._completed

    # -- lifecycle ---------------------------------------------------------------------------------

    def _config(self) -> dict[str, Any]:
        s = self.settings
        batch_size = s.batch_size or 0
        config: dict[str, Any] = {
            **s.kafka.librdkafka_config(),
            "client.id": "facespace-bridge",
            "acks": "all",
            "enable.idempotence": self.idempotent,
            "partitioner": "murmur2_random",
            "linger.ms": s.linger_ms,
            "batch.size": batch_size,
            "message.max.bytes": max(batch_size, 1_000_000),
            "compression.type": s.compression,
            "message.timeout.ms": s.delivery_timeout_ms,
            # Our own bound (max_in_flight) comes first; librdkafka's is the safety net.
            "queue.buffering.max.messages": max(100_000, s.max_in_flight),
            "error_cb": self._error_cb,
            "logger": self._log,
        }
        if not self.idempotent:
            config["max.in.flight.requests.per.connection"] = 1
        if s.transactional_id is not None:
            config["transactional.id"] = s.transactional_id
            config["transaction.timeout.ms"] = _TRANSACTION_TIMEOUT_MS
            config["message.timeout.ms"] = min(s.delivery_timeout_ms, _TRANSACTION_TIMEOUT_MS)
        config.update(s.producer_properties())  # --kafka-property, last: it wins
        return config

    async def _connect(self, timeout: float) -> None:
        await self._discard_producer()
        await self._probe()
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._fatal = None
        producer = self._producer = Producer(self._config())
        self._poller = self._loop.create_task(self._poll(producer), name="kafka-librdkafka-poller")
        # librdkafka must reach the cluster as well, with its own TLS and SASL.
        await asyncio.to_thread(producer.list_topics, None, max(0.1, min(timeout, 10.0)))
        if self.transactional:
            await asyncio.to_thread(producer.init_transactions, timeout)

    async def _discard_producer(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        producer, self._producer = self._producer, None
        if producer is not None:
            # Reports of what is left fail their batches; librdkafka is then destroyed with it.
            producer.purge()
            producer.poll(0)

    def _retriable(self, exc: BaseException) -> bool:
        if isinstance(exc, KafkaException):
            error: KafkaError = exc.args[0]
            return not error.fatal() and (error.retriable() or error.code() in _RETRIABLE_AT_START)
        return super()._retriable(exc)

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, KafkaException):
            return _text(exc.args[0])
        return super()._reason(exc)

    async def _poll(self, producer: Producer) -> None:
        """Serve librdkafka's callbacks on the loop's thread until cancelled."""
        work = self._work
        while True:
            try:
                served = producer.poll(0)
            except KafkaException as exc:  # a fatal error raised by poll itself (fenced, say)
                self._error_cb_on_loop(exc.args[0])
                await asyncio.sleep(_BUSY_POLL_SECONDS)
                continue
            except Exception:  # a callback's bug must not stop every later acknowledgement
                log.exception("a librdkafka callback failed")
                served = 1
            if served:
                await asyncio.sleep(0)  # reports served; others' turn, then more
            elif self._produced != self._completed:
                await asyncio.sleep(_BUSY_POLL_SECONDS)
            else:
                work.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(work.wait(), _IDLE_POLL_SECONDS)

    def _error_cb(self, error: KafkaError) -> None:
        """librdkafka's client-level errors (not a record's): connection state, fatal errors."""
        if threading.get_ident() != self._loop_thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self._error_cb_on_loop, error)
        else:
            self._error_cb_on_loop(error)

    def _error_cb_on_loop(self, error: KafkaError) -> None:
        code = error.code()
        if error.fatal():
            # A transactional producer stops for good (fenced: another instance took over). An
            # idempotent one is replaced by a new producer at the next publish: what it had not
            # delivered fails and is sent again (after an outage some brokers refuse the epoch
            # bump by which librdkafka resumes a producer whose records timed out).
            self._fatal = self.fenced_error() if code in _FENCED else SinkError(f"Kafka: {_text(error)}")
            if self.transactional:
                self._unreachable(self._fatal)
            else:
                self._fatal = SinkError(f"Kafka: {_text(error)}")
                log.warning("librdkafka's producer failed (%s); publishing with a new one", _text(error))
        elif code == KafkaError._ALL_BROKERS_DOWN:
            self._unreachable("no broker of the cluster answers; librdkafka keeps reconnecting")
        else:  # a broker connection lost and retried, say: the deliveries tell what counts
            log.debug("librdkafka: %s", _text(error))
            self.note_error(_text(error))

    async def _renew(self) -> Producer:
        """A new producer in place of one that librdkafka declared failed (not transactional)."""
        old, poller = self._producer, self._poller
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if old is not None:
            old.purge()  # its undelivered records fail their batches, which are sent again
            old.poll(0)
        self._fatal = None
        producer = self._producer = Producer(self._config())
        assert self._loop is not None
        self._poller = self._loop.create_task(self._poll(producer), name="kafka-librdkafka-poller")
        return producer

    async def flush(self) -> None:
        """Wait until every record handed over so far is acknowledged (or failed)."""
        if self._producer is None:
            return
        acks = self._acks
        if acks:
            await asyncio.wait(list(acks))
        while acks and acks[0].done():
            acks.popleft()
        if self.failed:
            raise SinkError(f"{self.failed} records were not acknowledged by Kafka")

    async def close(self) -> None:
        producer = self._producer
        try:
            if producer is None:
                return
            if not self.transactional:
                await self.flush()
            elif self._in_transaction:
                # Not committed by the bridge: none of it may become visible. (The broker would
                # abort it on its timeout, or when this instance starts again, anyway.)
                self._in_transaction = False
                with contextlib.suppress(KafkaException):
                    await asyncio.to_thread(producer.abort_transaction, _CLOSE_SECONDS)
        finally:
            await self._discard_producer()

    # -- transactions --------------------------------------------------------------------------------

    def _transaction_error(self, exc: KafkaException | KafkaError) -> SinkError:
        error = exc.args[0] if isinstance(exc, KafkaException) else exc
        if error.code() in _FENCED:
            return self.fenced_error()
        return SinkError(f"Kafka transaction failed: {_text(error)}")

    def _begin_transaction(self, producer: Producer) -> None:
        if not self._in_transaction:
            producer.begin_transaction()  # (local: no request to the broker)
            self._in_transaction = True

    @asynccontextmanager
    async def transaction_boundary(self) -> AsyncIterator[None]:
        """`--exactly-once`: commit what was published so far, together with what the caller
        writes inside the block (the checkpoint record, with `write_in_transaction`).

        Publishers wait meanwhile; every record handed over is acknowledged before the block
        runs, so the caller's checkpoint covers exactly this transaction's events. Raises
        SinkError when the commit fails (fenced by another instance, broker errors): a
        restart resumes from the last commit.
        """
        producer = self._producer
        if producer is None or not self.transactional:
            raise SinkError("the Kafka sink is not transactional")
        await self._turns.acquire()
        try:
            if self._fatal is not None:
                raise self._fatal
            await self.flush()
            self._begin_transaction(producer)  # (the checkpoint record needs one, events or not)
            yield
            await asyncio.to_thread(producer.commit_transaction, _TRANSACTION_TIMEOUT_MS / 1000)
            self._in_transaction = False
        except KafkaException as exc:
            raise self._transaction_error(exc) from None
        finally:
            self._turns.release()

    async def write_in_transaction(self, topic: str, key: bytes, value: bytes | None) -> None:
        """One record into the open transaction (the checkpoint store's), acknowledged."""
        producer = self._producer
        if producer is None or not self.transactional:
            raise SinkError("the Kafka sink is not transactional")
        delivery = _Delivery(self, asyncio.get_running_loop().create_future())
        try:
            await self._produce(producer, topic, value, key, None, delivery)
        except KafkaException as exc:
            raise self._transaction_error(exc) from None
        delivery.seal()
        await delivery.ack

    # -- the hot path ------------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> Ack:
        """Hand each record to librdkafka; the ack settles from their delivery reports."""
        producer = self._producer
        if producer is None:
            raise SinkError("the Kafka sink is not started")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        delivery = _Delivery(self, ack)
        if self._fatal is not None and not self.transactional:
            producer = await self._renew()
        try:
            async with self._turns if self.transactional else contextlib.nullcontext():
                # Only now is the batch handed over, and only now may a commit's flush wait
                # for it: a batch still waiting for its turn waits for that very commit.
                acks = self._acks
                while acks and acks[0].done():  # settled batches: a long run must not pile them up
                    acks.popleft()
                acks.append(ack)
                if self._fatal is not None:
                    raise self._fatal
                if self.transactional:
                    self._begin_transaction(producer)
                await self._produce_all(producer, events, delivery)
        except (SinkError, KafkaException) as exc:
            if delivery.error is None:  # the records produced so far fail with the rest
                failure = exc if isinstance(exc, SinkError) else self._produce_error(exc)
                self._fail(delivery, failure)
        except asyncio.CancelledError:
            # The caller gave up on the batch (a stop): its ack still settles, on the reports of
            # what was produced of it, so that flush and close do not wait for it for ever.
            delivery.seal()
            raise
        delivery.seal()
        if not self._work.is_set():
            self._work.set()
        return ack

    async def _produce_all(self, producer: Producer, events: Sequence[Event], delivery: _Delivery) -> None:
        produce = producer.produce
        heads, limit = self._heads, self.settings.max_in_flight
        ready = self._ready_topics
        for event in events:
            by_camera = heads.get(event.schema)
            head = (by_camera.get(event.camera_id) if by_camera else None) or self.record_head(event)
            topic = head.topic
            if topic not in ready:
                await self.ensure_topic(topic)
            if self._produced - self._completed >= limit:
                await self._make_room(producer, delivery)  # back-pressure: see _make_room
            headers = head.headers_of(event)
            delivery.expected += 1
            try:
                produce(topic, event.payload, head.key, on_delivery=delivery, headers=headers)
            except BufferError:
                delivery.expected -= 1
                await self._produce(producer, topic, event.payload, head.key, headers, delivery)
                continue
            except KafkaException:
                delivery.expected -= 1
                raise
            self._produced += 1

    async def _produce(
        self,
        producer: Producer,
        topic: str,
        value: bytes | None,
        key: bytes,
        headers: list[tuple[str, bytes]] | None,
        delivery: _Delivery,
    ) -> None:
        """One record, waiting while librdkafka's queue is full (BufferError)."""
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivery, headers=headers)
            except BufferError:
                await self._drain(producer)
                continue
            delivery.expected += 1
            self._produced += 1
            return

    async def _make_room(self, producer: Producer, delivery: _Delivery) -> None:
        """Wait while `max_in_flight` records are in flight and some belong to other batches:
        a batch larger than the limit goes alone."""
        limit = self.settings.max_in_flight
        while (
            self._produced - self._completed >= limit and self._produced - self._completed > delivery.expected
        ):
            await self._drain(producer)

    async def _drain(self, producer: Producer) -> None:
        """Serve delivery reports here (on the loop's thread) or wait a little for some. Either
        way the loop runs before more is produced: the batches those reports completed must
        reach the publisher and the checkpoint's tracker first, or they would count neither
        as in flight nor as unsaved and a kill would repeat more than both bounds."""
        if producer.poll(0):
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(_BUSY_POLL_SECONDS)

    def _produce_error(self, exc: KafkaException) -> SinkError:
        if self.transactional:
            return self._transaction_error(exc)
        return SinkError(f"Kafka refused a record: {_text(exc.args[0])}")

    def _settle(self, delivery: _Delivery) -> None:
        if threading.get_ident() != self._loop_thread and self._loop is not None:
            self._loop.call_soon_threadsafe(self._settle, delivery)
            return
        ack = delivery.ack
        if ack.done():
            return
        error = delivery.error
        if error is None:
            self._reachable()
            ack.set_result(None)
            return
        if self.transactional:
            if self._fatal is None and error.code() not in _FENCED:
                self._diagnose(delivery, error)
                return
            failure = self._fatal or self._transaction_error(error)
        else:
            failure = SinkError(f"Kafka did not acknowledge records: {_text(error)}")
            if self._fatal is None and (error.fatal() or error.code() in _FENCED):
                # An idempotent producer whose id the broker no longer takes (see _error_cb):
                # the next publish starts a new one.
                log.warning("librdkafka's producer failed (%s); publishing with a new one", _text(error))
                self._fatal = failure
        self._fail(delivery, failure)

    def _diagnose(self, delivery: _Delivery, error: KafkaError) -> None:
        """A transactional record failed for a reason its report may not tell: librdkafka
        purges the records of a transaction it can no longer commit ("Purged in queue") and
        reports why (fenced by another instance, say) only to a later call. Aborting asks."""
        if self._diagnosis is None:
            self._diagnosis = asyncio.ensure_future(self._abort_for_cause(error))
        self._diagnosis.add_done_callback(lambda done: self._fail(delivery, done.result()))

    async def _abort_for_cause(self, error: KafkaError) -> SinkError:
        producer = self._producer
        failure = SinkError(f"Kafka transaction failed: {_text(error)}")
        if producer is not None and self._fatal is None:
            try:
                await asyncio.to_thread(producer.abort_transaction, _CLOSE_SECONDS)
                self._in_transaction = False
            except KafkaException as exc:
                failure = self._transaction_error(exc)
        failure = self._fatal or failure
        self._fatal = failure  # nothing more commits: the bridge stops and resumes from the last commit
        return failure

    def _fail(self, delivery: _Delivery, failure: SinkError) -> None:
        ack = delivery.ack
        if ack.done():
            return
        self.failed += delivery.expected
        self._unreachable(failure)
        ack.set_exception(failure)
        ack.exception()  # counted here; publishers that await the ack still see the error


def _text(error: KafkaError) -> str:
    """librdkafka's error text, without the code name it sometimes repeats."""
    text = error.str() or error.name()
    return text.strip()
