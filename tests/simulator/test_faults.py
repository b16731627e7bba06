"""Faults over HTTP: rates honoured, reproducible from a seed, malformed and late entries."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

import httpx
import pytest

from facespace_bridge.client.entries import BadEntry, LogEntry, parse_entry
from facespace_bridge.simulator import MALFORMED_SAMPLES, SimulatorServer
from tests.simulator._http import admin, api_get

UTC = timezone.utc


def statuses(sim: SimulatorServer, n: int, path: str = "recognition") -> list[int]:
    out = []
    with httpx.Client(headers={"x-api-key": sim.api_key}, timeout=10) as client:
        for _ in range(n):
            try:
                out.append(client.get(f"{sim.base_url}/{path}").status_code)
            except httpx.TransportError:
                out.append(0)  # dropped connection
    return out


def test_error_and_throttle_rates_are_roughly_honoured(simulator_factory) -> None:
    sim = simulator_factory(faults={"error_rate": 0.3, "throttle_rate": 0.1, "retry_after": 2})
    seen = Counter(statuses(sim, 400))
    assert 0.2 * 400 <= seen[500] + seen[503] <= 0.4 * 400
    assert seen[500] and seen[503]
    assert 0.04 * 400 <= seen[429] <= 0.16 * 400
    assert seen[200] + seen[500] + seen[503] + seen[429] == 400
    assert sim.stats()["/facespace/recognition"] == {str(k): v for k, v in seen.items()}


def test_error_replies_carry_json_and_retry_after(simulator_factory) -> None:
    sim = simulator_factory(faults={"throttle_rate": 1.0, "retry_after": 3})
    reply = api_get(sim, "logs")
    assert reply.status_code == 429 and reply.headers["Retry-After"] == "3" and reply.json()["error"]
    sim.set_faults(throttle_rate=0.0, error_rate=1.0)
    reply = api_get(sim, "logs")
    assert reply.status_code in (500, 503) and reply.json()["error"]
    sim.set_faults(error_rate=0.0)
    assert api_get(sim, "logs").status_code == 200


def test_faults_can_target_one_path(simulator_factory) -> None:
    sim = simulator_factory(faults={"error_rate": 1.0, "paths": ["recognition"]})
    assert api_get(sim, "logs").status_code == 200
    assert api_get(sim, "recognition").status_code >= 500
    assert admin(sim, "GET", "faults")["paths"] == ["recognition"]  # admin itself is never faulted


def test_faults_are_reproducible_from_their_seed(simulator_factory) -> None:
    faults = {"error_rate": 0.2, "throttle_rate": 0.2, "drop_rate": 0.1, "seed": 5}
    first = statuses(simulator_factory(faults=faults), 60)
    assert first == statuses(simulator_factory(faults=faults), 60)
    assert first != statuses(simulator_factory(faults={**faults, "seed": 6}), 60)


def test_dropped_connections(simulator_factory) -> None:
    sim = simulator_factory(faults={"drop_rate": 1.0})
    with pytest.raises(httpx.TransportError):
        api_get(sim, "logs")
    assert sim.stats()["/facespace/logs"] == {"dropped": 1}
    sim.set_faults(drop_rate=0.0)
    assert api_get(sim, "logs").status_code == 200


def test_admin_rejects_bad_fault_settings(simulator: SimulatorServer) -> None:
    for bad in (
        {"error_rate": 2},
        {"nonsense": 1},
        {"stop_signal": "yes"},
        {"error_rate": 0.7, "throttle_rate": 0.7},
    ):
        reply = httpx.post(f"{simulator.admin_url}/faults", json=bad, headers={"x-api-key": "test-key"})
        assert reply.status_code == 400 and reply.json()["error"], bad
    assert admin(simulator, "GET", "faults")["error_rate"] == 0


def test_malformed_entries_are_served_listed_and_not_truth(simulator: SimulatorServer) -> None:
    admin(simulator, "POST", "faults", json={"malformed_rate": 1.0})
    body = api_get(simulator, "logs", start_time="23/10/23", end_time="23/10/23").json()
    bad = [
        (cam, raw)
        for cam, items in body.items()
        for raw in items
        if isinstance(parse_entry(cam, raw), BadEntry)
    ]
    assert len(bad) == len(body)  # one junk value per camera list at rate 1
    good = [parse_entry(cam, raw) for cam, items in body.items() for raw in items]
    good_entries = [(e.camera_id, e.person, e.seen_at) for e in good if isinstance(e, LogEntry)]
    assert good_entries == list(
        simulator.world.entries(
            datetime(2023, 10, 23, tzinfo=UTC), datetime(2023, 10, 23, 23, 59, 59, tzinfo=UTC)
        )
    )
    listed = admin(simulator, "GET", "malformed")
    assert listed["served_count"] == len(bad)
    assert sorted((m["camera_id"], repr(m["value"])) for m in listed["served"]) == sorted(
        (cam, repr(raw)) for cam, raw in bad
    )
    # Every sample really is malformed for the project's parser.
    assert all(isinstance(parse_entry("C", sample), BadEntry) for sample in MALFORMED_SAMPLES)


def test_stored_malformed_value_via_admin(simulator: SimulatorServer) -> None:
    count = simulator.world.count()
    done = admin(
        simulator,
        "POST",
        "insert",
        json={"camera_id": "Camera2", "raw": 12345, "seen_at": "2023-10-24T10:00:00Z"},
    )
    assert done["inserted"][0]["seen_at"] == "2023-10-24T10:00:00Z"
    body = api_get(
        simulator, "logs", start_time="10:00 24/10/23", end_time="10:00 24/10/23", camera_id="Camera2"
    )
    assert 12345 in body.json()["Camera2"]
    assert simulator.world.count() == count
    assert admin(simulator, "GET", "malformed")["stored"] == [
        {"camera_id": "Camera2", "seen_at": "2023-10-24T10:00:00Z", "value": 12345}
    ]


def test_late_insert_appears_in_logs_and_truth(simulator: SimulatorServer) -> None:
    window = {"start_time": "08:00 24/10/23", "end_time": "08:30 24/10/23", "camera_id": "Camera1"}
    before = api_get(simulator, "logs", **window).json()["Camera1"]
    count = admin(simulator, "GET", "truth", count_only="1")["count"]
    admin(
        simulator,
        "POST",
        "insert",
        json=[{"camera_id": "Camera1", "person": "Zoë Late @ Night", "seen_at": "2023-10-24T08:15:00Z"}],
    )
    after = api_get(simulator, "logs", **window).json()["Camera1"]
    assert len(after) == len(before) + 1 and "Zoë Late @ Night @ 08:15:00 24/10/23" in after
    assert admin(simulator, "GET", "truth", count_only="1")["count"] == count + 1
    truth = admin(simulator, "GET", "truth", start="2023-10-24T08:15:00Z", end="2023-10-24T08:15:00Z")
    assert ["Camera1", "Zoë Late @ Night", "2023-10-24T08:15:00Z"] in truth["entries"]
    # Without seen_at the entry is stamped with the simulated now.
    now = admin(simulator, "POST", "insert", json={"camera_id": "Camera1", "person": "Now Here"})
    assert now["inserted"][0]["seen_at"] == "2023-10-25T00:00:00Z"
    bad = httpx.post(
        f"{simulator.admin_url}/insert",
        json={"camera_id": "Nowhere", "person": "X"},
        headers={"x-api-key": "test-key"},
    )
    assert bad.status_code == 400


def test_recognition_flicker(simulator_factory) -> None:
    sim = simulator_factory(visits_per_hour=400.0, faults={"flicker_rate": 0.3})
    present = sim.world.present()
    assert sum(map(len, present.values())) >= 3
    replies = [api_get(sim, "recognition").json() for _ in range(30)]
    assert all(set(r[c]) <= set(present[c]) for r in replies for c in present)
    assert any(r != present for r in replies)  # someone went missing from some reply
    union = {c: set().union(*(r[c] for r in replies)) for c in present}
    assert union == {c: set(p) for c, p in present.items()}  # ... but never for good


def test_latency_holds_the_reply_and_does_not_hold_stopping(simulator_factory) -> None:
    sim = simulator_factory(faults={"latency_ms": 60_000})
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{sim.base_url}/recognition", headers={"x-api-key": sim.api_key}, timeout=0.3)
    sim.stop()  # the held request is still sleeping inside the server
    assert not sim.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{sim.root_url}/admin/clock", headers={"x-api-key": sim.api_key}, timeout=1)
