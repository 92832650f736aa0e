"""Learned planning on long-horizon mazes: an AlphaZero-style value/policy network for mctx.

Three pieces:

* :func:`dfs_mazes` — perfect mazes made by a depth-first search (recursive backtracker).
  **Size convention**: a ``size x size`` maze is a gridworld whose ``walls`` page is
  ``bool[size, size]`` (the same ``H x W`` as :func:`~mmsb_jax.planning.random_mazes`). Rooms
  are the cells with both coordinates even, cells with both odd are always walls, and the DFS
  carves the cells between two rooms. A ``15 x 15`` maze has ``8 x 8`` rooms; ``10 x 10`` has
  ``5 x 5`` rooms and a wall along its last row and column; "``k x k`` rooms" is a
  ``(2k - 1) x (2k - 1)`` grid (``10 x 10`` rooms: ``19 x 19``; the grid edge is the outer
  wall).
* :class:`MazeNet` — a fully convolutional flax ``nnx`` network that maps ``(walls, goal)`` to
  per-cell prior logits ``f32[B, H, W, 4]`` and values ``f32[B, H, W]``
  (:class:`MazeMaps`). A convolutional encoder predicts a reward map and a per-cell,
  per-move transition probability; a value-iteration module (Tamar et al., 2016) runs ``K``
  max-plus Bellman backups over the four moves of :data:`~mmsb_jax.planning.MOVES` in log
  space (``K`` defaults to ``H * W``, an upper bound on any shortest path, so it grows with
  the grid); heads read the policy and the value off the result. Nothing is sized to the
  grid, so one set of weights runs on every maze size. The agent's position is not an input:
  the outputs for a position are read off the maps, so one forward pass per episode serves
  every node of every search.
* :func:`train_maze_agent` — AlphaZero/MuZero-style training: self-play with
  ``mctx.gumbel_muzero_policy`` whose ``recurrent_fn`` is the true environment model
  (:func:`~mmsb_jax.planning.gridworld_model`'s ``step``: moves are deltas on the bus) and whose
  prior and leaf values come from the network; targets are the search's ``action_weights``
  and the discounted episode return (bootstrapped with the network's value where the episode
  was cut off); the loss is minimised with optax. :func:`plan_learned` runs the trained agent
  in closed loop on fresh mazes.

The network sees the whole wall map and the goal, never distances or the solution: what it
knows about paths it computes in its value-iteration module from weights learned from search.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import mctx
import numpy as np
import optax
from flax import nnx
from jax import lax

from mmsb_jax.core.pages import State
from mmsb_jax.errors import DTypeError, OptionError, ShapeError
from mmsb_jax.planning._gridworld import (
    MOVES,
    _check_cell,
    gridworld_model,
    gridworld_schema,
    maze_distances,
    random_mazes,
)
from mmsb_jax.planning._model import TransitionModel, check_steps

__all__ = [
    "TRAIN_SEED_MIN",
    "LearnedTrajectory",
    "MazeMaps",
    "MazeNet",
    "TrainResult",
    "dfs_mazes",
    "learned_search",
    "maze_model",
    "plan_learned",
    "train_maze_agent",
]

TRAIN_SEED_MIN = 2**30  # training mazes use seeds in [2**30, 2**31): held-out seeds go below
_NEG = -1.0e4  # log-space "impossible": finite, so gradients stay finite


# -- mazes ----------------------------------------------------------------------------------

def _check_count(n: Any, what: str, least: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < least:
        raise OptionError(f"{what} must be an int >= {least}, got {n!r}")
    return int(n)


def _carve(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One perfect maze on ``bool[height, width]`` (True = wall) by recursive backtracking."""
    rows, cols = (height + 1) // 2, (width + 1) // 2
    walls = np.ones((height, width), bool)
    seen = np.zeros((rows, cols), bool)
    start = (int(rng.integers(rows)), int(rng.integers(cols)))
    seen[start] = True
    walls[2 * start[0], 2 * start[1]] = False
    stack = [start]
    while stack:
        r, c = stack[-1]
        nbrs = [(r + dr, c + dc) for dr, dc in ((-1, 0), (0, 1), (1, 0), (0, -1))
                if 0 <= r + dr < rows and 0 <= c + dc < cols and not seen[r + dr, c + dc]]
        if not nbrs:
            stack.pop()
            continue
        nr, nc = nbrs[int(rng.integers(len(nbrs)))]
        seen[nr, nc] = True
        walls[2 * nr, 2 * nc] = False
        walls[r + nr, c + nc] = False  # the cell between the two rooms: (2r + 2nr) / 2
        stack.append((nr, nc))
    return walls


