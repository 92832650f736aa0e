"""The environment protocol (layer 10): gymnax-style pure environments whose state is a State.

A :class:`BusEnv` is used exactly like a gymnax environment::

    obs, state = env.reset(key, params)
    obs, state, reward, done, info = env.step(key, state, action, params)

but ``state`` is an :class:`mmsb_jax.State` (one page per piece of environment state) and every
transition follows the store's law: the subclass returns *deltas*, the base class applies them
with :func:`mmsb_jax.apply_batch` and recomputes the derived pages of the environment's graph with
:func:`mmsb_jax.core.propagate.propagate`. So an environment's state can be committed to a Bus,
logged, replayed and checkpointed like any other State, and observations can be derived pages.

Both functions are pure: ``jit`` them, ``vmap`` them over a batch of keys and states, ``scan``
them over time. Episodes reset automatically as in gymnax: when ``done`` is True the returned state
and observation are those of a fresh episode (see :meth:`BusEnv.step`).

:class:`GymnaxBusEnv` adapts any gymnax environment: each leaf of the gymnax state becomes a page,
and its transitions give bit-identical trajectories to the raw gymnax environment for the same
keys and actions. :class:`GridWorld` is a small native environment with derived pages (the
observation and the distance to the goal are computed by propagation).
"""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax._extras import require
from mmsb_jax.core.delta import Delta, apply_batch
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import DTypeError, OptionError, ShapeError
from mmsb_jax.planning._gridworld import gridworld_moves

__all__ = [
    "OBS_PAGE",
    "STATE_PREFIX",
    "BusEnv",
    "GridWorld",
    "GridWorldParams",
    "GymnaxBusEnv",
    "Transition",
    "from_gymnax",
]

OBS_PAGE = "obs"
"""The page that holds the observation in :class:`GymnaxBusEnv` and :class:`GridWorld`."""

STATE_PREFIX = "state/"
"""Prefix of the pages that hold the leaves of a gymnax environment state."""


class Transition(NamedTuple):
    """What :meth:`BusEnv.transition` returns for one step.

    Attributes:
      deltas: the deltas that turn the current state into the next one (``apply_batch`` order).
      reward: ``float32[]`` reward of the step.
      terminated: ``bool[]``, True when the episode ended naturally (not by a time limit).
      info: extra per-step values (a dict of arrays); copied into ``step``'s ``info``.
    """

    deltas: Sequence[Delta]
    reward: jax.Array
    terminated: jax.Array
    info: Mapping[str, Any]


