"""What sources hand the bridge: batches of events with the camera positions they complete,
and barriers that move the checkpoint's heartbeat."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from facespace_bridge.events import Event


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


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when `stop` is set: pollers must stop within the shutdown budget."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
