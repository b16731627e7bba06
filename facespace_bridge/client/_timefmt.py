"""Times: what users type, what the API's wire format can say, and the bounds in between.

Users give `HH:MM:SS DD/MM/YY`, `HH:MM DD/MM/YY`, `DD/MM/YY` (always day first), ISO 8601
or `datetime` objects. The wire format has minute resolution and a two-digit year, so a
query asks for the enclosing minutes and the client filters the seconds itself.
Everything here works with half-open ranges `[start, end)` of aware UTC datetimes.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from facespace_bridge.client.errors import DateParseError, InvalidUsageError

ACCEPTED_FORMATS = "'HH:MM:SS DD/MM/YY', 'HH:MM DD/MM/YY', 'DD/MM/YY' (day first) or ISO 8601"

SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
DAY = timedelta(days=1)

# The entry and query formats carry a two-digit year: nothing outside this span can exist.
WIRE_MIN = datetime(2000, 1, 1, tzinfo=timezone.utc)
WIRE_MAX = datetime(2100, 1, 1, tzinfo=timezone.utc)

_DAY_FIRST = re.compile(
    r"(?:(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?\s+)?"
    r"(?P<d>\d{1,2})/(?P<mo>\d{1,2})/(?P<y>\d{2}|\d{4})",
    re.ASCII,
)
_ISO = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:[T ](?P<h>\d{2})(?::(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,6}))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?)?",
    re.ASCII | re.IGNORECASE,
)


def _utc(dt: datetime) -> datetime:
    """Naive means UTC (the API's only zone); aware values are converted."""
    if dt.tzinfo is None:
        return dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


def _offset(tz: str) -> timezone:
    if tz.upper() == "Z":
        return timezone.utc
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _parse_text(text: str) -> tuple[datetime, timedelta]:
    """(instant, resolution) of a user's time string."""
    stripped = text.strip()
    match = _DAY_FIRST.fullmatch(stripped)
    try:
        if match:
            g = match.groupdict()
            year = int(g["y"]) + (2000 if len(g["y"]) == 2 else 0)
            day = date(year, int(g["mo"]), int(g["d"]))
            if g["h"] is None:
                return datetime.combine(day, time(), timezone.utc), DAY
            moment = time(int(g["h"]), int(g["mi"]), int(g["s"] or 0))
            return datetime.combine(day, moment, timezone.utc), SECOND if g["s"] else MINUTE
        match = _ISO.fullmatch(stripped)
        if match:
            g = match.groupdict()
            day = date(int(g["y"]), int(g["mo"]), int(g["d"]))
            if g["h"] is None:
                return datetime.combine(day, time(), timezone.utc), DAY
            micro = int((g["f"] or "0").ljust(6, "0"))
            moment = time(int(g["h"]), int(g["mi"] or 0), int(g["s"] or 0), micro)
            zone = _offset(g["tz"]) if g["tz"] else timezone.utc
            resolution = SECOND if g["s"] else MINUTE if g["mi"] else timedelta(hours=1)
            return _utc(datetime.combine(day, moment, zone)), resolution
    except ValueError as exc:  # 31/02/23, 25:00 ...
        raise DateParseError(f"invalid date {text!r} ({exc}); accepted: {ACCEPTED_FORMATS}") from None
    raise DateParseError(f"cannot read {text!r} as a time; accepted: {ACCEPTED_FORMATS}")


def parse_user_time(value: str | datetime | date, *, end: bool = False) -> datetime:
    """A user's start or end time as an aware UTC datetime.

    With `end=True` the result is the EXCLUSIVE upper bound at the resolution given, so an
    inclusive end becomes a half-open range: `24/10/23` → 25/10/23 00:00, `10:15 24/10/23`
    → 10:16, `10:15:07 24/10/23` → 10:15:08; a `datetime` is an instant at one-second
    resolution (entries have whole seconds), so its second is included.
    Raises DateParseError for unreadable strings, InvalidUsageError for other types.
    """
    if isinstance(value, datetime):
        instant, resolution = _utc(value), SECOND
    elif isinstance(value, date):
        instant, resolution = datetime.combine(value, time(), timezone.utc), DAY
    elif isinstance(value, str):
        instant, resolution = _parse_text(value)
    else:
        what = "end_time" if end else "start_time"
        raise InvalidUsageError(f"{what} must be a string, datetime or date, not {type(value).__name__}")
    if not end:
        return instant
    # Floor to the resolution (sub-second parts of a datetime), then step past it.
    floored = instant - timedelta(microseconds=instant.microsecond)
    if resolution >= MINUTE:
        floored = floored.replace(second=0)
    return floored + resolution


def floor_minute(dt: datetime) -> datetime:
    return dt.replace(second=0, microsecond=0)


def ceil_minute(dt: datetime) -> datetime:
    floored = floor_minute(dt)
    return floored if floored == dt else floored + MINUTE


def wire_time(dt: datetime) -> str:
    """The original client's query format: minute resolution, or a bare date at midnight."""
    if dt.hour == dt.minute == 0:
        return f"{dt:%d/%m/%y}"
    return f"{dt:%H:%M %d/%m/%y}"


def wire_params(start: datetime | None, end: datetime | None) -> tuple[dict[str, str], bool]:
    """Query parameters asking for the minutes that enclose `[start, end)`.

    The API's bounds are inclusive at the resolution sent: a date-only end is that whole
    day, an `HH:MM` end that whole minute. Returns the parameters and whether they cover
    exactly `[start, end)` (when not, the caller filters the reply).
    """
    params: dict[str, str] = {}
    exact = True
    if start is not None and start > WIRE_MIN:
        wire_start = floor_minute(start)
        exact = wire_start == start
        params["start_time"] = wire_time(wire_start)
    if end is not None and end < WIRE_MAX:
        wire_end = ceil_minute(end)  # exclusive
        exact = exact and wire_end == end
        if wire_end.hour == wire_end.minute == 0:
            params["end_time"] = f"{wire_end - DAY:%d/%m/%y}"  # that whole day
        else:
            params["end_time"] = f"{wire_end - MINUTE:%H:%M %d/%m/%y}"  # that whole minute
    return params, exact
