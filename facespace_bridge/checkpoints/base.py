"""The durable resume point of the logs source, and the stores that keep it (DESIGN §4).

A camera's position is (seen_at, count): the timestamp of the last published
entry and how many of that camera's entries at exactly that second were already
published. A bare timestamp is not enough: entries share seconds, and resuming
at a bare timestamp would either repeat or lose the ones that share it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol

import orjson

STATE_VERSION = 1


class Position(NamedTuple):
    """Where a camera's stream stands: everything up to the `count`-th entry at `seen_at` is done.

    A tuple, so that comparing two positions (once per entry on the hot path) is a plain
    tuple comparison: by time, then by count.
    """

    seen_at: datetime
    count: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"seen_at": _iso(self.seen_at), "count": self.count}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Position:
        return cls(_parse_iso(data["seen_at"]), int(data["count"]))


@dataclass(frozen=True, slots=True)
class Backfill:
    """A backfill in progress or done: history from `start` up to `t0`, fixed before it began."""

    start: datetime
    t0: datetime
    complete: bool = False


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything a restart needs. Immutable: the bridge swaps in a new one as acks arrive."""

    cameras: dict[str, Position] = field(default_factory=dict)
    # Every camera is complete before `through` (the heartbeat), even one with no entries yet.
    through: datetime | None = None
    backfill: Backfill | None = None

    def position(self, camera_id: str) -> Position | None:
        """The resume point of one camera: its own position or the heartbeat, whichever is later."""
        own = self.cameras.get(camera_id)
        floor = Position(self.through, 0) if self.through else None
        if own is None or (floor is not None and floor > own):
            return floor
        return own

    def earliest(self) -> datetime | None:
        """The earliest resume time over all cameras: where a restarted reader must ask from.

        A camera not seen yet resumes at `through`, so with a heartbeat that is the answer.
        """
        if self.through is not None:
            return self.through
        return min((p.seen_at for p in self.cameras.values()), default=None)

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "cameras": {cam: pos.to_json() for cam, pos in sorted(self.cameras.items())},
            "through": _iso(self.through) if self.through else None,
            "backfill": None,
            "written_at": _iso(datetime.now(timezone.utc)),
        }
        if self.backfill is not None:
            data["backfill"] = {
                "start": _iso(self.backfill.start),
                "t0": _iso(self.backfill.t0),
                "complete": self.backfill.complete,
            }
        return orjson.dumps(data)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Checkpoint:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise CheckpointError(f"unsupported checkpoint format (version {data.get('version')!r})")
        backfill = data.get("backfill")
        return cls(
            cameras={cam: Position.from_json(pos) for cam, pos in data.get("cameras", {}).items()},
            through=_parse_iso(data["through"]) if data.get("through") else None,
            backfill=Backfill(
                _parse_iso(backfill["start"]), _parse_iso(backfill["t0"]), bool(backfill["complete"])
            )
            if backfill
            else None,
        )


class Transactions(Protocol):
    """What exactly-once needs of a sink (the Kafka sink with --exactly-once): its transactions,
    which the checkpoint record joins."""

    def transaction_boundary(self) -> AbstractAsyncContextManager[None]:
        """Pause publishing, flush; on leaving the block, commit what was published with what
        the block wrote."""
        ...

    async def write_in_transaction(self, topic: str, key: bytes, value: bytes | None) -> None:
        """Write one record into the open transaction and wait until the broker has it."""
        ...


class CheckpointError(Exception):
    """The checkpoint cannot be read or written; one clear line for the user."""


class CheckpointStore(ABC):
    """Where checkpoints live. `save` returns once the checkpoint is durable."""

    name: str = "store"

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create what is needed."""

    @abstractmethod
    async def load(self) -> Checkpoint | None:
        """The last saved checkpoint, or None when there is none yet."""

    @abstractmethod
    async def save(self, checkpoint: Checkpoint) -> None:
        """Make `checkpoint` durable (atomic: a crash leaves the old or the new one)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def describe(self) -> str:
        return self.name


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
