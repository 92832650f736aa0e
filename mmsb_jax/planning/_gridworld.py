"""A deterministic gridworld on the bus: the measuring task for the planners.

Pages: ``pos: int32[2]`` (row, column), ``walls: bool[H, W]``, ``goal: int32[2]``. Four actions
(:data:`MOVES`: up, right, down, left); a move into a wall or off the grid is invalid (and a
no-op if taken anyway). Reaching the goal pays ``goal_reward`` and ends the episode; every step
costs ``step_cost``. The move is a ``Delta.full("pos", ...)`` applied with ``mm.apply_batch``.
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax._checks import check_int
from mmsb_jax.core.delta import Delta, apply_batch
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.errors import DomainError, DTypeError, IndexOutOfRangeError, OptionError, ShapeError
from mmsb_jax.planning._model import TransitionModel, delta_model

__all__ = [
    "MOVES",
    "greedy_policy",
    "gridworld_model",
    "gridworld_moves",
    "gridworld_schema",
    "gridworld_state",
    "gridworld_states",
    "maze_distances",
    "random_mazes",
]

MOVES: np.ndarray = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)
"""``int32[4, 2]``: the (row, column) offset of actions 0..3 = up, right, down, left."""


def gridworld_schema(height: int, width: int) -> Schema:
    """The pages of an ``height x width`` gridworld: ``pos``, ``walls`` and ``goal``.

    Raises:
      OptionError: a dimension is not a positive int.
    """
    for name, n in (("height", height), ("width", width)):
        check_int(name, n, minimum=1)
    return Schema([PageSpec("pos", (2,), "int32"), PageSpec("walls", (int(height), int(width)),
                                                             "bool"),
                   PageSpec("goal", (2,), "int32")])


def _check_cell(walls: np.ndarray, cell: np.ndarray, what: str) -> None:
    h, w = walls.shape
    r, c = int(cell[0]), int(cell[1])
    if not (0 <= r < h and 0 <= c < w):
        raise IndexOutOfRangeError(f"{what} {(r, c)} is outside the {h}x{w} grid")
    if walls[r, c]:
        raise DomainError(f"{what} {(r, c)} is a wall")


def _as_grid(walls: jax.Array | np.ndarray, start: jax.Array | np.ndarray,
             goal: jax.Array | np.ndarray, batched: bool):
    walls, start, goal = jnp.asarray(walls), jnp.asarray(start), jnp.asarray(goal)
    lead = 1 if batched else 0
    if walls.ndim != 2 + lead:
        raise ShapeError(f"walls must be bool[{'B, ' if batched else ''}H, W], got shape "
                         f"{tuple(walls.shape)}")
    if walls.dtype != jnp.bool_:
        raise DTypeError(f"walls must be bool, got {walls.dtype}")
    want = (*walls.shape[:lead], 2)
    for name, x in (("start", start), ("goal", goal)):
        if tuple(x.shape) != want:
            raise ShapeError(f"{name} must have shape {want}, got {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(f"{name} must be integer (row, column), got {x.dtype}")
    if not isinstance(walls, jax.core.Tracer) and not isinstance(start, jax.core.Tracer) \
            and not isinstance(goal, jax.core.Tracer):
        w_np, s_np, g_np = np.asarray(walls), np.asarray(start), np.asarray(goal)
        if not batched:
            w_np, s_np, g_np = w_np[None], s_np[None], g_np[None]
        for i in range(w_np.shape[0]):
            _check_cell(w_np[i], s_np[i], "start")
            _check_cell(w_np[i], g_np[i], "goal")
    return walls, start.astype(jnp.int32), goal.astype(jnp.int32)


def _build(walls: jax.Array, start: jax.Array, goal: jax.Array) -> State:
    state = init_state(gridworld_schema(*walls.shape))
    return apply_batch(state, [Delta.full("walls", walls), Delta.full("pos", start),
                               Delta.full("goal", goal)])


def gridworld_state(walls: jax.Array | np.ndarray, start: jax.Array | np.ndarray,
                    goal: jax.Array | np.ndarray) -> State:
    """One gridworld State, written to the bus with three full-page deltas (epochs 1).

    Args:
      walls: ``bool[H, W]``, True on walls.
      start: ``int[2]``, the agent's (row, column).
      goal: ``int[2]``, the goal's (row, column).

    Returns:
      ``State`` with pages ``pos: int32[2]``, ``walls: bool[H, W]``, ``goal: int32[2]``.

    Raises:
      ShapeError, DTypeError: wrong shapes or dtypes.
      IndexOutOfRangeError: ``start`` or ``goal`` lies off the grid (checked when concrete).
      DomainError: ``start`` or ``goal`` is a wall (checked when concrete).
    """
    return _build(*_as_grid(walls, start, goal, batched=False))


def gridworld_states(walls: jax.Array | np.ndarray, starts: jax.Array | np.ndarray,
                     goals: jax.Array | np.ndarray) -> State:
    """A batch of gridworld States (``vmap`` of :func:`gridworld_state`).

    Args:
      walls: ``bool[B, H, W]``.
      starts: ``int[B, 2]``.
      goals: ``int[B, 2]``.

    Returns:
      ``State[B, ...]``: every page and epoch with a leading axis ``B``.

    Raises:
      As :func:`gridworld_state`.
    """
    return jax.vmap(_build)(*_as_grid(walls, starts, goals, batched=True))


def gridworld_moves(walls: jax.Array, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The move rule shared by every gridworld of the project (this module's planning model and
    :class:`mmsb_jax.agents.GridWorld`): where each action leads and whether it is allowed.

    Args:
      walls: ``bool[H, W]``.
      pos: ``int32[2]``, the agent's (row, column).

    Returns:
      ``(targets int32[4, 2], allowed bool[4])``: ``pos + MOVES`` (unclipped) and whether that
      cell is on the grid and free. A disallowed move leaves the agent where it is. Traceable.
    """
    h, w = walls.shape
    target = pos[None, :] + jnp.asarray(MOVES)
    inside = (target[:, 0] >= 0) & (target[:, 0] < h) & (target[:, 1] >= 0) & (target[:, 1] < w)
    free = ~walls[jnp.clip(target[:, 0], 0, h - 1), jnp.clip(target[:, 1], 0, w - 1)]
    return target, inside & free


