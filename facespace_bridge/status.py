"""How a running bridge is: the `GET /status` document, `/readyz` and the state metrics.

One function, `bridge_status`, reads the bridge's parts (sinks and the publisher's counts,
the sources' poll health, the durable checkpoint) and decides the state, the way Kafka
Connect's status endpoint reports a connector: everything an operator asks first, in one
JSON document. `/readyz` is `state == RUNNING`, so the probe and the document never disagree.
"""

from __future__ import annotations

import time
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING, Any

from facespace_bridge.checkpoints import rfc3339

if TYPE_CHECKING:
    from facespace_bridge.bridge import Bridge
    from facespace_bridge.sources.base import PollHealth

# A sink with events in flight and no acknowledgement for this long is not delivering: some
# clients (aiokafka) only notice a broker that went away when their requests time out.
STALLED_AFTER = 5.0


class State(str, Enum):
    STARTING = "STARTING"  # opening the checkpoint store and the sinks, waiting for the first polls
    RUNNING = "RUNNING"
    DEGRADED = "DEGRADED"  # running, but a sink or the API is failing; nothing is lost, it catches up
    FAILED = "FAILED"  # the run ended with an error
    STOPPING = "STOPPING"


def bridge_status(bridge: Bridge) -> dict[str, Any]:
    """The `/status` document of a bridge (see docs/operations.md for an example)."""
    now = time.time()
    sinks = {sink.name: _sink_status(bridge, index, now) for index, sink in enumerate(bridge.sinks)}
    sources: dict[str, Any] = {}
    if bridge.options.realtime:
        sources["realtime"] = _source_status(bridge.realtime_source.health)
    if bridge.options.logs:
        sources["logs"] = _source_status(bridge.logs_source.health)
    problems = [f"sink {name}: not delivering" for name, sink in sinks.items() if not sink["connected"]]
    problems += [f"source {name}: failing" for name, src in sources.items() if src["state"] == "failing"]
    if bridge.options.logs and _stale(bridge.logs_source.health, bridge, now):
        problems.append("source logs: no answered poll lately")
    return {
        "state": _state(bridge, sources, problems).value,
        "problems": problems,
        "sinks": sinks,
        "sources": sources,
        "cameras": _cameras(bridge),
        "backfill": _backfill(bridge),
    }


def _state(bridge: Bridge, sources: dict[str, Any], problems: list[str]) -> State:
    if bridge.failure is not None:
        return State.FAILED
    if bridge.stopping:
        return State.STOPPING
    if not bridge.sinks_started:
        return State.STARTING
    if problems:
        return State.DEGRADED
    if any(source["state"] == "starting" for source in sources.values()):
        return State.STARTING
    return State.RUNNING


def _sink_status(bridge: Bridge, index: int, now: float) -> dict[str, Any]:
    sink = bridge.sinks[index]
    stats = bridge.publisher.stats[sink.name] if bridge.publisher else None
    in_flight = stats.in_flight if stats else 0
    stalled = stats is not None and stats.stalled_for(time.monotonic()) > STALLED_AFTER
    delivering = not (bridge.publisher and sink.name in bridge.publisher.failing)
    errors = [e for e in (sink.last_error, stats.last_error if stats else None) if e is not None]
    last_error = max(errors, default=None)
    return {
        "connected": bool(bridge.sinks_started and sink.connected and delivering and not stalled),
        "in_flight": in_flight,
        "acknowledged": stats.acknowledged if stats else 0,
        "failed": stats.failed if stats else 0,
        "last_error": last_error[1] if last_error else None,
        "last_error_at": _at(last_error[0]) if last_error else None,
        **sink.details(),
    }


def _source_status(health: PollHealth) -> dict[str, Any]:
    return {
        "state": health.state,
        "last_poll": _at(health.last_success),
        "last_error": health.last_error[1] if health.last_error else None,
        "last_error_at": _at(health.last_error[0]) if health.last_error else None,
        "stop_reply": health.stop_reason,
    }


def _stale(health: PollHealth, bridge: Bridge, now: float) -> bool:
    """No answered /logs poll for several intervals (the regular poll and its retries)."""
    if health.last_success is None:
        return False  # still starting: the first poll decides
    return now - health.last_success > 3 * max(bridge.options.tail_interval, bridge.options.refresh) + 30


def _cameras(bridge: Bridge) -> dict[str, Any]:
    """Per camera: the durable resume point and how far the newest sighting read is behind now."""
    checkpoint = bridge.saved_checkpoint
    newest = bridge.logs_source.newest_seen
    cameras = sorted(set(newest) | set(checkpoint.cameras if checkpoint else ()))
    now = bridge.clock()
    result = {}
    for camera in cameras:
        position = checkpoint.position(camera) if checkpoint else None
        result[camera] = {
            "position": rfc3339(position.seen_at) if position else None,
            "count": position.count if position else 0,
            "lag_seconds": round((now - newest[camera]).total_seconds(), 3) if camera in newest else None,
        }
    return result


def _backfill(bridge: Bridge) -> dict[str, Any] | None:
    """Its range, whether it is done, and how far every sink has acknowledged it: `position`
    (the heartbeat time, before which every camera is complete) and `progress` (the share of
    the range before it, 0 to 1)."""
    checkpoint = bridge.tracker.checkpoint if bridge.tracker else bridge.saved_checkpoint
    backfill = checkpoint.backfill if checkpoint else None
    if backfill is None:
        return None
    position = checkpoint.earliest() if checkpoint else None
    span = (backfill.t0 - backfill.start).total_seconds()
    if backfill.complete:
        progress = 1.0
    elif position is None or span <= 0:
        progress = 0.0
    else:
        progress = min(1.0, max(0.0, (position - backfill.start).total_seconds() / span))
    return {
        "from": rfc3339(backfill.start),
        "to": rfc3339(backfill.t0),
        "done": backfill.complete,
        "position": rfc3339(position) if position else None,
        "progress": round(progress, 4),
    }


def _at(seconds: float | None) -> str | None:
    return None if seconds is None else rfc3339(datetime.fromtimestamp(seconds).astimezone())
