"""The FaceSpace client: the original `facespace` API (sync `LogsAPI`) on an async core."""

from facespace_bridge.client._async import DEFAULT_BASE_URL, AsyncLogsAPI
from facespace_bridge.client._sync import LogsAPI
from facespace_bridge.client._timefmt import ACCEPTED_FORMATS, parse_user_time
from facespace_bridge.client._windows import Window
from facespace_bridge.client.entries import BadEntry, LogEntry, format_entry, parse_entry
from facespace_bridge.client.errors import (
    APIKeyError,
    DateParseError,
    FaceSpaceError,
    HTTPRequestError,
    InvalidUsageError,
    StopLogsSignal,
)
from facespace_bridge.client.redaction import redactor
from facespace_bridge.client.webhook import WebhookPoster

__all__ = [
    "ACCEPTED_FORMATS",
    "DEFAULT_BASE_URL",
    "APIKeyError",
    "AsyncLogsAPI",
    "BadEntry",
    "DateParseError",
    "FaceSpaceError",
    "HTTPRequestError",
    "InvalidUsageError",
    "LogEntry",
    "LogsAPI",
    "StopLogsSignal",
    "WebhookPoster",
    "Window",
    "format_entry",
    "parse_entry",
    "parse_user_time",
    "redactor",
]