def _valid(state: State) -> jax.Array:
    return gridworld_moves(state.pages["walls"], state.pages["pos"])[1]


def _at_goal(state: State) -> jax.Array:
    return jnp.all(state.pages["pos"] == state.pages["goal"])


def _move(state: State, action: jax.Array) -> Delta:
    return Delta.full("pos", state.pages["pos"] + jnp.asarray(MOVES)[action])


def _manhattan(state: State) -> jax.Array:
    return jnp.sum(jnp.abs(state.pages["pos"] - state.pages["goal"]))


@functools.lru_cache(maxsize=64)
def gridworld_model(*, goal_reward: float = 1.0, step_cost: float = 0.01,
                    discount: float = 0.97, heuristic: bool = True) -> TransitionModel:
    """The gridworld as a :class:`~mmsb_jax.planning.TransitionModel` (a :func:`delta_model`).

    Equal arguments return the same (cached) model object, so jitted planners compile once.

    The heuristic leaf value is the return of walking the Manhattan distance ``d`` to the goal
    with no wall in the way, ``goal_reward * discount**(d - 1) - step_cost * sum_{t<d}
    discount**t``: an upper bound of the true value (optimistic, like an admissible A*
    heuristic), so the search explores a dead end until it has seen that it is one.

    Args:
      goal_reward: reward on the step that reaches the goal.
      step_cost: cost (``>= 0``) paid on every step before the goal, bumps included.
      discount: per-step discount in ``(0, 1]``.
      heuristic: use the Manhattan value above as ``value_fn`` (else leaf values are 0).

    Returns:
      The model: 4 actions, uniform prior.

    Raises:
      OptionError: a negative ``step_cost`` or a ``discount`` outside ``(0, 1]``.
    """
    if not 0.0 < float(discount) <= 1.0:
        raise OptionError(f"discount must be in (0, 1], got {discount!r}")
    if float(step_cost) < 0.0:
        raise OptionError(f"step_cost must be >= 0, got {step_cost!r}")
    goal_reward, step_cost, gamma = float(goal_reward), float(step_cost), float(discount)

    def reward(state: State, action: jax.Array, nxt: State) -> jax.Array:
        return jnp.where(_at_goal(nxt), goal_reward, 0.0) - step_cost

    def value(state: State, key: jax.Array) -> jax.Array:
        d = _manhattan(state).astype(jnp.float32)
        if gamma == 1.0:
            walk = d
        else:
            walk = (1.0 - gamma ** d) / (1.0 - gamma)
        v = goal_reward * gamma ** jnp.maximum(d - 1.0, 0.0) - step_cost * walk
        return jnp.where(d > 0, v, 0.0)

    return delta_model(4, _move, reward, valid_actions=_valid, terminal=_at_goal,
                       discount=gamma, value_fn=value if heuristic else None)


