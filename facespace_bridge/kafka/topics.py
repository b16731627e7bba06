"""Creating the topics the package writes to, when they are missing (an existing topic is used as it is)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from facespace_bridge.kafka.connection import KafkaConnection

log = logging.getLogger(__name__)


class TopicError(Exception):
    """A topic could not be created; one line for the user."""


async def ensure_topic(
    connection: KafkaConnection,
    topic: str,
    *,
    partitions: int,
    replication_factor: int | None,
    config: Mapping[str, str] | None = None,
) -> bool:
    """Create `topic` unless it exists; True when it was created. `replication_factor` None:
    min(3, brokers in the cluster). Raises TopicError."""
    from aiokafka import errors as kafka_errors  # here: only a Kafka sink or store loads aiokafka
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(**connection.aiokafka_kwargs())
    try:
        await admin.start()
        if topic in await admin.list_topics():
            return False
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = replication_factor or min(3, max(1, brokers))
        reply = await admin.create_topics(
            [NewTopic(topic, partitions, replication, topic_configs=dict(config or {}))]
        )
        for _name, code, message in reply.topic_errors:
            error = kafka_errors.for_code(code)
            if error is kafka_errors.TopicAlreadyExistsError:
                return False
            if error is not kafka_errors.NoError:
                raise TopicError(f"cannot create Kafka topic {topic!r}: {message or error.__name__}")
        log.info("created Kafka topic %s (%d partitions, replication %d)", topic, partitions, replication)
        return True
    except kafka_errors.KafkaError as exc:
        raise TopicError(f"cannot create Kafka topic {topic!r}: {type(exc).__name__}: {exc}") from None
    finally:
        await admin.close()
