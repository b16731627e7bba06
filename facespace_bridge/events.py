"""Events: what the bridge publishes. Sighting / Presence / DeadLetter payloads and their ids.

See DESIGN §3. Every payload is canonical orjson bytes that validate against the
schema file its `schema` field names; the same sighting always gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    """One publishable event, already serialised and validated."""

    schema: str  # e.g. "facespace.sighting/v1", names schemas/sighting/v1.json
    event_id: str  # deterministic: consumers deduplicate on it
    camera_id: str  # the partition key: one camera's events stay in order
    payload: bytes  # canonical orjson bytes of `fields`
    fields: Mapping[str, Any]  # the decoded payload, for sinks that route on fields (MQTT)

    @property
    def kind(self) -> str:
        """`sighting`, `presence` or `deadletter`."""
        return self.schema.split("/", 1)[0].removeprefix("facespace.")
