"""Multi-process runs: one JAX process per host (or per local group of devices).

mmsb-jax runs multi-controller, like every JAX program spanning several processes: each process
runs the *same* sequence of jitted computations on a global :class:`jax.sharding.Mesh`, and every
sharded page is one global ``jax.Array`` whose shards live on the devices of all processes.

The roles:

* every process calls :func:`initialize` once, before any other JAX call, then builds the same
  mesh over ``jax.devices()`` and the same State (``mm.init_state(schema, mesh=mesh)``);
* every process applies the same transactions in the same order
  (``mm.store.apply_transaction`` -- the function the Bus commits with), so the pages stay one
  consistent global array;
* only the coordinator (process 0, :func:`is_coordinator`) writes the transaction log: it owns the
  ``mm.Bus``; every other process holds a :class:`Follower`, which commits the same transactions
  to its State without logging them. :func:`open_bus` returns the right one on each process, so
  the same script runs everywhere;
* checkpoints are collective: every process saves the same seq of its global State (Orbax writes
  each process's shards, process 0 the metadata), so ``checkpoint()`` is called on every process;
* recovery is collective too: every process restores the checkpoint onto the mesh and replays the
  log suffix, exactly as ``Bus.open`` does.

Orbax's multi-process saves and restores synchronise the processes by name, so the Bus and its
followers open their checkpoint stores with identical options and make the same checkpoint calls
in the same order; a process that skips one (or opens the store read-only) deadlocks or fails with
``sync_global_devices name mismatch``.

See ``docs/distributed.md`` for the same recipe on several GPU hosts (NCCL).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mmsb_jax._checks import check_int, is_int
from mmsb_jax.core.delta import Delta
from mmsb_jax.core.pages import Schema, State
from mmsb_jax.errors import OptionError, SchemaMismatchError, StoreError
from mmsb_jax.runtime._pipeline import Pipeline, StateHolder, as_transaction, resolve_schema
from mmsb_jax.runtime.bus import Bus, CommitInfo
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.recovery import recover
from mmsb_jax.store.tlog import TLog

__all__ = ["Follower", "barrier", "cpu_device_flags", "free_port", "gather", "initialize",
           "is_coordinator", "is_initialized", "open_bus", "process_count", "shutdown"]

CPU_COLLECTIVES: tuple[str, ...] = ("gloo", "mpi")
"""Cross-process collective implementations JAX offers on CPU."""

_COORDINATOR_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):(\d{1,5})$")
_state = {"initialized": False}


def _check_coordinator(coordinator: str) -> None:
    m = _COORDINATOR_RE.match(coordinator) if isinstance(coordinator, str) else None
    if m is None or not 0 < int(m.group(2)) < 65536:
        raise OptionError(f"coordinator must be 'HOST:PORT' (e.g. '127.0.0.1:12345'), "
                          f"got {coordinator!r}")


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # pragma: no cover - JAX moved it; jax.distributed raises instead
        return False
    return bool(getattr(xla_bridge, "backends_are_initialized", lambda: False)())


def initialize(coordinator: str, num_processes: int, process_id: int, *,
               local_device_count: int | None = None, cpu_collectives: str = "gloo",
               timeout_s: int = 300) -> None:
    """Join a multi-process JAX run (wraps :func:`jax.distributed.initialize`).

    Call it once per process, before any other JAX call (before the first array is created):
    afterwards ``jax.devices()`` lists the devices of every process and ``jax.local_devices()``
    this process's own.

    Args:
      coordinator: ``"HOST:PORT"`` of process 0; process 0 starts the coordination service
        there, the others connect to it. On one machine use ``"127.0.0.1:<free port>"``.
      num_processes: the number of processes ``P`` in the run (``>= 1``).
      process_id: this process's index in ``[0, P)``; process 0 is the coordinator.
      local_device_count: on CPU, the number of (fake) devices this process exposes, set with
        ``jax_num_cpu_devices`` (the effect of
        ``XLA_FLAGS=--xla_force_host_platform_device_count=N``).
        None keeps the backend's default (one CPU device, or every local GPU).
      cpu_collectives: the cross-process collectives used on CPU, ``"gloo"`` (bundled with
        jaxlib) or ``"mpi"``. Ignored by GPU backends, which use NCCL.
      timeout_s: seconds to wait for every process to join.

    Raises:
      OptionError: a malformed argument, or JAX's backend was already initialised in this
        process (then it is too late to join a multi-process run).
    """
    _check_coordinator(coordinator)
    check_int("num_processes", num_processes, minimum=1)
    if not is_int(process_id) or not 0 <= process_id < num_processes:
        raise OptionError(f"process_id must be an int in [0, {num_processes}), "
                          f"got {process_id!r}")
    if local_device_count is not None and (isinstance(local_device_count, bool) or not
                                           isinstance(local_device_count, int) or
                                           local_device_count < 1):
        raise OptionError(f"local_device_count must be an int >= 1, got {local_device_count!r}")
    if cpu_collectives not in CPU_COLLECTIVES:
        raise OptionError(f"cpu_collectives must be one of {CPU_COLLECTIVES}, "
                          f"got {cpu_collectives!r}")
    if jax.distributed.is_initialized() or _state["initialized"]:
        raise OptionError("jax.distributed is already initialised in this process")
    if _backend_started():
        raise OptionError("initialize() must run before any JAX computation or device query in "
                          "this process (the XLA backend is already initialised)")
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    if local_device_count is not None:
        try:
            jax.config.update("jax_num_cpu_devices", local_device_count)
        except RuntimeError as e:  # the backend already exists
            raise OptionError(f"cannot set local_device_count after JAX started: {e}") from e
    try:
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=num_processes, process_id=process_id,
                                   initialization_timeout=int(timeout_s))
    except RuntimeError as e:
        if "before any JAX" in str(e) or "already" in str(e):
            raise OptionError(f"jax.distributed.initialize failed: {e}") from e
        raise
    _state["initialized"] = True


def is_initialized() -> bool:
    """Whether this process joined a multi-process run (through :func:`initialize` or JAX)."""
    return bool(_state["initialized"] or jax.distributed.is_initialized())


def is_coordinator() -> bool:
    """Whether this process is process 0: the one that writes the log (true in 1-process runs)."""
    return jax.process_index() == 0


def process_count() -> int:
    """The number of processes in the run (1 without :func:`initialize`)."""
    return jax.process_count()


def shutdown() -> None:
    """Leave the multi-process run (wraps :func:`jax.distributed.shutdown`); idempotent.

    Call it on every process at the end, after the last collective (e.g. the last checkpoint
    save); process 0 waits for the others before stopping the coordination service.
    """
    if jax.distributed.is_initialized():
        jax.distributed.shutdown()
    _state["initialized"] = False


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host`` (for a local coordinator in tests and examples)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


def cpu_device_flags(count: int, env: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default ``os.environ``) whose ``XLA_FLAGS`` expose ``count`` CPU devices.

    For launching worker processes: the flag must be set before JAX starts in the child.
    """
    check_int("count", count, minimum=1)
    out = dict(os.environ if env is None else env)
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", out.get("XLA_FLAGS", ""))
    out["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    return out


def barrier(name: str) -> None:
    """Block until every process reached ``barrier(name)`` (no-op in a 1-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather(page: jax.Array) -> np.ndarray:
    """The global value of ``page`` as a numpy array, on every process.

    Args:
      page: ``[*shape]``, possibly sharded over devices of several processes.

    Returns:
      ``np.ndarray[*shape]``. A collective when the page is not fully addressable: call it on
      every process.
    """
    if getattr(page, "is_fully_addressable", True):
        return np.asarray(page)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(page, tiled=True))


class Follower(StateHolder):
    """The Bus of a process that is not the coordinator: it commits without writing the log.

    A follower keeps the same global State as the coordinator's :class:`~mmsb_jax.Bus` by
    committing the same transactions in the same order with the same function
    (:func:`mmsb_jax.store.apply_transaction`), and joins the coordinator's collective
    checkpoint saves. It never opens the log for writing; it reads it once, when it opens, to
    recover. Build it with :func:`open_bus` (on every process) rather than directly.
    """

    def __init__(self, directory: Path, schema: Schema, graph: Any, ckpts: CheckpointStore,
                 state: State, seq: int, *, checkpoint_every: int | None):
        self.directory = directory
        self.schema = schema
        self.graph = graph
        self._ckpts = ckpts
        self._state = state
        self._seq = seq
        self._checkpoint_every = checkpoint_every
        self._closed = False
        self._pipe = Pipeline(graph, log_layouts=False)

    @classmethod
    def open(cls, directory: str | os.PathLike, schema: Schema | None = None, graph: Any = None,
             *, mesh: jax.sharding.Mesh | None = None, checkpoint_every: int | None = None,
             keep_checkpoints: int = 3) -> Follower:
        """Recover the state of an existing bus directory, as ``Bus.open`` does, read-only.

        The log must exist (the coordinator creates it; :func:`open_bus` orders this).

        Raises:
          StoreError: no log in ``directory``. SchemaMismatchError: ``schema`` (or the graph's)
            differs from the stored one.
        """
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise OptionError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
        schema = resolve_schema(schema, graph)
        directory = Path(directory)
        if not (directory / "log").is_dir():
            raise StoreError(f"no bus log in {directory} (the coordinator creates it)")
        with TLog.open(directory / "log", readonly=True) as tlog:
            if tlog.schema is None:
                raise StoreError(f"{directory} holds no log")
            if schema is not None and schema != tlog.schema:
                raise SchemaMismatchError(f"schema differs from the one stored in {directory}")
            # Same options as the Bus's store: Orbax's collective calls must line up.
            ckpts = CheckpointStore(directory / "checkpoints", keep=int(keep_checkpoints))
            try:
                state, seq = recover(tlog, ckpts, tlog.schema, mesh, graph)
            except BaseException:
                ckpts.close()
                raise
            return cls(directory, tlog.schema, graph, ckpts, state, seq,
                       checkpoint_every=None if checkpoint_every is None
                       else int(checkpoint_every))

    def commit(self, deltas: Delta | Sequence[Delta]) -> CommitInfo:
        """Apply one transaction exactly as the coordinator's ``Bus.commit`` does, unlogged.

        Args:
          deltas: the transaction (the same deltas, in the same order, as the coordinator's).

        Returns:
          :class:`~mmsb_jax.runtime.bus.CommitInfo` (``bytes_logged=0``, ``durable=False``).

        Raises:
          UnknownPageError, DTypeError, ShapeError, MaskError, IndexOutOfRangeError, OpError,
          GraphError: an invalid delta (state unchanged). StoreError: closed.
        """
        if self._closed:
            raise StoreError(f"follower of {self.directory} is closed")
        deltas = as_transaction(deltas)
        state = self._state
        plan = self._pipe.prepare(state, deltas)
        new_state = self._pipe.apply(state, deltas, plan)
        derived = self._pipe.changed(state, new_state, plan.affected)
        self._state, self._seq = new_state, self._seq + 1
        if self._checkpoint_every and self._seq % self._checkpoint_every == 0:
            self._save(wait=False)
        return CommitInfo(seq=self._seq, bytes_logged=0, pages=plan.pages, derived=derived)

    def _save(self, *, wait: bool) -> int:
        if wait:
            self._ckpts.wait()
        provenance = dict(self.graph.provenance()) if self.graph is not None else {}
        return self._ckpts.save(self._seq, self._state, self.schema, graph=provenance, wait=wait)

    def checkpoint(self) -> int:
        """Join the coordinator's ``Bus.checkpoint()`` (a collective save); returns the seq."""
        if self._closed:
            raise StoreError(f"follower of {self.directory} is closed")
        return self._save(wait=True)

    def close(self) -> None:
        """Wait for pending checkpoint saves and close the store (idempotent)."""
        if not self._closed:
            self._closed = True
            self._ckpts.close()

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bus(directory: str | os.PathLike, schema: Schema | None = None, graph: Any = None,
             sync: str = "batch", *, mesh: jax.sharding.Mesh | None = None,
             checkpoint_every: int | None = None, keep_checkpoints: int = 3,
             **bus_options: Any) -> Bus | Follower:
    """Open one bus directory from every process of a run: a collective call.

    Process 0 creates (or repairs) the log, then every process recovers the state together
    (collective checkpoint restore onto ``mesh`` + replay of the log suffix). Process 0 gets the
    writing :class:`~mmsb_jax.Bus`, every other process a :class:`Follower`; both offer
    ``commit``, ``checkpoint``, ``state``, ``seq`` and ``close``, so one script runs everywhere.
    Every process must then commit the same transactions in the same order and call
    ``checkpoint()`` together. In a 1-process run this is ``Bus.open``.

    Args:
      directory: the bus directory, on a file system that every process sees (checkpoints are
        written by all processes; the log by process 0).
      schema, graph, sync: as for :meth:`Bus.open`.
      mesh: the global mesh (over ``jax.devices()``) the pages live on.
      checkpoint_every, keep_checkpoints: as for :meth:`Bus.open` (the same on every process).
      **bus_options: further :meth:`Bus.open` options for process 0 (``segment_bytes``,
        ``batch_commits``, ``batch_interval_ms``). ``prune_log`` is refused: pruning waits on
        checkpoint saves that the followers do not mirror.

    Returns:
      The :class:`~mmsb_jax.Bus` on process 0, a :class:`Follower` elsewhere.
    """
    if "prune_log" in bus_options:
        raise OptionError("prune_log is not supported by open_bus; prune from process 0 after "
                          "the run")
    schema = resolve_schema(schema, graph)
    directory = Path(directory)
    if is_coordinator():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        provenance = dict(graph.provenance()) if graph is not None else {}
        # Create the log, or truncate a torn tail, before any follower reads it.
        TLog.open(directory / "log", schema, graph=provenance, sync="never").close()
    barrier(f"mmsb_jax.open_bus:{directory.name}")
    if is_coordinator():
        return Bus.open(directory, schema, graph, sync, mesh=mesh,
                        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                        **bus_options)
    return Follower.open(directory, schema, graph, mesh=mesh, checkpoint_every=checkpoint_every,
                         keep_checkpoints=keep_checkpoints)
