"""What sources hand the bridge: events, each tied to the camera position it completes."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import TypeAlias

from facespace_bridge.checkpoints import Position
from facespace_bridge.events import Event

# One event to publish, and the camera position that is done once it is acked (None for
# events that are not checkpointed, such as realtime presence): `(event, position)`. A plain
# tuple, as is the position `(seen_at, count)` on this path: one of each is made per
# sighting, and plain tuples cost a fraction of named ones (they compare the same).
Item: TypeAlias = "tuple[Event, Position | tuple[datetime, int] | None]"


@dataclass(frozen=True, slots=True)
class Barrier:
    """Marks that everything before `through` has been handed over (all cameras): once every item
    before the barrier is acked, the checkpoint's heartbeat time may move to `through`."""

    through: datetime


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, but wake at once when `stop` is set: pollers must stop within the shutdown budget."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