def dfs_mazes(seed: int, num: int, height: int, width: int | None = None, *,
              min_distance: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random perfect mazes (a spanning tree of rooms) by depth-first search, host side.

    See the module docstring for the size convention. Start and goal are free cells drawn
    uniformly (rooms or passages) with at least ``min_distance`` BFS steps between them.

    Args:
      seed: numpy seed (the mazes are reproducible from it).
      num: ``B``, the number of mazes.
      height: ``H`` (``>= 2``).
      width: ``W`` (default ``H``).
      min_distance: least BFS distance from start to goal (``>= 1``).

    Returns:
      ``(walls: bool[B, H, W], starts: int32[B, 2], goals: int32[B, 2])`` numpy arrays.

    Raises:
      OptionError: a bad count or size, or a ``min_distance`` no maze of that size reaches.
    """
    width = height if width is None else width
    gridworld_schema(height, width)
    num = _check_count(num, "num")
    if height * width < 2 or height < 1 or width < 1 or max(height, width) < 2:
        raise OptionError(f"a maze needs at least 2 cells, got {height}x{width}")
    min_distance = _check_count(min_distance, "min_distance")
    rng = np.random.default_rng(seed)
    walls = np.zeros((num, height, width), bool)
    starts = np.zeros((num, 2), np.int32)
    goals = np.zeros((num, 2), np.int32)
    for i in range(num):
        for _ in range(1000):
            grid = _carve(rng, height, width)
            free = np.argwhere(~grid)
            start = tuple(int(x) for x in free[rng.integers(len(free))])
            far = np.argwhere(maze_distances(grid, start) >= min_distance)
            if len(far):
                walls[i], starts[i], goals[i] = grid, start, far[rng.integers(len(far))]
                break
        else:
            raise OptionError(f"no {height}x{width} DFS maze has two cells {min_distance} "
                              "steps apart; lower min_distance")
    return walls, starts, goals


# -- the network ----------------------------------------------------------------------------

class MazeMaps(NamedTuple):
    """The network's output for ``B`` mazes of ``H x W`` cells.

    Attributes:
      logits: ``f32[B, H, W, 4]``: prior logits of the four moves, if the agent stood there.
      value: ``f32[B, H, W]``: the predicted return from each cell.
    """

    logits: jax.Array
    value: jax.Array


def _shift(x: jax.Array, fill: float) -> jax.Array:
    """``[B, H, W] -> [B, H, W, 4]``: ``x`` at the cell each move of MOVES leads to."""
    h, w = x.shape[1:]
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
    return jnp.stack([p[:, 1 + int(dr):1 + int(dr) + h, 1 + int(dc):1 + int(dc) + w]
                      for dr, dc in MOVES], axis=-1)


class MazeNet(nnx.Module):
    """A fully convolutional value/policy network for gridworld mazes of any size.

    ``net(walls, goals)`` returns :class:`MazeMaps`. Layers: two ``3x3`` convolutions over
    the channels ``(free, goal)`` of the grid with a wall border added; a ``1x1`` head with a
    reward logit ``rho``, four transition logits ``tau_a`` and four policy residuals; a
    value-iteration module in log space (a max-plus Bellman backup, ``K`` iterations) over
    the learned model, ``g(s) = log sigmoid(rho(s))`` where ``rho(s) > 0`` (else "never") and
    ``c_a(s) = log gamma + log sigmoid(tau_a(s))`` where ``tau_a(s) > 0`` (else blocked)::

        L_0 = g
        L_{k+1}(s) = max(g(s), max_a [c_a(s) + L_k(s + a)])

    and the heads ``logits_a(s) = beta (Q_a(s) - max_a Q_a(s)) + residual_a(s)`` with
    ``Q_a = c_a + L_K(s + a)`` and
    ``value(s) = w exp(L_K(s) log(gamma_v) / log(gamma)) + bias``; ``gamma = sigmoid(.)``,
    ``gamma_v = sigmoid(.)``, ``beta = softplus(.)``, ``w`` and ``bias`` are learned. ``L``
    is a learned log-discounted reachability of the goal: with ``sigmoid(tau) = 1`` on free
    moves it is ``d log gamma`` at BFS distance ``d``, which the network is never given and
    must learn to compute. The value is then ``w gamma_v**d + bias``: the family the return
    of a gridworld with a goal reward, a step cost and a discount lies in (``w = R / gamma_v
    + c / (1 - gamma_v)``, ``bias = -c / (1 - gamma_v)``), so values fitted on small mazes
    stay Bellman-consistent at distances no training maze has (the search's backups compare
    values of neighbouring cells, far from the goal too). The value sees ``L`` and ``gamma``
    through a stop-gradient: the value loss fits ``w``, ``bias`` and ``gamma_v`` only, and
    the distances are trained by the policy and model losses.

    Args:
      channels: width of the encoder (``C``).
      rngs: flax ``nnx.Rngs`` for the initial weights.

    Raises:
      OptionError: ``channels`` is not a positive int.
    """

    def __init__(self, *, channels: int = 16, rngs: nnx.Rngs):
        channels = _check_count(channels, "channels")
        self.channels = channels
        self.conv1 = nnx.Conv(2, channels, (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), rngs=rngs)
        # Bias init: no cell is a goal (sigmoid(rho) ~ 0.0025) and every move succeeds
        # (sigmoid(tau) ~ 0.95) until the data say otherwise.
        bias = jnp.asarray([-6.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0], jnp.float32)
        self.head = nnx.Conv(channels, 9, (1, 1), rngs=rngs,
                             bias_init=lambda *_: bias)
        self.gamma_logit = nnx.Param(jnp.asarray(4.6, jnp.float32))   # gamma ~ 0.99
        self.beta = nnx.Param(jnp.asarray(2.0, jnp.float32))          # softplus -> ~ 2.1
        # the value head starts at maze_model()'s return (R = 1, c = 0.01, gamma_v = 0.99)
        self.value_discount_logit = nnx.Param(jnp.asarray(4.6, jnp.float32))
        self.value_weight = nnx.Param(jnp.asarray(2.0, jnp.float32))
        self.value_bias = nnx.Param(jnp.asarray(-1.0, jnp.float32))

    def model_logits(self, walls: jax.Array, goals: jax.Array) -> jax.Array:
        """The encoder's head ``f32[B, H, W, 9]``: ``rho``, ``tau_0..3``, policy residuals.

        ``sigmoid(rho)`` is the predicted chance that entering the cell ends the episode (the
        goal reward) and ``sigmoid(tau_a)`` that move ``a`` is allowed from the cell; training
        fits both to what the environment did (MuZero's reward and dynamics losses).
        """
        h, w = walls.shape[1:]
        goal_map = (jnp.arange(h)[None, :, None] == goals[:, 0, None, None]) \
            & (jnp.arange(w)[None, None, :] == goals[:, 1, None, None])
        x = jnp.stack([~walls, goal_map], axis=-1).astype(jnp.float32)
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))        # a wall border, goal-free
        feat = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
        return self.head(feat)[:, 1:-1, 1:-1]

    def __call__(self, walls: jax.Array, goals: jax.Array, *,
                 iterations: int | None = None) -> MazeMaps:
        """Prior logits and values for every cell.

        Args:
          walls: ``bool[B, H, W]``.
          goals: ``int[B, 2]`` goal cells (row, column).
          iterations: ``K``, value-iteration steps (a Python int; default ``H * W``).

        Returns:
          :class:`MazeMaps` with ``logits: f32[B, H, W, 4]`` and ``value: f32[B, H, W]``.
        """
        h, w = walls.shape[1:]
        k = h * w if iterations is None else iterations
        out = self.model_logits(walls, goals)
        # Plan in the learned model: a cell is a goal and a move is possible where the head
        # says so with probability > 1/2; the log-probabilities are the edge weights. A soft
        # "probably blocked" move would otherwise be a shortcut through a wall whenever the
        # detour is long enough, and detours grow with the maze.
        log_r = jnp.where(out[..., 0] > 0, jax.nn.log_sigmoid(out[..., 0]), _NEG)
        log_gamma = jax.nn.log_sigmoid(self.gamma_logit[...])
        log_t = jnp.where(out[..., 1:5] > 0, jax.nn.log_sigmoid(out[..., 1:5]), _NEG) \
            + log_gamma

        def backup(lv, _):
            q = jnp.max(log_t + _shift(lv, _NEG), axis=-1)
            return jnp.maximum(jnp.maximum(log_r, q), _NEG), None

        lv, _ = lax.scan(backup, log_r, None, length=k)
        q = log_t + _shift(lv, _NEG)
        q = q - lax.stop_gradient(jnp.max(q, axis=-1, keepdims=True))
        logits = jax.nn.softplus(self.beta[...]) * q + out[..., 5:9]
        # lv / log_gamma is the learned distance; the value discounts it by gamma_v. The
        # value loss fits only the head (w, bias, gamma_v): noisy self-play returns must not
        # bend the planner's distances, which the policy and the model losses train.
        kappa = jax.nn.log_sigmoid(self.value_discount_logit[...]) \
            / lax.stop_gradient(log_gamma)
        value = self.value_weight[...] * jnp.exp(kappa * lax.stop_gradient(lv)) \
            + self.value_bias[...]
        return MazeMaps(logits, value)


# -- search with the true model -------------------------------------------------------------

def maze_model(*, goal_reward: float = 1.0, step_cost: float = 0.01,
               discount: float = 0.99) -> TransitionModel:
    """The environment the learned agent plans in: :func:`gridworld_model` without heuristic.

    Args:
      goal_reward, step_cost, discount: as in :func:`~mmsb_jax.planning.gridworld_model`.

    Returns:
      The (cached) :class:`~mmsb_jax.planning.TransitionModel`.
    """
    return gridworld_model(goal_reward=goal_reward, step_cost=step_cost, discount=discount,
                           heuristic=False)


def _states(walls: jax.Array, goals: jax.Array, pos: jax.Array) -> State:
    zero = jnp.zeros(pos.shape[:1], jnp.int32)
    return State(pages={"pos": pos, "walls": walls, "goal": goals},
                 epochs={"pos": zero, "walls": zero, "goal": zero})


def _lookup(maps: MazeMaps, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    idx = jnp.arange(pos.shape[0])
    return maps.logits[idx, pos[:, 0], pos[:, 1]], maps.value[idx, pos[:, 0], pos[:, 1]]


def _mask(logits: jax.Array, valid: jax.Array) -> jax.Array:
    logits = logits - jnp.max(logits, axis=-1, keepdims=True)
    return jnp.where(valid, logits, jnp.finfo(logits.dtype).min)


def _search(model: TransitionModel, num_simulations: int, gumbel_scale: float,
            maps: MazeMaps, walls: jax.Array, goals: jax.Array, pos: jax.Array,
            key: jax.Array) -> mctx.PolicyOutput:
    """One batched Gumbel MuZero search; node embeddings are the ``pos`` page ``[B, 2]``."""
    step = jax.vmap(model.step)
    valid_fn = jax.vmap(model.valid_actions)
    valid = valid_fn(_states(walls, goals, pos))
    logits, value = _lookup(maps, pos)
    root = mctx.RootFnOutput(prior_logits=_mask(logits, valid), value=value, embedding=pos)

    def recurrent_fn(params, rng_key, action, embedding):
        del rng_key
        state = _states(walls, goals, embedding)
        nxt, reward, discount = step(state, action)
        npos = nxt.pages["pos"]
        nlogits, nvalue = _lookup(params, npos)
        out = mctx.RecurrentFnOutput(
            reward=reward, discount=discount,
            prior_logits=_mask(nlogits, valid_fn(_states(walls, goals, npos))), value=nvalue)
        return out, npos

    return mctx.gumbel_muzero_policy(params=maps, rng_key=key, root=root,
                                     recurrent_fn=recurrent_fn,
                                     num_simulations=num_simulations, invalid_actions=~valid,
                                     gumbel_scale=gumbel_scale)


def _search_step(model: TransitionModel, num_simulations: int, gumbel_scale: float,
                 maps: MazeMaps, walls: jax.Array, goals: jax.Array, pos: jax.Array,
                 key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    out = _search(model, num_simulations, gumbel_scale, maps, walls, goals, pos, key)
    tree_value = out.search_tree.summary().value
    return out.action.astype(jnp.int32), out.action_weights, tree_value


_search_step_jit = jax.jit(_search_step, static_argnums=(0, 1, 2))


def _check_maze_batch(walls: Any, goals: Any, pos: Any) -> tuple[jax.Array, jax.Array,
                                                                 jax.Array]:
    walls, goals, pos = jnp.asarray(walls), jnp.asarray(goals), jnp.asarray(pos)
    if walls.ndim != 3:
        raise ShapeError(f"walls must be bool[B, H, W], got shape {tuple(walls.shape)}")
    if walls.dtype != jnp.bool_:
        raise DTypeError(f"walls must be bool, got {walls.dtype}")
    b = walls.shape[0]
    for name, x in (("goals", goals), ("starts", pos)):
        if tuple(x.shape) != (b, 2):
            raise ShapeError(f"{name} must be int[{b}, 2], got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(f"{name} must be integer (row, column), got {x.dtype}")
    if not any(isinstance(x, jax.core.Tracer) for x in (walls, goals, pos)):
        w_np, g_np, p_np = np.asarray(walls), np.asarray(goals), np.asarray(pos)
        for i in range(b):
            _check_cell(w_np[i], g_np[i], f"goal of maze {i}")
            _check_cell(w_np[i], p_np[i], f"start of maze {i}")
    return walls, goals.astype(jnp.int32), pos.astype(jnp.int32)


def learned_search(maps: MazeMaps, walls: jax.Array, goals: jax.Array, pos: jax.Array,
                   key: jax.Array, *, num_simulations: int = 16, gumbel_scale: float = 0.0,
                   model: TransitionModel | None = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One jitted Gumbel MuZero search per maze, guided by the network's maps.

    ``recurrent_fn`` steps the true model (deltas on the bus); each node's prior logits and
    leaf value are read off ``maps`` at the node's cell. Compiled once per model, option
    values and shapes.

    Args:
      maps: :class:`MazeMaps` for the ``B`` mazes (from :class:`MazeNet`).
      walls: ``bool[B, H, W]``.
      goals: ``int[B, 2]``.
      pos: ``int[B, 2]``, the roots' cells.
      key: a PRNG key.
      num_simulations: ``N``, simulations per search.
      gumbel_scale: scale of the Gumbel noise at the root (0: deterministic).
      model: the environment (default :func:`maze_model`).

    Returns:
      ``(action: int32[B], action_weights: f32[B, 4], value: f32[B])``.

    Raises:
      OptionError: a non-positive ``num_simulations`` or a negative ``gumbel_scale``.
      ShapeError, DTypeError: wrong shapes or dtypes.
      IndexOutOfRangeError: a start or goal off the grid (checked on concrete inputs).
      DomainError: a start or goal on a wall (checked on concrete inputs).
    """
    num_simulations = check_steps(num_simulations, "num_simulations")
    gumbel_scale = _check_scale(gumbel_scale)
    walls, goals, pos = _check_maze_batch(walls, goals, pos)
    model = maze_model() if model is None else _check_model(model)
    return _search_step_jit(model, num_simulations, gumbel_scale, maps, walls, goals, pos, key)


def _check_scale(gumbel_scale: Any) -> float:
    if isinstance(gumbel_scale, bool) or not isinstance(gumbel_scale, int | float) \
            or not gumbel_scale >= 0.0:
        raise OptionError(f"gumbel_scale must be a number >= 0, got {gumbel_scale!r}")
    return float(gumbel_scale)


def _check_model(model: Any) -> TransitionModel:
    if not isinstance(model, TransitionModel) or model.num_actions != 4:
        raise OptionError("model must be a 4-action gridworld TransitionModel "
                          "(e.g. maze_model())")
    return model


# -- closed-loop episodes -------------------------------------------------------------------

class LearnedTrajectory(NamedTuple):
    """``B`` closed-loop episodes of ``T`` steps of the learned agent.

    Attributes:
      positions: ``int32[B, T + 1, 2]``: the start cell and the cell after each step.
      actions: ``int32[B, T]``.
      action_weights: ``f32[B, T, 4]``: the search's policy targets (one-hot of the action
        when acting on the prior alone).
      search_values: ``f32[B, T]``: the root value of each search (the network's value when
        acting on the prior alone).
      rewards: ``f32[B, T]``: 0 after the episode ended.
      done: ``bool[B, T]``: the goal was reached at or before step ``t``.
    """

    positions: jax.Array
    actions: jax.Array
    action_weights: jax.Array
    search_values: jax.Array
    rewards: jax.Array
    done: jax.Array

    @property
    def success(self) -> jax.Array:
        """``bool[B]``: the goal was reached within ``T`` steps."""
        return self.done[:, -1]

    @property
    def steps(self) -> jax.Array:
        """``int32[B]``: steps to the goal (``T + 1`` where it was not reached)."""
        t = self.done.shape[1]
        return jnp.where(self.success, jnp.argmax(self.done, axis=1) + 1, t + 1
                         ).astype(jnp.int32)


def _episode(model: TransitionModel, num_simulations: int, gumbel_scale: float,
                 num_steps: int, maps: MazeMaps, walls: jax.Array, goals: jax.Array,
                 starts: jax.Array, key: jax.Array) -> LearnedTrajectory:
    step = jax.vmap(model.step)

    def body(carry, k):
        pos, done = carry
        if num_simulations == 0:
            logits, value = _lookup(maps, pos)
            valid = jax.vmap(model.valid_actions)(_states(walls, goals, pos))
            action = jnp.argmax(_mask(logits, valid), axis=-1).astype(jnp.int32)
            weights = jax.nn.one_hot(action, 4, dtype=jnp.float32)
        else:
            action, weights, value = _search_step(model, num_simulations, gumbel_scale, maps,
                                                  walls, goals, pos, k)
        nxt, r, d = step(_states(walls, goals, pos), action)
        r = jnp.where(done, 0.0, r)
        now_done = done | (d == 0)
        npos = nxt.pages["pos"]
        return (npos, now_done), (npos, action, weights, value, r, now_done)

    init = (starts, jnp.zeros(starts.shape[:1], bool))
    _, (pos, actions, weights, values, rewards, done) = lax.scan(
        body, init, jax.random.split(key, num_steps))
    t = lambda x: jnp.swapaxes(x, 0, 1)
    return LearnedTrajectory(jnp.concatenate([starts[:, None], t(pos)], axis=1), t(actions),
                             t(weights), t(values), t(rewards), t(done))


_episode_jit = jax.jit(_episode, static_argnums=(0, 1, 2, 3))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _maps_jit(graphdef: Any, iterations: int | None, params: Any, walls: jax.Array,
              goals: jax.Array) -> MazeMaps:
    return nnx.merge(graphdef, params)(walls, goals, iterations=iterations)


def _check_iterations(iterations: Any) -> int | None:
    return None if iterations is None else check_steps(iterations, "iterations")


def plan_learned(net: MazeNet, walls: Any, starts: Any, goals: Any, key: jax.Array, *,
                 num_simulations: int = 16, max_steps: int | None = None,
                 gumbel_scale: float = 0.0, iterations: int | None = None,
                 model: TransitionModel | None = None) -> LearnedTrajectory:
    """Solve ``B`` mazes in closed loop: one network pass, then a search at every step.

    Args:
      net: a (trained) :class:`MazeNet`.
      walls: ``bool[B, H, W]`` (any ``H x W``: the network is fully convolutional).
      starts: ``int[B, 2]``.
      goals: ``int[B, 2]``.
      key: a PRNG key.
      num_simulations: ``N`` per step; ``0`` acts on the network's prior alone (argmax over
        the valid moves, no search).
      max_steps: ``T``, the step budget (default ``4 * (H + W)``).
      gumbel_scale: root Gumbel noise (0: deterministic evaluation).
      iterations: the network's value-iteration steps (default ``H * W``).
      model: the environment (default :func:`maze_model`).

    Returns:
      A :class:`LearnedTrajectory` (``success: bool[B]``, ``steps: int32[B]``, ...).

    Raises:
      OptionError: a bad count or scale, or ``net`` is not a MazeNet.
      ShapeError, DTypeError: wrong shapes or dtypes.
      IndexOutOfRangeError: a start or goal off the grid (checked on concrete inputs).
      DomainError: a start or goal on a wall (checked on concrete inputs).
    """
    if not isinstance(net, MazeNet):
        raise OptionError(f"net must be a MazeNet, got {type(net).__name__}")
    if num_simulations != 0:
        num_simulations = check_steps(num_simulations, "num_simulations")
    walls, goals, starts = _check_maze_batch(walls, goals, starts)
    h, w = walls.shape[1:]
    max_steps = 4 * (h + w) if max_steps is None else check_steps(max_steps, "max_steps")
    gumbel_scale = _check_scale(gumbel_scale)
    iterations = _check_iterations(iterations)
    model = maze_model() if model is None else _check_model(model)
    graphdef, params = nnx.split(net)
    maps = _maps_jit(graphdef, iterations, params, walls, goals)
    return _episode_jit(model, num_simulations, gumbel_scale, max_steps, maps, walls, goals,
                        starts, key)


# -- training -------------------------------------------------------------------------------

class TrainResult(NamedTuple):
    """What :func:`train_maze_agent` returns (``I`` training iterations).

    Attributes:
      net: the trained :class:`MazeNet`.
      losses: ``f32[I, 4]``: total, policy (cross-entropy), value (squared error) and model
        (reward and transition cross-entropy) loss of the last update of each iteration.
      self_play_success: ``f32[I]``: fraction of the iteration's self-play episodes that
        reached the goal.
      seconds: training wall time (compilation included).
    """

    net: MazeNet
    losses: np.ndarray
    self_play_success: np.ndarray
    seconds: float


def _targets(traj: LearnedTrajectory, maps: MazeMaps, discount: float
             ) -> tuple[jax.Array, jax.Array]:
    """Discounted returns ``f32[B, T]`` (bootstrapped at the cut) and the alive mask."""
    _, last_value = _lookup(maps, traj.positions[:, -1])
    boot = jnp.where(traj.done[:, -1], 0.0, lax.stop_gradient(last_value))
    alive = jnp.concatenate([jnp.ones_like(traj.done[:, :1]), ~traj.done[:, :-1]], axis=1)
    disc = jnp.where(traj.done, 0.0, discount)

    def back(g, xs):
        r, d = xs
        g = r + d * g
        return g, g

    _, ret = lax.scan(back, boot, (traj.rewards.T, disc.T), reverse=True)
    return ret.T, alive


def _maps_and_model(net: MazeNet, walls: jax.Array, goals: jax.Array,
                    iterations: int | None) -> tuple[MazeMaps, jax.Array]:
    """The maps and the raw head ``f32[B, H, W, 9]`` (reward and transition logits)."""
    maps = net(walls, goals, iterations=iterations)
    return maps, net.model_logits(walls, goals)


def _loss(graphdef: Any, iterations: int | None, model: TransitionModel, value_weight: float,
          model_weight: float, params: Any, walls: jax.Array, goals: jax.Array,
          traj: LearnedTrajectory, value_targets: jax.Array, alive: jax.Array
          ) -> tuple[jax.Array, jax.Array]:
    net = nnx.merge(graphdef, params)
    maps, head = _maps_and_model(net, walls, goals, iterations)
    b, t = traj.actions.shape
    flat = traj.positions[:, :-1].reshape(b * t, 2)
    nxt = traj.positions[:, 1:].reshape(b * t, 2)
    rep = lambda x: jnp.repeat(x, t, axis=0)
    idx = jnp.repeat(jnp.arange(b), t)
    logits = maps.logits[idx, flat[:, 0], flat[:, 1]]
    value = maps.value[idx, flat[:, 0], flat[:, 1]]
    valid = jax.vmap(model.valid_actions)(_states(rep(walls), rep(goals), flat))
    logp = jax.nn.log_softmax(_mask(logits, valid), axis=-1)
    ce = -jnp.sum(jnp.where(valid, traj.action_weights.reshape(b * t, 4) * logp, 0.0), axis=-1)
    se = jnp.square(value - value_targets.reshape(b * t))
    # MuZero-style model losses: was the cell entered the goal (the reward), and which moves
    # does the environment allow from the cell (the dynamics).
    reached = (traj.done & alive).reshape(b * t).astype(jnp.float32)
    reward_bce = optax.sigmoid_binary_cross_entropy(head[idx, nxt[:, 0], nxt[:, 1], 0], reached)
    move_bce = jnp.mean(optax.sigmoid_binary_cross_entropy(
        head[idx, flat[:, 0], flat[:, 1], 1:5], valid.astype(jnp.float32)), axis=-1)
    m = alive.reshape(b * t).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m), 1.0)
    pl, vl = jnp.sum(ce * m) / n, jnp.sum(se * m) / n
    ml = jnp.sum((reward_bce + move_bce) * m) / n
    return pl + value_weight * vl + model_weight * ml, jnp.stack([pl, vl, ml])


