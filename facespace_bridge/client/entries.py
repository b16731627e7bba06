"""History entries: `"<Name> @ <HH:MM:SS> <DD/MM/YY>"` parsed into typed values.

The one owner of the entry format: `split_entry` cuts the canonical form into name and stamp,
`second_of` reads a stamp into a `Second` (cached: seconds repeat), and `parse_entry` reads
any form the API may send, down to a reason for what it cannot. The client's typed layer,
`sources/listing.py`'s numbering (the hot path of every backfill and replay), the events'
timestamps and the simulator's tests all go through them.
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


# The canonical form's layout, from the end: "<name> @ HH:MM:SS DD/MM/YY".
STAMP_CHARS = 17
NAME_END = 20
SEPARATOR = " @ "
_STAMP = re.compile(r"(\d\d):(\d\d):(\d\d) (\d\d)/(\d\d)/(\d\d)", re.ASCII)


@dataclass(frozen=True, slots=True)
class Second:
    """One second of history as every reader needs it: the datetime, and the RFC 3339 text
    (`YYYY-MM-DDTHH:MM:SSZ`, UTC) that events carry, as text and as bytes."""

    at: datetime  # aware, UTC, whole second
    text: str
    utf8: bytes

    @classmethod
    def of(cls, at: datetime) -> Second:
        """The second of an aware datetime (sub-seconds dropped, not rounded). Not cached:
        entries' stamps go through `second_of`."""
        offset = at.utcoffset()
        if offset is None:
            raise ValueError(f"naive datetime {at.isoformat()}: times must be timezone-aware")
        at = (at.astimezone(timezone.utc) if offset else at).replace(microsecond=0)
        text = f"{at.year:04d}-{at.month:02d}-{at.day:02d}T{at.hour:02d}:{at.minute:02d}:{at.second:02d}Z"
        return cls(at, text, text.encode())


# Stamps seen lately -> their second (None: not a canonical stamp). A window holds every
# camera, cameras share seconds, and a sorted listing repeats each one: one cache for all.
# Cleared when full: 32,768 seconds (about 10 MB) cover the distinct seconds of a window of
# `iter_windows`' default size in all but the sparsest histories.
_SECONDS: dict[str, Second | None] = {}
_SECONDS_MAX = 32_768


def second_of(stamp: str) -> Second | None:
    """The second of a canonical stamp `HH:MM:SS DD/MM/YY`; None when it is not one (the
    caller falls back to `parse_entry`, which says why)."""
    try:
        return _SECONDS[stamp]
    except KeyError:
        pass
    second: Second | None = None
    match = _STAMP.fullmatch(stamp)
    if match is not None:
        h, m, s, d, mo, y = map(int, match.groups())
        try:
            at = datetime(2000 + y, mo, d, h, m, s, tzinfo=timezone.utc)
        except ValueError:
            pass  # 31/02/23, 25:00:00 ...
        else:
            text = f"20{stamp[15:17]}-{stamp[12:14]}-{stamp[9:11]}T{stamp[:8]}Z"
            second = Second(at, text, text.encode())
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[stamp] = second
    return second


def split_entry(raw: object) -> tuple[str, str] | None:
    """The name and the stamp of an entry in the canonical form; None for anything else
    (`parse_entry` reads the rest). The name may still be empty."""
    if type(raw) is str and raw[-NAME_END:-STAMP_CHARS] == SEPARATOR:
        return raw[:-NAME_END].strip(), raw[-STAMP_CHARS:]
    return None


def parse_entry(camera_id: str, raw: object) -> LogEntry | BadEntry:
    """Parse one history entry; never raises for bad input."""
    if not isinstance(raw, str):
        return BadEntry(camera_id, raw, f"entry is {type(raw).__name__}, not a string")
    # Fast path for the canonical form "<name> @ HH:MM:SS DD/MM/YY" (what the API sends).
    split = split_entry(raw)
    if split is not None and split[0]:
        second = second_of(split[1])
        if second is not None:
            return LogEntry(camera_id, split[0], second.at, raw)
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
