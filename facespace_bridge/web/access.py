"""Who may see the page: one `Access` rule per port it is served on.

The page shows people's names, so it is never open to a network without a check:
- `run --web-port`: with `FACESPACE_BRIDGE_WEB_PASSWORD` set, every request needs that
  password (HTTP basic auth, any user name); without one, only loopback may listen
  (`exposure_problem` says why a host is refused, before anything starts).
- Home Assistant's ingress: only the ingress proxy's address may connect (`ingress`), and
  Home Assistant has authenticated the user before it forwards anything; any other client
  gets 403, whatever headers it sends.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from aiohttp import hdrs, web

PASSWORD_VARIABLE = "FACESPACE_BRIDGE_WEB_PASSWORD"
INGRESS_PROXY = "172.30.32.2"  # the Supervisor's ingress proxy, as Home Assistant documents it
INGRESS_PROXY_VARIABLE = "FACESPACE_BRIDGE_INGRESS_PROXY"  # another address (tests)
REALM = "facespace-bridge"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def address(text: str) -> Address:
    """An IP address, an IPv4-mapped IPv6 address as the IPv4 one; ValueError if it is none."""
    parsed = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


def is_loopback(host: str) -> bool:
    """Whether listening on `host` keeps the page on this machine (`localhost` or a loopback
    address; any other name may resolve to anything, so it is not)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def exposure_problem(host: str, password: str | None) -> str | None:
    """Why the page may not listen on `host` without a password, or None."""
    if password or is_loopback(host):
        return None
    return (
        f"--web-host {host} would show people's names beyond this machine without a password: "
        f"set {PASSWORD_VARIABLE}, or keep the default 127.0.0.1"
    )


def password_from(environ: Mapping[str, str] = os.environ) -> str | None:
    return environ.get(PASSWORD_VARIABLE) or None


@dataclass(frozen=True)
class Access:
    """The rule of one port: a password (basic auth, any user name), the client addresses
    allowed to connect at all, both or neither (loopback only, checked at start)."""

    password: str | None = None
    peers: frozenset[Address] | None = None

    @classmethod
    def ingress(cls, environ: Mapping[str, str] = os.environ) -> Access:
        """Only the ingress proxy (FACESPACE_BRIDGE_INGRESS_PROXY names another address)."""
        return cls(peers=frozenset({address(environ.get(INGRESS_PROXY_VARIABLE) or INGRESS_PROXY)}))

    def refusal(self, request: web.Request) -> web.Response | None:
        """The answer to a request this rule refuses, or None to let it through."""
        if self.peers is not None:
            try:
                allowed = request.remote is not None and address(request.remote) in self.peers
            except ValueError:
                allowed = False
            if not allowed:
                return web.Response(status=403, text="forbidden: this port answers the ingress proxy only\n")
        if self.password is not None and not self._authorized(request.headers.get(hdrs.AUTHORIZATION)):
            return web.Response(
                status=401,
                text="this page needs the bridge's web password\n",
                headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"'},
            )
        return None

    def _authorized(self, header: str | None) -> bool:
        """Whether an `Authorization: Basic base64(user:password)` header (RFC 7617) holds the
        password, whatever the user name."""
        scheme, _, credentials = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (ValueError, binascii.Error):  # (UnicodeError is a ValueError)
            return False
        _, colon, given = decoded.partition(":")
        assert self.password is not None
        return bool(colon) and hmac.compare_digest(given.encode(), self.password.encode())

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = self.refusal(request)
        return refused if refused is not None else await handler(request)
