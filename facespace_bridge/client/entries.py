"""History entries: `"<Name> @ <HH:MM:SS> <DD/MM/YY>"` parsed into typed values.

The one owner of the entry format: `read_listing` splits the canonical form into name and
stamp, `second_of` reads a stamp into a `Second` (cached: seconds repeat), `parse_entry`
reads any form the API may send, down to a reason for what it cannot, and `rename_listing`
writes a listing back with other names (`--pseudonymize`). The client's typed layer,
`sources/listing.py`'s numbering (the hot path of every backfill and replay), the events'
timestamps and the simulator's tests all go through them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
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


# The canonical form's layout, from the end: "<name> @ HH:MM:SS DD/MM/YY".
STAMP_CHARS = 17
NAME_END = 20
SEPARATOR = " @ "
_MINUTE = re.compile(r"(\d\d):(\d\d):00 (\d\d)/(\d\d)/(\d\d)", re.ASCII)


@dataclass(slots=True)  # (not frozen: one is made per distinct second read, and frozen ones cost twice)
class Second:
    """One second of history as every reader needs it: the datetime, and the RFC 3339 text
    (`YYYY-MM-DDTHH:MM:SSZ`, UTC) that events carry, as text and as bytes. Treat it as
    immutable: it is shared through the cache of `second_of`."""

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


# Stamps seen lately -> their second (None: not a canonical stamp): the one cache of seconds
# that every reader shares. A window holds every camera, cameras share seconds, and a sorted
# listing repeats each one. Cleared when full: 32,768 seconds (about 10 MB) cover the distinct
# seconds of a window of `iter_windows`' default size in all but the sparsest histories.
_SECONDS: dict[str, Second | None] = {}
_SECONDS_MAX = 32_768
# A new stamp is read from its minute's parts (a minute holds up to 60 seconds of a history):
# "HH:MM DD/MM/YY" -> (the minute, its text up to the seconds), or None for an impossible one.
_MINUTES: dict[str, tuple[datetime, str] | None] = {}
_MINUTES_MAX = 4_096
_OFFSETS = {f"{s:02d}": timedelta(seconds=s) for s in range(60)}  # a stamp's seconds -> offset


def second_of(stamp: str) -> Second | None:
    """The second of a canonical stamp `HH:MM:SS DD/MM/YY`; None when it is not one (the
    caller falls back to `parse_entry`, which says why)."""
    second = _SECONDS.get(stamp)
    return _read_second(stamp) if second is None else second


def _read_second(stamp: str) -> Second | None:
    """`second_of` for a stamp not in the cache yet."""
    second: Second | None = None
    offset = _OFFSETS.get(stamp[6:8])
    if offset is not None and len(stamp) == STAMP_CHARS and stamp[5] == ":":
        minute = _minute(stamp[:5] + stamp[8:])
        if minute is not None:
            text = f"{minute[1]}{stamp[6:8]}Z"
            second = Second(minute[0] + offset, text, text.encode())
    if len(_SECONDS) >= _SECONDS_MAX:
        _SECONDS.clear()
    _SECONDS[stamp] = second
    return second


def _minute(key: str) -> tuple[datetime, str] | None:
    """The minute of "HH:MM DD/MM/YY" and its RFC 3339 text up to the seconds; None when impossible."""
    try:
        return _MINUTES[key]
    except KeyError:
        pass
    minute: tuple[datetime, str] | None = None
    match = _MINUTE.fullmatch(f"{key[:5]}:00{key[5:]}")
    if match is not None:
        h, m, d, mo, y = map(int, match.groups())
        try:
            at = datetime(2000 + y, mo, d, h, m, tzinfo=timezone.utc)
        except ValueError:  # 31/02/23, 25:00 ...
            pass
        else:
            minute = (at, f"20{key[12:14]}-{key[9:11]}-{key[6:8]}T{key[:5]}:")
    if len(_MINUTES) >= _MINUTES_MAX:
        _MINUTES.clear()
    _MINUTES[key] = minute
    return minute


def read_listing(raws: list[object]) -> list[tuple[str, Second] | None]:
    """A camera's entries, each as its name and its second when it is in the canonical form
    (a name, a valid stamp); None for anything else, which `parse_entry` reads. The one split
    of the canonical form, in one pass over the list (the hot path of every backfill and
    replay)."""
    seconds = _SECONDS
    return [
        (name, second)
        if type(raw) is str
        and raw[-NAME_END:-STAMP_CHARS] == SEPARATOR
        and (name := raw[:-NAME_END].strip())
        and (second := seconds.get(stamp := raw[-STAMP_CHARS:]) or _read_second(stamp)) is not None
        else None
        for raw in raws
    ]


def parse_entry(camera_id: str, raw: object) -> LogEntry | BadEntry:
    """Parse one history entry; never raises for bad input."""
    if not isinstance(raw, str):
        return BadEntry(camera_id, raw, f"entry is {type(raw).__name__}, not a string")
    # Fast path for the canonical form "<name> @ HH:MM:SS DD/MM/YY" (what the API sends).
    canonical = read_listing([raw])[0]
    if canonical is not None:
        return LogEntry(camera_id, canonical[0], canonical[1].at, raw)
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


# What may follow the last " @ " of an entry whose stamp alone is impossible, and still be kept
# when its name is replaced: digits and the stamp's separators, which cannot spell a name.
_STAMPISH = re.compile(r"[0-9:/ ]+")


def rename_listing(
    reply: dict[str, Any], rename: Callable[[str], str], withhold: Callable[[object], object]
) -> dict[str, Any]:
    """A `/logs` reply (camera id -> entries) with each entry's name replaced by `rename(name)`,
    entry for entry: the shape and the count stay (the checkpoint's positions count entries).

    An entry in any form `parse_entry` reads is written back in the canonical form; one whose
    stamp alone is impossible keeps its stamp (so it is dead-lettered for the same reason);
    anything else may hold a name anywhere and becomes `withhold(value)`, as does a camera's
    value that is not a list.
    """
    out: dict[str, Any] = {}
    seconds = _SECONDS
    for camera, raws in reply.items():
        if not isinstance(raws, list):
            out[camera] = withhold(raws)
            continue
        renamed: list[object] = []
        for raw in raws:
            if (  # the canonical form, as `read_listing` takes it
                type(raw) is str
                and raw[-NAME_END:-STAMP_CHARS] == SEPARATOR
                and (name := raw[:-NAME_END].strip())
                and (seconds.get(stamp := raw[-STAMP_CHARS:]) or _read_second(stamp)) is not None
            ):
                renamed.append(rename(name) + raw[-NAME_END:])
            else:
                renamed.append(_rename_odd(camera, raw, rename, withhold))
        out[camera] = renamed
    return out


def _rename_odd(
    camera: str, raw: object, rename: Callable[[str], str], withhold: Callable[[object], object]
) -> object:
    """`rename_listing` for an entry not in the canonical form."""
    if not isinstance(raw, str):
        return withhold(raw)
    entry = parse_entry(camera, raw)
    if isinstance(entry, LogEntry):
        return format_entry(rename(entry.person), entry.seen_at)
    name, separator, stamp = raw.rpartition(SEPARATOR)
    if separator and name.strip() and _STAMPISH.fullmatch(stamp):
        return f"{rename(name.strip())}{separator}{stamp}"
    return withhold(raw)
