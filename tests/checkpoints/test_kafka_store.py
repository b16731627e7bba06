"""The Kafka checkpoint store against the real broker: a container with no disk resumes."""

import asyncio
import time
from datetime import datetime, timezone

from facespace_bridge.checkpoints import Backfill, Checkpoint, Position
from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore

T = datetime(2023, 10, 23, 10, 0, 5, tzinfo=timezone.utc)


async def test_latest_checkpoint_per_instance_survives_a_new_store(kafka, kafka_topic):
    topic = f"{kafka_topic}.offsets"
    first = KafkaCheckpointStore(kafka.bootstrap, "site-a", topic=topic)
    other = KafkaCheckpointStore(kafka.bootstrap, "site-b", topic=topic)
    await first.open()
    await other.open()
    try:
        assert await first.load() is None
        for n in range(1, 6):
            await first.save(Checkpoint(cameras={"Cam": Position(T, n)}, through=T, backfill=Backfill(T, T)))
        await other.save(Checkpoint(through=T.replace(hour=11)))
    finally:
        await first.close()
        await other.close()
    fresh = KafkaCheckpointStore(kafka.bootstrap, "site-a", topic=topic)
    await fresh.open()
    try:
        loaded = await fresh.load()
    finally:
        await fresh.close()
    assert loaded is not None and loaded.cameras["Cam"] == Position(T, 5)
    assert loaded.backfill == Backfill(T, T)


async def test_load_waits_for_another_instances_open_transaction(transactional_kafka, kafka_topic):
    """Under --exactly-once, instances share the offsets topic and each writes its record in its
    own transaction. A record of ours behind another instance's open transaction lies past the
    last stable offset: load must wait for that transaction rather than return an older one."""
    from aiokafka import AIOKafkaProducer

    topic = f"{kafka_topic}.offsets"
    ours = KafkaCheckpointStore(transactional_kafka.bootstrap, "site-a", topic=topic)
    await ours.open()
    other = AIOKafkaProducer(bootstrap_servers=transactional_kafka.bootstrap, transactional_id=f"{topic}-b")
    await other.start()
    try:
        await ours.save(Checkpoint(cameras={"Cam": Position(T, 1)}, through=T))
        await other.begin_transaction()
        await other.send_and_wait(topic, Checkpoint(through=T).to_bytes(), key=b"site-b")
        await ours.save(Checkpoint(cameras={"Cam": Position(T, 2)}, through=T))  # after the open one

        async def commit_later() -> None:
            await asyncio.sleep(1.5)
            await other.commit_transaction()

        committer = asyncio.create_task(commit_later())
        began = time.monotonic()
        loaded = await ours.load()
        waited = time.monotonic() - began
        await committer
    finally:
        await other.stop()
        await ours.close()
    assert loaded is not None and loaded.cameras["Cam"] == Position(T, 2), "an older checkpoint"
    assert waited >= 1.0, "it read past the open transaction without waiting for it"


async def test_forget_writes_a_tombstone_and_the_next_load_finds_nothing(kafka, kafka_topic, read_topic):
    topic = f"{kafka_topic}.offsets"
    store = KafkaCheckpointStore(kafka.bootstrap, "site-a", topic=topic)
    other = KafkaCheckpointStore(kafka.bootstrap, "site-b", topic=topic)
    await store.open()
    await other.open()
    try:
        await store.save(Checkpoint(through=T))
        await other.save(Checkpoint(through=T.replace(hour=11)))
        await store.forget()
    finally:
        await store.close()
        await other.close()
    assert await KafkaCheckpointStore(kafka.bootstrap, "site-a", topic=topic).load() is None
    assert (await KafkaCheckpointStore(kafka.bootstrap, "site-b", topic=topic).load()) == Checkpoint(
        through=T.replace(hour=11)
    )
    records = await read_topic(topic)
    assert [(r.key, r.value) for r in records][-1] == (b"site-a", None)  # what compaction removes it by


async def test_load_from_a_topic_nobody_created_finds_nothing_and_creates_nothing(kafka, kafka_topic):
    """`checkpoint show` before any bridge ran: a broker that creates topics on demand must not
    get an offsets topic without compaction from a read."""
    from aiokafka.admin import AIOKafkaAdminClient

    topic = f"{kafka_topic}.offsets"
    assert await KafkaCheckpointStore(kafka.bootstrap, "site-a", topic=topic).load() is None
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        assert topic not in await admin.list_topics()
    finally:
        await admin.close()
