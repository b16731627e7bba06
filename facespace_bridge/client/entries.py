"""History entries: `"<Name> @ <HH:MM:SS> <DD/MM/YY>"` parsed into typed values.

This is the one place that reads the entry format; the client's typed layer, the
simulator's tests and the bridge's events all go through `parse_entry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

# The name is greedy so that a name containing " @ " keeps everything up to the
# *last* "@" that is followed by a well-formed timestamp.
_ENTRY = re.compile(
    r"^\s*(?P<name>.*\S)\s*@\s*(?P<h>\d{1,2}):(?P<m>\d{2}):(?P<s>\d{2})\s+"
    r"(?P<d>\d{1,2})/(?P<mo>\d{1,2})/(?P<y>\d{2})\s*$",
    re.DOTALL,
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One sighting from `/logs`: who, where, when (aware UTC, one-second resolution)."""

    camera_id: str
    person: str
    seen_at: datetime
    raw: str


@dataclass(frozen=True, slots=True)
class BadEntry:
    """An entry that could not be parsed: reported to the caller, never dropped."""

    camera_id: str
    raw: object
    reason: str


# Timestamps repeat a lot (sorted history, many people per second): cache their datetimes.
_STAMP_CACHE: dict[str, datetime] = {}
_STAMP_CACHE_MAX = 65_536
_STAMP = re.compile(r"(\d\d):(\d\d):(\d\d) (\d\d)/(\d\d)/(\d\d)", re.ASCII)


def _stamp(text: str) -> datetime | None:
    """The datetime of a canonical `HH:MM:SS DD/MM/YY`; None when it is not one."""
    seen_at = _STAMP_CACHE.get(text)
    if seen_at is not None:
        return seen_at
    match = _STAMP.fullmatch(text)
    if match is None:
        return None
    h, m, s, d, mo, y = map(int, match.groups())
    try:
        seen_at = datetime(2000 + y, mo, d, h, m, s, tzinfo=timezone.utc)
    except ValueError:
        return None  # the slow path reports why
    if len(_STAMP_CACHE) >= _STAMP_CACHE_MAX:
        _STAMP_CACHE.clear()
    _STAMP_CACHE[text] = seen_at
    return seen_at


def parse_entry(camera_id: str, raw: object) -> LogEntry | BadEntry:
    """Parse one history entry; never raises for bad input."""
    if not isinstance(raw, str):
        return BadEntry(camera_id, raw, f"entry is {type(raw).__name__}, not a string")
    # Fast path for the canonical form "<name> @ HH:MM:SS DD/MM/YY" (what the API sends).
    if len(raw) > 20 and raw[-20:-17] == " @ ":
        name = raw[:-20].strip()
        seen_at = _stamp(raw[-17:])
        if name and seen_at is not None:
            return LogEntry(camera_id, name, seen_at, raw)
    match = _ENTRY.match(raw)
    if match is None:
        return BadEntry(camera_id, raw, "not '<Name> @ HH:MM:SS DD/MM/YY'")
    g = match.groupdict()
    try:
        seen_at = datetime(
            2000 + int(g["y"]),
            int(g["mo"]),
            int(g["d"]),
            int(g["h"]),
            int(g["m"]),
            int(g["s"]),
            tzinfo=timezone.utc,
        )
    except ValueError as exc:  # 31/02/23, 25:00:00 ...
        return BadEntry(camera_id, raw, f"impossible timestamp: {exc}")
    return LogEntry(camera_id, g["name"].strip(), seen_at, raw)


def format_entry(person: str, seen_at: datetime) -> str:
    """The wire form of an entry (used by the simulator)."""
    return f"{person} @ {seen_at:%H:%M:%S %d/%m/%y}"


# The canonical form's layout, from the end: "<name> @ HH:MM:SS DD/MM/YY". Readers on a hot
# path split it by slicing (`raw[-STAMP_CHARS:]`, `raw[:-NAME_END]`) and fall back to
# `parse_entry` for anything else.
STAMP_CHARS = 17
NAME_END = 20
SEPARATOR = " @ "


def canonical_stamp(text: str) -> tuple[datetime, str] | None:
    """A canonical `HH:MM:SS DD/MM/YY` as its datetime and its RFC 3339 text (the same second,
    UTC, `Z`); None when it is not one. Not cached: the caller caches what it needs."""
    match = _STAMP.fullmatch(text)
    if match is None:
        return None
    h, m, s, d, mo, y = map(int, match.groups())
    try:
        seen_at = datetime(2000 + y, mo, d, h, m, s, tzinfo=timezone.utc)
    except ValueError:
        return None
    return seen_at, f"20{text[15:17]}-{text[12:14]}-{text[9:11]}T{text[:8]}Z"


def newest_in(reply: dict[str, Any]) -> datetime | None:
    """The latest timestamp of any entry in a `/logs` reply."""
    newest: datetime | None = None
    for camera_id, raws in reply.items():
        for raw in raws if isinstance(raws, list) else ():
            seen_at = (
                _stamp(raw[-STAMP_CHARS:])
                if type(raw) is str and raw[-NAME_END:-STAMP_CHARS] == SEPARATOR
                else None
            )
            if seen_at is None:
                entry = parse_entry(camera_id, raw)
                seen_at = entry.seen_at if type(entry) is LogEntry else None
            if seen_at is not None and (newest is None or seen_at > newest):
                newest = seen_at
    return newest
