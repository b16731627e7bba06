"""One MQTT connection (paho-mqtt 2.x) that reconnects by itself: the MQTT sink and its
extensions publish through it; `mqtt-cleanup` uses it to read and clear retained topics.

It puts together the parts, one module each:
- address.py: where to connect (the broker URL, TLS files);
- driver.py: paho driven by the asyncio loop (no thread of paho's);
- outbox.py: the outbox, acknowledged by PUBACKs, and its back-pressure;
- retained.py: the retained state re-sent after reconnects, and `read_retained`.
What it owns itself: the life cycle (start, close), reconnecting with our backoff
(facespace_bridge/backoff.py), the availability topic, and subscriptions renewed after every
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties

from facespace_bridge.backoff import Backoff
from facespace_bridge.sinks.base import SinkError
from facespace_bridge.sinks.mqtt.address import BrokerAddress, TlsFiles
from facespace_bridge.sinks.mqtt.driver import PahoDriver
from facespace_bridge.sinks.mqtt.outbox import Acknowledgement, Outbox
from facespace_bridge.sinks.mqtt.retained import OFFLINE, ONLINE, RetainedReader, RetainedState

log = logging.getLogger(__name__)

PROTOCOLS = {"3.1.1": MQTTProtocolVersion.MQTTv311, "5": MQTTProtocolVersion.MQTTv5}
CONNECT_TIMEOUT = 10.0  # seconds a start keeps trying
RECONNECT_DELAY = (1.0, 30.0)  # seconds between attempts: the first, the longest
CLOSE_TIMEOUT = 10.0  # seconds a close waits for what is unacknowledged


class MqttConnection:
    """A broker connection that reconnects by itself, an outbox acknowledged by PUBACKs, and
    the retained state to restore after a reconnect.

    `availability`: a topic that reads `online` while connected and `offline` after a clean
    close or, as the Last Will, a lost connection; None for a client that must not touch it
    (a side client beside a running bridge: replay, check, `mqtt-cleanup`).
    """

    def __init__(
        self,
        address: BrokerAddress,
        *,
        client_id: str,
        availability: str | None = None,
        tls: TlsFiles | None = None,
        keepalive: int,
        qos: int,
        protocol: str,
        max_inflight: int,
        max_queued: int,
        connect_timeout: float = CONNECT_TIMEOUT,
        reconnect_delay: tuple[float, float] = RECONNECT_DELAY,
        close_timeout: float = CLOSE_TIMEOUT,
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
        self.reconnects = 0  # how often the connection came back (/status, /metrics)

        self._retained = RetainedState(availability)
        self._reader = RetainedReader()
        self._subscriptions: dict[str, int] = {}  # filter -> QoS, renewed after every reconnect
        self._connected = False
        self._ever_connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: paho.Client | None = None
        self._driver: PahoDriver | None = None
        self._outbox = self._new_outbox()  # a fresh one each `start`
        self._first_connect: asyncio.Future[None] | None = None
        self._first_error: BaseException | None = None  # why the first connect failed last
        self._connector: asyncio.Task[None] | None = None
        self._closing = False
        # Between connect attempts; a refused CONNACK counts as a failure too.
        self._backoff = Backoff(*reconnect_delay)

    @property
    def connected(self) -> bool:
        """Whether there is a live broker connection right now."""
        return self._connected

    @property
    def pending(self) -> int:
        """Messages queued or awaiting their PUBACK."""
        return self._outbox.pending

    # -- life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (retrying with backoff for up to `connect_timeout`); raise `SinkError` with one
        line when the broker cannot be reached or refuses."""
        self._loop = loop = asyncio.get_running_loop()
        self._closing = False
        self._first_connect = loop.create_future()
        self._first_error = None
        self._outbox = self._new_outbox(loop)
        client = self._make_client()
        self._client = client
        self._driver = PahoDriver(client, loop)
        try:
            # Only records host and port; the connection itself is made by `_keep_connecting`.
            client.connect_async(self.address.host, self.address.port, self.keepalive)
        except (OSError, ValueError) as exc:
            raise SinkError(f"cannot connect to MQTT broker {self.address}: {exc}") from None
        self._connector = asyncio.ensure_future(self._keep_connecting(first=True))
        self._driver.start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self.connect_timeout)
        except (asyncio.TimeoutError, SinkError) as exc:
            await self._shut_down(client)
            if isinstance(exc, SinkError):
                raise
            raise SinkError(f"cannot connect to MQTT broker {self.address}: {self._why_not()}") from None
        log.info("connected to MQTT broker %s as %s", self.address, self.client_id)

    def _why_not(self) -> str:
        """Why no connection came up within `connect_timeout`, in a user's words: what the last
        attempt was told when the broker or the network said no, a timeout when nothing answered."""
        error, seconds = self._first_error, self.connect_timeout
        if error is None or isinstance(error, TimeoutError):  # (socket.timeout is a TimeoutError)
            return f"no answer within {seconds:g} s (timeout)"
        if isinstance(error, ConnectionRefusedError):
            said = f"connection refused by {self.address.host}:{self.address.port}"
        elif isinstance(error, OSError) and error.strerror:
            said = error.strerror  # without errno's number: "Name or service not known"
        else:
            said = str(error)
        return f"{said} (tried for {seconds:g} s)"

    def _new_outbox(self, loop: asyncio.AbstractEventLoop | None = None) -> Outbox:
        return Outbox(
            loop,
            self._retained.value,
            qos=self.qos,
            max_inflight=self.max_inflight,
            max_queued=self.max_queued,
        )

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
            client.tls_set_context(self.tls.context())
        if self.availability is not None:
            client.will_set(self.availability, OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    async def flush(self) -> None:
        """Wait until everything queued so far is acknowledged."""
        await self._outbox.flush()

    async def close(self) -> None:
        """Flush (within `close_timeout`), mark the availability `offline`, disconnect; whatever
        is still unacknowledged fails."""
        client, outbox = self._client, self._outbox
        if client is None:
            return
        try:
            await asyncio.wait_for(self.flush(), self.close_timeout)
        except asyncio.TimeoutError:
            log.warning("MQTT: %d messages not acknowledged at shutdown", self.pending)
        if self._connected and self.availability is not None:
            self._retained.available = OFFLINE
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._publish_retained_now(self.availability), 2.0)
        self._connected = False
        outbox.client = None
        await self._shut_down(client)
        outbox.fail_all(SinkError("MQTT connection closed before the broker acknowledged"))

    async def _shut_down(self, client: paho.Client) -> None:
        """Stop reconnecting, send DISCONNECT (no Last Will then) and close the socket."""
        self._closing = True
        task = self._connector
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._driver is not None:
            await self._driver.close()
        self._client = None

    # -- publishing -------------------------------------------------------------------------------

    # The per-event calls (`full`, `send`, `drain`) go straight to the outbox: the sink makes
    # them several times per event (bench/README.md, MQTT).

    @property
    def full(self) -> bool:
        """Whether `max_queued` messages are queued or unacknowledged: `await room()` first."""
        return self._outbox.full

    async def room(self) -> None:
        """Wait until the outbox takes another message (back-pressure on the sources)."""
        await self._outbox.room()

    def send(
        self, topic: str, payload: bytes, ack: Acknowledgement, properties: Properties | None = None
    ) -> None:
        """Queue a message (not retained) under `ack`, which it settles on its PUBACK. Over
        `max_queued` only after `await room()`; `drain()` hands it to paho."""
        if self._client is None:
            raise SinkError("MQTT connection is not started")
        self._outbox.send(topic, payload, ack, properties)

    def drain(self) -> None:
        """Hand queued messages to paho while connected and the in-flight window has room."""
        self._outbox.drain()

    def retain(self, topic: str, payload: bytes, ack: Acknowledgement | None = None) -> None:
        """Make `payload` the retained value of `topic`, now and after every reconnect; `ack`,
        if given, settles once the broker acknowledged this or a later value."""
        self._retained.set(topic, payload)
        outbox = self._outbox
        outbox.enqueue_retained(topic, ack)
        outbox.drain()

    def acknowledgement(self) -> Acknowledgement:
        """A new acknowledgement for messages about to be sent or retained."""
        if self._loop is None:
            raise SinkError("MQTT connection is not started")
        return Acknowledgement(self._loop)

    def clear(self, topic: str) -> asyncio.Future[None]:
        """Remove `topic`'s retained message from the broker (an empty retained payload) and
        stop restoring it; the future completes on the PUBACK."""
        self._retained.forget(topic)
        ack = self.acknowledgement()
        self._outbox.clear_retained(topic, ack)
        self._outbox.drain()
        return ack.seal()

    def retained_values(self) -> dict[str, bytes]:
        """What this connection retains and would re-send after a reconnect: topic -> value."""
        return self._retained.values()

    def resend_retained(self, first: Iterable[str] = ()) -> None:
        """Queue every retained topic again: availability first, then the topics in `first`
        (what the others' readers need before them: discovery configs), then the rest in the
        order first set. A topic already queued keeps its place."""
        outbox = self._outbox
        if self.availability is not None:
            outbox.enqueue_retained(self.availability, first=True)
        for topic in self._retained.resend_order(first):
            outbox.enqueue_retained(topic)
        outbox.drain()

    async def _publish_retained_now(self, topic: str) -> None:
        ack = self.acknowledgement()
        self._outbox.enqueue_retained(topic, ack, first=True)
        self._outbox.drain()
        await ack.seal()

    # -- subscriptions ----------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect (clean sessions)."""
        self._subscriptions[topic_filter] = qos
        if self._connected and self._client is not None:
            self._client.subscribe(topic_filter, qos=qos)

    async def read_retained(self, filters: Iterable[str], timeout: float = 10.0) -> dict[str, bytes]:
        """The retained messages the broker holds under `filters` (retained.RetainedReader)."""
        client = self._client
        if client is None or not self._connected:
            raise SinkError(f"not connected to MQTT broker {self.address}")

        def unsubscribe(topic_filter: str) -> None:
            if self._client is not None and self._connected and topic_filter not in self._subscriptions:
                self._client.unsubscribe(topic_filter)

        try:
            return await self._reader.read(client, self._outbox, filters, timeout, unsubscribe)
        except asyncio.TimeoutError:
            raise SinkError(f"MQTT broker {self.address} did not answer within {timeout:g} s") from None

    # -- reconnecting -----------------------------------------------------------------------------

    async def _keep_connecting(self, *, first: bool = False) -> None:
        """Connect, retrying with exponential backoff (`reconnect_delay` = first, longest).
        Success here is a TCP (and TLS) connection with CONNECT sent; the CONNACK arrives
        through `loop_read` and ends in `_on_connect`, or `_on_disconnect` starts us again."""
        assert self._driver is not None
        driver = self._driver
        if not first:
            await asyncio.sleep(self._backoff.failed())
        while not self._closing:
            try:
                await driver.connect()
                self._first_error = None  # connected; from now on only a CONNACK is awaited
                return
            except (OSError, ValueError) as exc:  # ssl errors are OSErrors, CertificateError a ValueError
                if first and self._first_connect is not None and not self._first_connect.done():
                    self._first_error = exc
                    log.debug("MQTT broker %s not reachable yet: %s", self.address, exc)
                else:
                    log.warning("cannot reconnect to MQTT broker %s: %s", self.address, exc)
            await asyncio.sleep(self._backoff.failed())

    def _start_connecting(self) -> None:
        if self._closing or (self._connector is not None and not self._connector.done()):
            return
        self._connector = asyncio.ensure_future(self._keep_connecting())

    # -- connection events (on the event loop) ------------------------------------------------------

    def _connection_up(self, client: paho.Client) -> None:
        outbox = self._outbox
        reconnect = self._ever_connected
        self._connected = self._ever_connected = True
        outbox.client = client
        self._backoff.succeeded()
        self._retained.available = ONLINE
        for topic_filter, qos in self._subscriptions.items():
            client.subscribe(topic_filter, qos=qos)
        if self.availability is not None:
            outbox.enqueue_retained(self.availability, first=True)
        for hook in self.on_connect:
            hook(reconnect)
        if reconnect:
            self.reconnects += 1
            log.info("reconnected to MQTT broker %s: re-sending retained state", self.address)
            self.resend_retained()
        elif self._first_connect is not None and not self._first_connect.done():
            self._first_connect.set_result(None)
        outbox.drain()

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
        self._outbox.client = None
        self._outbox.requeue_unsent()
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
        self._outbox.acknowledged(mid, reason)

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        if not self._reader.deliver(message) and self.on_message is not None:
            self.on_message(message.topic, message.payload)
