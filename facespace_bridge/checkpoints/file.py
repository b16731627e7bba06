"""The default checkpoint store: one JSON file, replaced atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
from pathlib import Path

from facespace_bridge.checkpoints.base import Checkpoint, CheckpointError, CheckpointStore


def default_path(instance_id: str) -> Path:
    """`$XDG_STATE_HOME/facespace-bridge/<instance>.json` (XDG default ~/.local/state)."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "facespace-bridge" / f"{instance_id}.json"


class FileCheckpointStore(CheckpointStore):
    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"file {self.path}"

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create checkpoint directory {self.path.parent}: {exc.strerror}"
            ) from None

    async def load(self) -> Checkpoint | None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {exc.strerror}") from None
        try:
            return Checkpoint.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {self.path} is corrupt: {exc}") from None

    async def save(self, checkpoint: Checkpoint) -> None:
        # On the event loop's thread, blocking it for the two fsyncs (about 0.5 ms, a few ms
        # under load). A worker thread was measured to cost more: at each of its system calls
        # it hands the GIL back and forth with the busy loop, and a backfill saves hundreds of
        # times a second (bench/README.md, "Bridge backfill vs replay": 0.75-0.78 of replay's
        # rate with the thread, 0.81 inline, 0.82 inline without any fsync).
        self._write(checkpoint.to_bytes())

    def _write(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            # Plain os calls rather than open(), which adds fstat, ioctl and lseek calls for its
            # buffered file object.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            # fsync the directory so the rename itself survives a power cut.
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror}") from None
