"""Writing the tracker's checkpoint behind the stream (docs/delivery.md).

One task saves the latest checkpoint: `save_delay` after it changes (more acknowledgements
join the write: in a backfill one write per `max_unsaved` events, not one per batch), at
once when `max_unsaved` events wait for it, and at least every `heartbeat` seconds, so the
checkpoint's age shows the bridge is alive.

With a transactional sink (Kafka, --exactly-once) each save is a commit instead: the sink
pauses publishers and flushes, the checkpoint of everything acknowledged is written into the
same transaction, and both commit together; then the next commit waits `commit_interval`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from facespace_bridge.checkpoints.acks import AckTracker
from facespace_bridge.checkpoints.base import Checkpoint, CheckpointError, CheckpointStore, Transactions

log = logging.getLogger(__name__)


class CheckpointWriter:
    def __init__(
        self,
        store: CheckpointStore,
        tracker: AckTracker,
        *,
        transactional: Transactions | None = None,
        heartbeat: float = 10.0,
        save_delay: float = 0.2,
        commit_interval: float = 0.1,
        on_saved: Callable[[Checkpoint], None] = lambda _: None,
    ) -> None:
        self.store = store
        self.tracker = tracker
        self.transactional = transactional
        self.heartbeat = heartbeat
        self.save_delay = save_delay
        self.commit_interval = commit_interval
        self.on_saved = on_saved
        self._lock = asyncio.Lock()  # one write at a time: the writer, backfill completion, shutdown

    async def run(self, stop: asyncio.Event) -> None:
        """Save as the module docstring says, until `stop` is set."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.tracker.changed.wait(), timeout=self.heartbeat)
            if self.transactional is None and not self.tracker.full:
                await self._gather_more(stop)
            await self.save()
            if self.transactional is not None:  # a commit pauses publishing: not after every batch
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.commit_interval)

    async def _gather_more(self, stop: asyncio.Event) -> None:
        """Wait up to `save_delay` for more acknowledgements, less once `max_unsaved` wait."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.save_delay
        while not self.tracker.full and not stop.is_set() and loop.time() < deadline:
            self.tracker.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.tracker.changed.wait(), deadline - loop.time())

    async def save(self) -> None:
        """Make the tracker's checkpoint durable now."""
        async with self._lock:
            self.tracker.changed.clear()
            if self.transactional is not None:
                # Publishers wait and everything in flight lands, so the checkpoint covers exactly
                # the events of this transaction; both commit together. Errors end the run.
                async with self.transactional.transaction_boundary():
                    await self.tracker.idle()
                    covered = self.tracker.covered
                    checkpoint = self.tracker.checkpoint
                    await self.store.save(checkpoint)
            else:
                covered = self.tracker.covered  # what this snapshot makes durable
                checkpoint = self.tracker.checkpoint
                try:
                    await self.store.save(checkpoint)
                except CheckpointError as exc:
                    log.error("%s", exc)
                    return
            self.tracker.saved(covered)
            self.on_saved(checkpoint)

    async def final_save(self, timeout: float) -> None:
        """The save at shutdown, within the shutdown budget: a broker that went away must not
        keep the process alive (a Kafka commit waits for its coordinator without end)."""
        try:
            await asyncio.wait_for(self.save(), timeout)
        except asyncio.TimeoutError:
            raise CheckpointError(
                f"the checkpoint could not be saved at shutdown within {timeout:g} s "
                f"({self.store.describe()}); a restart resumes from the last one saved"
            ) from None
