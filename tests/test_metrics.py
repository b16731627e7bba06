"""Metrics that follow the status document: the counters grow by what the sinks' own counts grew."""

from __future__ import annotations

from typing import Any

from facespace_bridge.metrics import Metrics


def status(**sinks: dict[str, Any]) -> dict[str, Any]:
    return {"state": "RUNNING", "sinks": {name: {"connected": True, **sink} for name, sink in sinks.items()}}


def test_sink_reconnects_follow_each_sinks_count() -> None:
    metrics = Metrics()
    reconnects = metrics.sink_reconnects
    metrics.observe(status(mqtt={"reconnects": 0}, kafka={}))
    assert reconnects.labels(sink="mqtt")._value.get() == 0
    metrics.observe(status(mqtt={"reconnects": 2}, kafka={}))
    metrics.observe(status(mqtt={"reconnects": 2}, kafka={}))  # a scrape with nothing new
    metrics.observe(status(mqtt={"reconnects": 3}, kafka={}))
    assert reconnects.labels(sink="mqtt")._value.get() == 3
    assert b'facespace_bridge_sink_reconnects_total{sink="mqtt"} 3.0' in metrics.render()
