"""What sources hand the bridge: batches of events with the camera positions they complete,
and barriers that move the checkpoint's heartbeat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from facespace_bridge.events import Event

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The bridge's clock (tests hand the sources and the bridge a frozen one instead)."""
    return datetime.now(timezone.utc)


@dataclass(slots=True)
class Batch:
    """Events handed to the sinks together, and the camera positions that are done once every
    sink has acknowledged all of them (none for presence, which is not checkpointed)."""

    events: list[Event] = field(default_factory=list)
    # camera -> (seen_at, n): a plain tuple, made once per batch and camera (compares as a Position)
    positions: dict[str, tuple[datetime, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Barrier:
    """Marks that everything before `through` has been handed over (all cameras): once every
    batch before the barrier is acked, the checkpoint's heartbeat time may move to `through`."""

    through: datetime


@dataclass
class PollHealth:
    """How a source's polls have gone: /status shows it, and the bridge's state derives from it."""

    state: str = "starting"  # polling | stopped (the API's stop reply) | failing
    last_success: float | None = None  # time.time() of the last answered poll
    last_error: tuple[float, str] | None = None  # (time.time(), why) of the last failed poll
    stop_reason: str | None = None  # the API's stop reply, while it is in force

    def answered(self, stop_reason: str | None = None) -> None:
        self.state = "stopped" if stop_reason else "polling"
        self.stop_reason = stop_reason
        self.last_success = time.time()

    def failed(self, error: BaseException | str) -> None:
        self.state = "failing"
        self.last_error = (time.time(), str(error))


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when `stop` is set: pollers must stop within the shutdown budget."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
