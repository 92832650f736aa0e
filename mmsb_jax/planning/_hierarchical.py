"""Hierarchical planning: decompose a goal into subgoals, then plan each one in turn.

:func:`decompose` finds a shortest path on a (coarse) graph with the TROPICAL semiring's Kleene
closure (``mm.semiring.closure``: all-pairs ``(min, +)`` distances) and cuts it into evenly
spaced waypoints, at most ``stride`` hops apart. :func:`plan_hierarchical` writes each waypoint
to the goal page with a delta and hands the state to a segment planner — closed-loop MCTS
(:func:`mcts_segment`) or gradient trajectory optimisation (:func:`gradient_segment`) — so the
low-level planner only ever solves short problems.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mmsb_jax.core import semiring
from mmsb_jax.core.delta import Delta, apply
from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, DTypeError, OptionError, ShapeError
from mmsb_jax.planning._gradient import GradientPlan, plan_gradient
from mmsb_jax.planning._mcts import MCTSPolicy, _check_options, mcts_policy
from mmsb_jax.planning._model import TransitionModel, check_steps, rollout

__all__ = [
    "GradientSegment",
    "HierarchicalResult",
    "MCTSSegment",
    "SegmentInfo",
    "Subgoals",
    "decompose",
    "decompose_grid",
    "gradient_segment",
    "grid_adjacency",
    "grid_cells",
    "mcts_segment",
    "plan_hierarchical",
]

SegmentPlanner = Callable[[State, jax.Array], tuple[State, jax.Array, Any]]
"""``(state with the subgoal on its goal page, key) -> (state', reached: bool[], info)``."""


class Subgoals(NamedTuple):
    """Waypoints along a shortest path, fixed capacity ``K`` (padded with ``-1``).

    Attributes:
      nodes: ``int32[K]``, graph nodes of the waypoints in order; the last real one is the goal.
      points: ``[K, *P]``, the value written to the goal page for each waypoint
        (``node_points[nodes]``; the node index itself when no ``node_points`` were given;
        padding rows are 0).
      count: ``int32[]``, the number of real waypoints (0 when start == goal or unreachable).
      path_length: ``f32[]``, the shortest-path cost from start to goal (``inf`` if none).
      hops: ``int32[]``, the number of edges of that path (``-1`` if unreachable).
      reachable: ``bool[]``.
    """

    nodes: jax.Array
    points: jax.Array
    count: jax.Array
    path_length: jax.Array
    hops: jax.Array
    reachable: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1))
