"""Checkpoints in a compacted Kafka topic (`--checkpoint kafka`), so a container with no disk resumes.

One record per bridge instance, key = instance id, value = the checkpoint JSON; compaction
keeps the latest per key. `load` reads the topic from the start to its end offset and
keeps the last value for our key, reading committed records only. A record without a value
(a tombstone, `forget`) means no checkpoint.

With `--exactly-once` the store writes with the Kafka sink's transactional producer, inside
the transaction that carries the events the checkpoint covers (the bridge saves within the
sink's `transaction_boundary`): both become visible together or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from facespace_bridge.checkpoints.base import Checkpoint, CheckpointError, CheckpointStore, Transactions
from facespace_bridge.kafka import KafkaConnection, TopicError, connection_from_config, ensure_topic

log = logging.getLogger(__name__)

OFFSETS_TOPIC = "facespace-bridge.offsets"
STABLE_WAIT = 90.0  # seconds, longer than the 60 s transaction timeout of our producers


class KafkaCheckpointStore(CheckpointStore):
    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        instance_id: str,
        topic: str = OFFSETS_TOPIC,
        replication_factor: int = 1,
        connection: KafkaConnection | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        """`connection` (TLS, SASL; the Kafka sink's) None: plaintext to `bootstrap_servers`."""
        self.connection = connection or KafkaConnection(bootstrap_servers=bootstrap_servers)
        self.bootstrap_servers = self.connection.bootstrap_servers
        self.key = instance_id.encode()
        self.topic = topic
        self.replication_factor = replication_factor
        self.client_options = self.connection.aiokafka_kwargs()
        self._producer: Any = None
        self._transactions = transactions  # a transactional sink: it writes our records

    def describe(self) -> str:
        return f"kafka topic {self.topic} key {self.key.decode()}"

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], transactions: Transactions | None = None
    ) -> KafkaCheckpointStore:
        bootstrap = config.get("bootstrap_servers")
        if not bootstrap:
            raise CheckpointError("--checkpoint kafka needs --bootstrap-servers (or KAFKA_BOOTSTRAP_SERVERS)")
        connection = connection_from_config(config)
        return cls(
            connection.bootstrap_servers,
            config.get("instance_id") or "default",
            replication_factor=config.get("replication_factor") or 1,
            connection=connection,
            transactions=transactions,
        )

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        try:
            await ensure_topic(
                self.connection,
                self.topic,
                partitions=1,
                replication_factor=self.replication_factor,
                config={"cleanup.policy": "compact"},
            )
            self._producer = AIOKafkaProducer(**self.client_options, acks="all", linger_ms=0)
            await self._producer.start()
        except TopicError as exc:
            raise CheckpointError(f"cannot open the checkpoint topic {self.topic}: {exc}") from None
        except KafkaError as exc:
            raise CheckpointError(f"cannot open the checkpoint topic {self.topic}: {exc}") from None

    async def load(self) -> Checkpoint | None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        consumer = AIOKafkaConsumer(
            enable_auto_commit=False,
            isolation_level="read_committed",  # an aborted transaction's checkpoint never counts
            **self.client_options,
        )
        latest: bytes | None = None
        try:
            await consumer.start()
            if self.topic not in await consumer.topics():
                # None written yet. Asking for the topic's partitions would let a broker with
                # auto.create.topics.enable create it, not compacted (open() creates it right).
                return None
            partitions = [
                TopicPartition(self.topic, p) for p in consumer.partitions_for_topic(self.topic) or {0}
            ]
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await self._stable_ends(consumer, partitions)
            for tp in partitions:
                # Read to the end offset, then on until a fetch comes back empty: some brokers
                # (Tansu) report the first offset of the last batch as the end.
                while True:
                    batch = await consumer.getmany(tp, timeout_ms=500)
                    records = batch.get(tp, [])
                    for record in records:
                        if record.key == self.key:
                            latest = record.value
                    if not records and await consumer.position(tp) >= ends[tp]:
                        break
        except KafkaError as exc:
            raise CheckpointError(f"cannot read the checkpoint topic {self.topic}: {exc}") from None
        finally:
            await consumer.stop()
        if latest is None:
            return None
        try:
            return Checkpoint.from_bytes(latest)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"the checkpoint in {self.topic} is corrupt: {exc}") from None

    async def _stable_ends(self, consumer: Any, partitions: list[Any]) -> dict[Any, int]:
        """The end offsets to read to, once no transaction that was open at start is still open.

        Under --exactly-once, instances write their records into the shared topic in their own
        transactions. A read_committed consumer stops at the last stable offset, before the
        first record of any open transaction, and one of ours written after it would be missed
        (and an older checkpoint used: repeats). So wait until the stable offset reaches the
        end as it was at start: a few ms for a live instance's commit, up to the transaction
        timeout (about a minute) for one that died in the middle of its commit.
        """
        from aiokafka import AIOKafkaConsumer

        ends_now = AIOKafkaConsumer(
            isolation_level="read_uncommitted",
            **self.client_options,
        )
        await ends_now.start()
        try:
            target = await ends_now.end_offsets(partitions)
        finally:
            await ends_now.stop()
        deadline = time.monotonic() + STABLE_WAIT
        said = False
        while True:
            stable = await consumer.end_offsets(partitions)  # read_committed: the last stable offsets
            if all(stable[tp] >= target[tp] for tp in partitions) or time.monotonic() > deadline:
                return stable
            if not said:
                log.info("waiting for an open transaction in %s to end (checkpoint)", self.topic)
                said = True
            await asyncio.sleep(0.2)

    async def save(self, checkpoint: Checkpoint) -> None:
        await self._write(checkpoint.to_bytes())

    async def forget(self) -> None:
        """A tombstone for our key: `load` finds none, and compaction removes the older records."""
        await self._write(None)

    async def _write(self, value: bytes | None) -> None:
        from aiokafka.errors import KafkaError

        if self._transactions is not None:  # inside the sink's open transaction
            await self._transactions.write_in_transaction(self.topic, self.key, value)
            return
        try:
            await self._producer.send_and_wait(self.topic, value, key=self.key)
        except KafkaError as exc:
            raise CheckpointError(f"cannot write the checkpoint to {self.topic}: {exc}") from None

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
