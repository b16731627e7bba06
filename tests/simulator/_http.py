"""A tiny httpx helper for the simulator tests (the project's client is tested elsewhere)."""

from __future__ import annotations

from typing import Any

import httpx

from facespace_bridge.simulator import SimulatorServer


def api_get(sim: SimulatorServer, path: str, key: str | None = None, **params: str) -> httpx.Response:
    return httpx.get(
        f"{sim.base_url}/{path}", params=params, headers={"x-api-key": key or sim.api_key}, timeout=10
    )


def admin(sim: SimulatorServer, method: str, path: str, json: Any = None, **params: str) -> Any:
    reply = httpx.request(
        method,
        f"{sim.admin_url}/{path}",
        params=params,
        json=json,
        headers={"x-api-key": sim.api_key},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()
