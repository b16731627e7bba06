"""Destinations for events. Each sink is one module implementing `Sink` (base.py)."""

from facespace_bridge.sinks.base import Ack, LastSeen, Sink, SinkError

__all__ = ["Ack", "LastSeen", "Sink", "SinkError"]
