"""How to reach a Kafka cluster: bootstrap servers, TLS and SASL, from the flags and environment.

One parsing for every Kafka client the package runs (the sink on either client library,
the checkpoint store, the capability probe, the `checkpoint` command), rendered as
aiokafka keyword arguments or as librdkafka configuration. TLS files are read here, so a
bad certificate is bad input (exit 2), not a failure at run time; SASL credentials come
only from the environment, never from argv (`ps` shows argv).

No Kafka library is imported before a connection is made from the options: every command's
flags include the Kafka ones, and the Home Assistant add-on's image has no Kafka library.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import click

from facespace_bridge.client import redactor

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
DEFAULT_BOOTSTRAP = "localhost:9092"
#: the client libraries a Kafka sink may write with (`--kafka-client`)
Client = Literal["librdkafka", "aiokafka"]
CLIENTS: tuple[Client, ...] = ("librdkafka", "aiokafka")
#: secrets that configure a Kafka connection: read from here only, redacted from every log line
SECRET_VARIABLES = ("KAFKA_SASL_PASSWORD", "KAFKA_SSL_KEY_PASSWORD")


@dataclass(frozen=True)
class KafkaConnection:
    """Where the cluster is and how to authenticate; `repr` never shows a secret."""

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    key_password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    request_timeout_ms: int = 40_000

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for any aiokafka client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.ssl_context is not None:
            kwargs["ssl_context"] = self.ssl_context
        if self.sasl_mechanism is not None:
            kwargs.update(
                sasl_mechanism=self.sasl_mechanism,
                sasl_plain_username=self.sasl_username,
                sasl_plain_password=self.sasl_password,
            )
        return kwargs

    def librdkafka_config(self) -> dict[str, Any]:
        """The connection part of a librdkafka (confluent-kafka) configuration."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol.lower(),
            "socket.timeout.ms": self.request_timeout_ms,
        }
        optional = {
            "ssl.ca.location": self.cafile,
            "ssl.certificate.location": self.certfile,
            "ssl.key.location": self.keyfile,
            "ssl.key.password": self.key_password,
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return config


def connection_from_config(config: Mapping[str, Any]) -> KafkaConnection:
    """The connection from parsed options (click parameter names) and the environment.
    Validates everything; raises click's errors for bad input; connects nothing."""
    bootstrap = (config.get("bootstrap_servers") or "").strip()
    if not bootstrap or any(":" not in part for part in bootstrap.split(",")):
        raise click.BadParameter(
            f"expected host:port[,host:port], got {bootstrap!r}", param_hint="--bootstrap-servers"
        )
    mechanism = config.get("kafka_sasl_mechanism")
    mechanism = mechanism.upper() if mechanism else None
    cafile, certfile, keyfile = (
        config.get("kafka_ssl_cafile"),
        config.get("kafka_ssl_certfile"),
        config.get("kafka_ssl_keyfile"),
    )
    protocol = config.get("kafka_security_protocol")
    if protocol:
        protocol = protocol.upper()
    elif mechanism:
        protocol = "SASL_SSL"
    elif cafile or certfile or keyfile:
        protocol = "SSL"
    else:
        protocol = "PLAINTEXT"
    if keyfile and not certfile:
        raise click.BadParameter("needs --kafka-ssl-certfile as well", param_hint="--kafka-ssl-keyfile")
    if protocol.startswith("SASL") and not mechanism:
        raise click.UsageError(f"--kafka-security-protocol {protocol} needs --kafka-sasl-mechanism")
    if mechanism and not protocol.startswith("SASL"):
        raise click.UsageError(f"--kafka-sasl-mechanism needs a SASL security protocol, not {protocol}")
    if not protocol.endswith("SSL") and (cafile or certfile or keyfile):
        raise click.UsageError(f"--kafka-ssl-* files need an SSL security protocol, not {protocol}")

    username = password = None
    if mechanism:
        username, password = os.environ.get("KAFKA_SASL_USERNAME"), os.environ.get("KAFKA_SASL_PASSWORD")
        if not username or not password:
            raise click.UsageError(
                f"--kafka-sasl-mechanism {mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                "in the environment"
            )
    key_password = os.environ.get("KAFKA_SSL_KEY_PASSWORD") or None
    for secret in (password, key_password):
        redactor.add(secret)

    context = None
    if protocol.endswith("SSL"):
        from aiokafka.helpers import create_ssl_context

        try:
            context = create_ssl_context(
                cafile=cafile, certfile=certfile, keyfile=keyfile, password=key_password
            )
        except (ssl.SSLError, OSError) as exc:
            raise click.UsageError(f"cannot load the Kafka TLS files: {exc}") from None
    return KafkaConnection(
        bootstrap_servers=bootstrap,
        security_protocol=protocol,
        cafile=cafile,
        certfile=certfile,
        keyfile=keyfile,
        key_password=key_password,
        ssl_context=context,
        sasl_mechanism=mechanism,
        sasl_username=username,
        sasl_password=password,
    )


_FILE = click.Path(exists=True, dir_okay=False)

#: The flags of a Kafka connection: every command that talks to Kafka takes these.
CONNECTION_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--bootstrap-servers",
        envvar="KAFKA_BOOTSTRAP_SERVERS",
        default=DEFAULT_BOOTSTRAP,
        show_default=True,
        help="Kafka brokers, host:port[,host:port] (env KAFKA_BOOTSTRAP_SERVERS).",
    ),
    click.option(
        "--kafka-security-protocol",
        type=click.Choice(SECURITY_PROTOCOLS, case_sensitive=False),
        default=None,
        help="[default: SASL_SSL with SASL, SSL with a TLS file, else PLAINTEXT]",
    ),
    click.option(
        "--kafka-ssl-cafile",
        type=_FILE,
        default=None,
        help="CA bundle that signed the broker's certificate (TLS).",
    ),
    click.option(
        "--kafka-ssl-certfile", type=_FILE, default=None, help="Client certificate (PEM) for mutual TLS."
    ),
    click.option(
        "--kafka-ssl-keyfile",
        type=_FILE,
        default=None,
        help="Client private key (PEM); its password, if any, from env KAFKA_SSL_KEY_PASSWORD.",
    ),
    click.option(
        "--kafka-sasl-mechanism",
        type=click.Choice(SASL_MECHANISMS, case_sensitive=False),
        default=None,
        help="SASL mechanism; credentials from env KAFKA_SASL_USERNAME / KAFKA_SASL_PASSWORD.",
    ),
]
