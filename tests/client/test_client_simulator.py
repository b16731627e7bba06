"""The client over real HTTP against the simulator: ranges and seconds, day-first dates,
retries under faults, Retry-After, webhook posts, the stop reply, sync/async parity."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from facespace_bridge import AsyncLogsAPI, LogsAPI
from facespace_bridge.client import APIKeyError, HTTPRequestError, LogEntry, StopLogsSignal
from facespace_bridge.simulator import STOP_MESSAGE, SimulatorServer
from tests.client.conftest import WebhookServer

UTC = timezone.utc
Factory = Callable[..., SimulatorServer]


def truth(
    sim: SimulatorServer,
    start: datetime | None,
    last: datetime | None,
    camera: str | None = None,
    keep_empty: bool = False,
) -> dict[str, list[str]]:
    """The API's dict for start <= seen_at <= last (inclusive seconds), from the world's ground truth."""
    out: dict[str, list[str]] = {camera: []} if camera and keep_empty else {}
    for cam, person, seen_at in sim.world.entries(start, last, camera):
        out.setdefault(cam, []).append(f"{person} @ {seen_at:%H:%M:%S %d/%m/%y}")
    return out


class RecordingTransport(httpx.AsyncHTTPTransport):
    """Real HTTP, with the time of every request kept (to measure gaps between retries)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[float, str]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((time.monotonic(), request.url.path))
        return await super().handle_async_request(request)


def sync_client(sim: SimulatorServer, **kwargs: object) -> LogsAPI:
    return LogsAPI(sim.api_key, base_url=sim.base_url, **kwargs)  # type: ignore[arg-type]


def async_client(sim: SimulatorServer, **kwargs: object) -> AsyncLogsAPI:
    return AsyncLogsAPI(sim.api_key, base_url=sim.base_url, **kwargs)  # type: ignore[arg-type]


# -- ranges ----------------------------------------------------------------------------------------


def test_day_first_dates(simulator_factory: Factory) -> None:
    # History from 1 Jan to 2 Feb 2023: both readings of 01/02/23 exist, only 1 February is right.
    sim = simulator_factory(now=datetime(2023, 2, 2, tzinfo=UTC), history_hours=24 * 33, visits_per_hour=2)
    with sync_client(sim) as api:
        logs = api.get_logs_range("01/02/23", "01/02/23")
    feb1 = truth(sim, datetime(2023, 2, 1, tzinfo=UTC), datetime(2023, 2, 1, 23, 59, 59, tzinfo=UTC))
    jan2 = truth(sim, datetime(2023, 1, 2, tzinfo=UTC), datetime(2023, 1, 2, 23, 59, 59, tzinfo=UTC))
    assert logs == feb1
    assert feb1 and jan2 and feb1 != jan2
    assert all(raw.endswith("01/02/23") for raws in logs.values() for raw in raws)


def _second_inside_a_busy_minute(sim: SimulatorServer, camera: str) -> tuple[datetime, datetime]:
    """Two entries' seconds, each with an earlier entry of its minute, and a later one after it."""
    stamps = [seen_at for _, _, seen_at in sim.world.entries(camera_id=camera)]
    inside = [
        b
        for a, b, c in zip(stamps, stamps[1:], stamps[2:], strict=False)
        if a.replace(second=0) == b.replace(second=0) == c.replace(second=0) and a < b < c
    ]
    assert len(inside) >= 2, "the test world needs minutes with three entries at different seconds"
    return inside[0], inside[-1]


def test_seconds_are_honoured_at_both_ends(simulator: SimulatorServer) -> None:
    start, last = _second_inside_a_busy_minute(simulator, "Camera1")
    expected = truth(simulator, start, last, "Camera1", keep_empty=True)
    minutes = truth(simulator, start.replace(second=0), last.replace(second=59), "Camera1")
    assert expected != minutes  # the test would catch seconds being dropped at either end
    with sync_client(simulator) as api:
        logs = api.get_logs_range(f"{start:%H:%M:%S %d/%m/%y}", f"{last:%H:%M:%S %d/%m/%y}", "Camera1")
        assert logs == expected
        # Datetimes work the same, and the typed layer agrees on [start, last + 1 s).
        assert api.get_logs_range(start, last, "Camera1") == expected