def greedy_policy(states: State, key: jax.Array) -> jax.Array:
    """The greedy baseline: the valid move that most reduces the Manhattan distance to the goal.

    Ties go to the lowest action. Behind a wall it has no improving move and oscillates: the
    failure that planning fixes.

    Args:
      states: gridworld ``State[B, ...]``.
      key: unused (the policy is deterministic; the argument makes it a policy).

    Returns:
      ``int32[B]``.
    """
    del key

    def one(state: State) -> jax.Array:
        target, allowed = gridworld_moves(state.pages["walls"], state.pages["pos"])
        dist = jnp.sum(jnp.abs(target - state.pages["goal"][None, :]), axis=1)
        score = jnp.where(allowed, dist, jnp.iinfo(jnp.int32).max)
        return jnp.argmin(score).astype(jnp.int32)

    return jax.vmap(one)(states)


def maze_distances(walls: np.ndarray, source: tuple[int, int]) -> np.ndarray:
    """Breadth-first-search step distances from ``source`` over free cells (host side).

    Args:
      walls: ``bool[H, W]``.
      source: ``(row, column)`` of a free cell.

    Returns:
      ``int64[H, W]``: steps from ``source``; ``-1`` on walls and unreachable cells.
    """
    walls = np.asarray(walls, bool)
    if walls.ndim != 2:
        raise ShapeError(f"walls must be bool[H, W], got shape {walls.shape}")
    _check_cell(walls, np.asarray(source), "source")
    h, w = walls.shape
    dist = np.full((h, w), -1, np.int64)
    dist[source] = 0
    queue = collections.deque([tuple(int(x) for x in source)])
    while queue:
        r, c = queue.popleft()
        for dr, dc in MOVES:
            nr, nc = r + int(dr), c + int(dc)
            if 0 <= nr < h and 0 <= nc < w and not walls[nr, nc] and dist[nr, nc] < 0:
                dist[nr, nc] = dist[r, c] + 1
                queue.append((nr, nc))
    return dist


def random_mazes(seed: int, num: int, height: int, width: int, *, wall_density: float = 0.3,
                 min_distance: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random solvable gridworlds (host side, reproducible from ``seed``).

    Each cell is a wall with probability ``wall_density``; the start is a uniformly random free
    cell and the goal a uniformly random free cell reachable from it at least ``min_distance``
    steps away (the walls are redrawn until one exists).

    Args:
      seed: numpy seed.
      num: number of mazes ``B``.
      height, width: grid size.
      wall_density: probability of a wall, in ``[0, 1)``.
      min_distance: the least BFS distance between start and goal (``>= 1``).

    Returns:
      ``(walls: bool[B, H, W], starts: int32[B, 2], goals: int32[B, 2])`` numpy arrays.

    Raises:
      OptionError: a bad size, density or distance (e.g. one no grid of that size allows).
    """
    gridworld_schema(height, width)
    check_int("num", num, minimum=1)
    if not 0.0 <= float(wall_density) < 1.0:
        raise OptionError(f"wall_density must be in [0, 1), got {wall_density!r}")
    if not 1 <= int(min_distance) <= height + width - 2:
        raise OptionError(f"min_distance must be in [1, {height + width - 2}] for a "
                          f"{height}x{width} grid, got {min_distance!r}")
    rng = np.random.default_rng(seed)
    walls = np.zeros((num, height, width), bool)
    starts = np.zeros((num, 2), np.int32)
    goals = np.zeros((num, 2), np.int32)
    for i in range(num):
        for _ in range(10_000):
            grid = rng.random((height, width)) < wall_density
            free = np.argwhere(~grid)
            if len(free) < 2:
                continue
            start = tuple(free[rng.integers(len(free))])
            dist = maze_distances(grid, start)
            far = np.argwhere(dist >= min_distance)
            if len(far):
                walls[i], starts[i], goals[i] = grid, start, far[rng.integers(len(far))]
                break
        else:
            raise OptionError(f"no {height}x{width} maze with wall density {wall_density} and "
                              f"a goal {min_distance} steps away was found; lower one of them")
    return walls, starts, goals
