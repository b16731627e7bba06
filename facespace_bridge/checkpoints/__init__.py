"""Checkpoint stores: where the bridge's resume point lives (file by default, or a Kafka topic)."""

from facespace_bridge.checkpoints.base import (
    Backfill,
    Checkpoint,
    CheckpointError,
    CheckpointInUse,
    CheckpointStore,
    Position,
    rfc3339,
)
from facespace_bridge.checkpoints.config import store_from_config
from facespace_bridge.checkpoints.file import FileCheckpointStore, default_path

__all__ = [
    "Backfill",
    "Checkpoint",
    "CheckpointError",
    "CheckpointInUse",
    "CheckpointStore",
    "FileCheckpointStore",
    "Position",
    "default_path",
    "rfc3339",
    "store_from_config",
]
