"""Pushes to open pages: one encoding per interval for all, bounded queues, a snapshot for a
page that fell behind, a keepalive when nothing happens."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from facespace_bridge.web.push import Broadcaster, Subscriber
from facespace_bridge.web.state import PageState

pytestmark = pytest.mark.timeout(30)

STATUS: dict[str, Any] = {
    "state": "RUNNING",
    "problems": [],
    "sinks": {},
    "sources": {},
    "cameras": {},
    "backfill": None,
}


async def test_a_subscriber_gets_a_snapshot_first_and_after_an_overflow() -> None:
    subscriber = Subscriber(backlog=3)
    made: list[int] = []

    def snapshot() -> bytes:
        made.append(1)
        return b"snapshot"

    subscriber.put(b"lost")  # before the first snapshot: that snapshot holds it
    assert await subscriber.next(snapshot) == b"snapshot"
    for n in range(3):
        subscriber.put(b"u%d" % n)
    assert [await subscriber.next(snapshot) for _ in range(3)] == [b"u0", b"u1", b"u2"]
    for n in range(10):  # a page that does not read: its queue never holds more than 3
        subscriber.put(b"v%d" % n)
        assert subscriber.queued <= 3
    assert subscriber.resyncs >= 1
    assert await subscriber.next(snapshot) == b"snapshot" and len(made) == 2
    subscriber.put(b"w")
    assert await subscriber.next(snapshot) == b"w"


async def test_one_encoding_for_every_page_and_a_keepalive_when_quiet() -> None:
    state = PageState(600.0)
    calls: list[int] = []

    def status() -> dict[str, Any]:
        calls.append(1)
        return STATUS

    broadcaster = Broadcaster(state, status, interval=0.5, keepalive=2.0)
    broadcaster.push()  # nobody listening: only the status is read (for the backfill's pace)
    assert len(calls) == 1
    pages = [broadcaster.subscribe() for _ in range(10)]
    for page in pages:
        await page.next(broadcaster.snapshot)
    broadcaster.push()
    first = [await page.next(broadcaster.snapshot) for page in pages]
    assert all(message is first[0] for message in first)  # the same bytes object for all
    # Nothing changes: silence until the keepalive, then an empty update.
    quiet = 0
    while not pages[0].queued:
        broadcaster.push()
        quiet += 1
    assert quiet == 4  # 2 s at 0.5 s
    assert orjson.loads(await pages[0].next(broadcaster.snapshot)) == {"type": "update"}
    for page in pages:
        broadcaster.unsubscribe(page)
    assert not broadcaster.subscribers
    state.close()


async def test_the_loop_runs_until_closed_and_survives_a_failing_status(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = PageState(600.0)
    pushed = asyncio.Event()
    failures = [True, False]

    def status() -> dict[str, Any]:
        if failures and failures.pop(0):
            raise KeyError("Some Name")
        pushed.set()
        return STATUS

    broadcaster = Broadcaster(state, status, interval=0.01)
    broadcaster.start()
    await asyncio.wait_for(pushed.wait(), 10)
    await broadcaster.close()
    state.close()
    logged = [r.getMessage() for r in caplog.records if r.levelname in ("INFO", "WARNING", "ERROR")]
    assert any("KeyError" in line for line in logged)
    assert not any("Some Name" in line for line in logged)  # names never reach the log
