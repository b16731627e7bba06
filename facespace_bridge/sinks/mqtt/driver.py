"""Paho driven by the asyncio loop: none of paho's threads.

Paho's socket is driven by the event loop (`add_reader` / `add_writer` call `loop_read` /
`loop_write`, a timer calls `loop_misc` for keepalive), so its callbacks run on the loop and
PUBACKs settle acknowledgements without a thread hop or a second thread contending for the
GIL (bench/README.md, MQTT). Only the blocking part of a (re)connect — TCP connect, TLS
handshake — runs in a worker thread; the socket callbacks paho makes from that thread are
replayed on the loop when it is done. The reconnect backoff is the connection's
(connection.py), since paho's lives in `loop_forever` / `loop_start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from typing import Any

import paho.mqtt.client as paho

MISC_INTERVAL = 1.0  # seconds between `loop_misc` calls (keepalive pings and their timeout)


class PahoDriver:
    """Drives one paho client's socket from the running event loop, from `attach()` to `close()`."""

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._sock: Any = None  # the socket registered with the loop (paho's SocketLike)
        self._sock_closed = asyncio.Event()
        self._sock_closed.set()
        self._attempt: asyncio.Task[None] | None = None  # one connect, in a worker thread
        # Paho's socket callbacks made from that thread, replayed on the loop when it is done.
        self._from_thread: deque[tuple[Any, Any]] = deque()
        self._misc_task: asyncio.Task[None] | None = None
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write

    def start(self) -> None:
        """Start the keepalive timer."""
        self._misc_task = asyncio.ensure_future(self._keep_alive())

    async def connect(self) -> None:
        """One connect attempt: TCP (and TLS) connection made and CONNECT sent; raises
        OSError / ValueError as paho does. The CONNACK arrives later through `loop_read`.
        Cancelling the caller leaves the attempt running to its end (`close` waits for it)."""
        self._attempt = asyncio.ensure_future(self._connect_in_thread())
        await asyncio.shield(self._attempt)

    async def _connect_in_thread(self) -> None:
        """Blocking TCP connect and TLS handshake, off the loop; the loop does not touch the
        client's socket until it is done."""
        try:
            await asyncio.to_thread(self.client.reconnect)
        finally:
            while self._from_thread:
                callback, sock = self._from_thread.popleft()
                callback(self.client, None, sock)

    async def close(self) -> None:
        """Stop the keepalive, wait out a connect attempt, send DISCONNECT (no Last Will then)
        and close the socket."""
        task = self._misc_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._attempt is not None:  # a connect in its worker thread cannot be cancelled
            with contextlib.suppress(Exception):
                await self._attempt
        if self._sock is not None:
            self.client.disconnect()  # queued; paho closes the socket once it is written
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sock_closed.wait(), 2.0)
        if self._sock is not None:  # DISCONNECT could not be written: close anyway
            self.client._sock_close()  # paho has no public "drop the socket"

    async def _keep_alive(self) -> None:
        """Keepalive: paho sends PINGREQ when due and drops a connection whose PINGRESP is late."""
        while True:
            await asyncio.sleep(MISC_INTERVAL)
            if self._sock is not None:
                self.client.loop_misc()

    def _readable(self) -> None:
        client = self.client
        client.loop_read()
        # TLS: bytes already decrypted into the SSL object do not make the fd readable again.
        sock = self._sock
        while sock is not None and sock is self._sock and getattr(sock, "pending", None) and sock.pending():
            client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _in_thread(self, callback: Any, sock: Any) -> bool:
        """Whether paho calls from the connect thread; the call is then kept for the loop."""
        if threading.get_ident() == self._loop_thread:
            return False
        self._from_thread.append((callback, sock))
        return True

    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_open, sock):
            return
        self._sock = sock
        self._sock_closed.clear()
        self._loop.add_reader(sock, self._readable)

    def _on_socket_close(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_close, sock):
            return
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        if sock is self._sock:
            self._sock = None
            self._sock_closed.set()

    def _on_socket_register_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_register_write, sock):
            return
        if sock is self._sock:  # not a socket closed meanwhile
            self._loop.add_writer(sock, self._writable)

    def _on_socket_unregister_write(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._in_thread(self._on_socket_unregister_write, sock):
            return
        self._loop.remove_writer(sock)
