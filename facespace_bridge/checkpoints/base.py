"""The durable resume point of the logs source and the stores that keep it (docs/delivery.md).

A camera's position is (seen_at, count): the timestamp of the last published
entry and how many of that camera's entries at exactly that second were already
published. A bare timestamp is not enough: entries share seconds, and resuming
at a bare timestamp would either repeat or lose the ones that share it.

A camera resumes at its own position or at the heartbeat `through`, whichever is later,
unless an operator set it back behind the heartbeat (`facespace-bridge checkpoint set`):
such a camera is `rewound` and resumes at its own position until the bridge has read
every camera again up to the heartbeat.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
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
        return {"seen_at": rfc3339(self.seen_at), "count": self.count}

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
    # Every camera is complete before `through` (the heartbeat), even one with no entries yet,
    # except the `rewound` ones.
    through: datetime | None = None
    backfill: Backfill | None = None
    # Cameras set back behind `through` (`checkpoint set`): their own position is their resume
    # point. The bridge empties the set once a heartbeat at or past `through` is reached, which
    # means it has read every camera, these too, up to there.
    rewound: frozenset[str] = frozenset()
    # When the store wrote it (read back from the stored bytes; `to_bytes` writes the time of
    # writing), and what wrote it: the bridge, or a command such as "checkpoint set".
    written_at: datetime | None = field(default=None, compare=False)
    written_by: str = field(default="bridge", compare=False)

    def position(self, camera_id: str) -> Position | None:
        """The resume point of one camera: its own position or the heartbeat, whichever is later
        (a rewound camera: its own position)."""
        own = self.cameras.get(camera_id)
        if own is not None and camera_id in self.rewound:
            return own
        floor = Position(self.through, 0) if self.through else None
        if own is None or (floor is not None and floor > own):
            return floor
        return own

    def earliest(self) -> datetime | None:
        """The earliest resume time over all cameras: where a restarted reader must ask from.

        A camera not seen yet resumes at `through`, so with a heartbeat that is the answer,
        unless a rewound camera resumes before it.
        """
        if self.through is not None:
            behind = [self.cameras[c].seen_at for c in self.rewound if c in self.cameras]
            return min([self.through, *behind])
        return min((p.seen_at for p in self.cameras.values()), default=None)

    def moved(self, to: datetime, camera_id: str | None = None) -> Checkpoint:
        """This checkpoint with the resume point moved to `to`: the next start publishes every
        entry at or after `to` (of `camera_id` only, or of every camera) and none before it.

        One camera: its position becomes (`to`, 0), rewound when that is behind the heartbeat;
        the other cameras keep their resume points. Every camera: the heartbeat becomes `to`
        and the cameras' own positions go. A backfill not finished by then is finished (its
        range is all before `to`); the backfill record stays, so a camera can be reset to its start.
        """
        if camera_id is not None:
            cameras = {**self.cameras, camera_id: Position(to, 0)}
            behind = self.through is not None and to < self.through
            rewound = self.rewound | {camera_id} if behind else self.rewound - {camera_id}
            return replace(self, cameras=cameras, rewound=rewound)
        backfill = self.backfill
        if backfill is not None and not backfill.complete and to >= backfill.t0:
            backfill = replace(backfill, complete=True)
        return replace(self, cameras={}, through=to, backfill=backfill, rewound=frozenset())

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {
            "version": STATE_VERSION,
            "cameras": {cam: pos.to_json() for cam, pos in sorted(self.cameras.items())},
            "through": rfc3339(self.through) if self.through else None,
            "backfill": None,
            "rewound": sorted(self.rewound),
            "written_at": rfc3339(datetime.now(timezone.utc)),
            "written_by": self.written_by,
        }
        if self.backfill is not None:
            data["backfill"] = {
                "start": rfc3339(self.backfill.start),
                "t0": rfc3339(self.backfill.t0),
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
            # Absent from checkpoints written before `checkpoint set` existed.
            rewound=frozenset(data.get("rewound") or ()),
            written_at=_parse_iso(data["written_at"]) if data.get("written_at") else None,
            written_by=str(data.get("written_by") or "bridge"),
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


class CheckpointInUse(CheckpointError):
    """Another process has the checkpoint open (a bridge running as the same instance)."""


class CheckpointStore(ABC):
    """Where checkpoints live. `save` returns once the checkpoint is durable."""

    name: str = "store"
    # True when `open()` keeps every other process out of this checkpoint until `close()`
    # (it raises CheckpointInUse while another one has it open).
    exclusive: bool = False

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect / create what is needed."""

    @abstractmethod
    async def load(self) -> Checkpoint | None:
        """The last saved checkpoint, or None when there is none yet."""

    @abstractmethod
    async def save(self, checkpoint: Checkpoint) -> None:
        """Make `checkpoint` durable (atomic: a crash leaves the old or the new one)."""

    def holder(self) -> str | None:
        """Who has this checkpoint open (say "pid 1234"), for an `exclusive` store; None when
        nobody does, and always for a store that cannot tell."""
        return None

    async def forget(self) -> None:
        """Remove the checkpoint, so that the next `load` finds none (the next start is a fresh one)."""
        raise CheckpointError(f"the checkpoint in {self.describe()} cannot be removed")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    def describe(self) -> str:
        return self.name


def rfc3339(dt: datetime) -> str:
    """The checkpoint's time format: RFC 3339 in UTC with a Z (`2023-10-24T12:00:00Z`)."""
    return dt.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
