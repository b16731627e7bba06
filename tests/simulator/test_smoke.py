"""The fixture gives a reachable simulator that answers the README's first example."""

import httpx

from facespace_bridge.simulator import SimulatorServer


def test_fixture_serves_logs(simulator: SimulatorServer) -> None:
    reply = httpx.get(
        f"{simulator.base_url}/logs",
        params={"start_time": "10:00 23/10/23", "end_time": "24/10/23", "camera_id": "TestCamera"},
        headers={"x-api-key": simulator.api_key},
    )
    assert reply.status_code == 200
    entries = reply.json()["TestCamera"]
    assert len(entries) == simulator.world.count(
        simulator.world.now().replace(day=23, hour=10), None, "TestCamera"
    )
