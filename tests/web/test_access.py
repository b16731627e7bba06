"""Who may see the page: the password rule, the ingress rule, loopback without a password."""

from __future__ import annotations

import base64

import pytest
from aiohttp.test_utils import make_mocked_request

from facespace_bridge.web.access import INGRESS_PROXY, Access, exposure_problem, is_loopback


def request(remote: str = "127.0.0.1", authorization: str | None = None, **headers: str):
    if authorization is not None:
        headers["Authorization"] = authorization
    made = make_mocked_request("GET", "/", headers=headers)
    # The peer address as aiohttp reports it (the transport's peername).
    made._transport_peername = (remote, 50000)  # type: ignore[attr-defined]
    return made


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("myhost.lan", False),  # a name may resolve to anything
    ],
)
def test_loopback_means_this_machine_only(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    problem = exposure_problem(host, None)
    assert (problem is None) is loopback
    if problem:
        assert host in problem and "FACESPACE_BRIDGE_WEB_PASSWORD" in problem and "\n" not in problem
    assert exposure_problem(host, "secret") is None  # with a password any host may serve it


def test_the_password_is_asked_for_with_basic_auth_any_user() -> None:
    rule = Access(password="s3cret ünïcode")
    refused = rule.refusal(request())
    assert refused is not None and refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith('Basic realm="facespace-bridge"')
    for wrong in (basic("x", "wrong"), "Basic !!notbase64", "Bearer s3cret", basic("x", "s3cret")):
        answer = rule.refusal(request(authorization=wrong))
        assert answer is not None and answer.status == 401, wrong
    assert rule.refusal(request(authorization=basic("anyone", "s3cret ünïcode"))) is None
    assert rule.refusal(request(authorization=basic("", "s3cret ünïcode"))) is None


def test_the_ingress_port_answers_only_the_proxy_whatever_the_headers() -> None:
    rule = Access.ingress({})
    assert rule.refusal(request(INGRESS_PROXY)) is None
    assert rule.refusal(request(f"::ffff:{INGRESS_PROXY}")) is None  # an IPv4-mapped IPv6 peer
    for other in ("127.0.0.1", "172.30.32.3", "::1", "not-an-address"):
        refused = rule.refusal(
            request(other, **{"X-Forwarded-For": INGRESS_PROXY, "X-Real-IP": INGRESS_PROXY})
        )
        assert refused is not None and refused.status == 403, other


def test_the_ingress_proxy_address_can_be_named_and_combined_with_a_password() -> None:
    rule = Access.ingress({"FACESPACE_BRIDGE_INGRESS_PROXY": "127.0.0.1"})
    assert rule.refusal(request("127.0.0.1")) is None
    assert rule.refusal(request(INGRESS_PROXY)) is not None
    both = Access(password="pw", peers=rule.peers)
    assert both.refusal(request("127.0.0.1")).status == 401  # type: ignore[union-attr]
    assert both.refusal(request("127.0.0.1", basic("u", "pw"))) is None
