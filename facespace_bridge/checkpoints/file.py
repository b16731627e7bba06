"""The default checkpoint store: one JSON file, replaced atomically (temp file, fsync, rename).

While open, the store holds an exclusive lock (flock) on a lock file beside the checkpoint,
`.<name>.lock`, which holds the pid of its holder. So two bridges started with the same
checkpoint cannot both write it, and `facespace-bridge checkpoint set|reset` cannot change
it under a running bridge. The kernel releases the lock when the process ends, however it
ends; the file itself stays (removing it would let a second process lock a new file while
the first still holds the old one). flock is reliable on local file systems; on NFS it is
only as good as the server's lock support.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_fixed

from facespace_bridge.checkpoints.base import Checkpoint, CheckpointError, CheckpointInUse, CheckpointStore

# How long open() waits for the lock before refusing. Besides a bridge, its holders are
# `checkpoint set|reset` (one read and one write) and the probe of `checkpoint show`: a
# starting bridge waits for those rather than failing.
LOCK_WAIT = 2.0


def default_path(instance_id: str) -> Path:
    """`$XDG_STATE_HOME/facespace-bridge/<instance>.json` (XDG default ~/.local/state)."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state_home) / "facespace-bridge" / f"{instance_id}.json"


class FileCheckpointStore(CheckpointStore):
    name = "file"
    exclusive = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._lock_fd: int | None = None

    def describe(self) -> str:
        return f"file {self.path}"

    async def open(self) -> None:
        if self._lock_fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(
                f"cannot create checkpoint directory {self.path.parent}: {exc.strerror}"
            ) from None
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise CheckpointError(f"cannot open the lock file {self.lock_path}: {exc.strerror}") from None
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(BlockingIOError),
                stop=stop_after_delay(LOCK_WAIT),
                wait=wait_fixed(0.05),
                reraise=True,
            ):
                with attempt:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise CheckpointInUse(
                f"checkpoint {self.path} is in use by {holder}, which holds {self.lock_path}: "
                "a bridge with this checkpoint is running"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise CheckpointError(f"cannot lock {self.lock_path}: {exc.strerror}") from None
        with contextlib.suppress(OSError):  # the pid only names the holder in messages
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def holder(self) -> str | None:
        """Who has this checkpoint open ("pid 1234"), or None when nobody does. Takes the lock
        for a moment (shared, never waiting) to find out, which a starting bridge waits out."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except FileNotFoundError:
            return None  # no process ever opened it
        except OSError as exc:
            raise CheckpointError(f"cannot open the lock file {self.lock_path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        finally:
            os.close(fd)  # (releases the shared lock too)
        return None

    async def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    async def forget(self) -> None:
        try:
            os.unlink(self.path)
            self._sync_directory()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CheckpointError(f"cannot remove checkpoint {self.path}: {exc.strerror}") from None

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
        # On the event loop's thread, blocking it for the two fsyncs: a worker thread costs
        # more, because at each of its system calls it hands the GIL back and forth with the
        # busy loop, and a backfill saves many times a second (the figures: bench/README.md,
        # "Bridge backfill vs replay").
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
            self._sync_directory()
        except OSError as exc:
            raise CheckpointError(f"cannot write checkpoint {self.path}: {exc.strerror}") from None

    def _sync_directory(self) -> None:
        """fsync the directory, so that a rename or removal itself survives a power cut."""
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _read_holder(fd: int) -> str:
    """The holder named in a lock file ("pid 1234"), as far as it says."""
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "another process"
