"""`AsyncLogsAPI`: the one implementation of the FaceSpace client, on `httpx.AsyncClient`.

The sync `LogsAPI` runs this same code on a private event loop (see `_sync.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from email.utils import parsedate_to_datetime
from functools import partial
from typing import Any, Protocol

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential,
    wait_random,
)

from facespace_bridge.client._logging import ClientLogging, redactor
from facespace_bridge.client._timefmt import (
    WIRE_MAX,
    WIRE_MIN,
    parse_user_time,
    wire_params,
)
from facespace_bridge.client._windows import ReplyTooLarge, Window, count_entries, entries_in, walk_windows
from facespace_bridge.client.entries import BadEntry, LogEntry, rename_listing
from facespace_bridge.client.errors import (
    APIKeyError,
    HTTPRequestError,
    InvalidUsageError,
    StopLogsSignal,
)
from facespace_bridge.client.webhook import WebhookPoster

DEFAULT_BASE_URL = "https://visionapi.automa.one/facespace"
KEY_HEADER = "x-api-key"
_ERROR_BODY_LIMIT = 64 * 1024  # an error reply's body is read up to this for its message

Logs = dict[str, list[str]]


class _RetryableStatus(Exception):
    """429 or 5xx: worth asking again (after `retry_after` seconds when the API said so)."""

    def __init__(self, status: int, error: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}: {error}")
        self.status, self.error, self.retry_after = status, error, retry_after


@dataclass(slots=True)
class _Reply:
    data: Any
    body_bytes: int


def _retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _error_text(body: bytes) -> str:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(empty reply)"
    if isinstance(decoded, dict) and "error" in decoded:
        return str(decoded["error"])
    return str(decoded)[:200]


def _as_utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime):
        raise InvalidUsageError(f"{what} must be a datetime, not {type(value).__name__}")
    return parse_user_time(value)


def _check_camera(camera_id: object) -> str | None:
    if camera_id is None:
        return None
    if not isinstance(camera_id, str) or not camera_id:
        raise InvalidUsageError(f"camera_id must be a non-empty string, not {camera_id!r}")
    return camera_id


def _check_logs(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise HTTPRequestError(f"unexpected /logs reply: a JSON {type(data).__name__}, not an object")
    return data


def _not_json(body: bytes) -> str:
    """What a 2xx reply that is not JSON was, for an error message (which reaches the logs and
    /status): the start of a page that is not JSON at all (a proxy's, a wrong --api-url), but
    never of a JSON document cut short or broken, which holds the names a filter or
    --pseudonymize keeps out of both."""
    if body.lstrip()[:1] in (b"{", b"["):
        return f"a broken or cut-off JSON document of {len(body)} bytes"
    return repr(body[:80])


class Renamer(Protocol):
    """What every name in a reply is replaced with before anyone reads it
    (privacy/pseudonyms.Pseudonyms under --pseudonymize); the client imports no implementation."""

    def of(self, name: str) -> str:
        """The name to show instead of `name`."""
        ...

    def withheld(self, value: object) -> object:
        """What to show instead of a value that may hold a name where none can be told apart."""
        ...


def _rename_recognition(reply: dict[str, Any], names: Renamer) -> dict[str, Any]:
    """A `/recognition` reply (camera id -> names in view) with every name replaced."""
    return {
        camera: [names.of(n) if isinstance(n, str) else names.withheld(n) for n in seen]
        if isinstance(seen, list)
        else names.withheld(seen)
        for camera, seen in reply.items()
    }


class _StopSwitch:
    """Stop events of the running realtime streams; `stop_all` is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._streams: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    def register(self) -> asyncio.Event:
        event = asyncio.Event()
        with self._lock:
            self._streams[event] = asyncio.get_running_loop()
        return event

    def unregister(self, event: asyncio.Event) -> None:
        with self._lock:
            self._streams.pop(event, None)

    def stop_all(self) -> None:
        with self._lock:
            streams = list(self._streams.items())
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for event, loop in streams:
            if loop is current:
                event.set()
            else:
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # that loop is closed: its stream is gone
                    pass


class AsyncLogsAPI:
    """The FaceSpace API client, async. See the package README for the original's semantics.

    `base_url` defaults to env `FACESPACE_API_URL`, then the hosted service; `api_key` to env
    `FACESPACE_API_KEY`. A missing key raises APIKeyError here, before any request.
    Retries: 429, 5xx, connection errors and timeouts are retried with exponential backoff
    and jitter (`Retry-After` honoured), at most `max_retries` times and never starting a
    wait that would end later than `retry_max_seconds` after the first attempt;
    `on_retry(endpoint, error)`, when set, is told of each retry before its wait.
    `names`, when set, rewrites every `/logs` and `/recognition` reply before anything reads it
    (`--pseudonymize`: docs/privacy.md).
    Closing releases connections and the log file; a closed client reopens them when used.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        additional_headers: Mapping[str, str] | None = None,
        webhook_url: str | None = None,
        post_realtime: bool = True,
        post_logs: bool = False,
        log_to_file: bool = False,
        log_level: int = logging.INFO,
        file_log_level: int = logging.DEBUG,
        max_retries: int = 5,
        retry_max_seconds: float = 60.0,
        retry_initial_seconds: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: Callable[[str, BaseException | None], None] | None = None,
        names: Renamer | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("FACESPACE_API_KEY")
        if not key or not isinstance(key, str):
            raise APIKeyError("no FaceSpace API key: pass api_key= or set FACESPACE_API_KEY")
        if additional_headers is not None and not isinstance(additional_headers, Mapping):
            raise InvalidUsageError("additional_headers must be a mapping of header names to values")
        self._key = key
        redactor.add(key)
        self.base_url = (base_url or os.environ.get("FACESPACE_API_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.additional_headers = dict(additional_headers or {})
        self.webhook_url = webhook_url
        self.post_realtime = post_realtime
        self.post_logs = post_logs
        self.max_retries = max(0, max_retries)
        self.retry_max_seconds = retry_max_seconds
        self.retry_initial_seconds = retry_initial_seconds
        # initial, 2×, 4× ... capped, plus up to one initial step of jitter (spreads a herd of clients)
        self._backoff = wait_exponential(
            multiplier=retry_initial_seconds, max=retry_max_seconds
        ) + wait_random(0, retry_initial_seconds)
        self.last_stop_reason: str | None = None  # the API's stop reply text, once received
        self._transport = transport
        self.on_retry = on_retry  # told the endpoint ("logs", "recognition") and error of each retry
        self.names = names  # every reply goes through it before anyone reads it (--pseudonymize)
        self._http: httpx.AsyncClient | None = None
        self._stops = _StopSwitch()
        self._logging = ClientLogging(log_level, file_log_level, log_to_file)
        self.log = self._logging.logger
        self._webhook = (
            WebhookPoster(
                webhook_url,
                headers=self.additional_headers,
                secrets=[key],
                timeout=timeout,
                transport=transport,
            )
            if webhook_url
            else None
        )
        # Handlers and the redaction entry live as long as the client object.
        weakref.finalize(self, _forget, self._logging, key)
        self.log.debug(
            "FaceSpace client for %s (timeout %.1f s, %d retries)", self.base_url, timeout, self.max_retries
        )

    @property
    def log_file(self) -> str | None:
        """Path of the log file when `log_to_file` is on."""
        return str(self._logging.file_path) if self._logging.file_path else None

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncLogsAPI:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop_realtime()
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._webhook is not None:
            await self._webhook.aclose()
        self._logging.close()

    def stop_realtime(self) -> None:
        """End every running `realtime()` stream of this client after its current poll.
        Safe to call from any thread."""
        self._stops.stop_all()

    # -- HTTP -------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            self._logging.attach()  # a closed client used again logs to its file again
            headers = {k: v for k, v in self.additional_headers.items() if k.lower() != KEY_HEADER}
            headers[KEY_HEADER] = self._key
            self._http = httpx.AsyncClient(
                base_url=self.base_url + "/", headers=headers, timeout=self.timeout, transport=self._transport
            )
        return self._http

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, _RetryableStatus) and failure.retry_after is not None:
            return failure.retry_after  # the API said when; earlier would only be refused again
        return backoff

    def _before_sleep(self, path: str, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        if self.on_retry is not None:
            self.on_retry(path.rsplit("/", 1)[-1], failure)
        sleep = state.next_action.sleep if state.next_action else 0.0
        self.log.warning(
            "request failed (%s: %s); retry %d in %.2f s",
            type(failure).__name__,
            failure,
            state.attempt_number,
            sleep,
        )

    async def _get(self, path: str, params: Mapping[str, str], *, max_bytes: int | None = None) -> _Reply:
        """GET with retries; errors become the package's exceptions."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
            wait=self._wait,
            stop=stop_after_attempt(self.max_retries + 1) | stop_before_delay(self.retry_max_seconds),
            before_sleep=partial(self._before_sleep, path),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._get_once(path, params, max_bytes)
        except _RetryableStatus as exc:
            message = f"GET /{path}: HTTP {exc.status}: {exc.error}"
            raise HTTPRequestError(message, exc.status, exc.error) from None
        except httpx.TimeoutException as exc:
            message = f"GET /{path}: no answer within {self.timeout} s ({type(exc).__name__})"
            raise HTTPRequestError(message) from None
        except httpx.TransportError as exc:
            message = f"GET /{path}: cannot reach {self.base_url}: {type(exc).__name__}: {exc}"
            raise HTTPRequestError(message) from None
        raise AssertionError("tenacity returned without a result")  # pragma: no cover

    async def _get_once(self, path: str, params: Mapping[str, str], max_bytes: int | None) -> _Reply:
        started = time.monotonic()
        async with self._client().stream("GET", path, params=params) as response:
            status = response.status_code
            if not 200 <= status < 300:
                body = b""
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) >= _ERROR_BODY_LIMIT:
                        break
                error = _error_text(body)
                self.log.debug("GET /%s %s -> %d: %s", path, dict(params), status, error)
                if status in (401, 403):
                    raise APIKeyError(f"the FaceSpace API refused the key (HTTP {status}): {error}")
                if status == 429 or status >= 500:
                    retry_after = _retry_after_seconds(response.headers.get("retry-after"))
                    raise _RetryableStatus(status, error, retry_after)
                raise HTTPRequestError(f"GET /{path}: HTTP {status}: {error}", status, error)
            if max_bytes is None:
                body = await response.aread()
            else:
                announced = response.headers.get("content-length", "")
                if announced.isdigit() and int(announced) > max_bytes:
                    raise ReplyTooLarge(int(announced))
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ReplyTooLarge(None)
                    chunks.append(chunk)
                body = b"".join(chunks)
        self.log.debug(
            "GET /%s %s -> %d (%d bytes in %.3f s)",
            path,
            dict(params),
            status,
            len(body),
            time.monotonic() - started,
        )
        try:
            return _Reply(orjson.loads(body), len(body))
        except orjson.JSONDecodeError:
            raise HTTPRequestError(f"GET /{path}: the reply is not JSON: {_not_json(body)}", status) from None

    async def _logs(
        self,
        start: datetime | None,
        end: datetime | None,
        camera_id: str | None,
        *,
        max_bytes: int | None = None,
    ) -> tuple[dict[str, Any], bool, int]:
        """The `/logs` reply for the minutes enclosing `[start, end)`; whether it is exact; its size."""
        params, exact = wire_params(start, end)
        if camera_id is not None:
            params["camera_id"] = camera_id
        reply = await self._get("logs", params, max_bytes=max_bytes)
        data = _check_logs(reply.data)
        if self.names is not None:
            data = rename_listing(data, self.names.of, self.names.withheld)
        return data, exact, reply.body_bytes

    # -- the original's API -----------------------------------------------------------------------

    async def get_logs_range(
        self,
        start_time: str | datetime | date | None = None,
        end_time: str | datetime | date | None = None,
        camera_id: str | None = None,
    ) -> Logs:
        """The API's history dict (camera id → `"Name @ HH:MM:SS DD/MM/YY"` strings) for the
        range, both ends inclusive at the resolution given (a date-only end is that whole day,
        an `HH:MM:SS` end that second). Without bounds: everything. Loads the whole range:
        for large ranges use `iter_entries`."""
        start = parse_user_time(start_time) if start_time is not None else None
        end = parse_user_time(end_time, end=True) if end_time is not None else None
        camera_id = _check_camera(camera_id)
        if start is not None and end is not None and start >= end:
            raise InvalidUsageError(f"start_time {start_time!r} is after end_time {end_time!r}")
        data, exact, _ = await self._logs(start, end, camera_id)
        if not exact:  # the wire asked whole minutes: trim the seconds outside the range
            trimmed: Logs = {}
            for camera, raws in data.items():
                if isinstance(raws, list):
                    raws = [r for r in raws if entries_in({camera: [r]}, start, end)]
                    if not raws and camera_id is None:
                        continue  # like the API: a named camera keeps its key, others appear when seen
                trimmed[camera] = raws
            data = trimmed
        self.log.info(
            "logs %s .. %s%s: %d entries",
            start_time,
            end_time,
            f" camera {camera_id}" if camera_id else "",
            count_entries(data),
        )
        if self.post_logs and self._webhook is not None:
            await self._webhook.post(data)
        return data

    async def get_realtime(self) -> Logs:
        """One `/recognition` snapshot (camera id → names seen now), POSTed to the webhook when
        `post_realtime`. Raises StopLogsSignal on the API's stop reply."""
        data = (await self._get("recognition", {})).data
        if not isinstance(data, dict):
            raise HTTPRequestError(f"unexpected /recognition reply: a JSON {type(data).__name__}")
        if isinstance(data.get("stop"), str):
            self.last_stop_reason = data["stop"]
            raise StopLogsSignal(data["stop"])
        if self.names is not None:
            data = _rename_recognition(data, self.names)
        if self.post_realtime and self._webhook is not None:
            await self._webhook.post(data)
        return data

    def realtime(self, refresh: float = 0.5, limit: int | None = None) -> AsyncIterator[Logs]:
        """Snapshots every `refresh` seconds until `limit` snapshots, `stop_realtime()`, or the
        API's stop reply (the stream then ends; the reason is kept in `last_stop_reason`).
        Invalid arguments raise InvalidUsageError on first use."""
        return self._realtime(refresh, limit)

    async def _realtime(self, refresh: float, limit: int | None) -> AsyncIterator[Logs]:
        if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not refresh > 0:
            raise InvalidUsageError(f"refresh must be a positive number of seconds, not {refresh!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise InvalidUsageError(f"limit must be a positive integer or None, not {limit!r}")
        stop = self._stops.register()
        try:
            sent = 0
            while not stop.is_set():
                try:
                    snapshot = await self.get_realtime()
                except StopLogsSignal as signal:
                    self.log.info("realtime stream ended by the API: %s", signal)
                    return
                if stop.is_set():
                    return
                yield snapshot
                sent += 1
                if limit is not None and sent >= limit:
                    return
                try:
                    await asyncio.wait_for(stop.wait(), refresh)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._stops.unregister(stop)

    # -- the typed layer for the bridge ------------------------------------------------------------

    def iter_windows(
        self,
        start: datetime,
        end: datetime | None,
        camera_id: str | None = None,
        *,
        target_entries: int = 20_000,
        read_ahead: bool = False,
    ) -> AsyncIterator[Window]:
        """`[start, end)` as consecutive windows with minute-aligned inner boundaries, one in
        memory at a time (two with `read_ahead`: the next window is fetched while the caller
        works on this one, so the API's time and ours overlap); spans adapt to density (see
        `_windows.WindowPlanner`). A reply larger than about 2 × `target_entries` is refused
        while it streams in and asked again with a smaller span (a single minute is always
        accepted).

        `end=None` means up to the latest entry, decided by the API: the client asks the
        open range `[cursor, ∞)` with the same byte cap; when the reply fits it is the last
        window (its `end` None: nothing in it is filtered), otherwise windows walk on
        and the open range is asked again once the remainder announced should fit.
        """
        windows = self._windows(start, end, camera_id, target_entries)
        return _read_ahead(windows) if read_ahead else windows

    async def _windows(
        self, start: datetime, end: datetime | None, camera_id: str | None, target_entries: int
    ) -> AsyncIterator[Window]:
        """`iter_windows`'s arguments checked (on first use), then the walk (`_windows.walk_windows`)."""
        lo = max(_as_utc(start, "start"), WIRE_MIN)
        hi = None if end is None else min(_as_utc(end, "end"), WIRE_MAX)
        camera_id = _check_camera(camera_id)
        if isinstance(target_entries, bool) or not isinstance(target_entries, int) or target_entries < 1:
            raise InvalidUsageError(f"target_entries must be a positive integer, not {target_entries!r}")
        async with contextlib.aclosing(
            walk_windows(self._logs, lo, hi, camera_id, target_entries, self.log)
        ) as windows:
            async for window in windows:
                yield window
                del window  # not kept alive while the next window is fetched

    async def iter_entries(
        self,
        start: datetime,
        end: datetime | None,
        camera_id: str | None = None,
        *,
        target_entries: int = 20_000,
    ) -> AsyncIterator[LogEntry | BadEntry]:
        """The entries of `iter_windows`, one at a time."""
        async for window in self.iter_windows(start, end, camera_id, target_entries=target_entries):
            for entry in window.entries:
                yield entry
            del window  # not kept alive while the next window is fetched


async def _read_ahead(windows: AsyncIterator[Window]) -> AsyncIterator[Window]:
    """Yield `windows`, fetching the next one while the caller works on the current one."""
    queue: asyncio.Queue[Window | BaseException | None] = asyncio.Queue(maxsize=1)

    async def fetch() -> None:
        try:
            async for window in windows:
                await queue.put(window)
            await queue.put(None)
        except Exception as exc:  # raised in the caller, where it belongs
            await queue.put(exc)
        finally:
            await windows.aclose()  # type: ignore[attr-defined]

    task = asyncio.create_task(fetch(), name="read-ahead")
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            del item  # not kept alive while the next window is awaited
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _forget(logging_setup: ClientLogging, key: str) -> None:
    logging_setup.close()
    redactor.discard(key)
