"""Checkpoint stores: where the bridge's resume point lives (file by default, or a Kafka topic)."""

from facespace_bridge.checkpoints.base import (
    Backfill,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    Position,
)
from facespace_bridge.checkpoints.file import FileCheckpointStore, default_path

__all__ = [
    "Backfill",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "FileCheckpointStore",
    "Position",
    "default_path",
]