class BusEnv(abc.ABC):
    """Base class of gymnax-style environments whose state is an :class:`mmsb_jax.State`.

    A subclass passes its schema (or a :class:`mmsb_jax.core.graph.Graph` with derived pages) to
    ``__init__`` and implements:

    * :attr:`default_params` and :attr:`num_actions`;
    * :meth:`initial_deltas` ``(key, params) -> [Delta]``: applied to the zero state they give
      the first state of an episode;
    * :meth:`transition` ``(key, state, action, params) -> Transition``: the deltas of one step,
      its reward and whether the episode terminated;
    * optionally :meth:`observe` (default: the page ``"obs"``) and :meth:`is_truncated`
      (default: never).

    The base class provides the pure :meth:`reset` and :meth:`step` (both ``jax.jit``-compiled
    with the environment static, like gymnax's). Subclasses are hashed by identity.

    Args:
      schema: the environment's pages, a :class:`~mmsb_jax.Schema`, or a ``Graph`` whose
        derived pages are recomputed after every transition.
    """

    def __init__(self, schema: Schema | Graph):
        if isinstance(schema, Graph):
            self.graph: Graph | None = schema
            self.schema: Schema = schema.schema
        elif isinstance(schema, Schema):
            self.graph = None
            self.schema = schema
        else:
            raise OptionError(f"BusEnv needs a Schema or a Graph, got {type(schema).__name__}")
        derived = set(self.graph.derived) if self.graph is not None else set()
        self.base_pages: tuple[str, ...] = tuple(n for n in self.schema.names
                                                 if n not in derived)

    # -- to implement ---------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def default_params(self) -> Any:
        """The environment parameters used when ``params`` is None."""

    @property
    @abc.abstractmethod
    def num_actions(self) -> int:
        """Number of discrete actions."""

    @abc.abstractmethod
    def initial_deltas(self, key: jax.Array, params: Any) -> Sequence[Delta]:
        """The deltas that build an episode's first state from the zero state.

        Args:
          key: PRNG key of the reset.
          params: environment parameters.

        Returns:
          Deltas on base pages; pages they do not touch start as zeros.
        """

    @abc.abstractmethod
    def transition(self, key: jax.Array, state: State, action: jax.Array,
                   params: Any) -> Transition:
        """The deltas, reward and termination of one step from ``state`` under ``action``.

        Args:
          key: PRNG key of the step.
          state: the current State (its derived pages are current).
          action: ``int32[]`` action.
          params: environment parameters.

        Returns:
          A :class:`Transition`.
        """

    def observe(self, state: State, params: Any) -> jax.Array:
        """The observation of ``state``: by default the page ``"obs"``.

        Returns:
          ``[*obs_shape]`` observation.
        """
        del params
        return state.page(OBS_PAGE)

    def is_truncated(self, state: State, params: Any) -> jax.Array:
        """``bool[]``: whether the episode ends at ``state`` by a time limit (default never)."""
        del state, params
        return jnp.zeros((), bool)

    # -- the protocol ---------------------------------------------------------------------
    def commit(self, state: State, deltas: Sequence[Delta]) -> State:
        """``state x deltas -> state'``: apply ``deltas`` in order, then propagate.

        Pure and traceable; the dirty set (the pages of ``deltas``) is static.
        """
        deltas = list(deltas)
        if not deltas:
            return state
        state = apply_batch(state, deltas)
        if self.graph is not None:
            state = propagate(self.graph, state, tuple(dict.fromkeys(d.page for d in deltas)))
        return state

    def initial_state(self, key: jax.Array, params: Any = None) -> State:
        """The first State of an episode: the zero state, :meth:`initial_deltas`, propagation.

        Every derived page is computed, so the state is consistent whatever the deltas touched.
        """
        params = self.default_params if params is None else params
        state = apply_batch(init_state(self.schema), list(self.initial_deltas(key, params)))
        if self.graph is not None and self.graph.derived:
            state = propagate(self.graph, state, self.base_pages)
        return state

    @functools.partial(jax.jit, static_argnums=0)
    def reset(self, key: jax.Array, params: Any = None) -> tuple[jax.Array, State]:
        """Start an episode.

        Args:
          key: PRNG key.
          params: environment parameters (default :attr:`default_params`).

        Returns:
          ``(obs, state)``: ``obs: [*obs_shape]`` and the episode's first State.
        """
        params = self.default_params if params is None else params
        state = self.initial_state(key, params)
        return self.observe(state, params), state

    @functools.partial(jax.jit, static_argnums=0)
    def step(self, key: jax.Array, state: State, action: jax.Array, params: Any = None
             ) -> tuple[jax.Array, State, jax.Array, jax.Array, dict[str, Any]]:
        """One transition, with automatic reset at the end of an episode (as gymnax).

        The step's deltas are applied and propagated; if the episode ended (``terminated`` or
        truncated by :meth:`is_truncated`), every page is then replaced by the page of a fresh
        episode started with the second half of ``key`` — one full ``set`` delta per page, so
        each page's epoch advances by one more.

        Args:
          key: PRNG key; split into a step key and a reset key exactly as gymnax does.
          state: the current State.
          action: ``int32[]`` action.
          params: environment parameters (default :attr:`default_params`).

        Returns:
          ``(obs, state, reward, done, info)``: ``obs: [*obs_shape]`` (of the new episode if
          ``done``), the next State, ``reward: float32[]``, ``done: bool[]``, and ``info`` with
          the transition's extras plus ``terminated``, ``truncated`` and
          ``final_observation`` (the observation before the reset).
        """
        params = self.default_params if params is None else params
        key_step, key_reset = jax.random.split(key)
        tr = self.transition(key_step, state, action, params)
        stepped = self.commit(state, tr.deltas)
        terminated = jnp.asarray(tr.terminated, bool)
        truncated = jnp.asarray(self.is_truncated(stepped, params), bool)
        done = jnp.logical_or(terminated, truncated)
        obs_step = self.observe(stepped, params)
        fresh = self.initial_state(key_reset, params)
        reset = apply_batch(stepped, [Delta.full(n, fresh.pages[n]) for n in self.schema.names])
        new_state = jax.tree.map(lambda a, b: jnp.where(done, a, b), reset, stepped)
        obs = self.observe(new_state, params)
        info = {**tr.info, "terminated": terminated, "truncated": truncated,
                "final_observation": obs_step}
        return obs, new_state, jnp.asarray(tr.reward), done, info

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schema})"


