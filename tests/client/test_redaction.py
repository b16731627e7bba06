"""The secret redactor (client/redaction.py): whole values masked, and no deadlock with the
finalizers that discard a closed client's key."""

from __future__ import annotations

import gc
import re
import threading
from types import SimpleNamespace

from facespace_bridge.client import redaction
from facespace_bridge.client.redaction import REDACTED, SecretRedactor


def test_whole_values_are_masked_and_words_containing_them_are_not() -> None:
    redactor = SecretRedactor()
    redactor.add("s3cret-key-42")
    assert redactor.redact("key=s3cret-key-42, not xs3cret-key-42") == f"key={REDACTED}, not xs3cret-key-42"
    redactor.discard("s3cret-key-42")
    assert redactor.redact("key=s3cret-key-42") == "key=s3cret-key-42"


def test_a_finalizer_discarding_a_key_while_a_line_is_redacted_does_not_deadlock(monkeypatch) -> None:
    """A client closed by the garbage collector discards its key from a finalizer; the
    collector may run inside `redact` (any allocation can start it) on the same thread.
    With a plain lock that thread waited for itself, and the bridge hung on a log line."""
    redactor = SecretRedactor()
    redactor.add("first-secret-1234")
    redactor.add("second-secret-5678")
    discarded: list[str] = []

    def on_collection(phase: str, _info: dict[str, int]) -> None:
        if phase == "start" and not discarded:
            discarded.append("second-secret-5678")
            redactor.discard("second-secret-5678")

    def escape_and_collect(text: str) -> str:  # the pattern is being built: a collection now
        gc.collect()
        return re.escape(text)

    monkeypatch.setattr(redaction, "re", SimpleNamespace(escape=escape_and_collect, compile=re.compile))
    result: list[str] = []
    gc.callbacks.append(on_collection)
    try:
        worker = threading.Thread(target=lambda: result.append(redactor.redact("a first-secret-1234 b")))
        worker.daemon = True
        worker.start()
        worker.join(10)
    finally:
        gc.callbacks.remove(on_collection)
    assert not worker.is_alive(), "redact deadlocked"
    assert discarded and result == [f"a {REDACTED} b"]
    assert redactor.redact("second-secret-5678") == "second-secret-5678"  # discarded is discarded
