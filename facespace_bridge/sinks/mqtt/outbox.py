"""The outbox of an MQTT connection and its acknowledgements (docs/delivery.md).

A message's acknowledgement settles on its PUBACK (QoS 1). Messages wait in a FIFO outbox
and are handed to paho only while connected and only `max_inflight` at a time, so paho never
holds a second queue whose order could differ from ours. Paho keeps what it was handed until
PUBACKed and resends it (DUP) on every reconnect, whatever the session flag: at QoS 1 the
publisher's side of the session lives in the client. Past `max_queued` messages queued or
unacknowledged, a sender waits (`room`): that is the back-pressure on the sources, and
nothing is dropped.

A retained topic sits in the outbox at most once, without its payload: the value is read
(retained.RetainedState) when the message is handed to paho, so a busy stream conflates its
updates to the latest value.

Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties

from facespace_bridge.sinks.base import SinkError

# paho walks its in-flight messages on every PUBACK, so a large window costs; a small one
# costs a refill per few acks (bench/README.md, MQTT).
DEFAULT_MAX_INFLIGHT = 100
DEFAULT_MAX_QUEUED = 10_000


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
class Message:
    topic: str
    payload: bytes | None  # None: a retained topic, its current value read when handed to paho
    retain: bool
    counted: bool  # holds a slot of the bounded queue (sent messages do; retained state does not)
    properties: Properties | None = None
    acks: list[Acknowledgement] = field(default_factory=list)


class Outbox:
    """Messages waiting for paho and for their PUBACKs, in order, bounded by `max_queued`;
    `loop` is the event loop of the connection (None until it starts).

    `client` is the paho client while the connection is up, None while it is down: the
    outbox hands messages over only to a client. `retained_value(topic)` is the value a
    queued retained topic has when it is handed over (None: cleared meanwhile).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop | None,
        retained_value: Callable[[str], bytes | None],
        *,
        qos: int,
        max_inflight: int,
        max_queued: int,
    ) -> None:
        self.qos = qos
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.client: paho.Client | None = None
        self._loop = loop
        self._retained_value = retained_value
        self._queue: deque[Message] = deque()
        self._queued_retained: dict[str, Message] = {}
        self._inflight: dict[int, Message] = {}
        self._counted = 0  # sent messages queued or in flight (the bounded part)
        self._space = asyncio.Event()  # set while _counted < max_queued
        self._space.set()
        self._idle = asyncio.Event()
        self._idle.set()
        # PUBACKs from paho's callbacks, settled in one batch per loop iteration.
        self._acks: deque[tuple[int, Any]] = deque()
        self._ack_scheduled = False

    @property
    def pending(self) -> int:
        """Messages queued or awaiting their PUBACK."""
        return len(self._queue) + len(self._inflight)

    @property
    def full(self) -> bool:
        """Whether `max_queued` messages are queued or unacknowledged: `await room()` first."""
        return self._counted >= self.max_queued

    async def room(self) -> None:
        """Wait until the outbox takes another message (back-pressure on the sources)."""
        while self._counted >= self.max_queued:
            self._space.clear()
            self.drain()
            await self._space.wait()

    async def flush(self) -> None:
        """Wait until everything queued so far is acknowledged."""
        await self._idle.wait()

    # -- queueing ---------------------------------------------------------------------------------

    def send(self, topic: str, payload: bytes, ack: Acknowledgement, properties: Properties | None) -> None:
        """Queue a message (not retained) under `ack`; over `max_queued` only after `await room()`."""
        self._counted += 1
        ack.pending += 1
        self._queue.append(Message(topic, payload, False, True, properties, [ack]))

    def put(self, message: Message) -> None:
        """Queue a message outside the bound (a marker, a clearing); `drain()` hands it over."""
        self._queue.append(message)

    def enqueue_retained(
        self, topic: str, ack: Acknowledgement | None = None, *, first: bool = False
    ) -> None:
        """Queue retained `topic` (once: a topic already queued keeps its place, or moves to the
        front with `first`); `ack`, if given, settles on the PUBACK of the value handed over."""
        message = self._queued_retained.get(topic)
        if message is None:
            message = Message(topic, None, True, False)
            self._queued_retained[topic] = message
            self._queue.appendleft(message) if first else self._queue.append(message)
        elif first and self._queue[0] is not message:
            self._queue.remove(message)
            self._queue.appendleft(message)
        if ack is not None:
            ack.pending += 1
            message.acks.append(ack)

    def clear_retained(self, topic: str, ack: Acknowledgement) -> None:
        """Queue the clearing of retained `topic` (an empty retained payload) under `ack`; what
        waited for its queued value waits for the clearing instead."""
        queued = self._queued_retained.pop(topic, None)
        if queued is not None:
            self._queue.remove(queued)
        ack.pending += 1
        message = Message(topic, b"", True, False, None, [ack])
        if queued is not None:
            message.acks += queued.acks
        self._queue.append(message)

    # -- handing over and settling ----------------------------------------------------------------

    def drain(self) -> None:
        """Hand queued messages to paho while connected and the in-flight window has room."""
        while self._queue and len(self._inflight) < self.max_inflight and (client := self.client):
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

    def acknowledged(self, mid: int, reason: Any) -> None:
        """Paho's PUBACK (or QoS 0 send) of message `mid`: settled after paho's read loop
        returns, so the window is refilled once per batch of acks."""
        self._acks.append((mid, reason))
        if not self._ack_scheduled:
            assert self._loop is not None  # acknowledgements come only once started
            self._ack_scheduled = True
            self._loop.call_soon(self._process_acks)

    def requeue_unsent(self) -> None:
        """The connection dropped: at QoS 0 paho forgets what it did not send, so take it back."""
        if self.qos == 0:
            for mid in list(self._inflight):
                self._queue.appendleft(self._inflight.pop(mid))

    def fail_all(self, error: SinkError) -> None:
        """Settle everything still queued or in flight with `error` (the connection closed)."""
        for message in (*self._inflight.values(), *self._queue):
            for ack in message.acks:
                ack.settle(error)
            if message.counted:
                self._release()
        self._inflight.clear()
        self._queue.clear()
        self._queued_retained.clear()
        self._idle.set()

    def _update_idle(self) -> None:
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

    def _settle(self, message: Message, error: SinkError | None) -> None:
        for ack in message.acks:
            ack.settle(error)
        if message.counted:
            self._release()

    def _release(self) -> None:
        self._counted -= 1
        if self._counted < self.max_queued:
            self._space.set()
