"""The client against an in-process API double (httpx.MockTransport): errors, retries,
range trimming, realtime, windows, webhook and key redaction, sync/async parity."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from facespace_bridge import LogsAPI
from facespace_bridge.client import (
    APIKeyError,
    AsyncLogsAPI,
    BadEntry,
    HTTPRequestError,
    InvalidUsageError,
    LogEntry,
    StopLogsSignal,
)
from tests.client.conftest import BASE, KEY, FakeFaceSpace

UTC = timezone.utc
T0 = datetime(2023, 10, 23, 10, 0, tzinfo=UTC)


def client(fake: FakeFaceSpace, **kwargs: object) -> AsyncLogsAPI:
    options: dict[str, object] = {
        "base_url": BASE,
        "transport": fake.transport(),
        "retry_initial_seconds": 0.01,
    }
    options.update(kwargs)
    return AsyncLogsAPI(KEY, **options)  # type: ignore[arg-type]


def seed(fake: FakeFaceSpace, rng: random.Random, n: int, span: timedelta, cameras: int = 3) -> None:
    """`n` entries spread unevenly over `span` from T0: bursts, several per second, gaps."""
    for cam in range(cameras):
        fake.logs[f"Camera{cam + 1}"] = []
    seconds = int(span.total_seconds())
    stamps = sorted(T0 + timedelta(seconds=int(rng.betavariate(0.6, 2.5) * seconds)) for _ in range(n))
    for i, stamp in enumerate(stamps):
        fake.logs[f"Camera{rng.randrange(cameras) + 1}"].append((stamp, f"Person {i % 17} @ x"))


# -- construction and errors -----------------------------------------------------------------------


async def test_no_key_fails_before_any_request(fake: FakeFaceSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FACESPACE_API_KEY", raising=False)
    with pytest.raises(APIKeyError, match="FACESPACE_API_KEY"):
        AsyncLogsAPI(base_url=BASE, transport=fake.transport())
    with pytest.raises(APIKeyError):
        LogsAPI(base_url=BASE, transport=fake.transport())
    assert fake.requests == []


async def test_key_and_url_from_the_environment(fake: FakeFaceSpace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESPACE_API_KEY", KEY)
    monkeypatch.setenv("FACESPACE_API_URL", BASE + "/")
    fake.logs = {"Camera1": [(T0, "Alice")]}
    async with AsyncLogsAPI(transport=fake.transport(), additional_headers={"Custom-Header": "Value"}) as api:
        assert await api.get_logs_range() == {"Camera1": ["Alice @ 10:00:00 23/10/23"]}
    request = fake.requests[0]
    assert str(request.url) == "http://facespace.test/facespace/logs"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["custom-header"] == "Value"


async def test_refused_key_is_an_api_key_error(fake: FakeFaceSpace) -> None:
    async with AsyncLogsAPI("wrong", base_url=BASE, transport=fake.transport()) as api:
        with pytest.raises(APIKeyError, match="401"):
            await api.get_logs_range()
    assert len(fake.requests) == 1  # not retried


async def test_other_statuses_carry_the_status_and_the_apis_error_text(fake: FakeFaceSpace) -> None:
    fake.faults = [(400, {})]
    async with client(fake) as api:
        with pytest.raises(HTTPRequestError) as info:
            await api.get_logs_range("23/10/23")
    assert info.value.status == 400
    assert info.value.error == "injected 400"
    assert len(fake.requests) == 1


async def test_wrong_types_are_usage_errors(fake: FakeFaceSpace) -> None:
    async with client(fake) as api:
        with pytest.raises(InvalidUsageError):
            await api.get_logs_range(start_time=20231023)  # type: ignore[arg-type]
        with pytest.raises(InvalidUsageError):
            await api.get_logs_range(camera_id=7)  # type: ignore[arg-type]
        with pytest.raises(InvalidUsageError, match="after"):
            await api.get_logs_range("11:00 23/10/23", "10:00 23/10/23")
    assert fake.requests == []


# -- retries ---------------------------------------------------------------------------------------


async def test_5xx_and_429_are_retried_to_the_same_result(fake: FakeFaceSpace) -> None:
    fake.logs = {"Camera1": [(T0, "Alice")]}
    fake.faults = [(503, {}), (500, {}), (429, {}), (502, {})]
    async with client(fake) as api:
        assert await api.get_logs_range() == {"Camera1": ["Alice @ 10:00:00 23/10/23"]}
    assert len(fake.requests) == 5


async def test_retry_after_is_honoured(fake: FakeFaceSpace) -> None:
    fake.faults = [(429, {"Retry-After": "0.4"}), (503, {"Retry-After": "0.3"})]
    async with client(fake) as api:
        await api.get_logs_range()
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert gaps[0] >= 0.35 and gaps[1] >= 0.25  # the backoff alone (0.01 s) would be far shorter


async def test_retries_are_bounded_in_count(fake: FakeFaceSpace) -> None:
    fake.faults = [(503, {})] * 10
    async with client(fake, max_retries=3) as api:
        with pytest.raises(HTTPRequestError) as info:
            await api.get_logs_range()
    assert info.value.status == 503
    assert len(fake.requests) == 4


async def test_retries_are_bounded_in_time(fake: FakeFaceSpace) -> None:
    fake.faults = [(503, {"Retry-After": "5"})] * 3
    async with client(fake, max_retries=10, retry_max_seconds=1.0) as api:
        with pytest.raises(HTTPRequestError):
            await api.get_logs_range()
    assert len(fake.requests) == 1  # a 5 s wait would end past the 1 s budget: give up at once


async def test_network_failures_are_retried_then_reported() -> None:
    calls = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused", request=request)

    api = AsyncLogsAPI(
        KEY, base_url=BASE, transport=httpx.MockTransport(refuse), max_retries=2, retry_initial_seconds=0.01
    )
    with pytest.raises(HTTPRequestError, match="cannot reach"):
        await api.get_realtime()
    assert calls == 3
    await api.aclose()


async def test_a_broken_json_reply_is_reported_without_its_names() -> None:
    """A /logs reply cut short names people: the error (logged, shown in /status) says what it
    was, never what it held; a page that is not JSON at all is quoted, to tell what answered."""
    replies = {
        "/logs": b'{"Camera1": ["Zo\xc3\xab Secret @ 10:00:00 23/10/23", "Zo\xc3\xab Sec',
        "/recognition": b"<html><body>Captive portal</body></html>",
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=replies["/" + request.url.path.rsplit("/", 1)[-1]])

    api = AsyncLogsAPI(KEY, base_url=BASE, transport=httpx.MockTransport(answer), max_retries=0)
    with pytest.raises(HTTPRequestError) as broken:
        await api.get_logs_range("10:00 23/10/23", "10:01 23/10/23")
    assert "Secret" not in str(broken.value) and "Zo" not in str(broken.value)
    assert "not JSON: a broken or cut-off JSON document of" in str(broken.value)
    with pytest.raises(HTTPRequestError, match="not JSON: b'<html><body>Captive portal"):
        await api.get_realtime()
    await api.aclose()


# -- ranges ----------------------------------------------------------------------------------------


async def test_seconds_are_honoured_at_both_ends(fake: FakeFaceSpace) -> None:
    fake.logs = {
        "Camera1": [(T0 + timedelta(seconds=s), f"P{s}") for s in (0, 6, 7, 30, 59, 60, 67, 68, 125)],
    }
    async with client(fake) as api:
        logs = await api.get_logs_range("10:00:07 23/10/23", "10:01:07 23/10/23")
    assert logs == {
        "Camera1": [f"P{s} @ {T0 + timedelta(seconds=s):%H:%M:%S %d/%m/%y}" for s in (7, 30, 59, 60, 67)]
    }
    params = fake.requests[0].url.params
    assert (params["start_time"], params["end_time"]) == ("10:00 23/10/23", "10:01 23/10/23")


async def test_date_only_start_and_end_is_the_whole_day(fake: FakeFaceSpace) -> None:
    day = datetime(2023, 10, 23, tzinfo=UTC)
    fake.logs = {
        "C": [
            (day - timedelta(seconds=1), "before"),
            (day, "first"),
            (day + timedelta(hours=23, minutes=59, seconds=59), "last"),
            (day + timedelta(days=1), "after"),
        ]
    }
    async with client(fake) as api:
        logs = await api.get_logs_range("23/10/23", "23/10/23", camera_id="C")
    assert logs == {"C": ["first @ 00:00:00 23/10/23", "last @ 23:59:59 23/10/23"]}
    assert fake.requests[0].url.params["camera_id"] == "C"


async def test_iter_entries_is_exactly_half_open(fake: FakeFaceSpace) -> None:
    fake.logs = {"C": [(T0 + timedelta(seconds=s), "P") for s in range(0, 180, 5)]}
    fake.extra_raw = {"C": ["garbage"]}
    async with client(fake) as api:
        entries = [e async for e in api.iter_entries(T0 + timedelta(seconds=12), T0 + timedelta(seconds=100))]
    good = [e for e in entries if isinstance(e, LogEntry)]
    assert [int((e.seen_at - T0).total_seconds()) for e in good] == list(range(15, 100, 5))
    assert [e.raw for e in entries if isinstance(e, BadEntry)] == ["garbage"]


@pytest.mark.parametrize("bounded", [True, False])
async def test_windows_cover_the_range_once_with_adapting_sizes(fake: FakeFaceSpace, bounded: bool) -> None:
    rng = random.Random(7)
    seed(fake, rng, 20_000, timedelta(days=2))
    fake.extra_raw = {"Camera2": [{"not": "a string"}]}
    start, end = T0 + timedelta(seconds=30), T0 + timedelta(days=2, seconds=-17)
    target = 500
    windows = []
    async with client(fake) as api:
        async for window in api.iter_windows(start, end if bounded else None, target_entries=target):
            windows.append((window.start, window.end, list(window.entries)))
    expected = sorted(
        (c, at, n) for c, at, n in fake.all_entries() if start <= at and (not bounded or at < end)
    )
    seen = sorted(
        (e.camera_id, e.seen_at, e.person) for *_, es in windows for e in es if isinstance(e, LogEntry)
    )
    assert seen == expected
    assert windows[0][0] == start
    for (_, prev_end, _), (nxt_start, _, _) in itertools.pairwise(windows):
        assert prev_end == nxt_start and nxt_start.second == 0  # consecutive, whole-minute boundaries
    if bounded:
        assert windows[-1][1] == end
    # Every window brought back a bounded amount; bad entries are reported once per reply.
    assert max(len(es) for *_, es in windows) <= 2 * target + 100
    assert len(windows) >= 20_000 / (2 * target)
    bad = [e for *_, es in windows for e in es if isinstance(e, BadEntry)]
    assert bad and all(b.raw == {"not": "a string"} for b in bad)


async def test_open_ended_windows_are_one_request_when_small(fake: FakeFaceSpace) -> None:
    fake.logs = {"C": [(T0 + timedelta(minutes=m), "P") for m in range(30)]}
    async with client(fake) as api:
        windows = [w async for w in api.iter_windows(T0 + timedelta(minutes=10), None)]
    assert len(fake.requests) == 1 and "end_time" not in fake.requests[0].url.params
    assert len(windows) == 1 and len(windows[0].entries) == 20
    assert windows[0].end is None  # open: everything the API had, nothing read to find its end


async def test_read_ahead_gives_the_same_windows_fetching_the_next_one_early(fake: FakeFaceSpace) -> None:
    fake.logs = {"C": [(T0 + timedelta(seconds=s), "P") for s in range(0, 6000, 3)]}
    start, end = T0, T0 + timedelta(hours=2)
    async with client(fake) as api:
        plain = [(w.start, w.end, w.entries) async for w in api.iter_windows(start, end, target_entries=200)]
        fake.requests.clear()
        ahead = []
        async for window in api.iter_windows(start, end, target_entries=200, read_ahead=True):
            await asyncio.sleep(0.01)  # the caller is busy: the next reply arrives meanwhile
            ahead.append((window.start, window.end, window.entries))
            assert len(fake.requests) >= min(len(ahead) + 1, len(plain))
    assert ahead == plain and len(plain) > 3


async def test_read_ahead_raises_the_api_error_in_the_caller(fake: FakeFaceSpace) -> None:
    fake.logs = {"C": [(T0 + timedelta(seconds=s), "P") for s in range(0, 6000, 3)]}
    calls = 0

    def refuse_the_third(request: httpx.Request) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            fake.faults.extend([(400, {})])

    async with client(fake) as api:
        received = 0
        fake.on_logs = refuse_the_third
        with pytest.raises(HTTPRequestError, match="400"):
            async for _ in api.iter_windows(T0, T0 + timedelta(hours=2), target_entries=200, read_ahead=True):
                received += 1
    assert received >= 2


# -- realtime --------------------------------------------------------------------------------------


async def test_realtime_limit_and_stop_reply(fake: FakeFaceSpace) -> None:
    fake.realtime = [{"Camera1": ["Alice"]}, {"Camera1": ["Alice", "Bob"]}, {"Camera2": []}]
    async with client(fake) as api:
        assert [s async for s in api.realtime(refresh=0.01, limit=2)] == fake_snapshots()[:2]
        assert [s async for s in api.realtime(refresh=0.01)] == [{"Camera2": []}]  # then the stop reply
        assert api.last_stop_reason == "No cameras active at the moment"
        with pytest.raises(StopLogsSignal, match="No cameras active"):
            await api.get_realtime()


def fake_snapshots() -> list[dict[str, list[str]]]:
    return [{"Camera1": ["Alice"]}, {"Camera1": ["Alice", "Bob"]}]


@pytest.mark.parametrize(
    ("refresh", "limit"), [(0, None), (-1, None), ("1", None), (0.5, 0), (0.5, -3), (0.5, 1.5)]
)
async def test_realtime_rejects_bad_arguments_on_first_use(
    fake: FakeFaceSpace, refresh: object, limit: object
) -> None:
    async with client(fake) as api:
        stream = api.realtime(refresh=refresh, limit=limit)  # type: ignore[arg-type]
        with pytest.raises(InvalidUsageError):
            await anext(stream)
    assert fake.requests == []


def test_sync_stop_from_another_thread(fake: FakeFaceSpace) -> None:
    fake.realtime = [{"Camera1": ["Alice"]}] * 10_000
    api = LogsAPI(KEY, base_url=BASE, transport=fake.transport())
    threading.Timer(0.3, api.stop_realtime_logs).start()
    started = time.monotonic()
    received = sum(1 for _ in api.get_realtime_logs(refresh=0.02))
    assert received >= 2 and time.monotonic() - started < 30
    api.close()


def test_sync_rejects_bad_refresh_on_first_use(fake: FakeFaceSpace) -> None:
    with LogsAPI(KEY, base_url=BASE, transport=fake.transport()) as api:
        stream = api.get_realtime_logs(refresh=0)
        with pytest.raises(InvalidUsageError):
            next(stream)


# -- parity, webhook, redaction --------------------------------------------------------------------


async def test_sync_facade_gives_the_async_results(fake: FakeFaceSpace) -> None:
    seed(fake, random.Random(3), 2_000, timedelta(hours=6))
    args = ("10:00:13 23/10/23", "13:30:59 23/10/23", "Camera2")
    async with client(fake) as api:
        expected = await api.get_logs_range(*args)
    with LogsAPI(KEY, base_url=BASE, transport=fake.transport()) as sync_api:
        assert sync_api.get_logs_range(*args) == expected
    assert sum(map(len, expected.values())) > 100


async def test_webhook_gets_the_replies_and_never_the_key(fake: FakeFaceSpace) -> None:
    fake.logs = {"C": [(T0, "Alice")]}
    fake.realtime = [{"C": ["Alice"]}]
    headers = {"Custom-Header": "Value", "X-API-Key": KEY, "Authorization": f"Bearer {KEY}"}
    async with client(
        fake, webhook_url="http://hook.test/in", additional_headers=headers, post_logs=True
    ) as api:
        await api.get_logs_range()
        await api.get_realtime()
    assert [p.url.host for p in fake.webhook_posts] == ["hook.test", "hook.test"]
    for post in fake.webhook_posts:
        assert post.headers["custom-header"] == "Value"
        assert KEY not in str(post.headers.raw) and KEY.encode() not in post.content


async def test_failing_webhook_never_breaks_the_stream(
    fake: FakeFaceSpace, caplog: pytest.LogCaptureFixture
) -> None:
    fake.webhook_status = 500
    fake.realtime = [{"C": ["Alice"]}, {"C": []}]
    async with client(fake, webhook_url="http://hook.test/in") as api:
        api._webhook.backoff_initial = 0.01  # type: ignore[union-attr]
        snapshots = [s async for s in api.realtime(refresh=0.01, limit=2)]
    assert snapshots == [{"C": ["Alice"]}, {"C": []}]
    assert len(fake.webhook_posts) == 6  # three attempts each
    assert any("webhook POST" in r.getMessage() for r in caplog.records)


async def test_the_key_never_reaches_a_log_line(
    fake: FakeFaceSpace, caplog: pytest.LogCaptureFixture, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    fake.faults = [(503, {})]
    api = client(fake, log_to_file=True, log_level=logging.DEBUG, webhook_url=f"http://hook.test/{KEY}")
    await api.get_logs_range()
    api.log.warning("a careless line with the key %s", KEY)  # redaction must catch even this
    try:
        raise RuntimeError(f"traceback mentioning {KEY}")
    except RuntimeError:
        api.log.exception("boom")
    await api.aclose()
    assert api.log_file is not None
    written = Path(api.log_file).read_text(encoding="utf-8")  # noqa: ASYNC240 -- test, tiny file
    assert "a careless line with the key ***" in written and "traceback mentioning ***" in written
    assert KEY not in written
    assert caplog.records and all(KEY not in caplog.handler.format(r) for r in caplog.records)
