"""Secrets out of log lines: the one `SecretRedactor` every logger and handler of the package carries.

A registered secret (the API key, a broker password) is replaced by `***` in the message,
its arguments and any traceback text, whichever handler finally writes the line. Only a
whole value is masked -- the secret not run together with other letters, digits, `-` or
`_` -- so a short secret does not garble every word that contains its letters (and, by the
gaps, show what it is). A secret shorter than `MIN_SAFE_LENGTH` cannot be told from the
words around it reliably: `too_short` lets the caller warn about it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter

REDACTED = "***"
MIN_SAFE_LENGTH = 8
_WORD = "A-Za-z0-9_-"


class SecretRedactor(logging.Filter):
    """Replaces registered secrets in log records. Secrets are reference-counted, so two
    clients with the same key can come and go independently."""

    def __init__(self) -> None:
        super().__init__()
        # Reentrant: building the pattern allocates, an allocation can run the garbage
        # collector, and a collected client's finalizer discards its key on this same thread.
        self._lock = threading.RLock()
        self._secrets: Counter[str] = Counter()
        self._pattern: re.Pattern[str] | None = None
        self._changes = 0  # a pattern built while a secret came or went is used once, not kept

    @staticmethod
    def too_short(secret: str) -> bool:
        return len(secret) < MIN_SAFE_LENGTH

    def add(self, secret: str | None) -> None:
        if secret:
            with self._lock:
                self._secrets[secret] += 1
                self._pattern = None
                self._changes += 1

    def discard(self, secret: str) -> None:
        with self._lock:
            if self._secrets[secret] > 1:
                self._secrets[secret] -= 1
            else:
                self._secrets.pop(secret, None)
            self._pattern = None
            self._changes += 1

    def redact(self, text: str) -> str:
        with self._lock:
            if not self._secrets:
                return text
            pattern = self._pattern
            if pattern is None:
                changes = self._changes
                # Longest first, so that a secret containing another is masked whole.
                alternatives = "|".join(re.escape(s) for s in sorted(self._secrets, key=len, reverse=True))
                pattern = re.compile(f"(?<![{_WORD}])(?:{alternatives})(?![{_WORD}])")
                if changes == self._changes:
                    self._pattern = pattern
        return pattern.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


redactor = SecretRedactor()
