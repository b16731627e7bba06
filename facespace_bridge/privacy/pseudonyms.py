"""Keyed pseudonyms: `--pseudonymize` replaces every name by `p_` and 20 hex digits of
HMAC-SHA256(key, the NFC-normalised name), stable under one key (docs/privacy.md, "Pseudonyms").

Applied where names enter the bridge: the client (`AsyncLogsAPI(names=Pseudonyms(key))`)
rewrites every `/logs` and `/recognition` reply with them before anyone reads it
(`client.entries.rename_listing`, which owns the entry format), so the numbering of sightings
(their k, hence their event ids), the events, every sink, Home Assistant, `/status`, the web
page, the logs and the metrics only ever see pseudonyms. What cannot be read as an entry
(which may hold a name anywhere) is `withheld`: replaced by `withheld p_...`, the pseudonym of
its text, so distinct junk keeps distinct dead letters.

The key comes from the environment only (`FACESPACE_BRIDGE_PSEUDONYM_KEY`, never argv or the
config file), is at least 32 bytes, and is kept out of every repr.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

import click
import orjson

from facespace_bridge.privacy.filters import normalized

KEY_VARIABLE = "FACESPACE_BRIDGE_PSEUDONYM_KEY"
MIN_KEY_BYTES = 32  # HMAC-SHA256's own output size: a shorter key is easier to guess than the hash
PREFIX = "p_"
HEX_DIGITS = 20  # 80 bits: no collision among any number of people a camera could ever see
WITHHELD = "withheld "  # what an unreadable entry becomes: "withheld p_..." (never its text)
_CACHE_MAX = 65_536  # names per cache; cleared when full (names repeat, memory stays flat)


class PseudonymKeyError(ValueError):
    """The key is missing or too short: one line for the user."""


def key_from_environment(environ: Mapping[str, str] | None = None) -> bytes:
    """The pseudonym key from `FACESPACE_BRIDGE_PSEUDONYM_KEY` (UTF-8 bytes), at least 32 bytes."""
    text = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
    if not text:
        raise PseudonymKeyError(
            f"--pseudonymize needs a key: set {KEY_VARIABLE} (at least {MIN_KEY_BYTES} bytes)"
        )
    key = text.encode("utf-8", "surrogateescape")
    if len(key) < MIN_KEY_BYTES:
        raise PseudonymKeyError(
            f"{KEY_VARIABLE} is too short: {MIN_KEY_BYTES} bytes at least (e.g. `openssl rand -hex 32`)"
        )
    return key


def pseudonyms_for(config: Mapping[str, Any]) -> Pseudonyms | None:
    """With a command's `--pseudonymize`, the pseudonyms under the key from the environment;
    None without. A missing or short key is a usage error (one line, exit 2)."""
    if not config.get("pseudonymize"):
        return None
    try:
        return Pseudonyms(key_from_environment())
    except PseudonymKeyError as exc:
        raise click.UsageError(str(exc)) from None


class Pseudonyms:
    """Names to pseudonyms under one key (what the client renames replies with)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise PseudonymKeyError(f"the pseudonym key must be at least {MIN_KEY_BYTES} bytes")
        self._mac = hmac.new(key, digestmod=hashlib.sha256)  # copied per name: the key is hashed once
        self._names: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Pseudonyms(key withheld)"

    def of(self, name: str) -> str:
        """The pseudonym of `name`: `p_` and the first 20 hex digits of HMAC-SHA256(key, NFC(name))."""
        found = self._names.get(name)
        if found is None:
            mac = self._mac.copy()
            mac.update(normalized(name).encode("utf-8", "surrogatepass"))
            found = PREFIX + mac.hexdigest()[:HEX_DIGITS]
            if len(self._names) >= _CACHE_MAX:
                self._names.clear()
            self._names[name] = found
        return found

    def withheld(self, value: object) -> object:
        """What stands for input that may hold a name where none can be told apart: its
        pseudonym, as text for a string and in an object for anything else (so a dead letter
        still says what kind of value came); numbers, booleans and null hold no name and stay."""
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, str):
            return WITHHELD + self.of(value)
        text = orjson.dumps(value, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
        return {"withheld": self.of(text)}
