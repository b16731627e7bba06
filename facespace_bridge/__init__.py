"""facespace-bridge: FaceSpace sightings into Kafka, MQTT, webhooks and files.

Public names are re-exported here; modules behind it are the package's own business.
"""

from facespace_bridge._version import __version__
from facespace_bridge.client import (
    APIKeyError,
    AsyncLogsAPI,
    DateParseError,
    FaceSpaceError,
    HTTPRequestError,
    InvalidUsageError,
    LogsAPI,
    StopLogsSignal,
)
from facespace_bridge.events import (
    Event,
    deadletter_event,
    parse_rfc3339,
    presence_event,
    seen_at_text,
    sighting_event,
)
from facespace_bridge.schemas import SchemaNotFoundError, validate

__all__ = [
    "APIKeyError",
    "AsyncLogsAPI",
    "DateParseError",
    "Event",
    "FaceSpaceError",
    "HTTPRequestError",
    "InvalidUsageError",
    "LogsAPI",
    "SchemaNotFoundError",
    "StopLogsSignal",
    "__version__",
    "deadletter_event",
    "parse_rfc3339",
    "presence_event",
    "seen_at_text",
    "sighting_event",
    "validate",
]