# -- gymnax adapter ---------------------------------------------------------------------------

_BAD_CHARS = re.compile(r"[^A-Za-z0-9_.\-/]")


def _leaf_names(paths: Sequence[Any]) -> tuple[str, ...]:
    names: list[str] = []
    for path in paths:
        raw = jax.tree_util.keystr(path, simple=True, separator="/") or "leaf"
        name = STATE_PREFIX + _BAD_CHARS.sub("_", raw)
        base, i = name, 1
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return tuple(names)


class GymnaxBusEnv(BusEnv):
    """A gymnax environment whose state lives in pages of an :class:`mmsb_jax.State`.

    Each leaf of the gymnax state becomes a page ``"state/<path>"`` (``"state/x"``,
    ``"state/time"`` for CartPole) and the observation is the page ``"obs"``. A step runs the
    gymnax ``step_env`` on the state rebuilt from the pages and writes every leaf back with a
    full ``set`` delta; truncation uses the gymnax ``is_truncated``. The key handling matches
    ``gymnax.Environment.step``, so for the same keys and actions the observations, rewards,
    dones and states equal those of the raw environment bit for bit.

    Args:
      env: a ``gymnax.environments.environment.Environment``.
      params: parameters used to infer the page shapes (default ``env.default_params``).
      derived: extra derived pages ``(name, inputs, fn)`` computed from the pages after every
        step (e.g. a CartPole energy from ``"state/theta"`` and ``"state/theta_dot"``).

    Raises:
      OptionError: ``env`` is not a gymnax environment.
      ShapeError: the observation is not a single array.
    """

    def __init__(self, env: Any, params: Any = None,
                 derived: Sequence[tuple[str, Sequence[str], Callable[..., jax.Array]]] = ()):
        for attr in ("step_env", "reset_env", "is_truncated", "default_params"):
            if not hasattr(env, attr):
                raise OptionError(f"{type(env).__name__} is not a gymnax environment "
                                  f"(no {attr!r})")
        self.env = env
        self._params = env.default_params if params is None else params
        obs, gstate = jax.eval_shape(env.reset_env, jax.random.key(0), self._params)
        if not isinstance(obs, jax.ShapeDtypeStruct):
            raise ShapeError(f"{env.name}: observations must be one array, got "
                             f"{type(obs).__name__}")
        leaves_with_paths, self._treedef = jax.tree_util.tree_flatten_with_path(gstate)
        self._leaf_pages = _leaf_names([p for p, _ in leaves_with_paths])
        specs = [PageSpec(OBS_PAGE, obs.shape, obs.dtype)]
        specs += [PageSpec(n, leaf.shape, leaf.dtype)
                  for n, (_, leaf) in zip(self._leaf_pages, leaves_with_paths, strict=True)]
        graph = Graph(Schema(specs))
        for name, inputs, fn in derived:
            graph = graph.derive(name, inputs=tuple(inputs), fn=fn)
        super().__init__(graph if derived else graph.schema)

    @property
    def default_params(self) -> Any:
        """The gymnax environment's parameters."""
        return self._params

    @property
    def num_actions(self) -> int:
        """The gymnax environment's number of actions."""
        return int(self.env.num_actions)

    @property
    def name(self) -> str:
        """The gymnax environment's name."""
        return str(self.env.name)

    @property
    def leaf_pages(self) -> tuple[str, ...]:
        """The pages that hold the gymnax state leaves, in flattening order."""
        return self._leaf_pages

    def action_space(self, params: Any = None) -> Any:
        """The gymnax action space."""
        return self.env.action_space(self.default_params if params is None else params)

    def observation_space(self, params: Any = None) -> Any:
        """The gymnax observation space."""
        return self.env.observation_space(self.default_params if params is None else params)

    def gymnax_state(self, state: State) -> Any:
        """The gymnax environment state held by ``state``'s pages."""
        return jax.tree_util.tree_unflatten(self._treedef,
                                            [state.pages[n] for n in self._leaf_pages])

    def _write(self, obs: jax.Array, gstate: Any) -> list[Delta]:
        leaves = self._treedef.flatten_up_to(gstate)
        deltas = [Delta.full(OBS_PAGE, _as_page(obs, self.schema[OBS_PAGE]))]
        deltas += [Delta.full(n, _as_page(leaf, self.schema[n]))
                   for n, leaf in zip(self._leaf_pages, leaves, strict=True)]
        return deltas

    def initial_deltas(self, key: jax.Array, params: Any) -> list[Delta]:
        """One full ``set`` per page from the gymnax ``reset_env``."""
        obs, gstate = self.env.reset_env(key, params)
        return self._write(obs, gstate)

    def transition(self, key: jax.Array, state: State, action: jax.Array,
                   params: Any) -> Transition:
        """The gymnax ``step_env`` on the state rebuilt from the pages, written back as deltas."""
        obs, gstate, reward, terminated, info = self.env.step_env(
            key, self.gymnax_state(state), action, params)
        return Transition(self._write(obs, gstate), reward, terminated, dict(info))

    def is_truncated(self, state: State, params: Any) -> jax.Array:
        """The gymnax ``is_truncated`` of the state held by the pages."""
        return self.env.is_truncated(self.gymnax_state(state), params)

    def __repr__(self) -> str:
        return f"GymnaxBusEnv({self.name}, {self.schema})"


