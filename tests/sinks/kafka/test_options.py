"""The Kafka sink's options, settings and connection mapping for both client libraries (no broker)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import click
import pytest
from aiokafka import codec

from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore
from facespace_bridge.client import redactor
from facespace_bridge.kafka.rdlog import LibrdkafkaLog
from facespace_bridge.sinks.base import SinkError
from facespace_bridge.sinks.kafka import (
    CLIENT_DEFAULTS,
    COMPRESSIONS,
    OPTIONS,
    KafkaSettings,
    KafkaSink,
    compressions,
    create_sink,
    from_config,
)
from facespace_bridge.sinks.kafka._aiokafka import AiokafkaSink
from facespace_bridge.sinks.kafka._librdkafka import LibrdkafkaSink
from tests.sinks.kafka.conftest import sighting

API_URL = "HTTP://bridge:pa55word@FaceSpace.Example:80/facespace/?key=k-123"
CE_SOURCE = "http://facespace.example/facespace"


def test_librdkafka_is_the_default_client_and_aiokafka_the_other():
    assert type(from_config({"bootstrap_servers": "b:1"})) is LibrdkafkaSink
    assert type(from_config({"bootstrap_servers": "b:1", "kafka_client": "aiokafka"})) is AiokafkaSink
    assert type(create_sink(KafkaSettings(bootstrap_servers="b:1", client="aiokafka"))) is AiokafkaSink
    for client, sink_type in (("librdkafka", LibrdkafkaSink), ("aiokafka", AiokafkaSink)):
        sink = from_config({"bootstrap_servers": "b:1", "kafka_client": client})
        assert isinstance(sink, sink_type) and isinstance(sink, KafkaSink)
        assert (sink.settings.linger_ms, sink.settings.batch_size) == (
            CLIENT_DEFAULTS[client].linger_ms,
            CLIENT_DEFAULTS[client].batch_size,
        )
    explicit = from_config({"bootstrap_servers": "b:1", "kafka_linger_ms": 0, "kafka_batch_size": 4096})
    assert (explicit.settings.linger_ms, explicit.settings.batch_size) == (0, 4096)


def test_defaults_and_topics_from_options():
    sink = from_config({"bootstrap_servers": "b1:9092,b2:9092", "presence_topic": "p"})
    s = sink.settings
    assert s.bootstrap_servers == "b1:9092,b2:9092" == s.kafka.bootstrap_servers
    assert dict(s.topics) == {
        "sighting": "facespace.sightings",
        "presence": "p",
        "deadletter": "facespace.deadletter",
    }
    connection = s.kafka
    assert connection.security_protocol == "PLAINTEXT" and connection.ssl_context is None
    assert connection.sasl_mechanism is None


def test_sasl_from_the_environment_only_and_mapped_for_both_clients(monkeypatch):
    monkeypatch.delenv("KAFKA_SASL_USERNAME", raising=False)
    monkeypatch.delenv("KAFKA_SASL_PASSWORD", raising=False)
    config = {"bootstrap_servers": "b:9093", "kafka_sasl_mechanism": "scram-sha-512"}
    with pytest.raises(click.UsageError, match="KAFKA_SASL_USERNAME"):
        from_config(config)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "bridge")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-sasl-pw")
    settings = from_config(config).settings
    connection = settings.kafka
    assert (connection.sasl_mechanism, connection.security_protocol) == ("SCRAM-SHA-512", "SASL_SSL")
    assert "s3cret-sasl-pw" not in repr(settings)
    assert connection.aiokafka_kwargs() | {"ssl_context": None} == {
        "bootstrap_servers": "b:9093",
        "security_protocol": "SASL_SSL",
        "request_timeout_ms": 40_000,
        "ssl_context": None,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "bridge",
        "sasl_plain_password": "s3cret-sasl-pw",
    }
    assert connection.librdkafka_config() == {
        "bootstrap.servers": "b:9093",
        "security.protocol": "sasl_ssl",
        "socket.timeout.ms": 40_000,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bridge",
        "sasl.password": "s3cret-sasl-pw",
    }
    # The checkpoint store reads the same parsing (facespace_bridge.kafka.connection).
    store = KafkaCheckpointStore.from_config(config)
    assert store.connection.librdkafka_config() == connection.librdkafka_config()
    assert store.client_options["sasl_plain_password"] == "s3cret-sasl-pw"
    assert redactor.redact("pw s3cret-sasl-pw") == "pw ***"
    flags = {opt for option in OPTIONS for opt in option(click.Command("x")).params[-1].opts}
    assert not any("password" in flag or "username" in flag for flag in flags)


@pytest.fixture(scope="module")
def client_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its encrypted key (openssl, from the Debian base system)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "client.pem", folder / "client.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=bridge",
         "-keyout", str(key), "-out", str(cert), "-passout", "pass:key-pass-123"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_files_and_key_password_mapped_for_both_clients(monkeypatch, client_certificate):
    cert, key = client_certificate
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "key-pass-123")
    config = {
        "bootstrap_servers": "b:9093",
        "kafka_ssl_cafile": str(cert),
        "kafka_ssl_certfile": str(cert),
        "kafka_ssl_keyfile": str(key),
    }
    connection = from_config(config).settings.kafka
    assert connection.security_protocol == "SSL"
    assert connection.aiokafka_kwargs()["ssl_context"] is connection.ssl_context is not None
    assert connection.librdkafka_config() == {
        "bootstrap.servers": "b:9093",
        "security.protocol": "ssl",
        "socket.timeout.ms": 40_000,
        "ssl.ca.location": str(cert),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": "key-pass-123",
    }
    assert "key-pass-123" not in repr(connection)
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "wrong-password")
    with pytest.raises(click.UsageError, match="TLS"):  # read up front: bad input, exit 2
        from_config(config)


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"bootstrap_servers": "no-port"}, "host:port"),
        ({"bootstrap_servers": "b:1", "kafka_security_protocol": "SASL_PLAINTEXT"}, "--kafka-sasl-mechanism"),
        ({"bootstrap_servers": "b:1", "kafka_compression": "brotli"}, "brotli"),
        ({"bootstrap_servers": "b:1", "kafka_client": "kafka-python"}, "kafka-python"),
        ({"bootstrap_servers": "b:1", "topic": "no spaces"}, "not a Kafka topic name"),
        ({"bootstrap_servers": "b:1", "presence_topic": "x" * 250}, "1 to 249"),
    ],
)
def test_bad_options_are_usage_errors(config, problem):
    with pytest.raises(click.UsageError, match=problem):
        from_config(config)


def test_tls_files_are_read_up_front(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(click.UsageError, match="TLS"):
        from_config({"bootstrap_servers": "b:9093", "kafka_ssl_cafile": str(bad)})
    with pytest.raises(click.BadParameter, match="certfile"):
        from_config({"bootstrap_servers": "b:9093", "kafka_ssl_keyfile": str(bad)})


def test_each_client_offers_the_codecs_it_can_write():
    assert compressions("librdkafka") == COMPRESSIONS  # the wheels carry every codec
    aiokafka = compressions("aiokafka")
    assert aiokafka[0] == "none" and all(getattr(codec, f"has_{name}")() for name in aiokafka[1:])
    for name in set(COMPRESSIONS) - set(aiokafka):
        with pytest.raises(click.BadParameter, match="with aiokafka"):
            from_config({"bootstrap_servers": "b:1", "kafka_client": "aiokafka", "kafka_compression": name})


@pytest.mark.parametrize("client", ["librdkafka", "aiokafka"])
async def test_publish_before_start_is_a_sink_error(client):
    sink = from_config({"bootstrap_servers": "b:9092", "kafka_client": client})
    with pytest.raises(SinkError, match="not started"):
        await sink.publish([sighting("Camera1", 0)])


def test_librdkafka_log_lines_are_masked_before_any_handler(caplog):
    redactor.add("hunter2-broker-pw")
    try:
        caplog.set_level(logging.DEBUG, logger="tests.rdlog")
        LibrdkafkaLog(logging.getLogger("tests.rdlog")).log(
            3, "%s [%s] %s", "SASL", "p#1", "pw=hunter2-broker-pw"
        )
        assert caplog.records[-1].levelno == logging.DEBUG
        assert caplog.records[-1].getMessage() == "librdkafka: SASL [p#1] pw=***"
    finally:
        redactor.discard("hunter2-broker-pw")


def test_cloudevents_source_from_options():
    assert (
        from_config({"bootstrap_servers": "b:1", "api_url": API_URL}).settings.cloudevents_source == CE_SOURCE
    )
    off = from_config({"bootstrap_servers": "b:1", "api_url": API_URL, "cloudevents": False})
    assert off.settings.cloudevents_source is None
    with pytest.raises(click.BadParameter, match="http"):
        from_config({"bootstrap_servers": "b:1", "api_url": "ftp://example.com"})
