"""Producer properties passed through (`--kafka-property KEY=VALUE`), as kcat's `-X` and
kafka-console-producer's `--producer-property` do.

They are librdkafka's names and values, handed to its producer as they are, after the
sink's own settings (so `linger.ms` here wins over `--kafka-linger-ms`). Each is checked
without I/O when the options are read: a producer is made with them and no broker to talk
to, and librdkafka's refusal (an unknown name, a bad value) is bad input. With aiokafka the
properties it has an equivalent for are mapped to its producer's arguments; any other is
refused, in one line. Properties that the bridge's guarantees or its secret handling rest
on (acks, idempotence, transactions, the connection's own flags and secrets) are refused
for both clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

# Set by the bridge itself, or by a flag of their own (secrets never on the command line).
RESERVED = {
    "bootstrap.servers": "--bootstrap-servers",
    "acks": "the bridge (acks=all: a record counts once every replica has it)",
    "enable.idempotence": "the bridge (idempotence wherever the broker grants it)",
    "transactional.id": "--exactly-once and --instance-id",
    "security.protocol": "--kafka-security-protocol",
    "sasl.mechanism": "--kafka-sasl-mechanism",
    "sasl.mechanisms": "--kafka-sasl-mechanism",
    "sasl.username": "env KAFKA_SASL_USERNAME",
    "sasl.password": "env KAFKA_SASL_PASSWORD",
    "ssl.key.password": "env KAFKA_SSL_KEY_PASSWORD",
    "ssl.ca.location": "--kafka-ssl-cafile",
    "ssl.certificate.location": "--kafka-ssl-certfile",
    "ssl.key.location": "--kafka-ssl-keyfile",
}

# librdkafka property -> (aiokafka's AIOKafkaProducer argument, its type).
AIOKAFKA: dict[str, tuple[str, Callable[[str], Any]]] = {
    "client.id": ("client_id", str),
    "linger.ms": ("linger_ms", int),
    "batch.size": ("max_batch_size", int),
    "message.max.bytes": ("max_request_size", int),
    "compression.type": ("compression_type", str),
    "request.timeout.ms": ("request_timeout_ms", int),
    "metadata.max.age.ms": ("metadata_max_age_ms", int),
    "retry.backoff.ms": ("retry_backoff_ms", int),
    "connections.max.idle.ms": ("connections_max_idle_ms", int),
}

_quiet = logging.getLogger(__name__ + ".check")  # librdkafka's words while checking: not for users
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


def parse_properties(values: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings as a dict (a later key wins); ValueError names a malformed one."""
    properties: dict[str, str] = {}
    for value in values:
        key, sep, content = value.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{value!r} is not KEY=VALUE")
        properties[key] = content.strip()
    return properties


def check_properties(properties: Mapping[str, str], client: str) -> None:
    """Raise ValueError, naming the property, for one the client library would not take."""
    for key in properties:
        if key in RESERVED:
            raise ValueError(f"{key} is set by {RESERVED[key]}, not by a property")
    if properties:
        from confluent_kafka import KafkaException, Producer

        try:
            # No bootstrap servers: librdkafka checks the configuration and connects nowhere.
            Producer({**properties, "logger": _quiet})
        except KafkaException as exc:
            raise ValueError(exc.args[0].str()) from None
    if client == "aiokafka":
        aiokafka_kwargs(properties)


def aiokafka_kwargs(properties: Mapping[str, str]) -> dict[str, Any]:
    """The properties as AIOKafkaProducer arguments; ValueError for one aiokafka has no equivalent of."""
    kwargs = {}
    for key, value in properties.items():
        if key not in AIOKAFKA:
            raise ValueError(
                f"{key} has no equivalent in aiokafka (it takes {', '.join(AIOKAFKA)}); "
                "or use --kafka-client librdkafka"
            )
        name, kind = AIOKAFKA[key]
        try:
            kwargs[name] = kind(value)
        except ValueError:
            raise ValueError(f"{key}={value!r}: aiokafka needs a {kind.__name__}") from None
    if kwargs.get("compression_type") == "none":
        kwargs["compression_type"] = None
    return kwargs
