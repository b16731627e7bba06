"""`--exactly-once` at the sink: events and the checkpoint record commit in one transaction,
on both client libraries, against a broker whose transactions work (`transactional_kafka`:
noida-db here) -- and Tansu, whose transactions do not, is told apart by the probe.

The bridge end to end (kills, fencing between processes) is tests/test_exactly_once.py.
"""

from __future__ import annotations

import asyncio

import pytest

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore
from facespace_bridge.sinks.base import SinkError
from tests.fixtures.kafka import read_all
from tests.sinks.kafka.conftest import of_kind, sighting, sink_for


def transactional_sink(broker, topic: str, client: str, instance: str):
    return sink_for(broker, topic, client, exactly_once=True, instance_id=instance)


async def committed(bootstrap: str, topic: str) -> list[bytes]:
    return [r.value for r in await read_all(bootstrap, topic, isolation_level="read_committed")]


async def test_events_and_checkpoint_commit_together_and_an_open_transaction_stays_hidden(
    client, transactional_kafka, kafka_topic
):
    broker = transactional_kafka
    instance = f"{client}-{kafka_topic.rsplit('.', 1)[-1]}"
    offsets = f"{kafka_topic}.offsets"
    sink = transactional_sink(broker, kafka_topic, client, instance)
    assert sink.transactional and sink.settings.transactional_id == f"facespace-bridge.{instance}"
    assert await sink.transactions_work() == (
        True,
        "an aborted transaction stays invisible to read_committed readers",
    )
    store = KafkaCheckpointStore(broker.bootstrap, instance, topic=offsets, transactions=sink)
    await store.open()
    await sink.start()
    try:
        first = [sighting("Camera1", n) for n in range(5)]
        ack = await sink.publish(first)
        async with sink.transaction_boundary():
            assert ack.done() and ack.exception() is None  # acknowledged before the commit
            await store.save(Checkpoint(through=None))
        # A batch published, not committed: never visible to a read_committed reader.
        await (await sink.publish([sighting("Camera1", 99)]))
    finally:
        await sink.close()  # aborts the open transaction
        await store.close()
    assert await committed(broker.bootstrap, kafka_topic) == [e.payload for e in first]
    assert len(await read_all(broker.bootstrap, kafka_topic)) == 6  # the aborted one is in the log
    assert len(await committed(broker.bootstrap, offsets)) == 1
    reader = KafkaCheckpointStore(broker.bootstrap, instance, topic=offsets)
    assert await reader.load() == Checkpoint(through=None)


async def test_a_second_sink_with_the_same_instance_fences_the_first(
    client, transactional_kafka, kafka_topic
):
    broker = transactional_kafka
    instance = f"{client}-{kafka_topic.rsplit('.', 1)[-1]}"
    first = transactional_sink(broker, kafka_topic, client, instance)
    second = transactional_sink(broker, kafka_topic, client, instance)
    await first.start()
    try:
        await (await first.publish([sighting("Camera1", 0)]))
        await second.start()  # init_transactions: the first's transaction is aborted, it is fenced
        with pytest.raises(SinkError, match=r"took over \(same --instance-id\)"):
            ack = await first.publish([sighting("Camera1", 1)])
            await asyncio.wait_for(ack, 60)
            async with first.transaction_boundary():
                pass
        await (await second.publish([sighting("Camera1", 2)]))
        async with second.transaction_boundary():
            pass
    finally:
        await first.close()
        await second.close()
    assert await committed(broker.bootstrap, kafka_topic) == [sighting("Camera1", 2).payload]


async def test_tansu_transactions_are_refused_for_what_they_let_through(client, kafka, kafka_topic):
    if kafka.kind != "tansu":
        pytest.skip("a fact about Tansu")
    works, why = await sink_for(kafka, kafka_topic, client, exactly_once=True).transactions_work()
    assert not works
    if client == "librdkafka":  # Tansu takes librdkafka's transactions, and shows what they abort
        assert why == "a read_committed reader sees the records of an aborted transaction"
    else:  # aiokafka's InitProducerId version 0 fails before any transaction
        assert why.startswith("it refused a transactional producer")


async def test_a_commit_waits_only_for_batches_handed_over_not_for_one_waiting_its_turn(
    client, transactional_kafka, kafka_topic
):
    """The checkpoint writer's commit queued behind a publish that is creating a topic, and a
    second publish queued behind the commit: the commit must not wait for that second batch
    (which cannot start before the commit ends). It did with librdkafka, and the bridge hung."""
    instance = f"{client}-{kafka_topic.rsplit('.', 1)[-1]}"
    sink = transactional_sink(transactional_kafka, kafka_topic, client, instance)
    await sink.start()
    try:
        # A presence: its topic is created on first use, so this publish waits for the broker
        # while it holds the sink's turn.
        first = asyncio.ensure_future(sink.publish([of_kind("presence")]))
        await asyncio.sleep(0)

        async def commit() -> None:
            async with sink.transaction_boundary():
                pass

        boundary = asyncio.ensure_future(commit())
        second = asyncio.ensure_future(sink.publish([sighting("Camera1", 1)]))
        acks = await asyncio.wait_for(asyncio.gather(first, second), 30)
        await asyncio.wait_for(boundary, 30)
        await asyncio.wait_for(asyncio.gather(*acks), 30)
        async with sink.transaction_boundary():
            pass
    finally:
        await sink.close()
    assert len(await committed(transactional_kafka.bootstrap, kafka_topic)) == 1
