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

__all__ = [
    "APIKeyError",
    "AsyncLogsAPI",
    "DateParseError",
    "FaceSpaceError",
    "HTTPRequestError",
    "InvalidUsageError",
    "LogsAPI",
    "StopLogsSignal",
    "__version__",
]
