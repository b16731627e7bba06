"""What a Kafka broker can really do, asked of it rather than read from its API versions.

Some Kafka-protocol brokers advertise more than they do. Tansu, for one, lists
InitProducerId (versions 0 to 5) in ApiVersions but answers versions 0 and 1 with an
error, versions 3 and later with a producer id; it even fences a second transactional
producer, yet a `read_committed` consumer reads the records of an aborted transaction. So:

- idempotence: an InitProducerId request without a transactional id must succeed, at the
  version the producer's client library sends (aiokafka only speaks version 0; librdkafka
  the newest the broker lists, which `_InitProducerId` approximates with version 3);
- transactions: a record written in a transaction that is then aborted must be invisible
  to a `read_committed` consumer that reads past it (a committed marker written after it
  proves the read went far enough). Only this settles it, and it writes to a topic of its
  own (`facespace-bridge.capability-probe`), so it runs only when exactly-once is asked for.

This module imports aiokafka as it loads (its request classes extend aiokafka's): the
package (facespace_bridge/kafka/__init__.py) loads it only when one of its names is used.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.transaction import InitProducerIdRequest as InitProducerIdV0
from aiokafka.protocol.types import CompactString, Int16, Int32, Int64, Schema, TaggedFields

from facespace_bridge.kafka.connection import Client, KafkaConnection
from facespace_bridge.kafka.topics import ensure_topic

log = logging.getLogger(__name__)

PROBE_TOPIC = "facespace-bridge.capability-probe"
_PROBE_READ_SECONDS = 15.0
_PROBE_TIMEOUT_SECONDS = 30.0
_PROBE_CONFIG = {"retention.ms": str(24 * 3600 * 1000)}  # probe records are of no use after the probe


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    idempotence: bool  # the client library's InitProducerId request got a producer id
    brokers: int  # how many brokers the cluster metadata lists


# -- InitProducerId as librdkafka sends it (aiokafka has version 0 only) --------------------------


class _InitProducerIdResponseV3(Response):
    API_KEY = 22
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerIdRequestV3(RequestStruct):
    API_KEY = 22
    API_VERSION = 3
    FLEXIBLE_VERSION = True
    RESPONSE_TYPE = _InitProducerIdResponseV3
    SCHEMA = Schema(
        ("transactional_id", CompactString("utf-8")),
        ("transaction_timeout_ms", Int32),
        ("producer_id", Int64),
        ("producer_epoch", Int16),
        ("tags", TaggedFields),
    )


class _InitProducerId(Request[_InitProducerIdRequestV3]):
    """A new idempotent producer's first request, in the flexible encoding (version 3)."""

    API_KEY = 22

    def build(self, request_struct_class: type[_InitProducerIdRequestV3]) -> _InitProducerIdRequestV3:
        return request_struct_class(None, 60_000, -1, -1, {})


async def broker_capabilities(connection: KafkaConnection, client: Client = "aiokafka") -> BrokerCapabilities:
    """Connect once (no retries) and ask whether an idempotent producer of `client` works;
    raises aiokafka's errors when the broker cannot be reached."""
    probe = AIOKafkaClient(**connection.aiokafka_kwargs())
    try:
        await probe.bootstrap()
        return await probe_idempotence(probe, client)
    finally:
        await probe.close()


async def probe_idempotence(client: AIOKafkaClient, library: Client = "aiokafka") -> BrokerCapabilities:
    """Ask a bootstrapped client's cluster for a producer id (the first step of idempotence)."""
    node = client.get_random_node()
    request: Any = InitProducerIdV0(None, 60_000) if library == "aiokafka" else _InitProducerId()
    try:
        reply = await client.send(node, request)
        idempotence = bool(reply.error_code == 0 and reply.producer_id >= 0)
    except (kafka_errors.KafkaError, NotImplementedError) as exc:  # (NotImplementedError: no v3)
        log.debug("InitProducerId (%s) failed: %r", library, exc)
        idempotence = False
    return BrokerCapabilities(idempotence=idempotence, brokers=len(client.cluster.brokers()))


# -- transactions ---------------------------------------------------------------------------------


