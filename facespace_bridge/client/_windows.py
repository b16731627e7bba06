"""Streaming a history range as windows: the planner (pure arithmetic) and the walk.

A range is read as consecutive half-open windows whose inner boundaries are whole
minutes (the API's query resolution), so a second is never split between two windows.
Each window's span adapts to the density just seen: aim at `target` entries, shrink at
once when a window came back larger, grow at most `GROWTH`× per step when sparse
(`WindowPlanner`). `walk_windows` asks for them one after another through a fetch function
(the client's `/logs` request), so this module does no I/O of its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from facespace_bridge.client._timefmt import MINUTE, WIRE_MAX, ceil_minute, floor_minute
from facespace_bridge.client.entries import BadEntry, LogEntry, parse_entry

CAP_FACTOR = 2  # a reply of more than about this × target entries is refused (bounds a window's memory)
GROWTH = 4  # how much faster the span may grow per window when sparse or empty
BYTES_PER_ENTRY_GUESS = 48  # JSON bytes of one entry before any were seen ("Alice @ ..." + quotes)


class ReplyTooLarge(Exception):
    """A reply exceeded the byte cap of a window; `body_bytes` is its size when announced."""

    def __init__(self, body_bytes: int | None) -> None:
        super().__init__(f"reply larger than the window's cap ({body_bytes or 'unknown'} bytes)")
        self.body_bytes = body_bytes


@dataclass(frozen=True, slots=True)
class Window:
    """One slice `[start, end)` of a range: the API's reply for it (camera id -> raw entries, in
    the API's order; it may hold entries outside the slice, since the wire asks whole minutes).
    `end` None: the open range, everything the API had from `start` on. Entries that do not
    parse are kept, as `BadEntry`, in the window whose reply held them."""

    start: datetime
    end: datetime | None
    reply: dict[str, Any] = field(repr=False)

    @property
    def entries(self) -> list[LogEntry | BadEntry]:
        """The window's entries, one typed object each (with its raw text), per camera in the
        API's order."""
        return entries_in(self.reply, self.start, self.end)


def entries_in(
    reply: dict[str, Any], start: datetime | None, end: datetime | None
) -> list[LogEntry | BadEntry]:
    """A `/logs` reply as typed entries in `[start, end)`, per camera in the API's order; bad
    entries are always kept (their time is unknown, and they must reach the caller)."""
    out: list[LogEntry | BadEntry] = []
    for camera_id, raws in reply.items():
        if not isinstance(raws, list):
            out.append(BadEntry(camera_id, raws, f"camera's entries are a {type(raws).__name__}, not a list"))
            continue
        for raw in raws:
            entry = parse_entry(camera_id, raw)
            if type(entry) is BadEntry or (
                (start is None or entry.seen_at >= start) and (end is None or entry.seen_at < end)
            ):
                out.append(entry)
    return out


def count_entries(reply: dict[str, Any]) -> int:
    """How many entries a `/logs` reply holds (a camera's value that is not a list counts once)."""
    return sum(len(v) if isinstance(v, list) else 1 for v in reply.values())


