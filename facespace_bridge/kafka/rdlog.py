"""librdkafka's own log lines, into the package's logging with every secret masked.

confluent-kafka hands each line to the `logger` of a client's configuration (any object with
a `log(level, format, *args)` method), on the thread that polls the client. librdkafka logs
each failed connection attempt at error level, many times during an outage that the sink
reports itself, once and in plain words (its `error_cb`); so its lines go out at debug level.
"""

from __future__ import annotations

import logging
from typing import Any

from facespace_bridge.client import redactor


class LibrdkafkaLog:
    """The `logger` of a librdkafka client configuration."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def log(self, level: int, message: str, *args: Any) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            text = message % args if args else message
            # Masked here as well as by the handlers' filter: a handler without it (a test's
            # capture, a library's) must not see a secret either.
            self._logger.debug("librdkafka: %s", redactor.redact(text))