def _as_page(x: Any, spec: PageSpec) -> jax.Array:
    x = jnp.asarray(x)
    if tuple(x.shape) != spec.shape:
        raise ShapeError(f"page {spec.name!r}: the environment produced shape {x.shape}, "
                         f"expected {spec.shape}")
    return x.astype(spec.dtype)


def from_gymnax(env: str | Any, params: Any = None, **make_kwargs: Any
                ) -> tuple[GymnaxBusEnv, Any]:
    """Use a gymnax environment as a :class:`BusEnv`, like ``gymnax.make``.

    Args:
      env: a gymnax environment id (``"CartPole-v1"``) or environment object.
      params: environment parameters (default: the environment's defaults).
      **make_kwargs: passed to ``gymnax.make`` when ``env`` is an id.

    Returns:
      ``(bus_env, params)``.

    >>> import jax, mmsb_jax.agents as agents
    >>> env, params = agents.from_gymnax("CartPole-v1")
    >>> obs, state = env.reset(jax.random.key(0), params)
    >>> obs.shape, state.names[:3]
    ((4,), ('obs', 'state/time', 'state/x'))
    """
    if isinstance(env, str):
        gymnax = require("gymnax", extra="agents", feature="mmsb_jax.agents.from_gymnax")
        try:
            env, default = gymnax.make(env, **make_kwargs)
        except ValueError as e:
            raise OptionError(str(e)) from e
        params = default if params is None else params
    bus_env = GymnaxBusEnv(env, params)
    return bus_env, bus_env.default_params


# -- a native environment ---------------------------------------------------------------------

class GridWorldParams(NamedTuple):
    """Parameters of :class:`GridWorld`.

    Attributes:
      max_steps_in_episode: truncation limit.
      step_cost: reward ``-step_cost`` for every step that does not reach the goal.
      goal_reward: reward for the step that reaches the goal (the episode then terminates).
    """

    max_steps_in_episode: int = 50
    step_cost: float = 0.01
    goal_reward: float = 1.0


