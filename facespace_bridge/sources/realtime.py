"""The realtime source: polls `/recognition` and publishes a camera's presence when it changes.

Recognition flickers: a person in view is missed in some replies. A person therefore
counts as present from the first reply that names them until `presence_timeout`
seconds after the last one, so one missed reply neither ends nor restarts a presence.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

from facespace_bridge.backoff import Backoff
from facespace_bridge.client import APIKeyError, AsyncLogsAPI, HTTPRequestError, StopLogsSignal
from facespace_bridge.events import presence_event
from facespace_bridge.privacy.filters import EntryFilter
from facespace_bridge.sources.base import Batch, PollHealth, sleep_or_stop

log = logging.getLogger(__name__)


class PresenceTracker:
    """Debounced presence per camera, fed with recognition snapshots."""

    def __init__(self, presence_timeout: float) -> None:
        self.presence_timeout = presence_timeout
        self._last_seen: dict[str, dict[str, float]] = {}  # camera -> person -> monotonic time
        self.present: dict[str, frozenset[str]] = {}  # what was last published per camera

    def update(
        self, snapshot: dict[str, list[str]], now: float
    ) -> list[tuple[str, frozenset, frozenset, frozenset]]:
        """Feed one snapshot; returns (camera, people, arrived, departed) for every camera that changed,
        and for every camera seen for the first time."""
        for camera, names in snapshot.items():
            seen = self._last_seen.setdefault(camera, {})
            for name in names:
                seen[name] = now
        changes = []
        for camera, seen in self._last_seen.items():
            for name in [n for n, t in seen.items() if now - t > self.presence_timeout]:
                del seen[name]
            people = frozenset(seen)
            before = self.present.get(camera)
            if before is None or people != before:
                before = before or frozenset()
                changes.append((camera, people, people - before, before - people))
                self.present[camera] = people
        return changes


class RealtimeSource:
    """Yields presence events until `stop` is set."""

    def __init__(
        self,
        client: AsyncLogsAPI,
        *,
        refresh: float = 1.0,
        presence_timeout: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_in_view: Callable[[list[str]], None] | None = None,
        entry_filter: EntryFilter | None = None,
    ) -> None:
        self.client = client
        # Cameras and people left out never reach the tracker: no presence, no quick poll.
        self.entry_filter = entry_filter or EntryFilter()
        self.refresh = refresh
        self.tracker = PresenceTracker(presence_timeout)
        self.monotonic = monotonic
        self.on_in_view = on_in_view  # called after each poll with the cameras that see someone
        self.health = PollHealth()
        self.polls = 0

    async def run(self, stop: asyncio.Event) -> AsyncIterator[Batch]:
        """One batch of presence events per poll (empty when nothing changed)."""
        # Failing or stopped, the API is asked less and less often, back to `refresh` once it answers.
        backoff = Backoff(self.refresh, max(self.refresh, 30.0))
        delay = self.refresh
        while not stop.is_set():
            started = self.monotonic()
            try:
                snapshot = await self.client.get_realtime()
            except StopLogsSignal as exc:
                # Not an error: no camera is active. Keep asking, less often, and say so once.
                if self.health.state != "stopped":
                    log.info("the API reports no active cameras (%s); polling on with back-off", exc)
                self.health.answered(stop_reason=str(exc))
                snapshot = {}
                delay = backoff.failed()
            except APIKeyError:
                raise
            except HTTPRequestError as exc:
                delay = backoff.failed()
                log.warning("recognition poll failed, retrying in %.0f s: %s", delay, exc)
                self.health.failed(exc)
                await sleep_or_stop(stop, delay)
                continue
            else:
                if self.health.state != "polling":
                    log.info("polling recognition every %.2g s", self.refresh)
                self.health.answered()
                backoff.succeeded()
                delay = self.refresh
            self.polls += 1
            if self.entry_filter.active:
                snapshot = self.entry_filter.recognition(snapshot)
            observed_at = datetime.now(timezone.utc).replace(microsecond=0)
            changes = self.tracker.update(snapshot, self.monotonic())
            # Someone in view may have just made a history entry: an arrival surely did, and so
            # may anyone already there (a visit of someone in view shows on /logs only).
            in_view = [camera for camera, names in snapshot.items() if names]
            if in_view and self.on_in_view is not None:
                self.on_in_view(in_view)
            # The builder validates; a payload that fails comes back as a dead letter.
            yield Batch(
                [
                    presence_event(camera, people, arrived, departed, observed_at)
                    for camera, people, arrived, departed in changes
                ]
            )
            # Keep the cadence: sleep what is left of the interval after the request took its time.
            await sleep_or_stop(stop, max(0.0, delay - (self.monotonic() - started)))
