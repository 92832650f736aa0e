"""Recovery: the State of a bus directory at any seq, from its checkpoints and its log.

Used by ``Bus.open`` (recover to the end of the log), ``Bus.at`` (time travel), the
distributed Follower and the ``mmsb replay`` command. Everything here reads; only
:func:`recover` deletes checkpoints that lie beyond the end of the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from mmsb_jax.core.pages import Schema, State, init_state
from mmsb_jax.errors import SchemaMismatchError, StoreError, UnknownSeqError
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.replay import replay_with_seq
from mmsb_jax.store.tlog import TLog

if TYPE_CHECKING:
    from mmsb_jax.core.graph import Graph

__all__ = ["initial_or_checkpoint", "recover", "replay_to", "state_at"]

log = logging.getLogger("mmsb_jax.store")


def initial_or_checkpoint(tlog: TLog, ckpts: CheckpointStore, schema: Schema, seq: int,
                           mesh: jax.sharding.Mesh | None) -> tuple[State, int]:
    """The best starting point for reaching ``seq``: ``(state, its seq)``.

    The latest checkpoint at or before ``seq`` that the log continues from, else the initial
    state (if the log still starts at seq 1).

    Raises:
      UnknownSeqError: the log was pruned past ``seq`` and no checkpoint covers the gap.
    """
    base = ckpts.latest(seq)
    if base is not None and base >= tlog.first_seq - 1:
        state, _ = ckpts.restore(base, schema, mesh=mesh)
        return state, base
    if tlog.first_seq > 1:
        raise UnknownSeqError(f"the log starts after seq {tlog.first_seq - 1} and no checkpoint "
                              f"at or before seq {seq} covers the gap")
    return init_state(schema, mesh=mesh), 0


def replay_to(tlog: TLog, ckpts: CheckpointStore, schema: Schema, seq: int,
              mesh: jax.sharding.Mesh | None, graph: Graph | None = None) -> State:
    """The State right after commit ``seq``: nearest checkpoint + log replay.

    Raises:
      UnknownSeqError: ``seq`` cannot be reached from what the directory holds.
    """
    state, base = initial_or_checkpoint(tlog, ckpts, schema, seq, mesh)
    state, reached = replay_with_seq(state, tlog, after_seq=base, to_seq=seq, graph=graph)
    if reached != seq:
        raise UnknownSeqError(f"the log ends at seq {reached}, before {seq}")
    return state


def recover(tlog: TLog, ckpts: CheckpointStore, schema: Schema,
            mesh: jax.sharding.Mesh | None, graph: Graph | None = None) -> tuple[State, int]:
    """The state after the last logged commit: latest usable checkpoint + log suffix.

    Checkpoints beyond the end of the log are deleted (the log is the source of truth).

    Returns:
      ``(state, seq)``.

    Raises:
      StoreError: the log cannot be replayed to its end.
    """
    last = tlog.last_seq
    for stale in [s for s in ckpts.steps() if s > last]:
        log.warning("checkpoint %d in %s is beyond the end of the log (seq %d); the log is the "
                    "source of truth, deleting it", stale, ckpts.directory, last)
        ckpts.delete(stale)
    try:
        state = replay_to(tlog, ckpts, schema, last, mesh, graph)
    except UnknownSeqError as e:
        raise StoreError(f"cannot recover {tlog.path}: {e}") from e
    return state, last


def state_at(directory: str | os.PathLike, seq: int | None = None, *,
             schema: Schema | None = None, use_checkpoints: bool = True,
             mesh: jax.sharding.Mesh | None = None,
             progress: bool | None = None, graph: Graph | None = None) -> tuple[State, int]:
    """Read-only: the State of the bus directory ``directory`` after commit ``seq``.

    Does not take the directory's lock (a live Bus may be writing); a torn tail is ignored.

    Args:
      directory: a bus directory.
      seq: the commit to stop after (default: the last one in the log).
      schema: if given, must equal the stored schema.
      use_checkpoints: start from the nearest checkpoint (otherwise replay from seq 0).
      mesh: place pages on this mesh.
      progress: tqdm progress bar (default: on a terminal for long logs).
      graph: the ``mm.Graph`` of the bus's derived pages (rebuilt by propagation); without it
        derived pages keep the values of the checkpoint the replay starts from.

    Returns:
      ``(state, seq reached)``.
    """
    directory = Path(directory)
    with TLog.open(directory / "log", readonly=True) as tlog:
        if tlog.schema is None:
            raise StoreError(f"{directory} holds no log")
        if schema is not None and schema != tlog.schema:
            raise SchemaMismatchError(f"schema differs from the one stored in {directory}")
        target = tlog.last_seq if seq is None else int(seq)
        if target < 0 or target > tlog.last_seq:
            raise UnknownSeqError(f"seq {target} outside 0..{tlog.last_seq}")
        ck_dir = directory / "checkpoints"
        if use_checkpoints and ck_dir.is_dir():
            with CheckpointStore(ck_dir, readonly=True) as ckpts:
                state, base = initial_or_checkpoint(tlog, ckpts, tlog.schema, target, mesh)
        elif tlog.first_seq > 1:
            raise UnknownSeqError(f"the log starts after seq {tlog.first_seq - 1}")
        else:
            state, base = init_state(tlog.schema, mesh=mesh), 0
        state, reached = replay_with_seq(state, tlog, after_seq=base, to_seq=target,
                                         progress=progress, graph=graph)
        return state, reached
