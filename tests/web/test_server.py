"""The page's server over real HTTP on loopback: the page and its files, relative URLs only,
the ingress prefix, the access rule on every route (the WebSocket too), the live feed."""

from __future__ import annotations

import base64
import re
import socket
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson
import pytest

from facespace_bridge.client import LogEntry
from facespace_bridge.events import sighting_event
from facespace_bridge.sources.base import Batch
from facespace_bridge.web import Access, PageServer, PageState, can_bind
from facespace_bridge.web.server import STATIC

pytestmark = pytest.mark.timeout(60)

STATUS: dict[str, Any] = {
    "state": "DEGRADED",
    "problems": ["sink mqtt: not delivering"],
    "sinks": {
        "mqtt": {
            "connected": False,
            "in_flight": 3,
            "acknowledged": 10,
            "failed": 3,
            "last_error": "connection refused",
            "last_error_at": "2023-10-25T12:00:00Z",
        }
    },
    "sources": {},
    "cameras": {},
    "backfill": None,
}


@pytest.fixture
async def served() -> AsyncIterator[tuple[PageServer, str]]:
    state = PageState(600.0)
    server = PageServer(state, lambda: STATUS, interval=0.05)
    url = await server.listen("127.0.0.1", 0, Access())
    yield server, url
    await server.close()


async def test_the_page_and_everything_it_loads_come_from_here_by_relative_urls(served) -> None:
    _, url = served
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as reply:
            assert reply.status == 200
            page = await reply.text()
            policy = reply.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "connect-src 'self'" in policy
        references = re.findall(r'(?:src|href)="([^"]*)"', page)
        assert references
        for reference in references:
            assert not re.match(r"^(/|[a-z]+:|//)", reference), reference  # relative, no host
            async with http.get(url + reference) as reply:
                assert reply.status == 200, reference
    # Nor does the script or the style sheet name another host or a root path.
    for name in ("app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"https?://", text), name
        assert not re.search(r"""["'`]/(api|static)""", text), name


async def test_an_ingress_prefix_becomes_the_base_only_when_it_is_a_plain_path(served) -> None:
    _, url = served
    async with aiohttp.ClientSession() as http:
        for header, base in [
            ("/api/hassio_ingress/abc-DEF_123", '<base href="/api/hassio_ingress/abc-DEF_123/">'),
            ("/some/prefix/", '<base href="/some/prefix/">'),
            ("//evil.example/x", None),
            ('/x"><script>', None),
            ("https://evil.example", None),
        ]:
            async with http.get(url, headers={"X-Ingress-Path": header}) as reply:
                page = await reply.text()
            if base is None:
                assert "<base" not in page, header
            else:
                assert base in page, header


async def test_the_live_feed_sends_a_snapshot_then_updates(served) -> None:
    server, url = served
    async with aiohttp.ClientSession() as http, http.ws_connect(url + "api/live") as ws:
        snapshot = orjson.loads((await ws.receive(timeout=10)).data)
        assert snapshot["type"] == "snapshot"
        assert snapshot["bridge"]["state"] == "DEGRADED"
        (problem,) = snapshot["bridge"]["problems"]
        assert problem["text"].startswith("MQTT is not taking events.")
        assert problem["text"].endswith("Last error: connection refused.")
        assert "Nothing is lost" in problem["text"] and problem["since"] == "2023-10-25T12:00:00Z"
        seen_at = datetime.now(timezone.utc).replace(microsecond=0)
        event = sighting_event(LogEntry("Door", "Zoë", seen_at, "raw"), 0)
        server.state.acknowledged(Batch([event], {"Door": (seen_at, 1)}))
        while True:
            update = orjson.loads((await ws.receive(timeout=10)).data)
            if "sightings" in update:
                break
        assert update["type"] == "update"
        assert [(s["person"], s["camera"]) for s in update["sightings"]] == [("Zoë", "Door")]
        assert update["cameras"]["Door"]["last_hour"] == 1
    async with aiohttp.ClientSession() as http, http.get(url + "api/state") as reply:
        assert (await reply.json())["sightings"][0]["person"] == "Zoë"


async def test_with_a_password_every_route_asks_for_it() -> None:
    state = PageState(600.0)
    server = PageServer(state, lambda: STATUS)
    url = await server.listen("127.0.0.1", 0, Access(password="pw"))
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("", "static/app.js", "api/state", "api/live", "nothing/here"):
                async with http.get(url + path) as reply:
                    assert reply.status == 401, path
                    assert reply.headers["WWW-Authenticate"].startswith("Basic ")
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await http.ws_connect(url + "api/live")
        authorization = {"Authorization": "Basic " + base64.b64encode(b"me:pw").decode()}
        async with aiohttp.ClientSession(headers=authorization) as http:
            async with http.get(url) as reply:
                assert reply.status == 200
            async with http.ws_connect(url + "api/live") as ws:
                assert orjson.loads((await ws.receive(timeout=10)).data)["type"] == "snapshot"
    finally:
        await server.close()


def test_check_can_tell_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert can_bind("127.0.0.1", port) is not None  # in use
    assert can_bind("127.0.0.1", port) is None
    assert "resolve" in (can_bind("no-such-host.invalid", 80) or "")


async def test_one_page_on_two_ports_each_with_its_rule() -> None:
    """As the add-on serves it: the ingress port answers only the ingress proxy's address (here
    127.0.0.2, a loopback address of its own), the other port its own rule; one state feeds both."""
    state = PageState(600.0)
    server = PageServer(state, lambda: STATUS)
    ingress = await server.listen(
        "127.0.0.1", 0, Access.ingress({"FACESPACE_BRIDGE_INGRESS_PROXY": "127.0.0.2"})
    )
    direct = await server.listen("127.0.0.1", 0, Access(password="pw"))
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(ingress, headers={"X-Forwarded-For": "127.0.0.2"}) as reply:
                assert reply.status == 403  # from 127.0.0.1, whatever it claims
            async with http.get(direct) as reply:
                assert reply.status == 401
        proxy = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=proxy) as http:
            async with http.get(ingress, headers={"X-Ingress-Path": "/api/hassio_ingress/t0k3n"}) as reply:
                assert reply.status == 200
                assert '<base href="/api/hassio_ingress/t0k3n/">' in await reply.text()
            async with http.ws_connect(ingress + "api/live") as ws:
                assert orjson.loads((await ws.receive(timeout=10)).data)["type"] == "snapshot"
    finally:
        await server.close()