class GridWorld(BusEnv):
    """A deterministic grid: walk from ``start`` to ``goal`` around walls (4 actions).

    Pages: ``pos: int32[2]`` (row, column), ``goal: int32[2]``, ``walls: bool[size, size]``,
    ``t: int32[]`` (steps taken); derived by propagation: ``obs: float32[4]`` (position and goal
    scaled to ``[0, 1]``) and ``distance: int32[]`` (Manhattan distance to the goal). Actions:
    ``0`` up, ``1`` right, ``2`` down, ``3`` left; a move into a wall or off the grid leaves the
    agent where it is. Walls and goal are pages, so they can be changed by committing deltas.
    The move rule is :func:`mmsb_jax.planning.gridworld_moves`, the one the planners'
    gridworld (:func:`mmsb_jax.planning.gridworld_model`) uses: the two step move for move
    alike (the planner's goal is absorbing; this environment's episode terminates there).

    Args:
      size: side of the square grid (>= 2).
      start: starting cell ``(row, column)``.
      goal: goal cell (default: the opposite corner).
      walls: ``bool[size, size]`` wall cells (default none).

    Raises:
      OptionError: size < 2, start or goal outside the grid, on a wall, or equal.
      ShapeError, DTypeError: ``walls`` has the wrong shape or is not boolean.
    """

    def __init__(self, size: int = 7, start: tuple[int, int] = (0, 0),
                 goal: tuple[int, int] | None = None, walls: Any = None):
        size = int(size)
        if size < 2:
            raise OptionError(f"GridWorld size must be >= 2, got {size}")
        goal = (size - 1, size - 1) if goal is None else tuple(int(g) for g in goal)
        start = tuple(int(s) for s in start)
        if walls is None:
            walls_np = np.zeros((size, size), bool)
        else:
            walls_np = np.asarray(walls)
            if walls_np.dtype != np.bool_:
                raise DTypeError(f"walls must be bool, got {walls_np.dtype}")
            if walls_np.shape != (size, size):
                raise ShapeError(f"walls must have shape {(size, size)}, got {walls_np.shape}")
        for what, cell in (("start", start), ("goal", goal)):
            if len(cell) != 2 or not all(0 <= c < size for c in cell):
                raise OptionError(f"{what} {cell} is outside the {size}x{size} grid")
            if walls_np[cell]:
                raise OptionError(f"{what} {cell} is on a wall")
        if start == goal:
            raise OptionError("start and goal must differ")
        self.size, self.start, self.goal = size, start, goal
        self.walls = walls_np
        scale = np.float32(size - 1)
        schema = Schema([PageSpec("pos", (2,), "int32"), PageSpec("goal", (2,), "int32"),
                         PageSpec("walls", (size, size), "bool"), PageSpec("t", (), "int32")])
        graph = (Graph(schema)
                 .derive(OBS_PAGE, ("pos", "goal"),
                         lambda p, g: jnp.concatenate([p, g]).astype(jnp.float32) / scale)
                 .derive("distance", ("pos", "goal"), lambda p, g: jnp.abs(p - g).sum()))
        super().__init__(graph)

    @property
    def default_params(self) -> GridWorldParams:
        """:class:`GridWorldParams` defaults."""
        return GridWorldParams()

    @property
    def num_actions(self) -> int:
        """4: up, right, down, left."""
        return 4

    def initial_deltas(self, key: jax.Array, params: Any) -> list[Delta]:
        """Start, goal and walls (deterministic: the key is unused)."""
        del key, params
        return [Delta.full("pos", jnp.asarray(self.start, jnp.int32)),
                Delta.full("goal", jnp.asarray(self.goal, jnp.int32)),
                Delta.full("walls", jnp.asarray(self.walls))]

    def transition(self, key: jax.Array, state: State, action: jax.Array,
                   params: Any) -> Transition:
        """Move unless blocked; reward ``goal_reward`` at the goal, else ``-step_cost``."""
        del key
        pos, goal = state.pages["pos"], state.pages["goal"]
        target, allowed = gridworld_moves(state.pages["walls"], pos)
        new = jnp.where(allowed[action], target[action], pos)
        reached = jnp.all(new == goal)
        reward = jnp.where(reached, jnp.float32(params.goal_reward),
                           -jnp.float32(params.step_cost))
        deltas = [Delta.full("pos", new), Delta.full("t", state.pages["t"] + 1)]
        return Transition(deltas, reward, reached, {})

    def is_truncated(self, state: State, params: Any) -> jax.Array:
        """True after ``params.max_steps_in_episode`` steps."""
        return state.pages["t"] >= params.max_steps_in_episode

