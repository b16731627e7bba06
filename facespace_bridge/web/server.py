"""The page's HTTP server (aiohttp): the page, its static files and its live feed.

- `GET /`: the page (static/index.html). Every URL in it is relative, so it works at `/`
  and behind a reverse proxy at any prefix; behind Home Assistant's ingress, whose proxy
  names its prefix in `X-Ingress-Path`, the page also gets `<base href="<prefix>/">`, so it
  works even where the address lacks the final slash.
- `GET /static/...`: the script, the style sheet and the vendored chart library (uPlot).
- `GET /api/live`: a WebSocket that sends a snapshot, then updates (push.py). A WebSocket
  rather than Server-Sent Events because Home Assistant's ingress proxy passes WebSockets
  through as they are, and compressed event streams until 2026.1, which browsers buffer.
- `GET /api/state`: the same snapshot as JSON, for a look with curl.
- `GET /healthz`: "ok", as on the metrics port (the add-on's watchdog asks the ingress port).

Each port the page is served on has its own `Access` rule (access.py): `PageServer.listen`
may be called for several ports (the add-on serves the ingress port beside `--web-port`),
all fed by one `Broadcaster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import WSMsgType, web

from facespace_bridge.metrics import healthz
from facespace_bridge.web.access import Access
from facespace_bridge.web.push import Broadcaster, Status
from facespace_bridge.web.state import PageState

STATIC = Path(__file__).resolve().parent / "static"
INGRESS_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")  # a path on this host, nothing that leaves it
SEND_TIMEOUT = 30.0  # seconds one message may take to go out before the page is dropped
SECURITY_HEADERS = {
    # Nothing from another host: scripts, styles, fonts and connections stay on this one.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'self'; form-action 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def can_bind(host: str, port: int) -> str | None:
    """Why the page could not listen on `host:port`, or None if it can (for `check`)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    family, kind, proto, _, where = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp's server does
        try:
            probe.bind(where)
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


class PageServer:
    """The page, served on one or more ports, fed by one page state."""

    def __init__(self, state: PageState, status: Status, *, interval: float = 0.5) -> None:
        self.state = state
        self.broadcaster = Broadcaster(state, status, interval=interval)
        self._runners: list[web.AppRunner] = []
        self._pages: set[asyncio.Task[None]] = set()
        self._index = (STATIC / "index.html").read_text()

    async def listen(self, host: str, port: int, access: Access) -> str:
        """Serve the page on `host:port` under `access`; returns its URL (the port bound, when
        `port` is 0). Raises OSError when the port cannot be bound."""
        app = web.Application(middlewares=[self._headers, access.middleware])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/live", self._live)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/healthz", healthz)
        app.router.add_static("/static", STATIC, append_version=False)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runners.append(runner)
        self.broadcaster.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        return f"http://{shown}:{bound_port}/"

    async def close(self) -> None:
        for task in list(self._pages):
            task.cancel()
        await asyncio.gather(*self._pages, return_exceptions=True)
        await self.broadcaster.close()
        self.state.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()

    # -- handlers ---------------------------------------------------------------------------------

    @web.middleware
    async def _headers(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        response.headers.setdefault("Cache-Control", "no-cache")
        return response

    async def _page(self, request: web.Request) -> web.Response:
        page = self._index
        prefix = request.headers.get("X-Ingress-Path", "").rstrip("/")
        if prefix and INGRESS_PATH.fullmatch(prefix):
            page = page.replace("<head>", f'<head>\n<base href="{html.escape(prefix)}/">', 1)
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(body=self.broadcaster.snapshot(), content_type="application/json")

    async def _live(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, compress=False, max_msg_size=4096)
        await ws.prepare(request)
        task = asyncio.current_task()
        assert task is not None
        self._pages.add(task)
        subscriber = self.broadcaster.subscribe()
        reader = asyncio.create_task(self._read(ws))  # answers pings and notices the close
        try:
            while not ws.closed:
                sending = asyncio.ensure_future(subscriber.next(self.broadcaster.snapshot))
                await asyncio.wait((sending, reader), return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                    break  # the page went away
                try:
                    await asyncio.wait_for(ws.send_frame(sending.result(), WSMsgType.TEXT), SEND_TIMEOUT)
                except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                    break  # a page that cannot take a message in that long reconnects by itself
        finally:
            self.broadcaster.unsubscribe(subscriber)
            reader.cancel()
            with contextlib.suppress(Exception):
                await ws.close()
            self._pages.discard(task)
        return ws

    @staticmethod
    async def _read(ws: web.WebSocketResponse) -> None:
        async for message in ws:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
