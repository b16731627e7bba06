"""The aiohttp application: the FaceSpace API (`/facespace/...`) and the admin API (`/admin/...`)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

from facespace_bridge.simulator._faults import STOP_MESSAGE, FaultInjector
from facespace_bridge.simulator._world import World, from_epoch, to_epoch

log = logging.getLogger("facespace_bridge.simulator")

API_PREFIX = "/facespace"
ADMIN_PREFIX = "/admin"
KEY_HEADER = "x-api-key"
WIRE_FORMATS_HELP = "HH:MM DD/MM/YY or DD/MM/YY (day first, two-digit year, UTC)"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequest(Exception):
    """A malformed parameter: answered 400 {"error": ...}."""


def _json(data: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": message}, status=status, headers=headers)


# -- the wire's time parameters ----------------------------------------------------------------

_WIRE_FORMATS = (
    ("%H:%M %d/%m/%y", "minute"),
    ("%d/%m/%y", "day"),
    ("%H:%M:%S %d/%m/%y", "second"),  # not sent by the original client; accepted as an extension
)
_RESOLUTION = {"second": timedelta(seconds=1), "minute": timedelta(minutes=1), "day": timedelta(days=1)}


def parse_wire_time(name: str, text: str, *, end: bool) -> int:
    """Epoch second of a `start_time` / `end_time` value. An end covers its whole resolution
    (the day of a date, the minute of HH:MM): the last second of it is returned."""
    for fmt, resolution in _WIRE_FORMATS:
        try:
            moment = datetime.strptime(text.strip(), fmt).replace(tzinfo=timezone.utc)
        except ValueError:
            continue
        if end:
            moment += _RESOLUTION[resolution] - timedelta(seconds=1)
        return int(moment.timestamp())
    raise _BadRequest(f"invalid {name} {text!r}: expected {WIRE_FORMATS_HELP}")


def _parse_iso(name: str, text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _BadRequest(f"invalid {name} {text!r}: expected ISO 8601, e.g. 2023-10-23T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"request body is not JSON: {exc}") from None


# -- the application ---------------------------------------------------------------------------


class SimulatorApp:
    """Handlers and the state they share; `build()` gives the aiohttp application."""

    def __init__(self, world: World, injector: FaultInjector, api_key: str) -> None:
        if not api_key:
            raise ValueError("the simulator needs a non-empty API key")
        self.world = world
        self.injector = injector
        self._key = api_key.encode()
        self.requests: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.entries_served = 0

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._count, self._errors, self._auth])
        app.router.add_get(f"{API_PREFIX}/logs", self.logs)
        app.router.add_get(f"{API_PREFIX}/recognition", self.recognition)
        app.router.add_get(f"{ADMIN_PREFIX}/truth", self.truth)
        app.router.add_get(f"{ADMIN_PREFIX}/faults", self.get_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/faults", self.post_faults)
        app.router.add_post(f"{ADMIN_PREFIX}/insert", self.insert)
        app.router.add_get(f"{ADMIN_PREFIX}/clock", self.get_clock)
        app.router.add_post(f"{ADMIN_PREFIX}/clock", self.post_clock)
        app.router.add_get(f"{ADMIN_PREFIX}/stats", self.stats)
        app.router.add_get(f"{ADMIN_PREFIX}/world", self.world_info)
        app.router.add_get(f"{ADMIN_PREFIX}/malformed", self.malformed)
        return app

    # -- middlewares (outermost first) ---------------------------------------------------------

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "(unknown)"
        try:
            response = await handler(request)
        except _Dropped:
            self.requests[path]["dropped"] += 1
            # The transport is already aborted: aiohttp writes nothing of this response.
            return web.Response(status=204)
        self.requests[path][str(response.status)] += 1
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error reply is JSON `{"error": ...}`, as the API's were."""
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _error(400, str(exc))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return _error(
                exc.status,
                exc.reason,
                headers={"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None,
            )

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get(KEY_HEADER, "").encode()
        if not hmac.compare_digest(given, self._key):
            return _error(
                401, "Invalid or missing API key" if given else "Missing API key (x-api-key header)"
            )
        return await handler(request)

    # -- the FaceSpace API --------------------------------------------------------------------

    async def _fault(self, request: web.Request, kind: str) -> tuple[int, web.Response | None]:
        """Apply latency and the request's fault; a response here replaces the real one."""
        number, decision = self.injector.decide(kind)
        if decision.latency_s:
            await asyncio.sleep(decision.latency_s)
        if decision.outcome == "drop":
            # Close the socket with no reply at all: the client sees a broken connection.
            if request.transport is not None:
                request.transport.abort()
            raise _Dropped
        if decision.outcome == "throttle":
            return number, _error(
                429, "Too many requests (simulated)", headers={"Retry-After": str(decision.retry_after)}
            )
        if decision.outcome == "error":
            text = (
                "Internal server error (simulated)"
                if decision.status == 500
                else "Service unavailable (simulated)"
            )
            return number, _error(decision.status, text)
        return number, None

    async def logs(self, request: web.Request) -> web.Response:
        number, faulted = await self._fault(request, "logs")
        if faulted is not None:
            return faulted
        query = request.query
        start_text, end_text = query.get("start_time"), query.get("end_time")
        camera_id = query.get("camera_id") or None  # an empty camera_id means all cameras
        lo = parse_wire_time("start_time", start_text, end=False) if start_text else -(2**62)
        now = self.world.visible_until()
        hi = parse_wire_time("end_time", end_text, end=True) if end_text else now
        if start_text and end_text and lo > hi:
            raise _BadRequest(f"start_time {start_text!r} is after end_time {end_text!r}")
        hi = min(hi, now)  # entries after the simulated now are not visible yet
        reply: dict[str, list[object]] = {}
        if camera_id is not None:
            # A named camera always gets its key, with [] when it has nothing (or is unknown).
            reply[camera_id] = (
                self.world.wire_range(camera_id, lo, hi) if self.world.has_camera(camera_id) else []
            )
        else:
            for camera in self.world.cameras():
                items = self.world.wire_range(camera, lo, hi)
                if items:
                    reply[camera] = items
        self.entries_served += sum(map(len, reply.values()))
        self.injector.add_malformed(number, reply)
        return _json(reply)

    async def recognition(self, request: web.Request) -> web.Response:
        _, faulted = await self._fault(request, "recognition")
        if faulted is not None:
            return faulted
        if self.injector.faults.stop_signal:
            return _json({"stop": STOP_MESSAGE})
        return _json(self.injector.flicker(self.world.present()))

    # -- admin --------------------------------------------------------------------------------

    async def truth(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        start = _parse_iso("start", query["start"]) if query.get("start") else None
        end = _parse_iso("end", query["end"]) if query.get("end") else None
        camera_id = query.get("camera_id") or None
        if query.get("count_only") in ("1", "true"):
            return _json({"count": self.world.count(start, end, camera_id)})
        entries = [
            (camera, person, _iso(seen_at))
            for camera, person, seen_at in self.world.entries(start, end, camera_id)
        ]
        return _json({"count": len(entries), "entries": entries})

    async def get_faults(self, request: web.Request) -> web.Response:
        return _json(self.injector.faults.to_json())

    async def post_faults(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _BadRequest("body must be a JSON object of fault settings")
        try:
            faults = self.injector.update(**body)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        log.info("faults now %s", faults.to_json())
        return _json(faults.to_json())

    async def insert(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        items = body if isinstance(body, list) else [body]
        done = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("camera_id"), str):
                raise _BadRequest(
                    "each insert is an object with camera_id and person (or raw), seen_at optional"
                )
            seen_at = _parse_iso("seen_at", item["seen_at"]) if item.get("seen_at") else None
            try:
                if "raw" in item:
                    at = self.world.insert_malformed(item["camera_id"], item["raw"], seen_at)
                    done.append({"camera_id": item["camera_id"], "raw": item["raw"], "seen_at": _iso(at)})
                elif isinstance(item.get("person"), str):
                    at = self.world.insert(item["camera_id"], item["person"], seen_at)
                    done.append(
                        {"camera_id": item["camera_id"], "person": item["person"], "seen_at": _iso(at)}
                    )
                else:
                    raise _BadRequest("an insert needs person (a string) or raw")
            except ValueError as exc:
                raise _BadRequest(str(exc)) from None
        return _json({"inserted": done})

    def _clock_json(self) -> dict[str, Any]:
        return {
            "now": _iso(self.world.now()),
            "speed": self.world.clock.speed,
            "origin": _iso(from_epoch(self.world.origin)),
        }

    async def get_clock(self, request: web.Request) -> web.Response:
        return _json(self._clock_json())

    async def post_clock(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        if not isinstance(body, dict) or not set(body) <= {"now", "speed", "advance", "freeze"}:
            raise _BadRequest(
                "body is an object with any of now (ISO), speed, advance (seconds), freeze (true)"
            )
        now = _parse_iso("now", body["now"]) if isinstance(body.get("now"), str) else None
        speed = body.get("speed")
        advance = body.get("advance", 0)
        for name, value in (("speed", speed), ("advance", advance)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            ):
                raise _BadRequest(f"{name} must be a non-negative number")
        if body.get("freeze") is True:
            speed = 0.0
        self.world.clock.set(
            now=to_epoch(now) if now is not None else None,
            speed=float(speed) if speed is not None else None,
            advance=float(advance),
        )
        log.info("clock now %s", self._clock_json())
        return _json(self._clock_json())

    async def stats(self, request: web.Request) -> web.Response:
        return _json(
            {
                "requests": {path: dict(counts) for path, counts in self.requests.items()},
                "entries_served": self.entries_served,
                "malformed_served": self.injector.served_malformed_count,
            }
        )

    async def world_info(self, request: web.Request) -> web.Response:
        config = self.world.config
        return _json(
            {
                "cameras": self.world.cameras(),
                "people": self.world.people(),
                "seed": config.seed,
                "visits_per_hour": config.visits_per_hour,
                "history_hours": config.history_hours,
                **self._clock_json(),
            }
        )

    async def malformed(self, request: web.Request) -> web.Response:
        stored = [
            {"camera_id": item.camera_id, "seen_at": _iso(item.seen_at), "value": item.value}
            for item in self.world.malformed()
        ]
        served = [
            {"request": item.request, "camera_id": item.camera_id, "index": item.index, "value": item.value}
            for item in list(self.injector.served_malformed)
        ]
        return _json(
            {"stored": stored, "served": served, "served_count": self.injector.served_malformed_count}
        )


class _Dropped(Exception):
    """The connection was closed on purpose; nothing is sent."""
