"""Which checkpoint store a bridge instance uses, from its options: every command that reads
or writes an instance's checkpoint (`run`, `check`, `checkpoint`, `demo`) chooses it here, so
they all find the same one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from facespace_bridge.checkpoints.base import CheckpointStore, Transactions
from facespace_bridge.checkpoints.file import FileCheckpointStore, default_path


def store_from_config(config: Mapping[str, Any], transactions: Transactions | None = None) -> CheckpointStore:
    """`--checkpoint kafka` or `--exactly-once`: the compacted Kafka topic (with
    `transactions`, the sink whose transactions the checkpoint record joins); otherwise the
    file `--checkpoint PATH`, by default the instance's file under $XDG_STATE_HOME."""
    target = config.get("checkpoint")
    if target == "kafka" or config.get("exactly_once"):
        from facespace_bridge.checkpoints.kafka import KafkaCheckpointStore

        return KafkaCheckpointStore.from_config(config, transactions=transactions)
    return FileCheckpointStore(target or default_path(config["instance_id"]))
