"""Checkpoints: the pages pytree and a JSON manifest, saved with Orbax under ``DIR/checkpoints``.

A checkpoint is an Orbax step named by the commit seq it captures. ``pages`` is saved with
``ocp.args.StandardSave`` (sharded arrays keep their shardings on restore when a mesh is given),
the manifest (schema, seq, epochs, graph provenance, versions, backend) with
``ocp.args.JsonSave``. Restoring checks the schema first and refuses a mismatch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import Schema, State
from mmsb_jax.errors import (
    FormatError,
    OptionError,
    SchemaError,
    SchemaMismatchError,
    StoreError,
    UnknownSeqError,
)

__all__ = ["MANIFEST_FORMAT", "MANIFEST_VERSION", "CheckpointStore", "make_manifest"]

log = logging.getLogger("mmsb_jax.store")

MANIFEST_FORMAT = "mmsb-jax-checkpoint"
MANIFEST_VERSION = 1
_ITEMS = ("pages", "manifest")


def _ocp():
    import orbax.checkpoint as ocp

    return ocp


def make_manifest(seq: int, state: State, schema: Schema,
                  graph: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON manifest of a checkpoint of ``state`` at commit ``seq``."""
    import mmsb_jax

    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "seq": int(seq),
        "schema": schema.to_json(),
        "epochs": {n: int(state.epochs[n]) for n in schema.names},
        "graph": dict(graph or {}),
        "mmsb_version": getattr(mmsb_jax, "__version__", "unknown"),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _has_step_dirs(directory: Path) -> bool:
    """Whether ``directory`` holds an entry named by a step number (complete or not)."""
    try:
        with os.scandir(directory) as entries:
            return any(e.name.split(".", 1)[0].isdigit() for e in entries)
    except FileNotFoundError:
        return False


def _restrict_permissions(path: Path) -> None:
    """``0700`` on directories and ``0600`` on files under ``path`` (inclusive)."""
    for root, dirs, files in os.walk(path):
        os.chmod(root, 0o700)
        for f in files:
            os.chmod(os.path.join(root, f), 0o600)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o700)


