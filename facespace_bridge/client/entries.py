"""History entries: `"<Name> @ <HH:MM:SS> <DD/MM/YY>"` parsed into typed values.

This is the one place that reads the entry format; the client's typed layer, the
simulator's tests and the bridge's events all go through `parse_entry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone

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


def parse_entry(camera_id: str, raw: object) -> LogEntry | BadEntry:
    """Parse one history entry; never raises for bad input."""
    if not isinstance(raw, str):
        return BadEntry(camera_id, raw, f"entry is {type(raw).__name__}, not a string")
    match = _ENTRY.match(raw)
    if match is None:
        return BadEntry(camera_id, raw, "not '<Name> @ HH:MM:SS DD/MM/YY'")
    g = match.groupdict()
    try:
        seen_at = datetime(
            2000 + int(g["y"]), int(g["mo"]), int(g["d"]), int(g["h"]), int(g["m"]), int(g["s"]),
            tzinfo=timezone.utc,
        )
    except ValueError as exc:  # 31/02/23, 25:00:00 ...
        return BadEntry(camera_id, raw, f"impossible timestamp: {exc}")
    return LogEntry(camera_id, g["name"].strip(), seen_at, raw)


def format_entry(person: str, seen_at: datetime) -> str:
    """The wire form of an entry (used by the simulator)."""
    return f"{person} @ {seen_at:%H:%M:%S %d/%m/%y}"
