"""The client's exceptions: the original `facespace` package's names and meanings."""

from __future__ import annotations


class FaceSpaceError(Exception):
    """Base class of every error this package raises on purpose."""


class APIKeyError(FaceSpaceError):
    """No API key was given, or the API refused it (401/403)."""


class DateParseError(FaceSpaceError):
    """A start or end time is not in one of the accepted formats."""


class HTTPRequestError(FaceSpaceError):
    """The API could not be reached, timed out, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status, None for network failures
        self.error = error  # the API's {"error": ...} text, when it sent one


class InvalidUsageError(FaceSpaceError):
    """A method was called with arguments of the wrong type or value."""


class StopLogsSignal(FaceSpaceError):
    """The API's stop reply ("no cameras active"): the realtime stream ends."""
