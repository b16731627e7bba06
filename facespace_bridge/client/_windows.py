"""Window planning for streaming a history range: pure arithmetic, no I/O.

A range is read as consecutive half-open windows whose inner boundaries are whole
minutes (the API's query resolution), so a second is never split between two windows.
Each window's span adapts to the density just seen: aim at `target` entries, shrink at
once when a window came back larger, grow at most `GROWTH`× per step when sparse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from facespace_bridge.client._timefmt import MINUTE
from facespace_bridge.client.entries import BadEntry, LogEntry

GROWTH = 4  # how much faster the span may grow per window when sparse or empty
BYTES_PER_ENTRY_GUESS = 48  # JSON bytes of one entry before any were seen ("Alice @ ..." + quotes)


@dataclass(frozen=True, slots=True)
class Window:
    """One slice `[start, end)` of a range and its entries, per camera in the API's order.
    Entries that do not parse are included as `BadEntry` in the window that returned them."""

    start: datetime
    end: datetime
    entries: list[LogEntry | BadEntry] = field(repr=False)


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

    def __post_init__(self) -> None:
        if self.target < 1:
            raise ValueError("target must be at least 1 entry")
        self.span = _whole_minutes(self.span)

    @property
    def byte_cap(self) -> int:
        """A reply bigger than this is refused and asked again smaller (if the span allows)."""
        return int(4 * self.target * self.bytes_per_entry) + 4096

    def observed(self, span: timedelta, entries: int, body_bytes: int) -> None:
        """A window of `span` returned `entries` entries in `body_bytes` bytes of JSON."""
        if entries:
            # A running estimate of the reply size per entry, for the byte cap.
            self.bytes_per_entry = 0.5 * self.bytes_per_entry + 0.5 * (body_bytes / entries)
        limit = min(self.max_span, span * GROWTH)
        if entries == 0:
            self.span = limit
        else:
            self.span = _whole_minutes(min(limit, span * (self.target / entries)))

    def refused(self, span: timedelta, body_bytes: int | None) -> None:
        """A reply of `span` was larger than the byte cap (`body_bytes` if the size was known)."""
        self.oversized += 1
        if body_bytes:
            estimate = body_bytes / self.bytes_per_entry
            self.span = _whole_minutes(min(span / 2, span * (self.target / estimate)))
        else:
            self.span = _whole_minutes(span / 8)