@functools.partial(jax.jit, static_argnums=tuple(range(10)))
def _iteration_jit(graphdef: Any, tx: optax.GradientTransformation, model: TransitionModel,
                   num_simulations: int, num_steps: int, iterations: int | None,
                   updates: int, value_weight: float, model_weight: float, discount: float,
                   params: Any, opt_state: Any, walls: jax.Array, goals: jax.Array,
                   starts: jax.Array, key: jax.Array):
    maps = nnx.merge(graphdef, params)(walls, goals, iterations=iterations)
    maps = jax.tree.map(lax.stop_gradient, maps)
    traj = _episode(model, num_simulations, 1.0, num_steps, maps, walls, goals, starts, key)
    ret, alive = _targets(traj, maps, discount)
    grad_fn = jax.value_and_grad(functools.partial(_loss, graphdef, iterations, model,
                                                   value_weight, model_weight), has_aux=True)

    def update(carry, _):
        p, s = carry
        (loss, parts), grads = grad_fn(p, walls, goals, traj, ret, alive)
        upd, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, upd), s), jnp.concatenate([loss[None], parts])

    (params, opt_state), losses = lax.scan(update, (params, opt_state), None, length=updates)
    return params, opt_state, losses[-1], jnp.mean(traj.success.astype(jnp.float32))


