"""Talking to Kafka, for the Kafka sink and the Kafka checkpoint store alike: the connection
(bootstrap, TLS, SASL) from flags and environment, what the broker can do (per client
library), topics, and librdkafka's log lines (`rdlog`).

Importing this package imports no Kafka library: the connection settings and the topics
module load aiokafka only when they talk to a broker, and the capability probes (which
extend aiokafka's request classes) load on first use of one of their names. Every command
carries the Kafka flags, and the Home Assistant add-on's image has no Kafka library at all.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from facespace_bridge.kafka.connection import (
    CLIENTS,
    CONNECTION_OPTIONS,
    DEFAULT_BOOTSTRAP,
    SASL_MECHANISMS,
    SECRET_VARIABLES,
    SECURITY_PROTOCOLS,
    Client,
    KafkaConnection,
    connection_from_config,
)
from facespace_bridge.kafka.topics import TopicError, ensure_topic

if TYPE_CHECKING:
    from facespace_bridge.kafka.capabilities import (
        PROBE_TOPIC,
        BrokerCapabilities,
        broker_capabilities,
        probe_idempotence,
        transactions_work,
    )

_CAPABILITIES = frozenset(
    {"PROBE_TOPIC", "BrokerCapabilities", "broker_capabilities", "probe_idempotence", "transactions_work"}
)


def __getattr__(name: str) -> Any:
    """The capability probes' names, loaded (with aiokafka) when first asked for (PEP 562)."""
    if name in _CAPABILITIES:
        return getattr(importlib.import_module("facespace_bridge.kafka.capabilities"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
