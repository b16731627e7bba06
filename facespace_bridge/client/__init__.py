"""The FaceSpace client: the original `facespace` API (sync `LogsAPI`) on an async core."""

from facespace_bridge.client.entries import BadEntry, LogEntry, format_entry, parse_entry
from facespace_bridge.client.errors import (
    APIKeyError,
    DateParseError,
    FaceSpaceError,
    HTTPRequestError,
    InvalidUsageError,
    StopLogsSignal,
)

__all__ = [
    "APIKeyError",
    "BadEntry",
    "DateParseError",
    "FaceSpaceError",
    "HTTPRequestError",
    "InvalidUsageError",
    "LogEntry",
    "StopLogsSignal",
    "format_entry",
    "parse_entry",
]