async def test_typed_layer_matches_the_truth(simulator: SimulatorServer) -> None:
    start, last = _second_inside_a_busy_minute(simulator, "Camera2")
    async with async_client(simulator) as api:
        exact = [e async for e in api.iter_entries(start, last + timedelta(seconds=1))]
        streamed = [e async for e in api.iter_entries(start, last + timedelta(seconds=1), target_entries=50)]
        tail = [e async for e in api.iter_entries(start, None, target_entries=50)]
    want = sorted(simulator.world.entries(start, last))
    assert sorted((e.camera_id, e.person, e.seen_at) for e in exact if isinstance(e, LogEntry)) == want
    assert sorted((e.camera_id, e.person, e.seen_at) for e in streamed if isinstance(e, LogEntry)) == want
    assert sorted((e.camera_id, e.person, e.seen_at) for e in tail if isinstance(e, LogEntry)) == sorted(
        simulator.world.entries(start, None)
    )


def test_wrong_key_is_refused(simulator: SimulatorServer) -> None:
    with LogsAPI("not-the-key", base_url=simulator.base_url) as api, pytest.raises(APIKeyError):
        api.get_logs_range("23/10/23")


# -- faults ----------------------------------------------------------------------------------------


async def test_retries_under_faults_give_the_fault_free_result(simulator_factory: Factory) -> None:
    clean = simulator_factory()
    faulty = simulator_factory(faults={"error_rate": 0.3, "throttle_rate": 0.1, "retry_after": 0, "seed": 11})
    options = {"max_retries": 30, "retry_initial_seconds": 0.001, "retry_max_seconds": 30.0}
    results = []
    for sim in (clean, faulty):
        async with async_client(sim, **options) as api:
            results.append(
                (
                    await api.get_logs_range(),
                    await api.get_logs_range("10:00:07 23/10/23", "24/10/23", "TestCamera"),
                    [
                        e
                        async for e in api.iter_entries(
                            datetime(2023, 10, 23, 3, tzinfo=UTC),
                            datetime(2023, 10, 24, 21, tzinfo=UTC),
                            target_entries=40,
                        )
                    ],
                    [s async for s in api.realtime(refresh=0.001, limit=5)],
                )
            )
    assert results[0] == results[1]
    assert sum(map(len, results[0][0].values())) > 1000
    served = faulty.stats()
    statuses = {status for counts in served.values() for status in counts}
    assert {"429", "500", "503"} <= {str(s) for s in statuses}, served


def test_dropped_connections_are_retried(simulator_factory: Factory) -> None:
    clean, dropping = simulator_factory(), simulator_factory(faults={"drop_rate": 0.3, "seed": 5})
    with sync_client(clean) as a, sync_client(dropping, max_retries=30, retry_initial_seconds=0.001) as b:
        for args in [(), ("23/10/23", "23/10/23", "Camera2")]:
            assert a.get_logs_range(*args) == b.get_logs_range(*args)


async def test_retry_after_is_honoured(simulator: SimulatorServer) -> None:
    simulator.set_faults(throttle_rate=1.0, retry_after=1)
    transport = RecordingTransport()
    async with async_client(simulator, transport=transport, max_retries=2, retry_initial_seconds=0.01) as api:
        with pytest.raises(HTTPRequestError) as info:
            await api.get_logs_range("23/10/23")
    assert info.value.status == 429
    times = [t for t, _ in transport.sent]
    assert len(times) == 3
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(times))  # backoff alone: ~0.01 s


# -- realtime and the stop reply -------------------------------------------------------------------


def test_stop_reply_ends_the_stream(simulator: SimulatorServer) -> None:
    simulator.set_faults(stop_signal=True)
    with sync_client(simulator) as api:
        assert list(api.get_realtime_logs(refresh=0.05)) == []
        assert api.last_stop_reason == STOP_MESSAGE
        with pytest.raises(StopLogsSignal, match="No cameras active"):
            api._portal.call(api.async_client.get_realtime)


async def test_stop_reply_mid_stream_async(simulator: SimulatorServer) -> None:
    snapshots = []
    async with async_client(simulator) as api:
        async for snapshot in api.realtime(refresh=0.02):
            snapshots.append(snapshot)
            if len(snapshots) == 3:
                simulator.set_faults(stop_signal=True)
    assert snapshots == [simulator.world.present()] * 3


# -- sync / async parity ---------------------------------------------------------------------------


