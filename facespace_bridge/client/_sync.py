"""`LogsAPI`: the original synchronous client, a thin facade over `AsyncLogsAPI`.

The async core runs on a private event loop in a daemon thread (a portal), so the sync
and async clients share every line of request, retry, parsing and webhook code, and the
sync client also works where the caller already runs an event loop (notebooks).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import date, datetime
from typing import TypeVar

import httpx

from facespace_bridge.client._async import AsyncLogsAPI, Logs

T = TypeVar("T")


class _Portal:
    """An event loop in a daemon thread; `call` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._loop is not None

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="facespace-client", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        loop = self._start()

        async def run() -> T:
            return await make()

        future: Future[T] = asyncio.run_coroutine_threadsafe(run(), loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: do not leave the request running
            raise

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is threading.current_thread():
            return  # a finalizer running on the loop's own thread: the loop ends after this callback
        thread.join()
        loop.close()


class LogsAPI:
    """The original `facespace.LogsAPI`: same constructor parameters and methods, plus
    `base_url`, `timeout` and the retry bounds. See `AsyncLogsAPI` for their meaning."""

    def __init__(
        self,
        api_key: str | None = None,
        log_to_file: bool = False,
        log_level: int = logging.INFO,
        file_log_level: int = logging.DEBUG,
        additional_headers: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        post_realtime: bool = True,
        post_logs: bool = False,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        max_retries: int = 5,
        retry_max_seconds: float = 60.0,
        retry_initial_seconds: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._core = AsyncLogsAPI(
            api_key,
            base_url=base_url,
            timeout=timeout,
            additional_headers=additional_headers,
            webhook_url=webhook_url,
            post_realtime=post_realtime,
            post_logs=post_logs,
            log_to_file=log_to_file,
            log_level=log_level,
            file_log_level=file_log_level,
            max_retries=max_retries,
            retry_max_seconds=retry_max_seconds,
            retry_initial_seconds=retry_initial_seconds,
            transport=transport,
        )
        self._portal = _Portal()
        # A forgotten close() must not leave the loop thread behind once the client is gone.
        weakref.finalize(self, self._portal.stop)

    @property
    def async_client(self) -> AsyncLogsAPI:
        """The async core this facade drives (its loop is private: do not await it elsewhere)."""
        return self._core

    @property
    def base_url(self) -> str:
        return self._core.base_url

    @property
    def log_file(self) -> str | None:
        return self._core.log_file

    @property
    def last_stop_reason(self) -> str | None:
        return self._core.last_stop_reason

    def __enter__(self) -> LogsAPI:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_realtime_logs()
        self.close()

    def close(self) -> None:
        """Release connections, the log file and the background thread (reopened if used again)."""
        if self._portal.running:
            self._portal.call(self._core.aclose)
            self._portal.stop()

    def get_logs_range(
        self,
        start_time: str | datetime | date | None = None,
        end_time: str | datetime | date | None = None,
        camera_id: str | None = None,
    ) -> Logs:
        """See `AsyncLogsAPI.get_logs_range`."""
        return self._portal.call(lambda: self._core.get_logs_range(start_time, end_time, camera_id))

    def get_realtime_logs(self, refresh: float = 0.5, limit: int | None = None) -> Iterator[Logs]:
        """A generator of realtime snapshots; see `AsyncLogsAPI.realtime`. `stop_realtime_logs()`
        (from any thread) ends it; so does the API's stop reply."""
        stream: AsyncIterator[Logs] = self._core.realtime(refresh, limit)
        try:
            while True:
                try:
                    snapshot = self._portal.call(stream.__anext__)
                except StopAsyncIteration:
                    return
                yield snapshot
        finally:
            if self._portal.running:
                aclose = getattr(stream, "aclose", None)
                if aclose is not None:
                    self._portal.call(aclose)

    def stop_realtime_logs(self) -> None:
        """End the running realtime generators after their current poll. Thread-safe."""
        self._core.stop_realtime()
