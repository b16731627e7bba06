"""The MQTT sink (paho-mqtt 2.x): per-camera topics, retained presence, availability, and
Home Assistant discovery through the `homeassistant` extension. Topic layout: docs/mqtt.md.

Threads: none of paho's. Paho's socket is driven by the asyncio loop (`add_reader` /
`add_writer` call `loop_read` / `loop_write`, a timer calls `loop_misc` for keepalive), so
its callbacks run on the event loop and PUBACKs settle futures without a thread hop or a
second thread contending for the GIL (bench/README.md, MQTT). Only the blocking part of a
(re)connect — TCP connect, TLS handshake — runs in a worker thread; the reconnect backoff
is ours, since paho's lives in `loop_forever`/`loop_start`.

Delivery (docs/delivery.md): an event's ack completes on the PUBACK (QoS 1) of its message(s).
Messages wait in a FIFO outbox and are handed to paho only while connected and only
`max_inflight` at a time, so paho never holds a second queue whose order could differ
from ours. Paho keeps what it was handed until PUBACKed and resends it (DUP) on every
reconnect, whatever the session flag: at QoS 1 the publisher's side of the session
lives in the client. `publish` waits while `max_queued` event messages are queued or
unacknowledged: that is the back-pressure on the sources, and nothing is dropped.

Retained state (bridge state, discovery configs, presence per camera, person topics) is
also kept here, latest value per topic, and re-sent after every reconnect and when Home
Assistant announces `online`. A state topic sits in the outbox at most once and is read
when handed over, so a busy stream conflates person updates to the latest value.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import click
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from facespace_bridge.client import redactor
from facespace_bridge.events import Event
from facespace_bridge.sinks._topics import (
    TopicLayout,
    check_base_topic,
    id_slug,
    topics_overlap,
)
from facespace_bridge.sinks.base import Ack, Sink, SinkError
from facespace_bridge.sinks.homeassistant import HomeAssistantDiscovery

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"
PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
# Measured (bench/README.md, MQTT): paho walks its in-flight messages on every PUBACK, so a
# large window costs; a small one costs a refill per few acks.
DEFAULT_MAX_INFLIGHT = 100
MISC_INTERVAL = 1.0  # seconds between `loop_misc` calls (keepalive pings and their timeout)
DEFAULT_MAX_QUEUED = 10_000


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


def default_client_id(topic_prefix: str) -> str:
    """Stable across restarts, so the broker sees the same client come back."""
    return f"facespace-bridge-{id_slug(topic_prefix)}"


@dataclass(eq=False, slots=True)
class _Message:
    topic: str
    payload: bytes | None  # None: a retained state topic, read when handed to paho
    retain: bool
    counted: bool  # holds a slot of the bounded queue (event messages do; state does not)
    futures: list[asyncio.Future[None]] = field(default_factory=list)


class MqttSink(Sink):
    """Events into MQTT topics (docs/mqtt.md); Home Assistant discovery when `ha_discovery`."""

    name = "mqtt"

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        username: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        client_id: str | None = None,
        keepalive: int = 30,
        qos: int = 1,
        protocol: str = "3.1.1",
        topic_prefix: str = "facespace",
        ha_discovery: bool = True,
        ha_prefix: str = "homeassistant",
        ha_event_max_age: float | None = 300.0,
        max_inflight: int = DEFAULT_MAX_INFLIGHT,
        max_queued: int = DEFAULT_MAX_QUEUED,
        connect_timeout: float = 10.0,
        reconnect_delay: tuple[float, float] = (1.0, 30.0),
        reannounce_delay: tuple[float, float] = (1.0, 5.0),
        close_timeout: float = 10.0,
    ) -> None:
        self.address = parse_mqtt_url(url, username, password)
        for what, value in (("topic prefix", topic_prefix), ("Home Assistant prefix", ha_prefix)):
            problem = check_base_topic(value, what)
            if problem:
                raise ValueError(problem)
        if ha_discovery and topics_overlap(topic_prefix, ha_prefix):
            raise ValueError(
                f"topic prefix {topic_prefix!r} overlaps the Home Assistant discovery prefix {ha_prefix!r}"
            )
        if protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be one of {', '.join(PROTOCOLS)}")
        if qos not in (0, 1, 2):
            raise ValueError("QoS must be 0, 1 or 2")
        if (cafile or certfile or keyfile) and not self.address.tls:
            raise ValueError("TLS files given but the URL is mqtt://; use mqtts://")
        if max_inflight < 1 or max_queued < max_inflight:
            raise ValueError("need 1 <= max_inflight <= max_queued")
        self.cafile, self.certfile, self.keyfile = cafile, certfile, keyfile
        self.layout = TopicLayout(topic_prefix)
        self.ha = HomeAssistantDiscovery(self.layout, ha_prefix, ha_event_max_age) if ha_discovery else None
        self.client_id = client_id or default_client_id(topic_prefix)
        self.keepalive = keepalive
        self.qos = qos
        self.protocol = protocol
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.connect_timeout = connect_timeout
        self.reconnect_delay = reconnect_delay
        self.reannounce_delay = reannounce_delay
        self.close_timeout = close_timeout

        # Known entities and retained state, latest value per topic.
        self.cameras: set[str] = set()
        self.people: set[str] = set()
        self._configs: dict[str, bytes] = {}
        self._states: dict[str, bytes] = {}  # presence per camera, person topics (not bridge state)
        self._bridge_state = OFFLINE
        self._person_seen_at: dict[str, str] = {}

        # The outbox; touched only on the event loop.
        self._queue: deque[_Message] = deque()
        self._queued_state: dict[str, _Message] = {}
        self._inflight: dict[int, _Message] = {}
        self._counted = 0  # event messages queued or in flight (the bounded part)
        self._space: asyncio.Event | None = None  # set while _counted < max_queued
        self._idle: asyncio.Event | None = None
        self._connected = False
        self._ever_connected = False
        self._reannounce_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self.reconnects = 0  # how often the connection came back (metrics, tests)
        self.reannounces = 0

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
        # Wait before the next connect attempt; doubles per failure (a refused CONNACK too),
        # back to the shortest once connected.
        self._backoff = reconnect_delay[0]

        # PUBACKs from paho's callbacks, settled in one batch per loop iteration.
        self._acks: deque[tuple[int, Any]] = deque()
        self._ack_scheduled = False

    @property
    def connected(self) -> bool:
        """Whether the sink has a live broker connection right now."""
        return self._connected

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
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
        self._misc_task = asyncio.ensure_future(self._misc())
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
                context = ssl.create_default_context(cafile=self.cafile)
                if self.certfile:
                    context.load_cert_chain(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError) as exc:
                raise SinkError(f"cannot load TLS files: {exc}") from None
            client.tls_set_context(context)
        client.will_set(self.layout.bridge_state, OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(*self.reconnect_delay)  # type: ignore[arg-type]  # floats work
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
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        client = self._client
        if client is None:
            return
        if self._reannounce_task is not None:
            self._reannounce_task.cancel()
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout)
        except asyncio.TimeoutError:
            unacked = len(self._queue) + len(self._inflight)
            log.warning("MQTT: %d messages not acknowledged at shutdown", unacked)
        if self._connected:
            self._bridge_state = OFFLINE
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._set_state_now(self.layout.bridge_state), 2.0)
        self._connected = False
        await self._shut_down(client)
        self._fail_all(SinkError("MQTT sink closed before the broker acknowledged"))

    async def _shut_down(self, client: paho.Client) -> None:
        """Stop reconnecting, send DISCONNECT (no Last Will then) and close the socket."""
        self._closing = True
        for task in (self._connector, self._misc_task, self._reannounce_task):
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

    async def publish(self, events: Sequence[Event]) -> Ack:
        futures: list[asyncio.Future[None]] = []
        for event in events:
            futures += await self._publish_one(event)
        return asyncio.gather(*futures)

    async def _publish_one(self, event: Event) -> list[asyncio.Future[None]]:
        if self._client is None:
            raise SinkError("MQTT sink is not started")
        kind = event.kind
        fields = event.fields
        person_state: str | None = None
        if kind == "sighting":
            person = str(fields["person"])
            if event.camera_id not in self.cameras or person not in self.people:
                self._learn((event.camera_id,), (person,))
            messages = [(self.layout.sighting(event.camera_id), False)]
            seen_at = str(fields["seen_at"])
            if self.ha is not None and self.ha.fires(seen_at):  # feeds the person's `event` entity
                messages.append((self.layout.person_sighting(person), False))
            # Replays and late entries must not move "last seen" backwards.
            if seen_at >= self._person_seen_at.get(person, ""):
                self._person_seen_at[person] = seen_at
                person_state = self.layout.person(person)
        elif kind == "presence":
            self._learn((event.camera_id,), [str(p) for p in fields.get("people", ())])
            topic = self.layout.presence(event.camera_id)
            self._states[topic] = event.payload
            messages = [(topic, True)]
        elif kind == "deadletter":
            messages = [(self.layout.deadletter, False)]
        else:
            raise SinkError(f"MQTT sink cannot route events of schema {event.schema}")

        assert self._space is not None and self._loop is not None
        futures = []
        for topic, retain in messages:
            while self._counted >= self.max_queued:  # back-pressure: wait for PUBACKs
                self._space.clear()
                await self._space.wait()
            self._counted += 1
            future: asyncio.Future[None] = self._loop.create_future()
            self._queue.append(_Message(topic, event.payload, retain, True, [future]))
            futures.append(future)
        if person_state is not None:
            self._states[person_state] = event.payload
            self._enqueue_state(person_state)
        self._drain()
        return futures

    def details(self) -> dict[str, Any]:
        return {"ha_events_held_back": self.ha.held_back} if self.ha is not None else {}

    async def announce(self, cameras: Iterable[str], people: Iterable[str]) -> None:
        """Publish discovery for every known camera and person now (not on their first
        event), and wait until the broker has them."""
        waiters = self._learn(cameras, people)
        if waiters:
            await asyncio.gather(*waiters)

    # -- retained state ---------------------------------------------------------------------------

    def _learn(self, cameras: Iterable[str], people: Iterable[str]) -> list[asyncio.Future[None]]:
        """Remember cameras and people; queue discovery configs for the new ones."""
        new_cameras = [c for c in dict.fromkeys(cameras) if c not in self.cameras]
        new_people = [p for p in dict.fromkeys(people) if p not in self.people]
        if not new_cameras and not new_people:  # the usual case: nothing new
            return []
        self.cameras.update(new_cameras)
        self.people.update(new_people)
        if self.ha is None:
            return []
        configs = self.ha.configs_for(new_cameras, new_people, sorted(self.cameras), sorted(self.people))
        if not self._configs:
            configs = {**self.ha.bridge_configs(), **configs}
        waiters = []
        for topic, payload in configs.items():
            self._configs[topic] = payload
            waiters.append(self._enqueue_state(topic, wait=True))
        self._drain()
        return [w for w in waiters if w is not None]

    def _current(self, topic: str) -> bytes:
        if topic == self.layout.bridge_state:
            return self._bridge_state
        return self._configs[topic] if topic in self._configs else self._states[topic]

    def _enqueue_state(
        self, topic: str, *, wait: bool = False, first: bool = False
    ) -> asyncio.Future[None] | None:
        message = self._queued_state.get(topic)
        if message is None:
            message = _Message(topic, None, True, False)
            self._queued_state[topic] = message
            self._queue.appendleft(message) if first else self._queue.append(message)
        if not wait:
            return None
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        message.futures.append(future)
        return future

    async def _set_state_now(self, topic: str) -> None:
        future = self._enqueue_state(topic, wait=True, first=True)
        self._drain()
        assert future is not None
        await future

    def reannounce(self) -> None:
        """Bridge state first (so HA marks entities available), then every discovery config,
        then every retained state (presence per camera, person topics)."""
        self.reannounces += 1
        old = self._queued_state.pop(self.layout.bridge_state, None)
        if old is not None:
            self._queue.remove(old)
            self._queued_state[old.topic] = old
            self._queue.appendleft(old)
        else:
            self._enqueue_state(self.layout.bridge_state, first=True)
        for topic in (*self._configs, *self._states):
            self._enqueue_state(topic)
        self._drain()

    def _schedule_reannounce(self) -> None:
        if self._reannounce_task is not None and not self._reannounce_task.done():
            return  # one re-announce answers any number of `online`s within the delay

        async def later() -> None:
            # A short random delay, as zigbee2mqtt does: HA subscribes to its entities'
            # state topics only after processing the configs, and many bridges restarting
            # at once should not all answer in the same instant.
            await asyncio.sleep(random.uniform(*self.reannounce_delay))
            if self._connected:
                log.info("Home Assistant is online: re-announcing %d configs", len(self._configs))
                self.reannounce()

        self._reannounce_task = asyncio.ensure_future(later())

    # -- the outbox -------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Hand queued messages to paho while connected and the in-flight window has room."""
        client = self._client
        while self._connected and self._queue and len(self._inflight) < self.max_inflight and client:
            message = self._queue.popleft()
            if message.payload is None:
                del self._queued_state[message.topic]
                payload = self._current(message.topic)
            else:
                payload = message.payload
            try:
                info = client.publish(message.topic, payload, self.qos, message.retain)
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
        self._drain()

    def _settle(self, message: _Message, error: SinkError | None) -> None:
        for future in message.futures:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
        if message.counted:
            self._release()

    def _release(self) -> None:
        self._counted -= 1
        if self._space is not None and self._counted < self.max_queued:
            self._space.set()

    def _fail_all(self, error: SinkError) -> None:
        for message in (*self._inflight.values(), *self._queue):
            for future in message.futures:
                if not future.done():
                    future.set_exception(error)
                    future.exception()  # nobody may be waiting: do not warn about it
            if message.counted:
                self._release()
        self._inflight.clear()
        self._queue.clear()
        self._queued_state.clear()
        if self._idle is not None:
            self._idle.set()

    # -- the connection ---------------------------------------------------------------------------

    async def _keep_connecting(self, *, first: bool = False) -> None:
        """Connect, retrying with exponential backoff (`reconnect_delay` = first, longest).
        Success here is a TCP (and TLS) connection with CONNECT sent; the CONNACK arrives
        through `loop_read` and ends in `_on_connect`, or `_on_disconnect` starts us again."""
        assert self._client is not None
        client = self._client
        longest = self.reconnect_delay[1]
        if not first:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, longest)
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
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, longest)

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

    async def _misc(self) -> None:
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

    # -- on the event loop ----------------------------------------------------------------------------

    def _connected_now(self) -> None:
        first = not self._ever_connected
        self._connected = self._ever_connected = True
        self._backoff = self.reconnect_delay[0]
        self._bridge_state = ONLINE
        if first:
            if self._first_connect is not None and not self._first_connect.done():
                self._first_connect.set_result(None)
            self._enqueue_state(self.layout.bridge_state, first=True)
            self._drain()
        else:
            self.reconnects += 1
            log.info("reconnected to MQTT broker %s: re-sending retained state", self.address)
            self.reannounce()

    def _refused(self, reason: str) -> None:
        if self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_exception(
                SinkError(f"MQTT broker {self.address} refused the connection: {reason}")
            )
        else:
            log.error("MQTT broker %s refused the connection: %s", self.address, reason)

    def _disconnected(self, reason: str) -> None:
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
        if self.ha is not None:
            for topic in self.ha.subscriptions():
                client.subscribe(topic, qos=1)
        self._connected_now()

    def _on_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._disconnected(str(reason))

    def _on_publish(self, _client: paho.Client, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        # Settled after paho's read loop returns: one refill of the window per batch of acks.
        self._acks.append((mid, reason))
        if not self._ack_scheduled:
            self._ack_scheduled = True
            assert self._loop is not None
            self._loop.call_soon(self._process_acks)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if self.ha is not None and self.ha.wants_reannounce(message.topic, message.payload):
            self._schedule_reannounce()


# -- CLI --------------------------------------------------------------------------------------------

_FILE = click.Path(exists=True, dir_okay=False)

HELP = "an MQTT broker, with Home Assistant discovery"
SECRET_VARIABLES = ("MQTT_PASSWORD",)

OPTIONS = [
    click.option(
        "--mqtt-url",
        envvar="MQTT_URL",
        default="mqtt://localhost:1883",
        show_default=True,
        help="mqtt://[user[:password]@]host[:port] or mqtts:// for TLS. A password in the URL "
        "shows in `ps`: prefer env MQTT_URL or MQTT_PASSWORD.",
    ),
    click.option("--mqtt-username", envvar="MQTT_USERNAME", help="Broker user (password: MQTT_PASSWORD)."),
    click.option("--mqtt-cafile", type=_FILE, help="CA bundle for mqtts://."),
    click.option("--mqtt-certfile", type=_FILE, help="Client certificate (PEM)."),
    click.option("--mqtt-keyfile", type=_FILE, help="Key of the client certificate (PEM)."),
    click.option("--mqtt-client-id", help="MQTT client id [default: facespace-bridge-<topic prefix>]."),
    click.option(
        "--mqtt-keepalive",
        type=click.IntRange(5, 65535),
        default=30,
        show_default=True,
        help="Seconds between keepalive pings.",
    ),
    click.option(
        "--mqtt-qos",
        type=click.Choice(["0", "1", "2"]),
        default="1",
        show_default=True,
        help="QoS of every message; acks (and checkpoints) follow it.",
    ),
    click.option("--mqtt-protocol", type=click.Choice(list(PROTOCOLS)), default="3.1.1", show_default=True),
    click.option(
        "--mqtt-max-inflight",
        type=click.IntRange(1, 65000),
        default=DEFAULT_MAX_INFLIGHT,
        show_default=True,
        help="Messages awaiting PUBACK at once.",
    ),
    click.option(
        "--mqtt-max-queued",
        type=click.IntRange(1, 10_000_000),
        default=DEFAULT_MAX_QUEUED,
        show_default=True,
        help="Unacknowledged messages held before sources are made to wait.",
    ),
    click.option("--topic-prefix", default="facespace", show_default=True, help="Base MQTT topic."),
    click.option(
        "--ha-discovery/--no-ha-discovery",
        default=True,
        show_default=True,
        help="Home Assistant MQTT discovery.",
    ),
    click.option(
        "--ha-prefix",
        default="homeassistant",
        show_default=True,
        help="Home Assistant discovery prefix (its status topic is <prefix>/status).",
    ),
    click.option(
        "--ha-event-max-age",
        type=click.FloatRange(min=0),
        default=300.0,
        show_default=True,
        help="Seconds: only a sighting at most this old when published fires its person's Home "
        "Assistant event entity (history never does; replay fires none).",
    ),
]


def sink_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """MqttSink keyword arguments from parsed options; raises click errors for bad input.
    The password comes from the URL or env MQTT_PASSWORD, never from a flag."""
    url = config.get("mqtt_url") or "mqtt://localhost:1883"
    username = config.get("mqtt_username") or None
    password = os.environ.get("MQTT_PASSWORD") or None
    try:
        address = parse_mqtt_url(url, username, password)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--mqtt-url") from None
    if address.password:  # from the URL: redacted like the variables in SECRET_VARIABLES
        redactor.add(address.password)
    prefix = config.get("topic_prefix") or "facespace"
    ha_prefix = config.get("ha_prefix") or "homeassistant"
    for hint, value in (("--topic-prefix", prefix), ("--ha-prefix", ha_prefix)):
        problem = check_base_topic(value, hint)
        if problem:
            raise click.BadParameter(problem, param_hint=hint)
    ha_discovery = config.get("ha_discovery", True)
    if ha_discovery and topics_overlap(prefix, ha_prefix):
        raise click.UsageError(
            f"--topic-prefix {prefix!r} overlaps the Home Assistant discovery prefix {ha_prefix!r}: "
            "choose another, or pass --no-ha-discovery"
        )
    tls_files = [config.get(k) for k in ("mqtt_cafile", "mqtt_certfile", "mqtt_keyfile")]
    if any(tls_files) and not address.tls:
        raise click.BadParameter("TLS files need an mqtts:// URL", param_hint="--mqtt-url")
    if config.get("mqtt_keyfile") and not config.get("mqtt_certfile"):
        raise click.BadParameter("--mqtt-keyfile needs --mqtt-certfile", param_hint="--mqtt-keyfile")
    max_inflight = int(config.get("mqtt_max_inflight") or DEFAULT_MAX_INFLIGHT)
    max_queued = int(config.get("mqtt_max_queued") or DEFAULT_MAX_QUEUED)
    if max_queued < max_inflight:
        raise click.BadParameter("must be at least --mqtt-max-inflight", param_hint="--mqtt-max-queued")
    return {
        "url": url,
        "username": username,
        "password": password,
        "cafile": tls_files[0],
        "certfile": tls_files[1],
        "keyfile": tls_files[2],
        "client_id": config.get("mqtt_client_id") or None,
        "keepalive": int(config.get("mqtt_keepalive") or 30),
        "qos": 1 if config.get("mqtt_qos") is None else int(config["mqtt_qos"]),
        "protocol": str(config.get("mqtt_protocol") or "3.1.1"),
        "topic_prefix": prefix,
        "ha_discovery": bool(ha_discovery),
        "ha_prefix": ha_prefix,
        "max_inflight": max_inflight,
        "max_queued": max_queued,
        "ha_event_max_age": float(
            300.0 if config.get("ha_event_max_age") is None else config["ha_event_max_age"]
        ),
    }


def from_config(config: Mapping[str, Any], *, replay: bool = False) -> MqttSink:
    kwargs = sink_kwargs(config)
    if replay:  # history published again: it must not fire Home Assistant automations
        kwargs["ha_event_max_age"] = None
    return MqttSink(**kwargs)