class CheckpointStore:
    """The checkpoints of one bus directory (an Orbax ``CheckpointManager``).

    Args:
      directory: the checkpoint directory (``DIR/checkpoints``; created with mode 0700 unless
        ``readonly``).
      keep: retention, keep the last ``keep`` checkpoints (Orbax ``LatestN``); None keeps all.
      readonly: never save or delete (for inspection and time travel by other processes).
      async_save: let :meth:`save` with ``wait=False`` return before the data is written.

    Only steps whose save completed are listed; a save killed midway leaves an
    ``*.orbax-checkpoint-tmp*`` directory that is ignored.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int | None = 3,
                 readonly: bool = False, async_save: bool = True):
        if keep is not None and int(keep) < 1:
            raise OptionError(f"keep must be >= 1 (or None), got {keep}")
        self.directory = Path(directory).absolute()
        self.readonly = readonly
        if readonly:
            if not self.directory.is_dir():
                raise StoreError(f"no checkpoint directory at {self.directory}")
        else:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._keep = None if keep is None else int(keep)
        self._async = async_save and not readonly
        self._lock = threading.RLock()
        self._pending: list[int] = []
        self._closed = False
        # The Orbax manager (and Orbax itself, ~0.2 s to import) is made on first use: a bus
        # that has no checkpoint yet opens, commits and recovers without it.
        self._orbax: Any = None

    @property
    def _manager(self) -> Any:
        manager = self._orbax
        if manager is None:
            ocp = _ocp()
            from orbax.checkpoint.checkpoint_managers import LatestN

            options = ocp.CheckpointManagerOptions(
                create=False,
                preservation_policy=LatestN(self._keep),
                enable_async_checkpointing=self._async,
                file_options=ocp.options.FileOptions(path_permission_mode=0o700),
                cleanup_tmp_directories=False,
            )
            manager = self._orbax = ocp.CheckpointManager(self.directory, item_names=_ITEMS,
                                                          options=options)
        return manager

    # -- listing ----------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Seqs of the complete checkpoints, ascending."""
        with self._lock:
            if self._orbax is None and not _has_step_dirs(self.directory):
                return []  # nothing Orbax could list (a step is a directory named by its seq)
            if self.readonly:  # another process may have saved since; a writer knows its own
                self._manager.reload()
            return sorted(int(s) for s in self._manager.all_steps())

    def latest(self, max_seq: int | None = None) -> int | None:
        """The largest checkpoint seq ``<= max_seq`` (default: the largest), or None."""
        steps = [s for s in self.steps() if max_seq is None or s <= max_seq]
        return steps[-1] if steps else None

    def manifest(self, seq: int) -> dict[str, Any]:
        """The manifest of checkpoint ``seq``.

        Raises:
          UnknownSeqError: no complete checkpoint at ``seq``. FormatError: not an mmsb-jax
          manifest, or an unsupported version.
        """
        ocp = _ocp()
        if seq not in self.steps():
            raise UnknownSeqError(f"no checkpoint at seq {seq} in {self.directory}")
        with self._lock:
            try:
                out = self._manager.restore(seq, args=ocp.args.Composite(
                    manifest=ocp.args.JsonRestore()))
            except ValueError as e:  # not JSON / not UTF-8 (JSONDecodeError, UnicodeDecodeError)
                raise FormatError(f"checkpoint {seq}: unreadable manifest: {e}") from e
        manifest = out["manifest"]
        if (not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT):
            raise FormatError(f"checkpoint {seq}: not an mmsb-jax manifest")
        if manifest.get("version") != MANIFEST_VERSION:
            raise FormatError(f"checkpoint {seq}: unsupported manifest version "
                              f"{manifest.get('version')}")
        return manifest

    # -- saving -----------------------------------------------------------------------------
    def save(self, seq: int, state: State, schema: Schema, *,
             graph: Mapping[str, Any] | None = None, wait: bool = True) -> int:
        """Save ``state`` (the state right after commit ``seq``) as checkpoint ``seq``.

        Args:
          seq: the commit seq the state corresponds to (the Orbax step).
          state: the State; every page of ``schema`` must be present.
          schema: the store's schema (saved in the manifest, checked on restore).
          graph: graph provenance hashes to record (may be empty).
          wait: block until the checkpoint is durable (``wait_until_finished``); otherwise it
            completes in the background and is only relied on after :meth:`wait`.

        Returns:
          ``seq``. Saving a seq that already has a checkpoint is a no-op.
        """
        ocp = _ocp()
        if self.readonly:
            raise StoreError("checkpoint store opened read-only")
        missing = [n for n in schema.names if n not in state.pages]
        if missing:
            raise SchemaError(f"state lacks pages {missing} of the schema")
        for spec in schema:
            page = state.pages[spec.name]
            if tuple(page.shape) != spec.shape or np.dtype(page.dtype) != np.dtype(spec.dtype):
                raise SchemaError(f"state page {spec.name!r} is {page.dtype}{list(page.shape)},"
                                  f" the schema says {spec.dtype}{list(spec.shape)}")
        manifest = make_manifest(seq, state, schema, graph)
        pages = {n: state.pages[n] for n in schema.names if int(np.prod(schema[n].shape)) > 0}
        with self._lock:
            if seq in self.steps():
                return int(seq)
            try:
                self._manager.save(int(seq), args=ocp.args.Composite(
                    pages=ocp.args.StandardSave(pages), manifest=ocp.args.JsonSave(manifest)),
                    force=True)
                self._pending.append(int(seq))
                if wait:
                    self.wait()
            except (OSError, ValueError, RuntimeError) as e:
                raise StoreError(f"checkpoint {seq} in {self.directory} failed: {e}") from e
        return int(seq)

    def saving(self) -> bool:
        """Whether a background save may still be reading the arrays it was given."""
        return bool(self._pending) and bool(self._manager.is_saving_in_progress())

    def wait(self) -> list[int]:
        """Block until pending saves are durable; returns their seqs."""
        with self._lock:
            if self._orbax is None:
                return []  # nothing was saved through this store
            self._manager.wait_until_finished()
            done, self._pending = self._pending, []
            for s in done:
                step_dir = self.directory / str(s)
                if step_dir.is_dir():
                    _restrict_permissions(step_dir)
            return done

    def delete(self, seq: int) -> None:
        """Delete checkpoint ``seq``."""
        if self.readonly:
            raise StoreError("checkpoint store opened read-only")
        with self._lock:
            self.wait()
            self._manager.delete(int(seq))

    # -- restoring --------------------------------------------------------------------------
    def restore(self, seq: int, schema: Schema, *,
                mesh: jax.sharding.Mesh | None = None) -> tuple[State, dict[str, Any]]:
        """Restore checkpoint ``seq`` for ``schema``.

        Args:
          seq: the checkpoint's seq.
          schema: the expected schema; the manifest's must equal it.
          mesh: place pages on this mesh (pages with ``sharding`` are sharded as specified,
            the others replicated); default: the first local device.

        Returns:
          ``(state, manifest)``.

        Raises:
          SchemaMismatchError: the checkpoint was written for another schema.
          SchemaError: ``mesh`` lacks an axis that a page's ``sharding`` names.
          UnknownSeqError: no complete checkpoint at ``seq``. FormatError: bad manifest.
        """
        ocp = _ocp()
        manifest = self.manifest(seq)
        try:
            stored = Schema.from_json(manifest["schema"])
        except (KeyError, TypeError, ValueError, AttributeError, SchemaError) as e:
            raise FormatError(f"checkpoint {seq}: bad schema in manifest: {e}") from e
        if stored != schema:
            raise SchemaMismatchError(f"checkpoint {seq} in {self.directory} was written for a "
                                      f"different schema:\n  expected: {schema}\n"
                                      f"  stored:   {stored}")
        if mesh is not None:
            for spec in schema:
                for axis in spec.sharding or ():
                    for name in (axis if isinstance(axis, tuple) else (axis,)):
                        if name is not None and name not in mesh.axis_names:
                            raise SchemaError(f"page {spec.name!r} is sharded over mesh axis "
                                              f"{name!r}; the mesh has {mesh.axis_names}")
        epochs_in = manifest.get("epochs", {})
        if (not isinstance(epochs_in, dict) or set(epochs_in) != set(schema.names)
                or manifest.get("seq") != seq
                or not all(type(v) is int and 0 <= v < 2**31 for v in epochs_in.values())):
            raise FormatError(f"checkpoint {seq}: manifest epochs/seq do not match")

        def sharding_of(spec) -> jax.sharding.Sharding:
            if mesh is None:
                return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            axes = spec.sharding if spec.sharding is not None else ()
            return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))

        stored_names = [s.name for s in schema if s.size > 0]
        abstract = {s.name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding_of(s))
                    for s in schema if s.size > 0}
        pages: dict[str, jax.Array] = {}
        if stored_names:
            with self._lock:
                out = self._manager.restore(seq, args=ocp.args.Composite(
                    pages=ocp.args.StandardRestore(abstract)))
            pages.update(out["pages"])
        scalar = (jax.sharding.SingleDeviceSharding(jax.local_devices()[0]) if mesh is None
                  else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        epochs = {}
        for spec in schema:
            if spec.size == 0:
                pages[spec.name] = jnp.zeros(spec.shape, spec.dtype, device=sharding_of(spec))
            epochs[spec.name] = jax.device_put(np.int32(epochs_in[spec.name]), scalar)
        # Record the shardings as init_state(schema, mesh=mesh) does, so that later applies keep
        # them even where traced pages carry none (inside jit on an auto-sharding mesh).
        recorded: tuple = () if mesh is None else tuple((s.name, sharding_of(s)) for s in schema)
        return State(pages={n: pages[n] for n in schema.names}, epochs=epochs,
                     shardings=recorded), manifest

    def close(self) -> None:
        """Wait for pending saves and close the manager."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if not self.readonly:
                self.wait()
            if self._orbax is not None:
                self._orbax.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
