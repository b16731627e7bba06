"""What the source tests share: waiting on a source consumed in the background."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(predicate: Callable[[], object], task: asyncio.Future[None], timeout: float = 20.0) -> None:
    """Poll `predicate` until it holds; fail at once if `task` (the consumer) ended."""

    async def reached() -> None:
        while not predicate():
            assert not task.done(), task.exception()
            await asyncio.sleep(0.01)

    await asyncio.wait_for(reached(), timeout)
