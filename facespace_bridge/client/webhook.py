"""A webhook poster: POST one JSON document, retry a few times, never raise into the caller.

Used by the client (`webhook_url`) and by the bridge's webhook sink. It never sends the
FaceSpace API key: headers named `x-api-key`, and any header whose value contains one of
the given secrets, are dropped, from the poster's headers and from those of a single POST
alike; failures are logged (through the redacting logger) and reported as `False`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from facespace_bridge.client._logging import client_logger
from facespace_bridge.client.redaction import redactor

_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_KEY_HEADER = "x-api-key"


class _RetryableStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def safe_headers(headers: Mapping[str, str] | None, secrets: Iterable[str]) -> dict[str, str]:
    """`headers` without the API key header and without any header carrying a secret: one of
    `secrets`, or any the process registered with the redactor (the API key, broker passwords)."""
    secrets = [s for s in secrets if s]
    return {
        name: value
        for name, value in (headers or {}).items()
        if name.lower() != _KEY_HEADER
        and not any(secret in str(value) for secret in secrets)
        and redactor.redact(str(value)) == str(value)
    }


class WebhookPoster:
    """POSTs JSON documents to one URL. Safe to share between tasks of one event loop."""

    def __init__(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        timeout: float = 10.0,
        attempts: int = 3,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.url = url
        self._secrets = [s for s in secrets if s]
        self.headers = {**safe_headers(headers, self._secrets), "content-type": "application/json"}
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.log = logger or client_logger("facespace_bridge.client.webhook")
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self.delivered = 0
        self.failed = 0

    def _client(self) -> httpx.AsyncClient:
        if self._http is None or self._http.is_closed:
            # A client of its own: nothing configured for the FaceSpace API can leak in here.
            self._http = httpx.AsyncClient(timeout=self.timeout, transport=self._transport)
        return self._http

    async def _post_once(self, body: bytes, headers: Mapping[str, str]) -> None:
        response = await self._client().post(self.url, content=body, headers=headers)
        if response.status_code in _RETRY_STATUSES:
            raise _RetryableStatus(response.status_code)
        response.raise_for_status()

    async def post(self, payload: object, headers: Mapping[str, str] | None = None) -> bool:
        """POST `payload` as JSON, with `headers` added to the poster's for this request only
        (they replace a poster header of the same name, whatever its case); True when the
        webhook accepted it. Never raises (except cancellation): a failing webhook must not
        break the caller's stream."""
        try:
            body = orjson.dumps(payload)
            sent: Mapping[str, str] = self.headers
            if headers:
                merged = httpx.Headers(self.headers)  # case-insensitive: a header replaces its namesake
                merged.update(safe_headers(headers, self._secrets))
                sent = merged
            retrying = AsyncRetrying(
                retry=retry_if_exception_type((_RetryableStatus, httpx.TransportError)),
                wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max)
                + wait_random(0, self.backoff_initial),
                stop=stop_after_attempt(self.attempts),
                reraise=True,
            )
            async for attempt in retrying:
                with attempt:
                    await self._post_once(body, sent)
        except Exception as exc:
            self.failed += 1
            self.log.warning("webhook POST to %s failed: %s: %s", self.url, type(exc).__name__, exc)
            return False
        self.delivered += 1
        self.log.debug("webhook POST to %s delivered (%d bytes)", self.url, len(body))
        return True

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
