"""Destinations for events. Each sink is one file implementing `Sink` (base.py)."""

from facespace_bridge.sinks.base import Ack, Sink, SinkError

__all__ = ["Ack", "Sink", "SinkError"]
