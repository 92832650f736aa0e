"""Store: host-side durability — the transaction log, checkpoints, replay and seed formats."""

from mmsb_jax.core.transaction import apply_transaction
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.format import StackedRun, Transaction
from mmsb_jax.store.recovery import state_at
from mmsb_jax.store.replay import replay, replay_with_seq
from mmsb_jax.store.tlog import (
    SYNC_POLICIES,
    LogScan,
    RecoveryReport,
    RepairReport,
    TLog,
    read_transactions,
    repair,
    scan_log,
)

__all__ = [
    "SYNC_POLICIES",
    "CheckpointStore",
    "LogScan",
    "RecoveryReport",
    "RepairReport",
    "StackedRun",
    "TLog",
    "Transaction",
    "apply_transaction",
    "read_transactions",
    "repair",
    "replay",
    "replay_with_seq",
    "scan_log",
    "state_at",
]
