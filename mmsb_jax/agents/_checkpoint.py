"""Agent checkpoints through Orbax: parameters, optimiser state and the bus State together.

A checkpoint is one Orbax step with the items ``params`` and ``opt_state`` (``StandardSave``
of any pytree: an ``nnx.State``, an optax state), ``bus`` (the pages and epochs of an
:class:`mmsb_jax.State`, possibly with a leading batch axis such as a vmapped environment state)
and ``meta`` (JSON: the State's page layout and user metadata). Restoring gives back the same
arrays bit for bit; the bus State is rebuilt from the stored layout without a template.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import State
from mmsb_jax.errors import FormatError, OptionError, StoreError, UnknownSeqError

__all__ = ["AgentCheckpoint", "AgentCheckpointer"]

_FORMAT = "mmsb-jax-agent-checkpoint"
_VERSION = 1
_ITEMS = ("params", "opt_state", "bus", "meta")


class AgentCheckpoint(NamedTuple):
    """A restored agent checkpoint.

    Attributes:
      step: the checkpoint's step.
      params: the parameters (None if none were saved).
      opt_state: the optimiser state (None if none was saved).
      bus_state: the :class:`mmsb_jax.State` (None if none was saved).
      metadata: the user metadata (a JSON object).
    """

    step: int
    params: Any
    opt_state: Any
    bus_state: State | None
    metadata: dict[str, Any]


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), tree)


def _layout(state: State) -> list[dict[str, Any]]:
    return [{"name": n, "shape": list(np.shape(state.pages[n])),
             "dtype": np.dtype(state.pages[n].dtype).name,
             "epoch_shape": list(np.shape(state.epochs[n]))} for n in state.names]


class AgentCheckpointer:
    """Save and restore agent checkpoints in one directory (an Orbax ``CheckpointManager``).

    Args:
      directory: where the steps are written (created if missing).
      keep: keep only the newest ``keep`` steps (None keeps all).

    Raises:
      OptionError: ``keep < 1``.

    >>> import tempfile, jax.numpy as jnp, mmsb_jax.agents as agents
    >>> with agents.AgentCheckpointer(tempfile.mkdtemp()) as ckpt:
    ...     _ = ckpt.save(3, params={"w": jnp.ones(2)})
    ...     ckpt.restore(params_like={"w": jnp.zeros(2)}).params["w"].tolist()
    [1.0, 1.0]
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int | None = None):
        import orbax.checkpoint as ocp

        if keep is not None and int(keep) < 1:
            raise OptionError(f"keep must be >= 1 or None, got {keep}")
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if keep is None else int(keep), create=False,
            enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, item_names=_ITEMS,
                                              options=options)
        self._closed = False

    def steps(self) -> list[int]:
        """The saved steps, ascending."""
        self._manager.reload()
        return sorted(int(s) for s in self._manager.all_steps())

    def save(self, step: int, *, params: Any = None, opt_state: Any = None,
             bus_state: State | None = None,
             metadata: Mapping[str, Any] | None = None) -> int:
        """Save a checkpoint and wait until it is written.

        Args:
          step: the step number (>= 0; a step that exists is overwritten).
          params: parameters (any pytree of arrays, e.g. ``nnx.State``).
          opt_state: optimiser state (any pytree of arrays).
          bus_state: an :class:`mmsb_jax.State`; pages may carry leading batch axes.
          metadata: JSON-serialisable user metadata.

        Returns:
          ``step``.

        Raises:
          OptionError: a negative step, nothing to save, or ``bus_state`` not a State.
          StoreError: the checkpointer is closed.
        """
        import orbax.checkpoint as ocp

        if self._closed:
            raise StoreError(f"agent checkpointer {self.directory} is closed")
        step = int(step)
        if step < 0:
            raise OptionError(f"step must be >= 0, got {step}")
        if params is None and opt_state is None and bus_state is None:
            raise OptionError("nothing to save: give params, opt_state or bus_state")
        if bus_state is not None and not isinstance(bus_state, State):
            raise OptionError(f"bus_state must be an mmsb State, got {type(bus_state).__name__}")
        meta: dict[str, Any] = {
            "format": _FORMAT, "version": _VERSION,
            "items": {"params": params is not None, "opt_state": opt_state is not None,
                      "bus": bus_state is not None},
            "bus_layout": None if bus_state is None else _layout(bus_state),
            "metadata": dict(metadata or {}),
        }
        items: dict[str, Any] = {"meta": ocp.args.JsonSave(meta)}
        if params is not None:
            items["params"] = ocp.args.StandardSave(params)
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        if bus_state is not None:
            pages = {n: bus_state.pages[n] for n in bus_state.names
                     if np.size(bus_state.pages[n])}
            items["bus"] = ocp.args.StandardSave(
                {"pages": pages, "epochs": dict(bus_state.epochs)})
        if step in self.steps():
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
        return step

    def restore(self, step: int | None = None, *, params_like: Any = None,
                opt_state_like: Any = None) -> AgentCheckpoint:
        """Restore a checkpoint.

        Args:
          step: the step (default: the newest).
          params_like: a pytree with the structure, shapes and dtypes of the saved parameters
            (arrays or ``ShapeDtypeStruct``; e.g. the agent's current params). Required to
            restore parameters; without it they are not restored.
          opt_state_like: likewise for the optimiser state.

        Returns:
          :class:`AgentCheckpoint`.

        Raises:
          UnknownSeqError: no such step (or no checkpoint at all).
          FormatError: not an agent checkpoint.
        """
        import orbax.checkpoint as ocp

        steps = self.steps()
        if not steps:
            raise UnknownSeqError(f"no agent checkpoint in {self.directory}")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise UnknownSeqError(f"no agent checkpoint at step {step} in {self.directory} "
                                  f"(steps: {steps})")
        meta = self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise FormatError(f"step {step} in {self.directory} is not an agent checkpoint")
        if meta.get("version") != _VERSION:
            raise FormatError(f"unsupported agent checkpoint version {meta.get('version')}")
        has = meta["items"]
        args: dict[str, Any] = {}
        if has["params"] and params_like is not None:
            args["params"] = ocp.args.StandardRestore(_abstract(params_like))
        if has["opt_state"] and opt_state_like is not None:
            args["opt_state"] = ocp.args.StandardRestore(_abstract(opt_state_like))
        layout = meta["bus_layout"]
        if has["bus"]:
            pages = {p["name"]: jax.ShapeDtypeStruct(tuple(p["shape"]), p["dtype"])
                     for p in layout if int(np.prod(p["shape"]))}
            epochs = {p["name"]: jax.ShapeDtypeStruct(tuple(p["epoch_shape"]), jnp.int32)
                      for p in layout}
            args["bus"] = ocp.args.StandardRestore({"pages": pages, "epochs": epochs})
        out = self._manager.restore(step, args=ocp.args.Composite(**args)) if args else {}
        bus_state = None
        if has["bus"]:
            stored = out["bus"]
            bus_state = State(
                pages={p["name"]: stored["pages"][p["name"]] if int(np.prod(p["shape"]))
                       else jnp.zeros(tuple(p["shape"]), p["dtype"]) for p in layout},
                epochs={p["name"]: stored["epochs"][p["name"]] for p in layout})
        return AgentCheckpoint(step, out.get("params") if args else None,
                               out.get("opt_state") if args else None, bus_state,
                               dict(meta["metadata"]))

    def close(self) -> None:
        """Close the manager (idempotent)."""
        if not self._closed:
            self._closed = True
            self._manager.close()

    def __enter__(self) -> AgentCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
