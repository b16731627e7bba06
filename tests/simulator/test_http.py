"""The FaceSpace contract over real HTTP: paths, auth, range semantics, realtime, stop, clock."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import httpx

from facespace_bridge.client.entries import LogEntry, parse_entry
from facespace_bridge.simulator import STOP_MESSAGE, SimulatorServer
from tests.fixtures.simulator import SIM_NOW
from tests.simulator._http import admin, api_get

UTC = timezone.utc


def parsed(reply: dict[str, list[object]]) -> list[tuple[str, str, datetime]]:
    out = []
    for camera, items in reply.items():
        for raw in items:
            entry = parse_entry(camera, raw)
            assert isinstance(entry, LogEntry), raw
            out.append((camera, entry.person, entry.seen_at))
    return out


def truth(sim: SimulatorServer, start: datetime | None, end: datetime | None, camera: str | None = None):
    return list(sim.world.entries(start, end, camera))


def test_original_client_wire_format(simulator: SimulatorServer) -> None:
    # Exactly what facespace 0.1.2 sends for the README's first example.
    url = f"{simulator.base_url}/logs?start_time=10:00%2023/10/23&end_time=24/10/23&camera_id=TestCamera"
    reply = httpx.get(url, headers={"x-api-key": "test-key"})
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert list(body) == ["TestCamera"]
    expected = truth(
        simulator,
        datetime(2023, 10, 23, 10, 0, tzinfo=UTC),
        datetime(2023, 10, 24, 23, 59, 59, tzinfo=UTC),
        "TestCamera",
    )
    assert expected and parsed(body) == expected
    # Without camera_id (the README's second example): every camera, same semantics.
    everything = httpx.get(
        f"{simulator.base_url}/logs?start_time=10:00%2023/10/23&end_time=24/10/23",
        headers={"x-api-key": "test-key"},
    ).json()
    assert list(everything) == ["Camera1", "Camera2", "TestCamera"]
    assert parsed(everything) == truth(
        simulator, datetime(2023, 10, 23, 10, tzinfo=UTC), datetime(2023, 10, 24, 23, 59, 59, tzinfo=UTC)
    )


def test_whole_day_when_start_and_end_are_the_same_date(simulator: SimulatorServer) -> None:
    body = api_get(simulator, "logs", start_time="23/10/23", end_time="23/10/23", camera_id="Camera1").json()
    entries = parsed(body)
    assert entries == truth(
        simulator,
        datetime(2023, 10, 23, tzinfo=UTC),
        datetime(2023, 10, 23, 23, 59, 59, tzinfo=UTC),
        "Camera1",
    )
    assert {seen.date() for _, _, seen in entries} == {datetime(2023, 10, 23).date()}
    assert entries[0][2].hour < 2 and entries[-1][2].hour > 21  # both ends of the day are there


def test_hh_mm_end_includes_its_whole_minute(simulator: SimulatorServer) -> None:
    # Pick a minute that has entries, then ask for exactly that minute.
    _, _, seen = truth(simulator, datetime(2023, 10, 24, 9, tzinfo=UTC), None, "Camera2")[0]
    minute = seen.replace(second=0)
    text = f"{minute:%H:%M %d/%m/%y}"
    entries = parsed(api_get(simulator, "logs", start_time=text, end_time=text, camera_id="Camera2").json())
    assert entries == truth(simulator, minute, minute + timedelta(seconds=59), "Camera2")
    assert (("Camera2", *truth(simulator, seen, seen, "Camera2")[0][1:])) in entries


def test_day_first_dates(simulator_factory) -> None:
    # 01/02/23 is 1 February 2023, never 2 January.
    sim = simulator_factory(now=datetime(2023, 2, 3, tzinfo=UTC), history_hours=24 * 40)
    entries = parsed(api_get(sim, "logs", start_time="01/02/23", end_time="01/02/23").json())
    assert entries and {seen.date() for _, _, seen in entries} == {datetime(2023, 2, 1).date()}
    # 13/01/23 only makes sense day first; month first it would be refused.
    assert api_get(sim, "logs", start_time="13/01/23", end_time="13/01/23").status_code == 200
    assert api_get(sim, "logs", start_time="01/13/23").status_code == 400


def test_no_end_means_up_to_now_and_no_start_means_everything(simulator: SimulatorServer) -> None:
    from_start = parsed(api_get(simulator, "logs", start_time="12:00 24/10/23").json())
    assert from_start == truth(simulator, datetime(2023, 10, 24, 12, tzinfo=UTC), None)
    assert max(seen for _, _, seen in from_start) <= SIM_NOW
    everything = parsed(api_get(simulator, "logs").json())
    assert everything == truth(simulator, None, None) and len(everything) == simulator.world.count()
    # An end in the future shows nothing past the simulated now.
    future = parsed(api_get(simulator, "logs", start_time="24/10/23", end_time="31/12/23").json())
    assert future == truth(simulator, datetime(2023, 10, 24, tzinfo=UTC), None)


def test_cameras_without_entries(simulator: SimulatorServer) -> None:
    # A named camera always has its key; otherwise only cameras with entries are listed.
    assert api_get(simulator, "logs", camera_id="Nowhere").json() == {"Nowhere": []}
    assert api_get(
        simulator, "logs", start_time="01/01/23", end_time="01/01/23", camera_id="Camera1"
    ).json() == {"Camera1": []}
    assert api_get(simulator, "logs", start_time="01/01/23", end_time="01/01/23").json() == {}


def test_entries_are_in_time_order_with_same_second_groups(simulator: SimulatorServer) -> None:
    entries = parsed(api_get(simulator, "logs").json())
    for camera in simulator.world.cameras():
        stamps = [seen for cam, _, seen in entries if cam == camera]
        assert stamps == sorted(stamps)
    assert len({(c, s) for c, _, s in entries}) < len(entries)  # some seconds hold several entries
    assert len(set(entries)) < len(entries)  # the same person twice in one second


def test_auth(simulator: SimulatorServer) -> None:
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": ""}):
        for path in ("logs", "recognition"):
            reply = httpx.get(f"{simulator.base_url}/{path}", headers=headers)
            assert reply.status_code == 401
            assert isinstance(reply.json()["error"], str)
    assert httpx.get(f"{simulator.admin_url}/faults").status_code == 401


def test_bad_parameters_are_400_with_an_error(simulator: SimulatorServer) -> None:
    bad = [
        {"start_time": "2023-10-23"},
        {"start_time": "10:00:00:00 23/10/23"},
        {"end_time": "32/10/23"},
        {"end_time": "25:00 23/10/23"},
        {"start_time": "24/10/23", "end_time": "23/10/23"},
    ]
    for params in bad:
        reply = api_get(simulator, "logs", **params)
        assert reply.status_code == 400, params
        assert reply.json()["error"]
    unknown = httpx.get(f"{simulator.base_url}/nothing", headers={"x-api-key": "test-key"})
    assert unknown.status_code == 404 and "error" in unknown.json()


def test_recognition_lists_every_camera(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=240.0)
    reply = api_get(sim, "recognition").json()
    assert set(reply) == set(sim.world.cameras())
    assert reply == sim.world.present()
    assert any(reply.values())
    assert all(isinstance(name, str) for names in reply.values() for name in names)


def test_stop_signal_from_the_start_and_at_run_time(simulator_factory) -> None:
    sim = simulator_factory(faults={"stop_signal": True})
    assert api_get(sim, "recognition").json() == {"stop": STOP_MESSAGE}
    assert api_get(sim, "logs").status_code == 200  # history still answers
    admin(sim, "POST", "faults", json={"stop_signal": False})
    assert "stop" not in api_get(sim, "recognition").json()
    admin(sim, "POST", "faults", json={"stop_signal": True})
    assert api_get(sim, "recognition").json() == {"stop": STOP_MESSAGE}


def test_clock_control(simulator: SimulatorServer) -> None:
    window = {"start_time": "00:00 25/10/23", "end_time": "01:00 25/10/23"}
    assert api_get(simulator, "logs", **window).json() == {}
    clock = admin(simulator, "POST", "clock", json={"advance": 3600})
    assert clock["now"] == "2023-10-25T01:00:00Z" and clock["speed"] == 0
    after = parsed(api_get(simulator, "logs", **window).json())
    assert after and after == truth(simulator, SIM_NOW, SIM_NOW + timedelta(hours=1))
    simulator.advance(60)
    assert admin(simulator, "GET", "clock")["now"] == "2023-10-25T01:01:00Z"
    assert (
        admin(simulator, "POST", "clock", json={"now": "2023-10-25T03:00:00Z"})["now"]
        == "2023-10-25T03:00:00Z"
    )
    reply = httpx.post(f"{simulator.admin_url}/clock", json={"speed": -1}, headers={"x-api-key": "test-key"})
    assert reply.status_code == 400


def test_running_clock_reveals_entries(simulator_factory) -> None:
    sim = simulator_factory(speed=36_000.0)  # ten simulated hours per real second
    deadline = time.monotonic() + 30
    while sim.world.now() < SIM_NOW + timedelta(hours=1) and time.monotonic() < deadline:
        time.sleep(0.01)
    frozen = admin(sim, "POST", "clock", json={"freeze": True})
    assert frozen["speed"] == 0 and frozen["now"] >= "2023-10-25T01:00:00Z"
    assert parsed(api_get(sim, "logs", start_time="00:01 25/10/23").json())
    assert admin(sim, "GET", "clock")["now"] == frozen["now"]


def test_same_seed_same_answers_over_http(simulator_factory) -> None:
    one, two = simulator_factory(seed=11), simulator_factory(seed=11)
    for path, params in (("logs", {}), ("logs", {"start_time": "23/10/23"}), ("recognition", {})):
        assert api_get(one, path, **params).content == api_get(two, path, **params).content
    assert api_get(one, "logs").content != api_get(simulator_factory(seed=12), "logs").content


def test_truth_and_stats_endpoints(simulator: SimulatorServer) -> None:
    body = admin(
        simulator,
        "GET",
        "truth",
        start="2023-10-24T00:00:00Z",
        end="2023-10-24T05:59:59Z",
        camera_id="Camera1",
    )
    expected = truth(
        simulator,
        datetime(2023, 10, 24, tzinfo=UTC),
        datetime(2023, 10, 24, 5, 59, 59, tzinfo=UTC),
        "Camera1",
    )
    assert body["count"] == len(expected) == len(body["entries"])
    assert body["entries"][0] == ["Camera1", expected[0][1], f"{expected[0][2]:%Y-%m-%dT%H:%M:%SZ}"]
    assert admin(simulator, "GET", "truth", count_only="1") == {"count": simulator.world.count()}
    world = admin(simulator, "GET", "world")
    assert world["cameras"] == ["Camera1", "Camera2", "TestCamera"] and world["now"] == "2023-10-25T00:00:00Z"
    api_get(simulator, "logs")
    api_get(simulator, "logs", key="nope")
    stats = admin(simulator, "GET", "stats")
    assert stats["requests"]["/facespace/logs"] == {"200": 1, "401": 1}
    assert stats["entries_served"] == simulator.world.count()
