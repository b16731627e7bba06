"""Talking to Kafka, for the Kafka sink and the Kafka checkpoint store alike: the connection
(bootstrap, TLS, SASL) from flags and environment, what the broker can do (per client
library), topics, and librdkafka's log lines (`rdlog`)."""

from facespace_bridge.kafka.capabilities import (
    CLIENTS,
    PROBE_TOPIC,
    BrokerCapabilities,
    Client,
    broker_capabilities,
    probe_idempotence,
    transactions_work,
)
from facespace_bridge.kafka.connection import (
    CONNECTION_OPTIONS,
    DEFAULT_BOOTSTRAP,
    SASL_MECHANISMS,
    SECRET_VARIABLES,
    SECURITY_PROTOCOLS,
    KafkaConnection,
    connection_from_config,
)
from facespace_bridge.kafka.topics import TopicError, ensure_topic

__all__ = [
    "CLIENTS",
    "CONNECTION_OPTIONS",
    "DEFAULT_BOOTSTRAP",
    "PROBE_TOPIC",
    "SASL_MECHANISMS",
    "SECRET_VARIABLES",
    "SECURITY_PROTOCOLS",
    "BrokerCapabilities",
    "Client",
    "KafkaConnection",
    "TopicError",
    "broker_capabilities",
    "connection_from_config",
    "ensure_topic",
    "probe_idempotence",
    "transactions_work",
]
