"""`AsyncSimulator` inside the test's own event loop."""

from __future__ import annotations

from datetime import datetime, timezone

import httpx

from facespace_bridge.simulator import AsyncSimulator, Faults


async def test_async_simulator_serves_from_the_running_loop() -> None:
    now = datetime(2023, 10, 25, tzinfo=timezone.utc)
    async with AsyncSimulator(
        api_key="k", seed=2, cameras=2, now=now, speed=0, faults=Faults(stop_signal=True)
    ) as sim:
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.base_url.endswith("/facespace")
        async with httpx.AsyncClient(headers={"x-api-key": "k"}) as client:
            logs = (await client.get(f"{sim.base_url}/logs", params={"start_time": "24/10/23"})).json()
            assert sum(map(len, logs.values())) == sim.world.count(
                datetime(2023, 10, 24, tzinfo=timezone.utc)
            )
            assert "stop" in (await client.get(f"{sim.base_url}/recognition")).json()
            sim.set_faults(stop_signal=False)
            assert set((await client.get(f"{sim.base_url}/recognition")).json()) == {"Camera1", "Camera2"}
    assert sim.stats()["/facespace/recognition"] == {"200": 2}
