"""Helpers for the client's tests: a minimal in-process FaceSpace double for httpx.MockTransport
(unit tests only; integration tests use the real simulator) and a loopback webhook receiver."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import orjson
import pytest

from facespace_bridge.client import format_entry

KEY = "unit-secret-key-1234"
BASE = "http://facespace.test/facespace"


def _wire(value: str, end: bool) -> datetime:
    """Read the query format like the hosted API: bounds inclusive at the resolution sent."""
    for fmt, step in (("%H:%M %d/%m/%y", timedelta(minutes=1)), ("%d/%m/%y", timedelta(days=1))):
        try:
            moment = datetime.strptime(value, fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        return moment + step if end else moment
    raise ValueError(value)


@dataclass
class FakeFaceSpace:
    """Serves /logs and /recognition from lists; records every request; `faults` is a
    queue of (status, headers) answered before real replies."""

    logs: dict[str, list[tuple[datetime, str]]] = field(default_factory=dict)
    extra_raw: dict[str, list[object]] = field(default_factory=dict)  # malformed entries, sent first
    realtime: list[dict[str, object]] = field(default_factory=list)
    faults: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    webhook_posts: list[httpx.Request] = field(default_factory=list)
    webhook_status: int = 200
    on_logs: Callable[[httpx.Request], None] | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.host != "facespace.test":
            self.webhook_posts.append(request)
            return httpx.Response(self.webhook_status, json={})
        self.requests.append(request)
        self.times.append(time.monotonic())
        if request.headers.get("x-api-key") != KEY:
            return httpx.Response(401, json={"error": "invalid API key"})
        if self.faults:
            status, headers = self.faults.pop(0)
            return httpx.Response(status, headers=headers, json={"error": f"injected {status}"})
        if request.url.path == "/facespace/recognition":
            if not self.realtime:
                return httpx.Response(200, json={"stop": "No cameras active at the moment"})
            return httpx.Response(200, json=self.realtime.pop(0))
        if request.url.path != "/facespace/logs":
            return httpx.Response(404, json={"error": "not found"})
        if self.on_logs:
            self.on_logs(request)
        params = request.url.params
        lo = _wire(params["start_time"], False) if "start_time" in params else None
        hi = _wire(params["end_time"], True) if "end_time" in params else None
        camera = params.get("camera_id")
        reply: dict[str, list[object]] = {}
        for cam, items in self.logs.items():
            if camera is not None and cam != camera:
                continue
            chosen: list[object] = list(self.extra_raw.get(cam, []))
            chosen += [
                format_entry(name, at)
                for at, name in items
                if (lo is None or at >= lo) and (hi is None or at < hi)
            ]
            if chosen:
                reply[cam] = chosen
        return httpx.Response(200, content=orjson.dumps(reply), headers={"content-type": "application/json"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def all_entries(self) -> list[tuple[str, datetime, str]]:
        return [(cam, at, name) for cam, items in self.logs.items() for at, name in items]


@pytest.fixture
def fake() -> FakeFaceSpace:
    return FakeFaceSpace()


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        server: WebhookServer = self.server  # type: ignore[assignment]
        server.received.append(
            Received("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        status = server.statuses.pop(0) if server.statuses else 200
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class WebhookServer(ThreadingHTTPServer):
    received: list[Received]
    statuses: list[int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    """A real HTTP receiver on loopback (stdlib server in a thread, so sync clients can post too)."""
    server = WebhookServer(("127.0.0.1", 0), _Receiver)
    server.received, server.statuses = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
