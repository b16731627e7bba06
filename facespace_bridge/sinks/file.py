"""JSON-lines file sink (`--broker file --output PATH`): one payload per line.

Lines are written by one task in batches and acknowledged after the batch is
fsync'd (group commit), so an ack means the line survives a crash without paying
an fsync per event. `--output -` writes to stdout (acknowledged after flush).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import click

from facespace_bridge.events import Event
from facespace_bridge.sinks.base import Ack, Sink, SinkError

OPTIONS = [
    click.option(
        "--output",
        type=click.Path(dir_okay=False, allow_dash=True),
        help="File sink: JSON-lines file to append events to ('-' for stdout).",
    ),
]

_BATCH = 1000  # lines per write; also the in-flight bound


class FileSink(Sink):
    name = "file"

    def __init__(self, path: str) -> None:
        self.path = path
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue(maxsize=_BATCH * 4)
        self._handle: IO[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.path == "-":
            self._handle = sys.stdout.buffer
        else:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._handle = await asyncio.to_thread(open, self.path, "ab")
            except OSError as exc:
                raise SinkError(f"cannot open {self.path}: {exc.strerror}") from None
        self._writer = asyncio.create_task(self._write_batches(), name="file-sink")

    async def publish(self, event: Event) -> Ack:
        if self._writer is None or self._writer.done():
            raise SinkError("file sink is not running")
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((event.payload, ack))  # waits when the writer is behind
        return ack

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < _BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            data = b"".join(payload + b"\n" for payload, _ in batch)
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as exc:
                error = SinkError(f"cannot write {self.path}: {exc.strerror}")
                for _, ack in batch:
                    if not ack.done():
                        ack.set_exception(error)
                    self._queue.task_done()
                continue
            for _, ack in batch:
                if not ack.done():
                    ack.set_result(None)
                self._queue.task_done()

    def _write(self, data: bytes) -> None:
        assert self._handle is not None
        self._handle.write(data)
        self._handle.flush()
        if self._handle is not sys.stdout.buffer:
            os.fsync(self._handle.fileno())

    async def flush(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        if self._writer is not None:
            try:
                await asyncio.wait_for(self.flush(), timeout=5)
            except asyncio.TimeoutError:
                pass
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        if self._handle is not None and self._handle is not sys.stdout.buffer:
            self._handle.close()
        self._handle = None


def from_config(config: Mapping[str, Any]) -> FileSink:
    output = config.get("output")
    if not output:
        raise click.UsageError("--broker file needs --output PATH")
    return FileSink(str(output))