def _whole_minutes(span: timedelta) -> timedelta:
    return max(MINUTE, timedelta(minutes=span // MINUTE))


@dataclass(slots=True)
class WindowPlanner:
    """Chooses the next window's span from what the previous windows returned."""

    target: int
    span: timedelta = timedelta(minutes=10)
    max_span: timedelta = timedelta(days=366 * 100)
    bytes_per_entry: float = BYTES_PER_ENTRY_GUESS
    oversized: int = 0  # replies refused for size (asked again with a smaller span)
    refused_until: datetime | None = None  # end of the last refused span, while still ahead

    def __post_init__(self) -> None:
        if self.target < 1:
            raise ValueError("target must be at least 1 entry")
        self.span = _whole_minutes(self.span)

    @property
    def byte_cap(self) -> int:
        """A reply bigger than this is refused and asked again smaller (if the span allows)."""
        return int(CAP_FACTOR * self.target * self.bytes_per_entry) + 4096

    def observed(
        self, span: timedelta, entries: int, body_bytes: int, window_end: datetime | None = None
    ) -> None:
        """A window of `span` (ending at `window_end`) returned `entries` entries in `body_bytes` bytes."""
        if entries:
            # A running estimate of the reply size per entry, for the byte cap.
            self.bytes_per_entry = 0.5 * self.bytes_per_entry + 0.5 * (body_bytes / entries)
        limit = min(self.max_span, span * GROWTH)
        if entries == 0:
            self.span = limit
        else:
            self.span = _whole_minutes(min(limit, span * (self.target / entries)))
        if self.refused_until is not None:
            if window_end is None or window_end >= self.refused_until:
                self.refused_until = None
            elif entries == 0:
                # All that the refused reply held lies ahead, before refused_until: bisect towards
                # it instead of growing back into the same refusal.
                self.span = min(self.span, _whole_minutes((self.refused_until - window_end) / 2))

    def refused(self, span: timedelta, body_bytes: int | None, window_start: datetime | None = None) -> None:
        """A reply of `span` (from `window_start`) was larger than the byte cap (`body_bytes` if the
        size was announced)."""
        self.oversized += 1
        if window_start is not None:
            self.refused_until = window_start + span
        if body_bytes:
            estimate = body_bytes / self.bytes_per_entry
            self.span = _whole_minutes(min(span / 2, span * (self.target / estimate)))
        else:
            self.span = _whole_minutes(span / 8)


# (start, end, camera id, max_bytes=) -> (the `/logs` reply for the minutes enclosing
# [start, end), whether it is exact, its size in bytes); raises ReplyTooLarge past max_bytes.
FetchLogs = Callable[..., Awaitable[tuple[dict[str, Any], bool, int]]]


async def walk_windows(
    fetch: FetchLogs,
    start: datetime,
    end: datetime | None,
    camera_id: str | None,
    target_entries: int,
    log: logging.Logger,
) -> AsyncIterator[Window]:
    """`[start, end)` (within the wire's range) as consecutive windows, one in memory at a
    time, as `AsyncLogsAPI.iter_windows` describes: planned by a `WindowPlanner`, a reply
    over its byte cap asked again smaller; `end=None` asks the open range first."""
    planner = WindowPlanner(target_entries)
    cursor = start
    ask_open = end is None  # end=None: try the open range first (a tail's poll is one request)
    remainder: int | None = None  # bytes the open range had when it was last refused
    since_refusal = 0  # bytes read since then
    windows_since = 0
    patience = 4  # windows between open-range asks when its size is unknown
    while end is None or cursor < end:
        if ask_open:
            try:
                data, _, size = await fetch(cursor, None, camera_id, max_bytes=planner.byte_cap)
            except ReplyTooLarge as refused:
                ask_open, remainder, since_refusal, windows_since = False, refused.body_bytes, 0, 0
                patience *= 2
                log.debug(
                    "open range from %s refused (%s bytes): walking windows", cursor, refused.body_bytes
                )
                continue
            yield Window(cursor, None, data)
            return
        wire_start = floor_minute(cursor)
        window_end = min(wire_start + planner.span, WIRE_MAX)
        if end is not None:
            window_end = min(window_end, end)
        asked = ceil_minute(window_end) - wire_start
        try:
            data, _, size = await fetch(
                cursor, window_end, camera_id, max_bytes=planner.byte_cap if asked > MINUTE else None
            )
        except ReplyTooLarge as refused:
            planner.refused(asked, refused.body_bytes, wire_start)
            continue
        planner.observed(asked, count_entries(data), size, wire_start + asked)
        window = Window(cursor, window_end, data)
        del data
        yield window
        del window
        cursor = window_end
        if cursor >= WIRE_MAX:
            return
        if end is None:
            since_refusal += size
            windows_since += 1
            if remainder is not None:
                ask_open = remainder - since_refusal <= planner.byte_cap // 2
            else:
                ask_open = windows_since >= patience
