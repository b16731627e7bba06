"""The Kafka checkpoint store against the real broker: a container with no disk resumes."""

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
