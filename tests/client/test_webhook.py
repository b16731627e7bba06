"""WebhookPoster: headers of a single POST join the poster's, under the same rules (unit tests,
httpx.MockTransport; the sink's POSTs to a real server are in tests/sinks/test_webhook.py)."""

from __future__ import annotations

import httpx

from facespace_bridge.client.webhook import WebhookPoster

KEY = "k-123-secret"


async def test_per_request_headers_join_replace_and_never_carry_a_secret():
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    poster = WebhookPoster(
        "http://hook.test/in",
        headers={"X-Team": "faces", "Ce-Source": "configured"},
        secrets=[KEY],
        transport=httpx.MockTransport(handler),
    )
    try:
        assert await poster.post({"n": 1}, {"ce-source": "ours", "ce-id": "1", "ce-subject": f"cam {KEY}"})
        assert await poster.post({"n": 2}, {"X-API-Key": KEY})
        assert await poster.post({"n": 3})
    finally:
        await poster.aclose()

    first, second, third = (request.headers for request in sent)
    assert first.get_list("ce-source") == ["ours"]  # replaces the configured one, whatever its case
    assert first["ce-id"] == "1" and first["x-team"] == "faces"
    assert "ce-subject" not in first  # it carried the secret
    assert "x-api-key" not in second
    assert third.get_list("ce-source") == ["configured"] and "ce-id" not in third  # for one POST only
    assert all(KEY not in str(headers.raw) for headers in (first, second, third))
    assert all(headers["content-type"] == "application/json" for headers in (first, second, third))
