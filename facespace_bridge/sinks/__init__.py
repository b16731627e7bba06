"""Destinations for events. Each sink is one module implementing `Sink` (base.py)."""

from facespace_bridge.sinks.base import Ack, LastSeen, Role, Sink, SinkError

__all__ = ["Ack", "LastSeen", "Role", "Sink", "SinkError"]
