"""The webhook sink's POSTs as a receiver sees them: a real aiohttp server on loopback, each
POST parsed by the CloudEvents SDK's HTTP binding (binary mode)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
import pytest
from aiohttp import web
from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from multidict import CIMultiDict

from facespace_bridge.client.entries import LogEntry
from facespace_bridge.events import Event, deadletter_event, presence_event, sighting_event
from facespace_bridge.sinks.webhook import WebhookSink, from_config

API_URL = "https://bridge:pa55word@VisionAPI.Automa.One/facespace/?key=k-123"
CE_SOURCE = "https://visionapi.automa.one/facespace"
SEEN = datetime(2023, 10, 23, 0, 5, 22, tzinfo=timezone.utc)
HOSTILE_CAMERAS = ["Door #2", '"Front" 100% ~ok~', "李小龍", "Café 😀 /a?b=c&d;e"]


@dataclass(frozen=True)
class Post:
    headers: CIMultiDict[str]
    body: bytes


class Receiver:
    """A webhook: records every POST (headers as received, raw body) and answers 204."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append(Post(CIMultiDict(request.headers), await request.read()))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def sink_for(hook: Receiver, **options: object) -> WebhookSink:
    return from_config({"webhook_url": hook.url, "api_url": API_URL, **options})


def sighting(camera: str) -> Event:
    return sighting_event(LogEntry(camera, "Mary Ann", SEEN, ""), 0)


async def deliver(sink: WebhookSink, events: list[Event]) -> None:
    async with sink:
        await asyncio.gather(*[await sink.publish([event]) for event in events])


def cloudevent_of(post: Post) -> BaseCloudEvent:
    message = ce_http.HTTPMessage(headers=dict(post.headers), body=post.body)
    return ce_http.from_http(message, JSONFormat())


async def test_each_post_is_a_cloudevent_the_sdk_reads(receiver):
    events = [
        sighting("Camera1"),
        presence_event("Camera2", ["Bob"], ["Bob"], [], SEEN),
        deadletter_event(None, "Alice @ 25:61:00 23/10/23", "bad time", "logs"),
    ]
    await deliver(sink_for(receiver), events)

    by_body = {post.body: post for post in receiver.posts}
    assert sorted(by_body) == sorted(event.payload for event in events)  # bodies unchanged, one each
    for event in events:
        post = by_body[event.payload]
        assert post.headers["content-type"] == "application/json"
        assert "pa55word" not in str(post.headers) and "k-123" not in str(post.headers)
        parsed = cloudevent_of(post)
        assert parsed.get_specversion() == "1.0"
        assert parsed.get_id() == event.event_id
        assert parsed.get_source() == CE_SOURCE
        assert parsed.get_type() == f"one.automa.facespace.{event.kind}.v1"
        assert parsed.get_dataschema() == f"urn:facespace-bridge:schema:{event.kind}/v1"
        assert parsed.get_datacontenttype() == "application/json"
        assert parsed.get_data() == orjson.loads(event.payload)
        if event.kind == "deadletter":  # no time, no camera: neither header is sent
            assert "ce-time" not in post.headers and "ce-subject" not in post.headers
        else:
            assert parsed.get_time() == SEEN
            assert parsed.get_subject() == event.camera_id
        assert len(post.headers.getall("ce-id")) == 1


async def test_hostile_camera_ids_round_trip(receiver):
    events = [sighting(camera) for camera in HOSTILE_CAMERAS]
    await deliver(sink_for(receiver), events)
    subjects = {}
    for post in receiver.posts:
        for name, value in post.headers.items():
            if name.lower().startswith("ce-"):  # percent-encoded: printable ASCII, no space or quote
                assert value.isascii() and value.isprintable() and " " not in value and '"' not in value
        subjects[orjson.loads(post.body)["camera_id"]] = cloudevent_of(post).get_subject()
    assert subjects == {camera: camera for camera in HOSTILE_CAMERAS}


async def test_a_camera_id_with_a_line_break_injects_no_header(receiver):
    camera = "Cam\r\nX-Injected: yes"
    await deliver(sink_for(receiver), [sighting(camera)])
    (post,) = receiver.posts
    assert "x-injected" not in post.headers and "ce-subject" not in post.headers  # not a CE String
    assert orjson.loads(post.body)["camera_id"] == camera  # the payload still carries it
    assert cloudevent_of(post).get_id() == sighting(camera).event_id


async def test_no_cloudevents_sends_no_ce_headers(receiver):
    event = sighting("Camera1")
    await deliver(sink_for(receiver, cloudevents=False, webhook_headers=("X-Team: faces",)), [event])
    (post,) = receiver.posts
    assert [name for name in post.headers if name.lower().startswith("ce-")] == []
    assert post.headers["x-team"] == "faces" and post.body == event.payload


async def test_our_attributes_replace_a_configured_header_of_the_same_name(receiver):
    sink = sink_for(receiver, webhook_headers=("CE-Source: forged", "X-Team: faces"))
    await deliver(sink, [sighting("Camera1")])
    (post,) = receiver.posts
    assert post.headers.getall("ce-source") == [CE_SOURCE]
    assert post.headers["x-team"] == "faces"
