"""One MQTT connection (paho-mqtt 2.x) driven by the asyncio loop, with an outbox whose
acknowledgements are PUBACKs. The MQTT sink and its extensions publish through it;
`mqtt-cleanup` uses it to read and clear retained topics.

Threads: none of paho's. Paho's socket is driven by the event loop (`add_reader` /
`add_writer` call `loop_read` / `loop_write`, a timer calls `loop_misc` for keepalive), so
its callbacks run on the loop and PUBACKs settle acknowledgements without a thread hop or a second
thread contending for the GIL (bench/README.md, MQTT). Only the blocking part of a
(re)connect — TCP connect, TLS handshake — runs in a worker thread; the reconnect backoff
is ours (facespace_bridge/backoff.py), since paho's lives in `loop_forever`/`loop_start`.

Delivery (docs/delivery.md): a message's acknowledgement settles on its PUBACK (QoS 1). Messages
wait in a FIFO outbox and are handed to paho only while connected and only `max_inflight`
at a time, so paho never holds a second queue whose order could differ from ours. Paho
keeps what it was handed until PUBACKed and resends it (DUP) on every reconnect, whatever
the session flag: at QoS 1 the publisher's side of the session lives in the client.
Past `max_queued` messages queued or unacknowledged, a sender waits (`room`): that is the
back-pressure on the sources, and nothing is dropped.

Retained state (availability, discovery configs, presence, person topics) is kept here as
the latest value per topic and re-sent after every reconnect (the broker may have lost it)
and on `resend_retained`. A retained topic sits in the outbox at most once and is read when
handed to paho, so a busy stream conflates its updates to the latest value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from facespace_bridge.backoff import Backoff
from facespace_bridge.sinks.base import SinkError

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
# paho walks its in-flight messages on every PUBACK, so a large window costs; a small one
# costs a refill per few acks (bench/README.md, MQTT).
DEFAULT_MAX_INFLIGHT = 100
DEFAULT_MAX_QUEUED = 10_000
MISC_INTERVAL = 1.0  # seconds between `loop_misc` calls (keepalive pings and their timeout)


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


class Acknowledgement:
    """One future for any number of messages: it completes once every message added to it
    has its PUBACK, or fails with the first refusal, and not before `seal()`. A batch of
    events takes one of these rather than a future per message gathered again.
    """

    __slots__ = ("error", "future", "pending", "sealed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.pending = 0
        self.sealed = False
        self.error: BaseException | None = None

    def settle(self, error: BaseException | None) -> None:
        if error is not None and self.error is None:
            self.error = error
        self.pending -= 1
        if self.sealed and self.pending == 0:
            self._finish()

    def seal(self) -> asyncio.Future[None]:
        """No more messages: the future completes when the ones added are acknowledged."""
        self.sealed = True
        if self.pending == 0:
            self._finish()
        return self.future

    def _finish(self) -> None:
        future = self.future
        if future.done():
            return
        if self.error is None:
            future.set_result(None)
        else:
            future.set_exception(self.error)
            future.exception()  # nobody may be waiting (a shutdown): do not warn about it


@dataclass(eq=False, slots=True)
class _Message:
    topic: str
    payload: bytes | None  # None: a retained topic, its current value read when handed to paho
    retain: bool
    counted: bool  # holds a slot of the bounded queue (sent messages do; retained state does not)
    properties: Properties | None = None
    acks: list[Acknowledgement] = field(default_factory=list)


class MqttConnection:
    """A broker connection that reconnects by itself, an outbox acknowledged by PUBACKs, and
    the retained state to restore after a reconnect.

    `availability`: a topic that reads `online` while connected and `offline` after a clean
    close or, as the Last Will, a lost connection; None for a client that must not touch it
    (a replay or `mqtt-cleanup` beside a running bridge).
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        availability: str | None = None,
        tls: TlsFiles | None = None,
        keepalive: int = 30,
        qos: int = 1,
        protocol: str = "3.1.1",
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_queued: int = DEFAULT_MAX_QUEUED,
        connect_timeout: float = 10.0,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        close_timeout: float = 10.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}")
        if qos not in (0, 1, 2):
            raise ValueError("QoS must be 0, 1 or 2")
        if tls and not address.tls:
            raise ValueError("TLS files given but the URL is mqtt://; use mqtts://")
        if max_inflight < 1 or max_queued < max_inflight:
            raise ValueError("need 1 <= max_inflight <= max_queued")
        self.address = address
        self.client_id = client_id
        self.availability = availability
        self.tls = tls or TlsFiles()
        self.keepalive = keepalive
        self.qos = qos
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.connect_timeout = connect_timeout
        self.reconnect_delay = reconnect_delay
        self.close_timeout = close_timeout

        #: called on the loop after every CONNACK (argument: whether it is a reconnect), after
        #: the availability and before the retained state are queued: subscribe here
        self.on_connect: list[Callable[[bool], None]] = []
        #: called on the loop for each message on a subscribed topic
        self.on_message: Callable[[str, bytes], None] | None = None
        self.reconnects = 0  # how often the connection came back (metrics, tests)

        self._retained: dict[str, bytes] = {}  # latest value per retained topic, re-sent after reconnects
        self._available = OFFLINE
        self._subscriptions: dict[str, int] = {}  # filter -> QoS, renewed after every reconnect
        self._readers: dict[str, Callable[[paho.MQTTMessage], None]] = {}  # read_retained's filters

        # The outbox; touched only on the event loop.
        self._queue: deque[_Message] = deque()
        self._queued_retained: dict[str, _Message] = {}
        self._inflight: dict[int, _Message] = {}
        self._counted = 0  # sent messages queued or in flight (the bounded part)
        self._space: asyncio.Event | None = None  # set while _counted < max_queued
        self._idle: asyncio.Event | None = None
        self._connected = False
        self._ever_connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._first_connect: asyncio.Future[None] | None = None

        # Paho's socket on the event loop.
        self._sock: Any = None  # the socket registered with the loop (paho's SocketLike)
        self._sock_closed: asyncio.Event | None = None
        self._connector: asyncio.Task[None] | None = None
        self._attempt: asyncio.Task[None] | None = None  # one connect, in a worker thread
        # Paho's socket callbacks made from that thread, replayed on the loop when it is done.
        self._from_thread: deque[tuple[Any, Any]] = deque()
        self._misc_task: asyncio.Task[None] | None = None
        self._closing = False
        self._loop_thread = 0
        # Between connect attempts; a refused CONNACK counts as a failure too.
        self._backoff = Backoff(*reconnect_delay)

        # PUBACKs from paho's callbacks, settled in one batch per loop iteration.
        self._acks: deque[tuple[int, Any]] = deque()
        self._ack_scheduled = False

    @property
    def connected(self) -> bool:
        """Whether there is a live broker connection right now."""
        return self._connected

    @property
    def pending(self) -> int:
        """Messages queued or awaiting their PUBACK."""
        return len(self._queue) + len(self._inflight)

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying with backoff for up to `connect_timeout`); raise `SinkError` with one
        line when the broker cannot be reached or refuses."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._space = asyncio.Event()
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._sock_closed = asyncio.Event()
        self._sock_closed.set()
        self._closing = False
        self._first_connect = self._loop.create_future()
        client = self._make_client()
        self._client = client
        try:
            # Only records host and port; the connection itself is made by `_keep_connecting`.
            client.connect_async(self.address.host, self.address.port, self.keepalive)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to MQTT broker {self.address}: {exc}") from None
        self._connector = asyncio.ensure_future(self._keep_connecting(first=True))
        self._misc_task = asyncio.ensure_future(self._keep_alive())
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self.connect_timeout)
        except (asyncio.TimeoutError, SinkError) as exc:
            await self._shut_down(client)
            if isinstance(exc, SinkError):
                raise
            raise SinkError(
                f"cannot connect to MQTT broker {self.address}: no answer within {self.connect_timeout:g} s"
            ) from None
        log.info("connected to MQTT broker %s as %s", self.address, self.client_id)

    def _make_client(self) -> paho.Client:
        v5 = self.protocol == "5"
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=PROTOCOLS[self.protocol],
            # QoS 1 resend of our publishes is client-side state; a persistent broker session
            # would only queue Home Assistant status messages for us while we are away.
            clean_session=None if v5 else True,
        )
        if self.address.username:
            client.username_pw_set(self.address.username, self.address.password)
        if self.address.tls:
            try:
                context = ssl.create_default_context(cafile=self.tls.cafile)
                if self.tls.certfile:
                    context.load_cert_chain(self.tls.certfile, self.tls.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"cannot load TLS files: {exc}") from None
            client.tls_set_context(context)
        if self.availability is not None:
            client.will_set(self.availability, OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def flush(self) -> None:
        """Wait until everything queued so far is acknowledged."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        """Flush (within `close_timeout`), mark the availability `offline`, disconnect; whatever
        is still unacknowledged fails."""
        client = self._client
        if client is None:
            return
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout)
        except asyncio.TimeoutError:
            log.warning("MQTT: %d messages not acknowledged at shutdown", self.pending)
        if self._connected and self.availability is not None:
            self._available = OFFLINE
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._publish_retained_now(self.availability), 2.0)
        self._connected = False
        await self._shut_down(client)
        self._fail_all(SinkError("MQTT connection closed before the broker acknowledged"))

    async def _shut_down(self, client: paho.Client) -> None:
        """Stop reconnecting, send DISCONNECT (no Last Will then) and close the socket."""
        self._closing = True
        for task in (self._connector, self._misc_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._attempt is not None:  # a connect in its worker thread cannot be cancelled
            with contextlib.suppress(Exception):
                await self._attempt
        assert self._sock_closed is not None
        if self._sock is not None:
            client.disconnect()  # queued; paho closes the socket once it is written
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sock_closed.wait(), 2.0)
        if self._sock is not None:  # DISCONNECT could not be written: close anyway
            client._sock_close()  # paho has no public "drop the socket"
        self._client = None

    # -- publishing -------------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        """Whether `max_queued` messages are queued or unacknowledged: `await room()` first."""
        return self._counted >= self.max_queued

    async def room(self) -> None:
        """Wait until the outbox takes another message (back-pressure on the sources)."""
        assert self._space is not None
        while self._counted >= self.max_queued:
            self._space.clear()
            self.drain()
            await self._space.wait()

    def send(
        self, topic: str, payload: bytes, ack: Acknowledgement, properties: Properties | None = None
    ) -> None:
        """Queue a message (not retained) under `ack`, which it settles on its PUBACK. Over
        `max_queued` only after `await room()`; `drain()` hands it to paho."""
        if self._client is None:
            raise SinkError("MQTT connection is not started")
        self._counted += 1
        ack.pending += 1
        self._queue.append(_Message(topic, payload, False, True, properties, [ack]))

    def retain(self, topic: str, payload: bytes, ack: Acknowledgement | None = None) -> None:
        """Make `payload` the retained value of `topic`, now and after every reconnect; `ack`,
        if given, settles once the broker acknowledged this or a later value."""
        self._retained[topic] = payload
        self._enqueue_retained(topic, ack)
        self.drain()

    def acknowledgement(self) -> Acknowledgement:
        """A new acknowledgement for messages about to be sent or retained."""
        if self._loop is None:
            raise SinkError("MQTT connection is not started")
        return Acknowledgement(self._loop)

    def clear(self, topic: str) -> asyncio.Future[None]:
        """Remove `topic`'s retained message from the broker (an empty retained payload) and
        stop restoring it; the future completes on the PUBACK."""
        self._retained.pop(topic, None)
        queued = self._queued_retained.pop(topic, None)
        if queued is not None:  # its value is gone: what waited for it waits for the clearing
            self._queue.remove(queued)
        ack = self.acknowledgement()
        ack.pending += 1
        message = _Message(topic, b"", True, False, None, [ack])
        if queued is not None:
            message.acks += queued.acks
        self._queue.append(message)
        self.drain()
        return ack.seal()

    def resend_retained(self, first: Iterable[str] = ()) -> None:
        """Queue every retained topic again: availability first, then the topics in `first`
        (what the others' readers need before them: discovery configs), then the rest in the
        order first set. A topic already queued keeps its place."""
        if self.availability is not None:
            self._enqueue_retained(self.availability, first=True)
        for topic in (*first, *self._retained):
            if topic in self._retained:
                self._enqueue_retained(topic)
        self.drain()

    def _enqueue_retained(
        self, topic: str, ack: Acknowledgement | None = None, *, first: bool = False
    ) -> None:
        message = self._queued_retained.get(topic)
        if message is None:
            message = _Message(topic, None, True, False)
            self._queued_retained[topic] = message
            self._queue.appendleft(message) if first else self._queue.append(message)
        elif first and self._queue[0] is not message:
            self._queue.remove(message)
            self._queue.appendleft(message)
        if ack is not None:
            ack.pending += 1
            message.acks.append(ack)

    def _retained_value(self, topic: str) -> bytes | None:
        if topic == self.availability:
            return self._available
        return self._retained.get(topic)

    async def _publish_retained_now(self, topic: str) -> None:
        ack = self.acknowledgement()
        self._enqueue_retained(topic, ack, first=True)
        self.drain()
        await ack.seal()

    # -- subscriptions ----------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect (clean sessions)."""
        self._subscriptions[topic_filter] = qos
        if self._connected and self._client is not None:
            self._client.subscribe(topic_filter, qos=qos)

    async def read_retained(self, filters: Iterable[str], timeout: float = 10.0) -> dict[str, bytes]:
        """The retained messages the broker holds under `filters`. Ends deterministically: a
        marker published after the SUBACKs, on a topic subscribed last, arrives after every
        retained message (one connection, in order)."""
        client = self._client
        if client is None or self._loop is None or not self._connected:
            raise SinkError(f"not connected to MQTT broker {self.address}")
        marker = f"facespace-bridge/marker/{uuid.uuid4().hex}"
        found: dict[str, bytes] = {}
        done = self._loop.create_future()

        def collect(message: paho.MQTTMessage) -> None:
            if message.retain and message.payload:
                found[message.topic] = message.payload

        def end(_message: paho.MQTTMessage) -> None:
            if not done.done():
                done.set_result(None)

        filters = list(dict.fromkeys(filters))
        readers = {f: collect for f in filters} | {marker: end}
        self._readers.update(readers)
        try:
            for topic_filter in readers:
                client.subscribe(topic_filter, qos=1)
            # The marker is not retained: it reaches only our subscription, after the rest.
            self._queue.append(_Message(marker, b"", False, False))
            self.drain()
            await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            raise SinkError(f"MQTT broker {self.address} did not answer within {timeout:g} s") from None
        finally:
            for topic_filter in readers:
                self._readers.pop(topic_filter, None)
                if self._client is not None and self._connected and topic_filter not in self._subscriptions:
                    self._client.unsubscribe(topic_filter)
        return found

    # -- the outbox -------------------------------------------------------------------------------

    def drain(self) -> None:
        """Hand queued messages to paho while connected and the in-flight window has room."""
        client = self._client
        while self._connected and self._queue and len(self._inflight) < self.max_inflight and client:
            message = self._queue.popleft()
            if message.payload is None:
                del self._queued_retained[message.topic]
                payload = self._retained_value(message.topic)
                if payload is None:  # cleared since it was queued
                    self._settle(message, None)
                    continue
            else:
                payload = message.payload
            try:
                info = client.publish(message.topic, payload, self.qos, message.retain, message.properties)
            except ValueError as exc:  # e.g. a payload over the protocol's size limit
                self._settle(message, SinkError(f"cannot publish to {message.topic}: {exc}"))
                continue
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and self.qos == 0:
                # QoS 0 is not stored by paho: keep it ourselves until connected again.
                message.payload = payload
                self._queue.appendleft(message)
                break
            self._inflight[info.mid] = message
        self._update_idle()

    def _update_idle(self) -> None:
        assert self._idle is not None
        if self._queue or self._inflight:
            self._idle.clear()
        else:
            self._idle.set()

    def _process_acks(self) -> None:
        self._ack_scheduled = False
        while self._acks:
            mid, reason = self._acks.popleft()
            message = self._inflight.pop(mid, None)
            if message is None:
                continue
            failed = reason is not None and getattr(reason, "is_failure", False)
            error = SinkError(f"broker refused a message to {message.topic}: {reason}") if failed else None
            self._settle(message, error)
        self.drain()

    def _settle(self, message: _Message, error: SinkError | None) -> None:
        for ack in message.acks:
            ack.settle(error)
        if message.counted:
            self._release()

    def _release(self) -> None:
        self._counted -= 1
        if self._space is not None and self._counted < self.max_queued:
            self._space.set()

    def _fail_all(self, error: SinkError) -> None:
        for message in (*self._inflight.values(), *self._queue):
            for ack in message.acks:
                ack.settle(error)
            if message.counted:
                self._release()
        self._inflight.clear()
        self._queue.clear()
        self._queued_retained.clear()
        if self._idle is not None:
            self._idle.set()

    # -- the connection ---------------------------------------------------------------------------

    async def _keep_connecting(self, *, first: bool = False) -> None:
        """Connect, retrying with exponential backoff (`reconnect_delay` = first, longest).
        Success here is a TCP (and TLS) connection with CONNECT sent; the CONNACK arrives
        through `loop_read` and ends in `_on_connect`, or `_on_disconnect` starts us again."""
        assert self._client is not None
        client = self._client
        if not first:
            await asyncio.sleep(self._backoff.failed())
        while not self._closing:
            self._attempt = asyncio.ensure_future(self._connect_in_thread(client))
            try:
                await asyncio.shield(self._attempt)
                return
            except (OSError, ValueError) as exc:  # ssl errors are OSErrors, CertificateError a ValueError
                if first and self._first_connect is not None and not self._first_connect.done():
                    log.debug("MQTT broker %s not reachable yet: %s", self.address, exc)
                else:
                    log.warning("cannot reconnect to MQTT broker %s: %s", self.address, exc)
            await asyncio.sleep(self._backoff.failed())

    async def _connect_in_thread(self, client: paho.Client) -> None:
        """Blocking TCP connect and TLS handshake, off the loop; the loop does not touch the
        client's socket until it is done."""
        try:
            await asyncio.to_thread(client.reconnect)
        finally:
            while self._from_thread:
                callback, sock = self._from_thread.popleft()
                callback(client, None, sock)

    def _start_connecting(self) -> None:
        if self._closing or (self._connector is not None and not self._connector.done()):
            return
        self._connector = asyncio.ensure_future(self._keep_connecting())

    async def _keep_alive(self) -> None:
        """Keepalive: paho sends PINGREQ when due and drops a connection whose PINGRESP is late."""
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            if self._client is not None and self._sock is not None:
                self._client.loop_misc()

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        client.loop_read()
        # TLS: bytes already decrypted into the SSL object do not make the fd readable again.
        sock = self._sock
        while sock is not None and sock is self._sock and getattr(sock, "pending", None) and sock.pending():
            client.loop_read()

    def _writable(self) -> None:
        if self._client is not None:
            self._client.loop_write()

    def _in_thread(self, callback: Any, sock: Any) -> bool:
        """Whether paho calls from the connect thread; the call is then kept for the loop."""
        if threading.get_ident() == self._loop_thread:
            return False
        self._from_thread.append((callback, sock))
        return True

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_open, sock):
            return
        assert self._loop is not None and self._sock_closed is not None
        self._sock = sock
        self._sock_closed.clear()
        self._loop.add_reader(sock, self._readable)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_close, sock):
            return
        assert self._loop is not None and self._sock_closed is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._sock_closed.set()

    def _on_socket_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_register_write, sock):
            return
        assert self._loop is not None
        if sock is self._sock:  # not a socket closed meanwhile
            self._loop.add_writer(sock, self._writable)

    def _on_socket_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_unregister_write, sock):
            return
        assert self._loop is not None
        self._loop.remove_writer(sock)

    # -- connection events (on the event loop) ------------------------------------------------------

    def _connection_up(self, client: paho.Client) -> None:
        reconnect = self._ever_connected
        self._connected = self._ever_connected = True
        self._backoff.succeeded()
        self._available = ONLINE
        for topic_filter, qos in self._subscriptions.items():
            client.subscribe(topic_filter, qos=qos)
        if self.availability is not None:
            self._enqueue_retained(self.availability, first=True)
        for hook in self.on_connect:
            hook(reconnect)
        if reconnect:
            self.reconnects += 1
            log.info("reconnected to MQTT broker %s: re-sending retained state", self.address)
            self.resend_retained()
        elif self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(None)
        self.drain()

    def _refused(self, reason: str) -> None:
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_exception(
                SinkError(f"MQTT broker {self.address} refused the connection: {reason}")
            )
        else:
            log.error("MQTT broker %s refused the connection: %s", self.address, reason)

    def _connection_down(self, reason: str) -> None:
        if self._connected:
            log.warning("lost MQTT connection to %s (%s); reconnecting", self.address, reason)
        self._connected = False
        if self.qos == 0:  # paho forgets unsent QoS 0 messages
            for mid in list(self._inflight):
                self._queue.appendleft(self._inflight.pop(mid))
        self._start_connecting()

    # -- paho callbacks (on the event loop, inside loop_read / loop_write / loop_misc) ------------------

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._refused(str(reason))  # paho then closes the socket: `_on_disconnect` retries
            return
        self._connection_up(client)

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._connection_down(str(reason))

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        # Settled after paho's read loop returns: one refill of the window per batch of acks.
        self._acks.append((mid, reason))
        if not self._ack_scheduled:
            self._ack_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._process_acks)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        for topic_filter, reader in self._readers.items():
            if paho.topic_matches_sub(topic_filter, message.topic):
                reader(message)
                return
        if self.on_message is not None:
            self.on_message(message.topic, message.payload)