def _decompose_jit(stride: int, max_subgoals: int, adjacency: jax.Array, distances: jax.Array,
                   start: jax.Array, goal: jax.Array, node_points: jax.Array) -> Subgoals:
    n = adjacency.shape[0]
    to_goal = distances[:, goal]
    reachable = jnp.isfinite(to_goal[start])
    off_diagonal = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, adjacency)

    def walk(u, _):
        nxt = jnp.argmin(off_diagonal[u] + to_goal).astype(jnp.int32)
        u = jnp.where((u == goal) | ~reachable, u, nxt)
        return u, u

    _, path = lax.scan(walk, start, None, length=max(n - 1, 1))
    path = jnp.concatenate([start[None], path])  # [n]: path[i] = node after i hops
    hops = jnp.where(reachable, jnp.argmax(path == goal), -1).astype(jnp.int32)
    count = jnp.where(reachable, jnp.minimum((hops + stride - 1) // stride, max_subgoals), 0)
    count = count.astype(jnp.int32)
    i = jnp.arange(1, max_subgoals + 1, dtype=jnp.int32)
    position = (i * jnp.maximum(hops, 0) + jnp.maximum(count, 1) - 1) // jnp.maximum(count, 1)
    real = i <= count
    nodes = jnp.where(real, path[jnp.clip(position, 0, path.shape[0] - 1)], -1)
    points = node_points[jnp.maximum(nodes, 0)]
    mask = real.reshape((-1,) + (1,) * (points.ndim - 1))
    points = jnp.where(mask, points, jnp.zeros_like(points))
    return Subgoals(nodes.astype(jnp.int32), points, count, to_goal[start], hops, reachable)


def _is_concrete(*xs: Any) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def decompose(adjacency: jax.Array, start: Any, goal: Any, *, stride: int, max_subgoals: int,
              node_points: jax.Array | None = None, distances: jax.Array | None = None
              ) -> Subgoals:
    """Cut a shortest path from ``start`` to ``goal`` into waypoints at most ``stride`` apart.

    The distances are the TROPICAL closure ``A*`` (all-pairs shortest paths, from
    ``mm.semiring.closure``); the path follows, from ``start``, the successor ``v`` minimising
    ``A[u, v] + A*[v, goal]``. With ``L`` hops on the path, ``count = min(ceil(L / stride),
    max_subgoals)`` waypoints are placed at hops ``ceil(i * L / count)``, ``i = 1..count``:
    evenly spaced, the last one the goal. Jittable (``stride`` and ``max_subgoals`` static).

    Args:
      adjacency: ``f32[N, N]`` edge costs, ``inf`` where there is no edge; off-diagonal costs
        must be positive (zero-cost cycles have no well-defined successor); the diagonal is
        ignored.
      start: ``int[]`` start node.
      goal: ``int[]`` goal node.
      stride: the most hops between consecutive waypoints (when ``max_subgoals`` allows).
      max_subgoals: ``K``, the capacity.
      node_points: optional ``[N, *P]``: what to write to the goal page for each node (e.g.
        grid cells, or positions in a continuous world).
      distances: optional precomputed ``f32[N, N]`` closure (reuse it across many goals).

    Returns:
      :class:`Subgoals`.

    >>> import jax.numpy as jnp
    >>> from mmsb_jax import planning as mp
    >>> inf = jnp.inf   # a chain 0 -> 1 -> 2 -> 3 -> 4 and a costly shortcut 0 -> 4
    >>> a = jnp.array([[inf, 1, inf, inf, 9], [inf, inf, 1, inf, inf], [inf, inf, inf, 1, inf],
    ...                [inf, inf, inf, inf, 1], [inf, inf, inf, inf, inf]])
    >>> sg = mp.decompose(a, 0, 4, stride=2, max_subgoals=3)
    >>> sg.nodes.tolist(), int(sg.count), float(sg.path_length)
    ([2, 4, -1], 2, 4.0)

    Raises:
      ShapeError: ``adjacency``/``distances`` not ``[N, N]``, ``node_points`` not ``[N, ...]``,
        ``start``/``goal`` not scalars.
      DTypeError: ``adjacency`` not floating point or nodes not integers.
      DomainError: an off-diagonal cost ``<= 0`` or a negative diagonal entry, or
        ``start``/``goal`` outside ``[0, N)`` (checked when concrete).
      OptionError: ``stride`` or ``max_subgoals`` not a positive int.
    """
    stride = check_steps(stride, "stride")
    max_subgoals = check_steps(max_subgoals, "max_subgoals")
    a = jnp.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ShapeError(f"adjacency must be a non-empty [N, N] matrix, got {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise DTypeError(f"adjacency must be floating point (inf = no edge), got {a.dtype}")
    if _is_concrete(a):
        host = np.asarray(a)
        off = ~np.eye(host.shape[0], dtype=bool)
        if np.any(host[off] <= 0) or np.any(np.diag(host) < 0):
            raise DomainError("adjacency has an edge of cost <= 0; decompose needs positive "
                              "costs (inf = no edge; the diagonal is ignored unless negative)")
    a = a.astype(jnp.float32)
    n = a.shape[0]
    start, goal = jnp.asarray(start), jnp.asarray(goal)
    for name, x in (("start", start), ("goal", goal)):
        if x.shape != ():
            raise ShapeError(f"{name} must be a scalar node index, got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(f"{name} must be an integer node index, got {x.dtype}")
        if _is_concrete(x) and not 0 <= int(x) < n:
            raise DomainError(f"{name} node {int(x)} is outside [0, {n})")
    if distances is None:
        d = semiring.closure(semiring.TROPICAL, a)
    else:
        d = jnp.asarray(distances, jnp.float32)
        if tuple(d.shape) != (n, n):
            raise ShapeError(f"distances must be [{n}, {n}], got {tuple(d.shape)}")
    if node_points is None:
        points = jnp.arange(n, dtype=jnp.int32)
    else:
        points = jnp.asarray(node_points)
        if points.ndim < 1 or points.shape[0] != n:
            raise ShapeError(f"node_points must be [N={n}, ...], got {tuple(points.shape)}")
    return _decompose_jit(stride, max_subgoals, a, d, start.astype(jnp.int32),
                          goal.astype(jnp.int32), points)


def grid_cells(height: int, width: int) -> jax.Array:
    """``int32[H * W, 2]``: the (row, column) of each node of :func:`grid_adjacency`."""
    check_steps(height, "height")
    check_steps(width, "width")
    r, c = jnp.meshgrid(jnp.arange(height, dtype=jnp.int32), jnp.arange(width, dtype=jnp.int32),
                        indexing="ij")
    return jnp.stack([r.ravel(), c.ravel()], axis=1)


def grid_adjacency(walls: jax.Array) -> jax.Array:
    """The 4-connected graph of the free cells of a grid, as a TROPICAL adjacency matrix.

    Node ``r * W + c`` is cell ``(r, c)``; free neighbours are joined by edges of cost 1 in
    both directions; every other entry (walls included) is ``inf``. The matrix is dense
    (``(H W)^2`` entries, and :func:`decompose`'s closure is ``O((H W)^3)``): meant for small or
    coarse grids, such as an occupancy grid over a continuous world.

    Args:
      walls: ``bool[H, W]``.

    Returns:
      ``f32[H * W, H * W]``.

    Raises:
      ShapeError, DTypeError: ``walls`` is not a 2-D bool array.
    """
    walls = jnp.asarray(walls)
    if walls.ndim != 2:
        raise ShapeError(f"walls must be bool[H, W], got shape {tuple(walls.shape)}")
    if walls.dtype != jnp.bool_:
        raise DTypeError(f"walls must be bool, got {walls.dtype}")
    h, w = walls.shape
    free = ~walls.ravel()
    cells = grid_cells(h, w)
    diff = jnp.abs(cells[:, None, :] - cells[None, :, :]).sum(-1)
    edge = (diff == 1) & free[:, None] & free[None, :]
    return jnp.where(edge, 1.0, jnp.inf).astype(jnp.float32)


def decompose_grid(walls: jax.Array, start: Any, goal: Any, *, stride: int,
                   max_subgoals: int) -> Subgoals:
    """:func:`decompose` on the free cells of a grid; ``points`` are ``int32[K, 2]`` cells.

    Args:
      walls: ``bool[H, W]``.
      start: ``int[2]`` start cell (row, column).
      goal: ``int[2]`` goal cell.
      stride: the most steps between waypoints.
      max_subgoals: ``K``.

    Returns:
      :class:`Subgoals` with ``points: int32[K, 2]``.

    Raises:
      As :func:`decompose`; ShapeError if a cell is not ``[2]``.
    """
    walls = jnp.asarray(walls)
    a = grid_adjacency(walls)
    h, w = walls.shape
    idx = []
    for name, x in (("start", start), ("goal", goal)):
        x = jnp.asarray(x)
        if tuple(x.shape) != (2,):
            raise ShapeError(f"{name} must be a cell [2], got shape {tuple(x.shape)}")
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(f"{name} must be an integer cell, got {x.dtype}")
        if _is_concrete(x) and not (0 <= int(x[0]) < h and 0 <= int(x[1]) < w):
            raise DomainError(f"{name} cell {tuple(int(v) for v in x)} is outside the "
                              f"{h}x{w} grid")
        idx.append((x[0] * w + x[1]).astype(jnp.int32))
    return decompose(a, idx[0], idx[1], stride=stride, max_subgoals=max_subgoals,
                     node_points=grid_cells(h, w))


# -- execution ------------------------------------------------------------------------------

class HierarchicalResult(NamedTuple):
    """The outcome of :func:`plan_hierarchical` with ``K`` subgoal slots.

    Attributes:
      state: the final ``State`` (its goal page holds the last subgoal, i.e. the goal).
      segment_states: ``State`` with leaves ``[K, ...]``: the state after each segment
        (unchanged for padding slots).
      reached: ``bool[K]``: segment ``k`` reached its subgoal (False for padding slots).
      info: the segment planner's ``info``, stacked ``[K, ...]`` (zeros for padding slots).
      success: ``bool[]``: the goal is reachable and every subgoal was reached.
    """

    state: State
    segment_states: State
    reached: jax.Array
    info: Any
    success: jax.Array


@functools.partial(jax.jit, static_argnums=(0, 1))
def _hierarchical_jit(plan_segment: SegmentPlanner, goal_page: str, state: State,
                      subgoals: Subgoals, keys: jax.Array) -> HierarchicalResult:
    dtype = state.pages[goal_page].dtype

    def with_goal(s: State, point: jax.Array) -> State:
        return apply(s, Delta.full(goal_page, point.astype(dtype)))

    example = with_goal(state, subgoals.points[0])
    _, _, info_shape = jax.eval_shape(plan_segment, example, keys[0])

    def run(s, point, key):
        s, reached, info = plan_segment(with_goal(s, point), key)
        return s, jnp.asarray(reached, bool), info

    def skip(s, point, key):
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), info_shape)
        return with_goal(s, point), jnp.zeros((), bool), zeros

    def body(s, xs):
        k, point, key = xs
        out_state, reached, info = lax.cond(k < subgoals.count, run, skip, s, point, key)
        out_state = jax.tree.map(lambda new, old: jnp.where(k < subgoals.count, new, old),
                                 out_state, s)
        return out_state, (out_state, reached, info)

    k = jnp.arange(subgoals.nodes.shape[0], dtype=jnp.int32)
    final, (states, reached, info) = lax.scan(body, state, (k, subgoals.points, keys))
    needed = k < subgoals.count
    success = subgoals.reachable & jnp.all(jnp.where(needed, reached, True))
    return HierarchicalResult(final, states, reached, info, success)


def plan_hierarchical(state: State, subgoals: Subgoals, key: jax.Array, *,
                      plan_segment: SegmentPlanner, goal_page: str = "goal"
                      ) -> HierarchicalResult:
    """Plan towards each subgoal in turn, from where the previous segment ended.

    For ``k < subgoals.count``: write ``subgoals.points[k]`` to ``goal_page`` with a
    ``Delta.full`` (so the subgoal is on the bus, and any model or cost that reads the goal page
    now aims at it), then run ``plan_segment``. A segment that misses its subgoal does not stop
    the plan; the next segment starts from where it ended, and ``success`` records the miss.
    One jitted ``lax.scan`` over the ``K`` slots; padding slots are skipped with ``lax.cond``.

    Args:
      state: the start ``State`` (unbatched); it has a page ``goal_page``.
      subgoals: :class:`Subgoals` from :func:`decompose` / :func:`decompose_grid`, with
        ``points[k]`` shaped like the goal page.
      key: a PRNG key (segment ``k`` gets key ``k`` of ``jax.random.split(key, K)``).
      plan_segment: ``(state, key) -> (state', reached: bool[], info)``, e.g.
        :func:`mcts_segment` or :func:`gradient_segment`; a hashable object (it is static).
      goal_page: the page that holds the current goal.

    Returns:
      A :class:`HierarchicalResult`.

    Raises:
      UnknownPageError: ``state`` has no ``goal_page``.
      ShapeError: a subgoal point does not have the goal page's shape.
      OptionError: ``plan_segment`` is not callable or ``subgoals`` is not a Subgoals.
    """
    if not callable(plan_segment):
        raise OptionError(f"plan_segment must be callable, got {type(plan_segment).__name__}")
    if not isinstance(subgoals, Subgoals):
        raise OptionError(f"subgoals must be a Subgoals, got {type(subgoals).__name__}")
    if not isinstance(state, State):
        raise OptionError(f"state must be a State, got {type(state).__name__}")
    page = state.page(goal_page)
    if tuple(subgoals.points.shape[1:]) != tuple(page.shape):
        raise ShapeError(f"subgoal points are {tuple(subgoals.points.shape[1:])}-shaped but page "
                         f"{goal_page!r} is {tuple(page.shape)}")
    keys = jax.random.split(key, subgoals.nodes.shape[0])
    return _hierarchical_jit(plan_segment, goal_page, state, subgoals, keys)


class SegmentInfo(NamedTuple):
    """What :class:`MCTSSegment` reports for one segment (``T = max_steps``).

    Attributes:
      actions: ``int32[T]``.
      rewards: ``f32[T]`` (0 after the subgoal was reached).
      steps: ``int32[]``: steps taken until the subgoal was reached (``T + 1`` if it was not).
    """

    actions: jax.Array
    rewards: jax.Array
    steps: jax.Array


@dataclasses.dataclass(frozen=True)
class MCTSSegment:
    """Closed-loop MCTS until the model's episode ends (the subgoal is reached) or ``max_steps``.

    A hashable segment planner for :func:`plan_hierarchical`; build it with
    :func:`mcts_segment`. ``reached`` is True when a transition with discount 0 happened, i.e.
    the model's terminal condition (for the gridworld: standing on the goal page's cell).
    """

    policy: MCTSPolicy
    max_steps: int

    def __call__(self, state: State, key: jax.Array) -> tuple[State, jax.Array, SegmentInfo]:
        """``(state, key) -> (state', reached: bool[], SegmentInfo)``."""
        batch = jax.tree.map(lambda x: x[None], state)
        traj = rollout(self.policy.model, batch, self.policy, key, num_steps=self.max_steps)
        final = jax.tree.map(lambda x: x[0, -1], traj.states)
        return final, traj.done[0, -1], SegmentInfo(traj.actions[0], traj.rewards[0],
                                                    traj.steps_to_done[0])


def mcts_segment(model: TransitionModel, *, max_steps: int, num_simulations: int,
                 max_depth: int | None = None, policy: str = "gumbel_muzero",
                 static_pages: tuple[str, ...] = (), **policy_options: Any) -> MCTSSegment:
    """A segment planner that replans with :func:`~mmsb_jax.planning.plan_mcts` at every step.

    Args:
      model: a model whose terminal condition reads the goal page (e.g.
        :func:`~mmsb_jax.planning.gridworld_model`).
      max_steps: the step budget of one segment.
      num_simulations, max_depth, policy, static_pages, **policy_options: as in
        :func:`~mmsb_jax.planning.plan_mcts`. The goal page may be static (no action changes
        it during one search; static pages are taken from each root, so the search sees the
        subgoal that :func:`plan_hierarchical` wrote).

    Returns:
      An :class:`MCTSSegment`.
    """
    max_steps = check_steps(max_steps, "max_steps")
    pol = mcts_policy(model, num_simulations=num_simulations, max_depth=max_depth,
                      policy=policy, static_pages=static_pages, **policy_options)
    _check_options(policy, policy_options)
    return MCTSSegment(pol, max_steps)


@dataclasses.dataclass(frozen=True)
class GradientSegment:
    """Gradient trajectory optimisation to the subgoal, then execution of the plan.

    A hashable segment planner for :func:`plan_hierarchical`; build it with
    :func:`gradient_segment`. The segment's info is its
    :class:`~mmsb_jax.planning.GradientPlan` (actions, costs and the planned states).
    """

    step_fn: Callable[[State, jax.Array], State]
    horizon: int
    terminal_cost: Callable[[State], jax.Array]
    running_cost: Callable[[State, jax.Array], jax.Array] | None
    action_shape: tuple[int, ...]
    optimizer: optax.GradientTransformation | None
    iters: int
    reached: Callable[[State], jax.Array]

    def __call__(self, state: State, key: jax.Array) -> tuple[State, jax.Array, GradientPlan]:
        """``(state, key) -> (state', reached: bool[], GradientPlan)``; ``key`` is unused."""
        del key
        plan = plan_gradient(self.step_fn, state, horizon=self.horizon,
                             terminal_cost=self.terminal_cost, running_cost=self.running_cost,
                             action_shape=self.action_shape, optimizer=self.optimizer,
                             iters=self.iters)
        final = jax.tree.map(lambda x: x[-1], plan.states)
        return final, jnp.asarray(self.reached(final), bool), plan


def gradient_segment(step_fn: Callable[[State, jax.Array], State], *, horizon: int,
                     terminal_cost: Callable[[State], jax.Array],
                     reached: Callable[[State], jax.Array],
                     running_cost: Callable[[State, jax.Array], jax.Array] | None = None,
                     action_shape: tuple[int, ...] = (),
                     optimizer: optax.GradientTransformation | None = None,
                     iters: int = 100) -> GradientSegment:
    """A segment planner that runs :func:`~mmsb_jax.planning.plan_gradient` to the subgoal.

    The costs should read the goal page (as :func:`~mmsb_jax.planning.point_mass_costs` does),
    which :func:`plan_hierarchical` sets to each subgoal in turn.

    Args:
      step_fn, horizon, terminal_cost, running_cost, action_shape, optimizer, iters: as in
        :func:`~mmsb_jax.planning.plan_gradient`.
      reached: ``(state) -> bool[]``: whether the final state counts as at the subgoal.

    Returns:
      A :class:`GradientSegment`.

    Raises:
      OptionError: a function is not callable or a count is not a positive int.
    """
    for name, fn in (("step_fn", step_fn), ("terminal_cost", terminal_cost),
                     ("reached", reached)):
        if not callable(fn):
            raise OptionError(f"{name} must be callable, got {type(fn).__name__}")
    return GradientSegment(step_fn, check_steps(horizon, "horizon"), terminal_cost,
                           running_cost, tuple(int(n) for n in action_shape), optimizer,
                           check_steps(iters, "iters"), reached)

