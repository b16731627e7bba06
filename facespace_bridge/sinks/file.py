"""JSON-lines file sink (`--broker file --output PATH`): one payload per line.

Lines are written by one task in batches and acknowledged after the batch is
fsync'd (group commit), so an ack means the line survives a crash without paying
an fsync per event. `--output -` writes to stdout (acknowledged after flush).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from facespace_bridge.events import Event
from facespace_bridge.settings import cli_options, from_options, setting
from facespace_bridge.sinks.base import Ack, Role, Sink, SinkError

HELP = "a JSON Lines file, one event per line, fsync'd"


@dataclass(frozen=True)
class FileSettings:
    """The file sink's settings, with their CLI options (facespace_bridge/settings.py)."""

    output: str | None = setting(
        "--output",
        default=None,
        type=click.Path(dir_okay=False, allow_dash=True),
        help="File sink: JSON-lines file to append events to ('-' for stdout).",
    )
    output_mode: str = setting(
        "--output-mode",
        default="append",
        type=click.Choice(["append", "truncate"]),
        help="File sink: add to what --output holds, or (replay only) start it empty.",
    )


OPTIONS = cli_options(FileSettings)

_BATCH = 1000  # lines waiting for a write before publishers wait: the in-flight bound


class FileSink(Sink):
    name = "file"

    def __init__(self, path: str, *, truncate: bool = False) -> None:
        self.path = path
        self.truncate = truncate  # start the file empty (a replay's choice; the bridge always appends)
        self._lines: list[bytes] = []  # waiting for the next write
        self._batch: asyncio.Future[None] | None = None  # the ack every waiting line shares
        self._wake = asyncio.Event()  # lines are waiting
        self._room = asyncio.Event()  # fewer than _BATCH lines are waiting
        self._room.set()
        self._writing: asyncio.Future[None] | None = None  # the batch being written now
        self._handle: IO[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.path == "-":
            self._handle = sys.stdout.buffer
        else:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._handle = await asyncio.to_thread(open, self.path, "wb" if self.truncate else "ab")
            except OSError as exc:
                raise SinkError(f"cannot open {self.path}: {exc.strerror}") from None
        self._writer = asyncio.create_task(self._write_batches(), name="file-sink")

    async def publish(self, events: Sequence[Event]) -> Ack:
        if self._writer is None or self._writer.done():
            raise SinkError("file sink is not running")
        while len(self._lines) >= _BATCH:  # the writer is behind: wait for it
            self._room.clear()
            await self._room.wait()
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._lines.extend(event.payload for event in events)
        self._wake.set()
        return self._batch

    async def _write_batches(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            lines, ack = self._lines, self._batch
            self._lines, self._batch = [], None
            self._room.set()
            if ack is None:
                continue
            self._writing = ack
            try:
                await asyncio.to_thread(self._write, b"\n".join(lines) + b"\n")
            except OSError as exc:
                ack.set_exception(SinkError(f"cannot write {self.path}: {exc.strerror}"))
            else:
                ack.set_result(None)
            finally:
                self._writing = None

    def _write(self, data: bytes) -> None:
        assert self._handle is not None
        self._handle.write(data)
        self._handle.flush()
        if self._handle is not sys.stdout.buffer:
            os.fsync(self._handle.fileno())

    async def flush(self) -> None:
        """Wait until every line handed over so far is written (or failed)."""
        for pending in (self._writing, self._batch):
            if pending is not None:
                await asyncio.wait([pending])

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


def from_config(config: Mapping[str, Any], *, role: Role = Role.BRIDGE) -> FileSink:
    settings = from_options(FileSettings, config)
    if not settings.output:
        raise click.UsageError("--broker file needs --output PATH")
    truncate = settings.output_mode == "truncate"
    if truncate and role is Role.BRIDGE:
        # The checkpoint says what the file already holds: emptying it on a restart would lose that.
        raise click.BadParameter(
            "truncate is for replay: the bridge appends, resuming after what the file holds",
            param_hint="--output-mode",
        )
    # (`check` only opens the file: it never empties it.)
    return FileSink(str(settings.output), truncate=truncate and role is Role.REPLAY)