async def transactions_work(connection: KafkaConnection, client: Client = "librdkafka") -> tuple[bool, str]:
    """Whether an aborted transaction stays invisible to `read_committed` readers, and why not.
    The transactions are written with `client`'s library, as its sink would write them.

    Raises aiokafka's errors when the broker cannot be reached at all.
    """
    await ensure_topic(connection, PROBE_TOPIC, partitions=1, replication_factor=None, config=_PROBE_CONFIG)
    marker = uuid.uuid4().hex
    transactional_id = f"facespace-bridge.probe.{marker}"
    aborted, committed = f"aborted:{marker}".encode(), f"committed:{marker}".encode()
    write = _write_with_librdkafka if client == "librdkafka" else _write_with_aiokafka
    refusal = await write(connection, transactional_id, aborted, committed)
    if refusal is not None:
        return False, refusal
    seen = await _read_committed_until(connection, committed)
    if seen is None:
        return False, "a committed record never became visible to a read_committed reader"
    if aborted in seen:
        return False, "a read_committed reader sees the records of an aborted transaction"
    return True, "an aborted transaction stays invisible to read_committed readers"


async def _write_with_aiokafka(
    connection: KafkaConnection, transactional_id: str, aborted: bytes, committed: bytes
) -> str | None:
    producer = AIOKafkaProducer(
        **connection.aiokafka_kwargs(), transactional_id=transactional_id, enable_idempotence=True, acks="all"
    )
    try:
        try:
            await producer.start()
        except kafka_errors.KafkaError as exc:
            return f"it refused a transactional producer ({type(exc).__name__})"
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(PROBE_TOPIC, aborted)
            await producer.abort_transaction()
            await producer.begin_transaction()
            await producer.send_and_wait(PROBE_TOPIC, committed)
            await producer.commit_transaction()
        except kafka_errors.KafkaError as exc:
            return f"a transaction failed ({type(exc).__name__}: {exc})"
        return None
    finally:
        await producer.stop()


async def _write_with_librdkafka(
    connection: KafkaConnection, transactional_id: str, aborted: bytes, committed: bytes
) -> str | None:
    return await asyncio.to_thread(_librdkafka_transactions, connection, transactional_id, aborted, committed)


def _librdkafka_transactions(
    connection: KafkaConnection, transactional_id: str, aborted: bytes, committed: bytes
) -> str | None:
    """In a thread of its own: librdkafka's transactional calls block."""
    from confluent_kafka import KafkaException, Producer

    from facespace_bridge.kafka.rdlog import LibrdkafkaLog

    producer = Producer(
        {
            **connection.librdkafka_config(),
            "transactional.id": transactional_id,
            "acks": "all",
            "logger": LibrdkafkaLog(log),
        }
    )
    timeout = _PROBE_TIMEOUT_SECONDS
    try:
        try:
            producer.init_transactions(timeout)
        except KafkaException as exc:
            return f"it refused a transactional producer ({exc.args[0].str()})"
        producer.begin_transaction()
        producer.produce(PROBE_TOPIC, aborted)
        if producer.flush(timeout):
            return "a transactional record was not acknowledged"
        producer.abort_transaction(timeout)
        producer.begin_transaction()
        producer.produce(PROBE_TOPIC, committed)
        producer.commit_transaction(timeout)
        return None
    except KafkaException as exc:
        return f"a transaction failed ({exc.args[0].str()})"
    finally:
        producer.flush(0)


async def _read_committed_until(connection: KafkaConnection, last: bytes) -> set[bytes] | None:
    """Every value a read_committed consumer reads from the probe topic up to `last`, or None
    when `last` did not show up in time."""
    consumer = AIOKafkaConsumer(
        **connection.aiokafka_kwargs(), isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partition = TopicPartition(PROBE_TOPIC, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        seen: set[bytes] = set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _PROBE_READ_SECONDS
        while loop.time() < deadline:
            batch = await consumer.getmany(partition, timeout_ms=500)
            for record in batch.get(partition, []):
                seen.add(record.value)
            if last in seen:
                return seen
        return None
    finally:
        await consumer.stop()
