"""Where an MQTT connection goes: the broker URL (`mqtt://` or `mqtts://`) and the TLS files,
parsed and checked without I/O; the password never appears in their text."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from facespace_bridge.sinks.base import SinkError


@dataclass(frozen=True)
class BrokerAddress:
    """Where to connect; `str()` never shows the password."""

    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.username}{':***' if self.password else ''}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str, username: str | None = None, password: str | None = None) -> BrokerAddress:
    """`mqtt://[user[:pass]@]host[:port]` or `mqtts://...`; credentials in the URL win over
    the separate ones. Raises ValueError with a message that never contains the password."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid mqtt:// or mqtts:// URL") from None
    if parts.scheme not in ("mqtt", "mqtts"):
        given = f"{parts.scheme}://" if parts.scheme else "none"
        raise ValueError(f"scheme must be mqtt:// or mqtts://, not {given}")
    if not parts.hostname:
        raise ValueError("no host in the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the URL must be mqtt[s]://[user[:password]@]host[:port], nothing after the port")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else username,
        password=unquote(parts.password) if parts.password else password,
    )


@dataclass(frozen=True)
class TlsFiles:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def __bool__(self) -> bool:
        return bool(self.cafile or self.certfile or self.keyfile)

    def context(self) -> ssl.SSLContext:
        """The TLS context of an `mqtts://` connection; `SinkError` when a file cannot be loaded."""
        try:
            context = ssl.create_default_context(cafile=self.cafile)
            if self.certfile:
                context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise SinkError(f"cannot load TLS files: {exc}") from None
        return context
