"""What a Kafka broker can really do, asked of it rather than read from its API versions.

Some Kafka-protocol brokers advertise more than they do. Tansu, for one, lists
InitProducerId in ApiVersions and even fences a second transactional producer, yet a
`read_committed` consumer reads the records of an aborted transaction. So:

- idempotence: an InitProducerId request without a transactional id must succeed;
- transactions: a record written in a transaction that is then aborted must be invisible
  to a `read_committed` consumer that reads past it (a committed marker written after it
  proves the read went far enough). Only this settles it, and it writes to a topic of its
  own (`facespace-bridge.capability-probe`), so it runs only when exactly-once is asked for.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.protocol.transaction import InitProducerIdRequest

from facespace_bridge.kafka.connection import KafkaConnection
from facespace_bridge.kafka.topics import ensure_topic

log = logging.getLogger(__name__)

PROBE_TOPIC = "facespace-bridge.capability-probe"
_PROBE_READ_SECONDS = 15.0
_PROBE_CONFIG = {"retention.ms": str(24 * 3600 * 1000)}  # probe records are of no use after the probe


@dataclass(frozen=True, slots=True)
class BrokerCapabilities:
    idempotence: bool
    brokers: int  # how many brokers the cluster metadata lists


async def broker_capabilities(connection: KafkaConnection) -> BrokerCapabilities:
    """Connect once (no retries) and ask whether idempotent producers work; raises aiokafka's errors."""
    client = AIOKafkaClient(**connection.aiokafka_kwargs())
    try:
        await client.bootstrap()
        return await probe_idempotence(client)
    finally:
        await client.close()


async def probe_idempotence(client: AIOKafkaClient) -> BrokerCapabilities:
    """Ask a bootstrapped client's cluster for a producer id (the first step of idempotence)."""
    node = client.get_random_node()
    try:
        reply = await client.send(node, InitProducerIdRequest(None, 60_000))
        idempotence = bool(reply.error_code == 0 and reply.producer_id >= 0)
    except kafka_errors.KafkaError as exc:
        log.debug("InitProducerId failed: %r", exc)
        idempotence = False
    return BrokerCapabilities(idempotence=idempotence, brokers=len(client.cluster.brokers()))


async def transactions_work(connection: KafkaConnection) -> tuple[bool, str]:
    """Whether an aborted transaction stays invisible to `read_committed` readers, and why not.

    Raises aiokafka's errors when the broker cannot be reached at all.
    """
    await ensure_topic(connection, PROBE_TOPIC, partitions=1, replication_factor=None, config=_PROBE_CONFIG)
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(
        **connection.aiokafka_kwargs(),
        transactional_id=f"facespace-bridge.probe.{marker.decode()}",
        enable_idempotence=True,
        acks="all",
    )
    try:
        await producer.start()
    except kafka_errors.KafkaError as exc:
        return False, f"it refused a transactional producer ({type(exc).__name__})"
    try:
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(PROBE_TOPIC, b"aborted:" + marker)
            await producer.abort_transaction()
            await producer.begin_transaction()
            await producer.send_and_wait(PROBE_TOPIC, b"committed:" + marker)
            await producer.commit_transaction()
        except kafka_errors.KafkaError as exc:
            return False, f"a transaction failed ({type(exc).__name__}: {exc})"
    finally:
        await producer.stop()
    seen = await _read_committed_until(connection, b"committed:" + marker)
    if seen is None:
        return False, "a committed record never became visible to a read_committed reader"
    if b"aborted:" + marker in seen:
        return False, "a read_committed reader sees the records of an aborted transaction"
    return True, "an aborted transaction stays invisible to read_committed readers"


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
