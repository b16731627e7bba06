"""Pushing the page's changes to every open page, at a cost that does not depend on the
event rate nor much on the number of pages.

One `Broadcaster` task wakes every `interval` seconds: it reads the bridge's status once,
asks the page state for what changed (`PageState.update`) and encodes that once; every open
page (`Subscriber`) gets the same bytes. Between two wakes any number of acknowledged
sightings coalesce into one message. A page that reads slower than the messages come does
not make the bridge hold more: its queue holds at most `backlog` messages, and when that
overflows the queue is dropped and the page gets one fresh snapshot instead (everything it
shows, `PageState.snapshot`). With nothing to say for `keepalive` seconds a page still gets
an empty update, by which it knows the bridge is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from facespace_bridge.web.state import PageState

log = logging.getLogger(__name__)

Status = Callable[[], dict[str, Any]]


class Subscriber:
    """One open page's queue of encoded messages; a snapshot first, and after an overflow."""

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.resync = True  # the next message is a snapshot
        self.resyncs = 0  # overflows so far
        self._queue: deque[bytes] = deque()
        self._ready = asyncio.Event()
        self._ready.set()

    def put(self, message: bytes) -> None:
        if self.resync:
            return  # the snapshot it gets next holds this too
        if len(self._queue) >= self.backlog:
            self._queue.clear()
            self.resync = True
            self.resyncs += 1
        else:
            self._queue.append(message)
        self._ready.set()

    async def next(self, snapshot: Callable[[], bytes]) -> bytes:
        """The next message to send: queued updates in order, or a snapshot made now."""
        while True:
            if self.resync:
                self.resync = False
                self._queue.clear()
                return snapshot()
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    @property
    def queued(self) -> int:
        return len(self._queue)


class Broadcaster:
    """The push loop of one page state; see the module docstring."""

    def __init__(
        self,
        state: PageState,
        status: Status,
        *,
        interval: float = 0.5,
        keepalive: float = 10.0,
        backlog: int = 20,
    ) -> None:
        self.state = state
        self.status = status
        self.interval = interval
        self.keepalive = keepalive
        self.backlog = backlog
        self.subscribers: set[Subscriber] = set()
        self._quiet = 0.0  # seconds since the last message went out
        self._task: asyncio.Task[None] | None = None

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber(self.backlog)
        self.subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def snapshot(self) -> bytes:
        return orjson.dumps(self.state.snapshot(self.status()))

    def push(self) -> None:
        """One wake: sample, and send what changed to every open page."""
        status = self.status()
        self.state.tick(status)
        if not self.subscribers:
            return
        message = self.state.update(status)
        self._quiet += self.interval
        if len(message) == 1 and self._quiet < self.keepalive:
            return  # nothing changed, and a page heard from the bridge lately
        self._quiet = 0.0
        encoded = orjson.dumps(message)
        for subscriber in self.subscribers:
            subscriber.put(encoded)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="web-page-push")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.push()
            except Exception as exc:  # the page must never take the bridge down
                # (the type only: an error's text may hold a name, which never goes to the log)
                log.error("web page: could not prepare an update (%s)", type(exc).__name__)
                log.debug("web page update failed", exc_info=True)