async def test_async_parity_with_sync(simulator: SimulatorServer) -> None:
    calls: list[tuple[object, ...]] = [
        (),
        ("23/10/23",),
        ("10:00:00 23/10/23", "24/10/23", "TestCamera"),
        ("05:07 24/10/23", "05:09:30 24/10/23"),
        (datetime(2023, 10, 23, 22, 0, 1), None, "Camera1"),
        ("23/10/23", "23/10/23", "NoSuchCamera"),
    ]
    async with async_client(simulator) as api:
        async_results = [await api.get_logs_range(*c) for c in calls]
        async_realtime = [s async for s in api.realtime(refresh=0.01, limit=2)]
    sync_api = sync_client(simulator)
    try:
        sync_results = await _in_thread(lambda: [sync_api.get_logs_range(*c) for c in calls])
        sync_realtime = await _in_thread(lambda: list(sync_api.get_realtime_logs(refresh=0.01, limit=2)))
    finally:
        sync_api.close()
    assert async_results == sync_results
    assert async_realtime == sync_realtime == [simulator.world.present()] * 2
    assert async_results[2] == truth(
        simulator,
        datetime(2023, 10, 23, 10, tzinfo=UTC),
        datetime(2023, 10, 24, 23, 59, 59, tzinfo=UTC),
        "TestCamera",
    )
    assert async_results[5] == {"NoSuchCamera": []}


async def _in_thread(work: Callable[[], object]) -> object:
    import asyncio

    return await asyncio.to_thread(work)


# -- webhook ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("post_realtime", "post_logs"), [(True, False), (False, False), (True, True), (False, True)]
)
def test_webhook_posts(
    simulator: SimulatorServer, webhook_server: WebhookServer, post_realtime: bool, post_logs: bool
) -> None:
    with sync_client(
        simulator,
        webhook_url=webhook_server.url,
        additional_headers={"Custom-Header": "Value"},
        post_realtime=post_realtime,
        post_logs=post_logs,
    ) as api:
        logs = api.get_logs_range("23/10/23", "23/10/23", "Camera1")
        snapshots = list(api.get_realtime_logs(refresh=0.01, limit=2))
    import orjson

    bodies = [orjson.loads(r.body) for r in webhook_server.received]
    assert bodies == ([logs] if post_logs else []) + (snapshots if post_realtime else [])
    for received in webhook_server.received:
        assert received.headers["custom-header"] == "Value"
        assert received.headers["content-type"] == "application/json"
        assert "x-api-key" not in received.headers
        assert simulator.api_key not in repr(received)


def test_failing_webhook_is_logged_and_the_stream_goes_on(
    simulator: SimulatorServer, webhook_server: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    webhook_server.statuses = [500] * 100
    caplog.set_level(logging.WARNING, logger="facespace_bridge")
    with sync_client(simulator, webhook_url=webhook_server.url) as api:
        snapshots = list(api.get_realtime_logs(refresh=0.01, limit=2))
    assert snapshots == [simulator.world.present()] * 2
    assert len(webhook_server.received) == 6  # 3 attempts per snapshot
    failures = [r for r in caplog.records if "webhook POST" in r.getMessage()]
    assert len(failures) == 2


def test_key_never_in_the_log_file_or_webhook(
    simulator: SimulatorServer,
    webhook_server: WebhookServer,
    tmp_path: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]
    caplog.set_level(logging.DEBUG)
    simulator.set_faults(error_rate=0.5, seed=3)
    with sync_client(
        simulator,
        log_to_file=True,
        log_level=logging.DEBUG,
        webhook_url=webhook_server.url,
        post_logs=True,
        additional_headers={"X-Api-Key": simulator.api_key},
        max_retries=20,
        retry_initial_seconds=0.001,
    ) as api:
        api.get_logs_range("23/10/23")
        list(api.get_realtime_logs(refresh=0.01, limit=2))
        log_file = api.log_file
    assert log_file is not None
    written = open(log_file, encoding="utf-8").read()
    assert "retry" in written and "webhook POST" in written  # the file has the client's lines
    assert simulator.api_key not in written
    assert all(simulator.api_key not in caplog.handler.format(r) for r in caplog.records)
    assert len(webhook_server.received) == 3
    assert all(simulator.api_key not in repr(r) for r in webhook_server.received)


def test_stop_from_another_thread_against_the_simulator(simulator: SimulatorServer) -> None:
    api = sync_client(simulator)
    timer = threading.Timer(0.5, api.stop_realtime_logs)
    timer.start()
    count = sum(1 for _ in api.get_realtime_logs(refresh=0.05))
    timer.join()
    api.close()
    assert count >= 2
