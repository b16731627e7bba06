"""The client's logging: named loggers, the optional log file, and API-key redaction.

Every logger made by `client_logger` carries one shared `SecretRedactor`, and so does
every handler this package creates, so a secret registered by any live client is
replaced by `***` in the message, its arguments and any traceback text, whichever
handler (ours or the application's) finally writes the line.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from facespace_bridge.client.redaction import redactor

LOGGER_NAME = "facespace_bridge.client"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def client_logger(name: str = LOGGER_NAME) -> logging.Logger:
    """A logger of this package with the redactor attached (once)."""
    logger = logging.getLogger(name)
    if redactor not in logger.filters:
        logger.addFilter(redactor)
    return logger


class _ToParent(logging.Handler):
    """Hands records on to the parent logger's handlers, at its own level: with a log file,
    the client logger stops propagating so that the file can be more verbose than the
    application's console without the console seeing the extra lines."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        super().__init__(level)
        self._logger = logger
        self.addFilter(redactor)

    def emit(self, record: logging.LogRecord) -> None:
        parent = self._logger.parent
        if parent is not None:
            parent.handle(record)


class ClientLogging:
    """What `log_level`, `file_log_level` and `log_to_file` of the original mean.

    Levels are process-wide (one logger), as in the original. A client's file handler is
    attached while the client is open: `close()` detaches it and closes the file, `attach()`
    (a closed client being used again) appends to the same file.
    """

    def __init__(self, log_level: int, file_log_level: int, log_to_file: bool) -> None:
        self.logger = client_logger()
        self.file_path: Path | None = None
        self._log_level = log_level
        self._level_with_file = min(log_level, file_log_level)
        self._handlers: list[logging.Handler] = []
        self._attached = False
        if log_to_file:
            self.file_path = Path.cwd() / f"facespace_log_{datetime.now():%Y%m%d_%H%M%S}.log"
            file_handler = logging.FileHandler(self.file_path, encoding="utf-8", delay=True)
            file_handler.setLevel(file_log_level)
            file_handler.setFormatter(logging.Formatter(_FORMAT))
            file_handler.addFilter(redactor)
            self._handlers = [file_handler, _ToParent(self.logger, log_level)]
        self.attach()

    def attach(self) -> None:
        if not self._handlers:
            self.logger.setLevel(self._log_level)
            return
        if self._attached:
            return
        for handler in self._handlers:
            self.logger.addHandler(handler)
        self.logger.setLevel(self._level_with_file)
        self.logger.propagate = False
        self._attached = True

    def close(self) -> None:
        """Detach this client's handlers and close its log file."""
        if not self._attached:
            return
        for handler in self._handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self._attached = False
        if not any(isinstance(h, _ToParent) for h in self.logger.handlers):
            self.logger.propagate = True
            self.logger.setLevel(self._log_level)
