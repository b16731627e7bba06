"""Webhook sink (`--broker webhook --webhook-url URL`): each event POSTed as JSON.

Carries the original client's webhook feature over to events, through the same
`WebhookPoster` the client uses (retries, never the API key). An event is acknowledged
on a 2xx reply; one the webhook keeps refusing is not, so the bridge retries it and
the checkpoint waits. Several POSTs may be in flight (`--webhook-concurrency`), so a
receiver that cares about order sorts by `seen_at`, and deduplicates by `event_id`.

Each POST is a CloudEvent in the HTTP binding's binary mode: the `ce-` headers of
facespace_bridge/cloudevents.py beside the unchanged JSON body, unless `--no-cloudevents`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click
import httpx
import orjson

from facespace_bridge.client.webhook import WebhookPoster
from facespace_bridge.cloudevents import CloudEvents, source_from_config
from facespace_bridge.events import Event
from facespace_bridge.settings import cli_options, from_options, setting
from facespace_bridge.sinks.base import Ack, Role, Sink, SinkError

HELP = "an HTTP POST per event"


@dataclass(frozen=True)
class WebhookSettings:
    """The webhook sink's settings, each with its CLI option (facespace_bridge/settings.py)."""

    url: str | None = setting(
        "--webhook-url", default=None, help="Webhook sink: URL that receives each event as a JSON POST."
    )
    headers: tuple[str, ...] = setting(
        "--webhook-header",
        "webhook_headers",
        default=(),
        multiple=True,
        metavar="NAME:VALUE",
        show_default=False,
        help="Webhook sink: extra header for every POST (repeatable).",
    )
    concurrency: int = setting(
        "--webhook-concurrency",
        default=4,
        type=click.IntRange(1, 256),
        help="Webhook sink: POSTs in flight at once.",
    )


OPTIONS = cli_options(WebhookSettings)


class WebhookSink(Sink):
    name = "webhook"

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        concurrency: int = WebhookSettings.concurrency,
        transport: httpx.AsyncBaseTransport | None = None,
        cloudevents_source: str | None = None,  # None: no ce- headers (--no-cloudevents)
    ) -> None:
        self.poster = WebhookPoster(url, headers=headers, transport=transport)
        self.cloudevents_source = cloudevents_source
        self._cloudevents = CloudEvents(cloudevents_source) if cloudevents_source is not None else None
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def publish(self, events: Sequence[Event]) -> Ack:
        posts = []
        for event in events:
            await self._slots.acquire()  # back-pressure: at most `concurrency` POSTs in flight
            task = asyncio.create_task(self._post(event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            posts.append(task)
        return asyncio.gather(*posts)

    async def _post(self, event: Event) -> None:
        try:
            # The payload is already canonical JSON: a Fragment sends those bytes unchanged.
            headers = self._cloudevents.http_headers(event) if self._cloudevents is not None else None
            if not await self.poster.post(orjson.Fragment(event.payload), headers):
                raise SinkError(f"webhook {self.poster.url} did not accept event {event.event_id}")
        finally:
            self._slots.release()

    async def flush(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.flush()
        await self.poster.aclose()


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"{value!r} is not NAME:VALUE", param_hint="--webhook-header")
        headers[name.strip()] = content.strip()
    return headers


def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> WebhookSink:
    settings = from_options(WebhookSettings, config)
    url = settings.url
    if not url:
        raise click.UsageError("--broker webhook needs --webhook-url URL")
    try:
        parsed = httpx.URL(url)
    except Exception:  # httpx.InvalidURL and friends
        parsed = httpx.URL("invalid:")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise click.BadParameter(f"{url!r} is not an http(s) URL", param_hint="--webhook-url")
    return WebhookSink(
        url,
        _headers(tuple(settings.headers)),
        settings.concurrency,
        cloudevents_source=source_from_config(config),
    )
