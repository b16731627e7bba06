"""Prometheus metrics, the status document and the health endpoints (`/metrics`, `/status`,
`/healthz`, `/readyz`).

Served by aiohttp (already the simulator's server) so that the probes and the metrics
share one port; prometheus-client renders the exposition format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from facespace_bridge.checkpoints import Checkpoint
from facespace_bridge.privacy.filters import REASONS, EntryFilter

PREFIX = "facespace_bridge"
STATES = ("STARTING", "RUNNING", "DEGRADED", "FAILED", "STOPPING")  # status.State's values


class Metrics:
    """All of the bridge's metrics, in a registry of their own (tests run several bridges)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter(
            f"{PREFIX}_events_published", "Events acknowledged by a sink", ["sink", "type"], registry=r
        )
        self.publish_failures = Counter(
            f"{PREFIX}_publish_failures",
            "Events a sink failed to acknowledge (retried)",
            ["sink"],
            registry=r,
        )
        self.dead_letters = Counter(
            f"{PREFIX}_dead_letters",
            "Entries or payloads sent to the dead-letter destination",
            ["source"],
            registry=r,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests", "HTTP requests to the FaceSpace API", ["endpoint", "status"], registry=r
        )
        self.api_errors = Counter(
            f"{PREFIX}_api_errors",
            "FaceSpace API requests that failed (network or non-2xx)",
            ["endpoint"],
            registry=r,
        )
        self.camera_lag = Gauge(
            f"{PREFIX}_camera_lag_seconds",
            "Now minus the newest seen_at read for a camera",
            ["camera"],
            registry=r,
        )
        self.checkpoint_saved = Gauge(
            f"{PREFIX}_checkpoint_saved_timestamp_seconds",
            "When the checkpoint was last made durable (checkpoint age = time() - this)",
            registry=r,
        )
        self.in_flight = Gauge(
            f"{PREFIX}_in_flight_events", "Events handed to sinks, not yet acknowledged", registry=r
        )
        self.checkpoint_position = Gauge(
            f"{PREFIX}_checkpoint_timestamp_seconds",
            "The durable resume point: every sighting before this time is acknowledged and checkpointed",
            registry=r,
        )
        self.sink_connected = Gauge(
            f"{PREFIX}_sink_connected",
            "1 while the sink has a working connection, else 0",
            ["sink"],
            registry=r,
        )
        self.api_retries = Counter(
            f"{PREFIX}_api_retries",
            "FaceSpace API requests retried after a failure",
            ["endpoint"],
            registry=r,
        )
        self.ha_events_held_back = Counter(
            f"{PREFIX}_ha_events_held_back",
            "Sightings kept from Home Assistant event entities as history (too old, or replayed)",
            registry=r,
        )
        self.sink_reconnects = Counter(
            f"{PREFIX}_sink_reconnects",
            "Times a sink's connection came back after it was lost (MQTT)",
            ["sink"],
            registry=r,
        )
        self.state = Gauge(
            f"{PREFIX}_state",
            "1 for the bridge's current state (STARTING, RUNNING, DEGRADED, FAILED, STOPPING), else 0",
            ["state"],
            registry=r,
        )
        self.filtered = Counter(
            f"{PREFIX}_filtered",
            "History entries left out by a filter (--camera-id, --exclude-camera, --person, "
            "--exclude-person), by reason: camera or person; never a name",
            ["reason"],
            registry=r,
        )
        for reason in REASONS:
            self.filtered.labels(reason=reason)
        self._held_back = 0
        self._reconnects: dict[str, int] = {}
        self._filters: list[tuple[EntryFilter, dict[str, int]]] = []

    def follow(self, entry_filter: EntryFilter) -> None:
        """Count what `entry_filter` leaves out (brought up to date at each scrape: the sources
        only add to the filter's own counts, which costs the hot path nothing more)."""
        self._filters.append((entry_filter, dict.fromkeys(REASONS, 0)))

    def saved(self, checkpoint: Checkpoint) -> None:
        """A checkpoint was made durable."""
        self.checkpoint_saved.set_to_current_time()
        resume = checkpoint.earliest()
        if resume is not None:
            self.checkpoint_position.set(resume.timestamp())

    def observe(self, status: dict[str, Any]) -> None:
        """Bring the gauges that mirror the status document up to date (at each scrape)."""
        for state in STATES:
            self.state.labels(state=state).set(1 if status["state"] == state else 0)
        held_back = 0
        for name, sink in status["sinks"].items():
            self.sink_connected.labels(sink=name).set(1 if sink["connected"] else 0)
            held_back += sink.get("ha_events_held_back", 0)
            reconnects = sink.get("reconnects", 0)  # counters that follow the sink's own count
            if reconnects > self._reconnects.get(name, 0):
                self.sink_reconnects.labels(sink=name).inc(reconnects - self._reconnects.get(name, 0))
                self._reconnects[name] = reconnects
        # A counter that follows the sinks' own count (it only ever grows).
        if held_back > self._held_back:
            self.ha_events_held_back.inc(held_back - self._held_back)
            self._held_back = held_back
        for entry_filter, counted in self._filters:
            for reason, total in entry_filter.counts.items():
                if total > counted.get(reason, 0):
                    self.filtered.labels(reason=reason).inc(total - counted.get(reason, 0))
                    counted[reason] = total

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountingTransport(httpx.AsyncBaseTransport):
    """Wraps the client's transport to count API requests by endpoint and status (retries included)."""

    def __init__(self, metrics: Metrics, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.metrics = metrics
        self.inner = inner or httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        endpoint = request.url.path.rsplit("/", 1)[-1] or "/"
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.HTTPError:
            self.metrics.api_requests.labels(endpoint=endpoint, status="network-error").inc()
            self.metrics.api_errors.labels(endpoint=endpoint).inc()
            raise
        self.metrics.api_requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        if response.status_code >= 400:
            self.metrics.api_errors.labels(endpoint=endpoint).inc()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def healthz(_: web.Request) -> web.Response:
    """`GET /healthz`: the process answers (a watchdog's probe; `/readyz` says more)."""
    return web.Response(text="ok\n")


async def serve_metrics(
    metrics: Metrics, port: int, status: Callable[[], dict[str, Any]], host: str = "0.0.0.0"
) -> web.AppRunner:
    """Start the metrics/status/health server; returns its runner (call `cleanup()` to stop it).
    `status` makes the bridge's status document (facespace_bridge/status.py)."""

    async def metrics_view(_: web.Request) -> web.Response:
        metrics.observe(status())
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status_view(_: web.Request) -> web.Response:
        return web.Response(
            body=orjson.dumps(status(), option=orjson.OPT_INDENT_2), content_type="application/json"
        )

    async def readyz(_: web.Request) -> web.Response:
        state = status()["state"]
        if state == "RUNNING":
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready: {state}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/status", status_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
