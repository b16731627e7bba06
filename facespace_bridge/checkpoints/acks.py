"""From acknowledgements to the durable checkpoint (docs/delivery.md).

Two positions, as in Kafka Connect: each source keeps its own read cursor and moves it on
every poll; the checkpoint is the low watermark of what every sink has acknowledged,
contiguous per camera. `AckTracker` keeps that watermark: a camera's position only moves
over a contiguous run of acknowledged batches that hold it, and the heartbeat time
(`through`) only moves past a Barrier once every batch before it is acknowledged.

It also keeps the bound on acknowledged-but-unsaved events (`max_unsaved`): a kill repeats
at most that many plus what was in flight, so publishing waits (`room`) once that many
wait for a save. An acknowledged batch counts as unsaved until a saved checkpoint covers it
whole, which may be later than its own save: a camera's position waits for every earlier
batch of that camera, so a batch acknowledged before an earlier one is not yet covered.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from facespace_bridge.checkpoints.base import Backfill, Checkpoint, Position


@dataclass(eq=False, slots=True)
class Ticket:
    """One batch on its way through the sinks."""

    seq: int
    positions: dict[str, tuple[datetime, int]]
    events: int
    done: bool = False
    uncovered: int = 0  # cameras whose position has not moved over this batch yet


class AckTracker:
    """The checkpoint as of the acknowledgements so far; see the module docstring."""

    def __init__(self, checkpoint: Checkpoint, max_unsaved: float = float("inf")) -> None:
        self._positions: dict[str, tuple[datetime, int]] = dict(checkpoint.cameras)
        self._through = checkpoint.through
        self._backfill = checkpoint.backfill
        self._rewound = checkpoint.rewound  # cameras moved back by `checkpoint set` (see Checkpoint)
        self.changed = asyncio.Event()  # set whenever the checkpoint moved (the writer waits on it)
        self.max_unsaved = max_unsaved
        self._seq = 0
        self._per_camera: dict[str, deque[Ticket]] = {}
        self._outstanding: set[int] = set()
        self._heap: list[int] = []  # seqs of tickets handed out, oldest first
        self._barriers: deque[tuple[int, datetime]] = deque()
        self._idle = asyncio.Event()
        self._idle.set()
        self._saved = asyncio.Event()
        self.in_flight = 0  # events handed over, not yet acknowledged by every sink
        self.unsaved = 0  # events acknowledged by every sink and not in a saved checkpoint yet
        self.covered = 0  # of them, those the checkpoint as of now covers (a save makes them durable)

    @property
    def checkpoint(self) -> Checkpoint:
        """The durable resume point as of now (a snapshot)."""
        cameras = {camera: Position._make(position) for camera, position in self._positions.items()}
        return Checkpoint(
            cameras=cameras, through=self._through, backfill=self._backfill, rewound=self._rewound
        )

    @property
    def full(self) -> bool:
        """`max_unsaved` acknowledged events wait for a save."""
        return self.unsaved >= self.max_unsaved

    def issue(self, positions: dict[str, tuple[datetime, int]], events: int) -> Ticket:
        """A ticket for a batch of `events` about to be published, which completes `positions`
        (camera -> position); call `acknowledged(ticket)` once every sink has the batch."""
        self._seq += 1
        ticket = Ticket(self._seq, positions, events, uncovered=len(positions))
        self._outstanding.add(ticket.seq)
        heapq.heappush(self._heap, ticket.seq)
        for camera in positions:
            self._per_camera.setdefault(camera, deque()).append(ticket)
        self.in_flight += ticket.events
        self._idle.clear()
        return ticket

    def barrier(self, through: datetime) -> None:
        """Everything issued so far is before `through`."""
        self._barriers.append((self._seq, through))
        self._settle_barriers()

    def acknowledged(self, ticket: Ticket) -> None:
        """Every sink acknowledged the ticket's batch."""
        ticket.done = True
        self.in_flight -= ticket.events
        self.unsaved += ticket.events
        self._outstanding.discard(ticket.seq)
        if not self._outstanding:
            self._idle.set()
        moved = self.full  # the writer must come now, even if no position moved (dead letters)
        if not ticket.positions:
            self.covered += ticket.events
        for camera in ticket.positions:
            queue = self._per_camera[camera]
            position = None
            while queue and queue[0].done:
                passed = queue.popleft()
                position = passed.positions[camera]
                passed.uncovered -= 1
                if not passed.uncovered:
                    self.covered += passed.events
            current = self._positions.get(camera)
            if position is not None and (current is None or position > current):
                self._positions[camera] = position
                moved = True
        if moved:
            self.changed.set()
        self._settle_barriers()

    def set_backfill(self, backfill: Backfill | None, through: datetime | None = None) -> None:
        self._backfill = backfill
        if through is not None:  # the backfill read every camera, rewound ones too, up to there
            self._through = through
            self._rewound = frozenset()
        self.changed.set()

    def saved(self, covered: int) -> None:
        """A checkpoint taken when it covered `covered` unsaved events (`self.covered`) is
        durable now."""
        self.unsaved -= covered
        self.covered -= covered
        self._saved.set()

    async def room(self) -> None:
        """Wait while `max_unsaved` acknowledged events wait for a save."""
        while self.full:
            self._saved.clear()
            await self._saved.wait()

    async def idle(self) -> None:
        """Until every batch issued so far is acknowledged."""
        await self._idle.wait()

    def _settle_barriers(self) -> None:
        while self._heap and self._heap[0] not in self._outstanding:
            heapq.heappop(self._heap)
        oldest = self._heap[0] if self._heap else None
        moved = None
        while self._barriers and (oldest is None or self._barriers[0][0] < oldest):
            moved = self._barriers.popleft()[1]
        # A rewound camera was read from its own position up to `moved` too: once that reaches
        # the heartbeat, the heartbeat holds for it again.
        if moved is not None and (
            self._through is None or moved > self._through or (self._rewound and moved >= self._through)
        ):
            self._through = moved
            self._rewound = frozenset()
            self.changed.set()