def _model_discount(model: TransitionModel) -> float:
    """The discount of a gridworld model: the discount of a step that does not end it."""
    walls = jnp.zeros((1, 3), bool)
    state = _states(walls[None], jnp.array([[0, 2]], jnp.int32), jnp.array([[0, 0]], jnp.int32))
    _, _, d = jax.vmap(model.step)(state, jnp.array([1], jnp.int32))
    return float(d[0])


def _training_batch(rng: np.random.Generator, batch: int, sizes: tuple[int, ...], pad: int,
                    obstacle_fraction: float, obstacle_density: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    walls = np.ones((batch, pad, pad), bool)
    starts = np.zeros((batch, 2), np.int32)
    goals = np.zeros((batch, 2), np.int32)
    for i in range(batch):
        n = int(sizes[rng.integers(len(sizes))])
        seed = int(rng.integers(TRAIN_SEED_MIN, 2**31))
        if rng.random() < obstacle_fraction:
            w, s, g = random_mazes(seed, 1, n, n, wall_density=obstacle_density,
                                   min_distance=min(4, 2 * n - 2))
        else:
            w, s, g = dfs_mazes(seed, 1, n)
        walls[i, :n, :n], starts[i], goals[i] = w[0], s[0], g[0]
    return walls, starts, goals


def train_maze_agent(
    seed: int = 0,
    *,
    sizes: tuple[int, ...] = (5, 7, 9, 11),
    num_iterations: int = 150,
    batch_size: int = 32,
    num_simulations: int = 16,
    updates_per_iteration: int = 4,
    learning_rate: float = 3e-3,
    channels: int = 16,
    iterations: int | None = None,
    value_weight: float = 1.0,
    model_weight: float = 1.0,
    obstacle_fraction: float = 0.25,
    obstacle_density: float = 0.35,
    model: TransitionModel | None = None,
    optimizer: optax.GradientTransformation | None = None,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a :class:`MazeNet` from Gumbel MuZero self-play on random mazes (AlphaZero-style).

    Each iteration draws ``batch_size`` fresh mazes (DFS mazes of a size drawn from ``sizes``,
    or with probability ``obstacle_fraction`` an obstacle grid of wall density
    ``obstacle_density``), pads them with walls to the largest size ``P``, runs one network
    pass and ``4 * 2P`` steps of closed-loop ``mctx.gumbel_muzero_policy`` search (root Gumbel
    noise 1 for exploration) with the true model, and takes ``updates_per_iteration`` optax
    steps on ``cross_entropy(action_weights, prior) + value_weight * (return - value)**2``
    plus ``model_weight`` times the reward and transition losses (MuZero's model losses) over
    the visited cells. One jitted program per iteration, compiled once.

    Training mazes are generated from seeds in ``[TRAIN_SEED_MIN, 2**31)`` (drawn from
    ``seed``), so :func:`dfs_mazes` or :func:`~mmsb_jax.planning.random_mazes` with a seed
    below :data:`TRAIN_SEED_MIN` gives mazes the agent was not trained on.

    Args:
      seed: seeds the mazes, the initial weights and the search.
      sizes: maze sizes to train on (each ``>= 3``).
      num_iterations: ``I``.
      batch_size: mazes per iteration.
      num_simulations: search simulations per step.
      updates_per_iteration: gradient steps on each iteration's data.
      learning_rate: Adam's step size (when ``optimizer`` is None).
      channels: the network's width.
      iterations: the network's value-iteration steps during training (default ``P * P``).
      value_weight: weight of the value loss.
      model_weight: weight of the model losses (binary cross-entropy of the reward logit
        against "this cell ended the episode" and of the transition logits against the
        environment's valid moves, at the visited cells).
      obstacle_fraction: share of obstacle grids among the training mazes, in ``[0, 1]``.
      obstacle_density: their wall density, in ``[0, 0.5]``.
      model: the environment (default :func:`maze_model`).
      optimizer: an optax transformation (default ``optax.adam(learning_rate)``).
      progress: optional ``(iteration, {"loss", "policy_loss", "value_loss",
        "success"}) -> None`` called after every iteration (e.g. to drive a progress bar).

    Returns:
      A :class:`TrainResult`.

    Raises:
      OptionError: a bad count, size, fraction, rate, model or optimizer.
    """
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 3
                        for n in sizes):
        raise OptionError(f"sizes must be a non-empty tuple of ints >= 3, got {sizes!r}")
    sizes = tuple(int(n) for n in sizes)
    num_iterations = check_steps(num_iterations, "num_iterations")
    batch_size = check_steps(batch_size, "batch_size")
    num_simulations = check_steps(num_simulations, "num_simulations")
    updates = check_steps(updates_per_iteration, "updates_per_iteration")
    iterations = _check_iterations(iterations)
    if not 0.0 <= float(obstacle_fraction) <= 1.0:
        raise OptionError(f"obstacle_fraction must be in [0, 1], got {obstacle_fraction!r}")
    if not 0.0 <= float(obstacle_density) <= 0.5:
        raise OptionError(f"obstacle_density must be in [0, 0.5], got {obstacle_density!r}")
    if not float(learning_rate) > 0.0:
        raise OptionError(f"learning_rate must be > 0, got {learning_rate!r}")
    for name, x in (("value_weight", value_weight), ("model_weight", model_weight)):
        if not float(x) >= 0.0:
            raise OptionError(f"{name} must be >= 0, got {x!r}")
    if progress is not None and not callable(progress):
        raise OptionError(f"progress must be callable, got {type(progress).__name__}")
    model = maze_model() if model is None else _check_model(model)
    tx = optax.adam(float(learning_rate)) if optimizer is None else optimizer
    if not isinstance(tx, optax.GradientTransformation):
        raise OptionError(f"optimizer must be an optax GradientTransformation, got "
                          f"{type(tx).__name__}")
    t0 = time.perf_counter()
    discount = _model_discount(model)
    net = MazeNet(channels=channels, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(net)
    opt_state = tx.init(params)
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    pad = max(sizes)
    num_steps = 4 * 2 * pad
    losses = np.zeros((num_iterations, 4), np.float32)
    success = np.zeros((num_iterations,), np.float32)
    for i in range(num_iterations):
        walls, starts, goals = _training_batch(rng, batch_size, sizes, pad,
                                               float(obstacle_fraction),
                                               float(obstacle_density))
        key, sub = jax.random.split(key)
        params, opt_state, loss, succ = _iteration_jit(
            graphdef, tx, model, num_simulations, num_steps, iterations, updates,
            float(value_weight), float(model_weight), discount, params, opt_state,
            jnp.asarray(walls), jnp.asarray(goals), jnp.asarray(starts), sub)
        losses[i], success[i] = np.asarray(loss), float(succ)
        if progress is not None:
            progress(i, {"loss": float(losses[i, 0]), "policy_loss": float(losses[i, 1]),
                         "value_loss": float(losses[i, 2]), "model_loss": float(losses[i, 3]),
                         "success": float(succ)})
    nnx.update(net, params)
    return TrainResult(net, losses, success, time.perf_counter() - t0)

