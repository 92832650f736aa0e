"""Multi-agent shared state: several agents change shared pages in one step.

Each agent submits its own deltas. The merge is deterministic: submissions are ordered by agent
id (never by arrival order), concatenated, and applied as one transaction, so conflicts are
resolved by the delta ops themselves:

* ``set``: on a row or element written by several agents, the highest agent id wins (the last
  write in agent-id order);
* ``add`` / ``mul``: contributions combine, in agent-id order (so floats round the same way
  every time);
* ``max`` / ``min`` / ``or`` / ``and``: claims, flags and bounds combine order-independently.

:func:`merge_submissions` and :func:`commit_agents` work on Python sequences of deltas (any
structure); :func:`stack_merge` merges deltas of equal structure stacked along a leading agent
axis inside ``jit``/``vmap`` (one row delta of capacity ``A * k``, or a fold of masked/full
deltas), which is what a vectorised multi-agent environment needs.

:class:`Foraging` is a cooperative multi-agent environment on that mechanism (a
:class:`~mmsb_jax.agents.BusEnv` whose action is one action per agent): agents walk on a grid,
claim the cell they stand on with a ``max`` delta on a shared ``claims`` page, and the team is
rewarded for the food on claimed cells; two agents on one cell collect it once, so the team
does best when its agents spread over the food.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.agents._env import OBS_PAGE, BusEnv, Transition
from mmsb_jax.core.delta import Delta, apply_batch, compose
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import PageSpec, Schema, State
from mmsb_jax.errors import OptionError, ShapeError

__all__ = [
    "COOP_HEURISTICS",
    "CoopForaging",
    "CoopForagingParams",
    "Foraging",
    "ForagingParams",
    "apply_agents",
    "commit_agents",
    "coop_heuristic",
    "merge_submissions",
    "stack_merge",
]

Submissions = Mapping[int, Sequence[Delta] | Delta] | Iterable[tuple[int, Sequence[Delta] | Delta]]


def _ordered(submissions: Submissions) -> list[tuple[int, list[Delta]]]:
    items = submissions.items() if isinstance(submissions, Mapping) else submissions
    out: list[tuple[int, list[Delta]]] = []
    seen: set[int] = set()
    for item in items:
        try:
            agent, deltas = item
        except (TypeError, ValueError):
            raise OptionError("submissions must be {agent_id: deltas} or (agent_id, deltas) "
                              f"pairs, got {item!r}") from None
        if isinstance(agent, bool) or not isinstance(agent, int | np.integer) or agent < 0:
            raise OptionError(f"agent ids must be ints >= 0, got {agent!r}")
        if int(agent) in seen:
            raise OptionError(f"agent {agent} submitted twice; merge its deltas into one "
                              "submission")
        seen.add(int(agent))
        deltas = [deltas] if isinstance(deltas, Delta) else list(deltas)
        for d in deltas:
            if not isinstance(d, Delta):
                raise TypeError(f"agent {agent} submitted a {type(d).__name__}, not a Delta")
        out.append((int(agent), deltas))
    out.sort(key=lambda t: t[0])
    return out


def merge_submissions(submissions: Submissions) -> list[Delta]:
    """The deltas of all agents in deterministic agent-id order.

    Args:
      submissions: ``{agent_id: [Delta, ...]}`` or an iterable of ``(agent_id, deltas)``
        pairs, in any order (a single Delta may stand for a one-element list).

    Returns:
      One list: agent 0's deltas, then agent 1's, ... (each agent's own order kept). Applied
      with :func:`mmsb_jax.apply_batch` (or committed as one transaction) the ops resolve
      conflicts: ``set`` keeps the highest agent id, other ops combine.

    Raises:
      OptionError: a negative, non-integer or repeated agent id. TypeError: not a Delta.
    """
    return [d for _, deltas in _ordered(submissions) for d in deltas]


def commit_agents(target: Any, submissions: Submissions) -> Any:
    """Apply every agent's deltas at once, in agent-id order, as one transaction.

    Args:
      target: a :class:`~mmsb_jax.State` (returns the new State) or a
        :class:`~mmsb_jax.Bus` (commits one transaction and returns its ``CommitInfo``).
      submissions: as :func:`merge_submissions`.

    Returns:
      The new State, or the bus's ``CommitInfo``.

    Raises:
      The typed errors of validation (``UnknownPageError``, ``DTypeError``, ``ShapeError``,
      ``IndexOutOfRangeError``, ``OpError``) before anything is applied, and those of
      :func:`merge_submissions`.
    """
    deltas = merge_submissions(submissions)
    if isinstance(target, State):
        return apply_batch(target, deltas)
    if hasattr(target, "commit"):
        return target.commit(deltas)
    raise OptionError(f"commit_agents needs a State or a Bus, got {type(target).__name__}")


def stack_merge(stacked: Delta) -> Delta:
    """Merge ``A`` agents' deltas of equal structure, stacked on a leading agent axis.

    Agent ``a`` is row ``a`` of every leaf. Traceable: use it inside ``jit``/``vmap``.

    Args:
      stacked: a Delta whose leaves carry a leading axis ``A``: for ``rows``,
        ``indices: int32[A, k]`` and ``values: [A, k, *row]``; for ``masked``,
        ``mask: bool[A, *S]`` and ``values: [A, *S]``; for ``full``, ``values: [A, *S]``.

    Returns:
      One delta equal to applying agent 0's, then agent 1's, ... deltas: a ``rows`` delta of
      capacity ``A * k`` (agent-major), or the ``compose`` fold of the masked/full deltas. Its
      ``count`` is ``A * stacked.count`` (the page's epoch advances once per agent delta).

    Raises:
      ShapeError: the leaves have no leading agent axis or disagree on it.
    """
    if not isinstance(stacked, Delta):
        raise TypeError(f"stack_merge expects a Delta, got {type(stacked).__name__}")
    values = stacked.values
    if values.ndim < 1 or (stacked.kind == "rows" and values.ndim < 2):
        raise ShapeError(f"stacked delta on {stacked.page!r}: values {values.shape} have no "
                         "leading agent axis")
    num = values.shape[0]
    if stacked.kind == "rows":
        idx = stacked.indices
        if idx.ndim != 2 or idx.shape[0] != num or values.shape[1] != idx.shape[1]:
            raise ShapeError(f"stacked rows delta on {stacked.page!r}: indices {idx.shape} and "
                             f"values {values.shape} must be [A, k] and [A, k, *row]")
        merged = Delta.rows(stacked.page, idx.reshape(-1),
                            values.reshape(num * idx.shape[1], *values.shape[2:]), stacked.op)
        return merged.with_count(num * stacked.count)
    if stacked.kind == "masked" and stacked.mask.shape != values.shape:
        raise ShapeError(f"stacked masked delta on {stacked.page!r}: mask {stacked.mask.shape} "
                         f"!= values {values.shape}")
    parts = [Delta(indices=None,
                   mask=None if stacked.mask is None else stacked.mask[a],
                   values=values[a], page=stacked.page, kind=stacked.kind, op=stacked.op,
                   count=stacked.count) for a in range(num)]
    out = parts[0]
    for d in parts[1:]:
        out = compose(out, d)
    return out


def apply_agents(state: State, stacked: Sequence[Delta]) -> State:
    """Apply stacked per-agent deltas (see :func:`stack_merge`) in agent-id order.

    Pure and traceable. ``stacked[i]`` holds every agent's ``i``-th delta; the merged deltas
    are applied with :func:`mmsb_jax.apply_batch` in the order given.

    Args:
      state: the shared State.
      stacked: deltas with a leading agent axis ``A`` on every leaf.

    Returns:
      The new State.
    """
    return apply_batch(state, [stack_merge(d) for d in stacked])


# -- a cooperative task -------------------------------------------------------------------------

_MOVES = np.array([[0, 0], [-1, 0], [0, 1], [1, 0], [0, -1]], np.int32)  # stay, N, E, S, W


class ForagingParams(NamedTuple):
    """Parameters of :class:`Foraging`.

    Attributes:
      episode_len: steps per episode (then the episode is truncated).
      food_density: probability that a cell holds food at the start of an episode.
      regrow: probability per step that an empty, unoccupied cell grows food.
    """

    episode_len: int = 32
    food_density: float = 0.15
    regrow: float = 0.01


class Foraging(BusEnv):
    """Cooperative foraging: ``A`` agents on a ``G x G`` grid share a team reward.

    Pages: ``agents/pos: int32[A, 2]`` (row, column of each agent, one row per agent),
    ``food: float32[G, G]`` (1 where food lies), ``claims: int32[G * G]`` (the highest
    ``agent id + 1`` standing on each cell this step, 0 if none), ``collected: float32[]``
    (food collected this episode) and ``t: int32[]``; derived by propagation:
    ``obs: float32[A, 2 * (2G - 1)^2 + 2]`` — for each agent an egocentric
    ``(2G - 1) x (2G - 1)`` window of the food map and one of the other agents' positions
    (counts), centred on the agent (zeros off the grid), then its own position scaled to
    ``[0, 1]``.

    A step takes one action per agent (``0`` stay, ``1`` north, ``2`` east, ``3`` south,
    ``4`` west; moves off the grid are clipped). Every agent submits two deltas: a ``set`` of its
    own row of ``agents/pos`` and a ``max`` claim of its new cell on ``claims``; the submissions
    are merged in agent-id order (:func:`stack_merge`). The food on claimed cells is then
    collected (once per cell, however many agents stand on it) and is the team reward of the
    step; empty, unclaimed cells regrow food with probability ``regrow``.

    Args:
      num_agents: ``A`` (>= 1).
      grid: ``G`` (>= 2).
    """

    def __init__(self, num_agents: int = 3, grid: int = 7):
        num_agents, grid = int(num_agents), int(grid)
        if num_agents < 1:
            raise OptionError(f"num_agents must be >= 1, got {num_agents}")
        if grid < 2:
            raise OptionError(f"grid must be >= 2, got {grid}")
        self.num_agents, self.grid = num_agents, grid
        schema = Schema([PageSpec("agents/pos", (num_agents, 2), "int32"),
                         PageSpec("food", (grid, grid), "float32"),
                         PageSpec("claims", (grid * grid,), "int32"),
                         PageSpec("collected", (), "float32"),
                         PageSpec("t", (), "int32")])
        super().__init__(Graph(schema).derive(OBS_PAGE, ("agents/pos", "food"), self._observe))

    def _observe(self, pos: jax.Array, food: jax.Array) -> jax.Array:
        g = self.grid
        side = 2 * g - 1
        occupied = jnp.zeros((g, g), jnp.float32).at[pos[:, 0], pos[:, 1]].add(1.0)

        def view(agent_pos: jax.Array) -> jax.Array:
            # Egocentric windows: cell (g - 1, g - 1) of a window is the agent's own cell.
            def window(grid_map: jax.Array) -> jax.Array:
                padded = jnp.pad(grid_map, g - 1)
                return jax.lax.dynamic_slice(padded, (agent_pos[0], agent_pos[1]), (side, side))

            others = occupied.at[agent_pos[0], agent_pos[1]].add(-1.0)
            where = agent_pos.astype(jnp.float32) / (g - 1)
            return jnp.concatenate([window(food).ravel(), window(others).ravel(), where])

        return jax.vmap(view)(pos)

    @property
    def default_params(self) -> ForagingParams:
        """:class:`ForagingParams` defaults."""
        return ForagingParams()

    @property
    def num_actions(self) -> int:
        """5 per agent: stay, north, east, south, west."""
        return 5

    @property
    def obs_dim(self) -> int:
        """``2 * (2G - 1)^2 + 2``, the observation size of one agent."""
        return 2 * (2 * self.grid - 1) ** 2 + 2

    def initial_deltas(self, key: jax.Array, params: Any) -> list[Delta]:
        """Random agent cells and a random food map (density ``food_density``)."""
        k_pos, k_food = jax.random.split(key)
        g = self.grid
        pos = jax.random.randint(k_pos, (self.num_agents, 2), 0, g, jnp.int32)
        food = jax.random.bernoulli(k_food, params.food_density, (g, g)).astype(jnp.float32)
        return [Delta.full("agents/pos", pos), Delta.full("food", food)]

    def agent_deltas(self, state: State, actions: jax.Array) -> list[Delta]:
        """Every agent's submission, stacked on a leading agent axis (before merging).

        Args:
          state: the current State.
          actions: ``int32[A]``.

        Returns:
          ``[rows set on agents/pos: indices [A, 1], values [A, 1, 2];
          rows max on claims: indices [A, 1], values [A, 1]]``.
        """
        actions = jnp.asarray(actions)
        if actions.shape != (self.num_agents,):
            raise ShapeError(f"Foraging takes one action per agent: shape "
                             f"({self.num_agents},), got {actions.shape}")
        ids = jnp.arange(self.num_agents, dtype=jnp.int32)
        pos = state.pages["agents/pos"]
        new = jnp.clip(pos + jnp.asarray(_MOVES)[actions], 0, self.grid - 1)
        cell = new[:, 0] * self.grid + new[:, 1]
        return [Delta(indices=ids[:, None], mask=None, values=new[:, None, :],
                      page="agents/pos", kind="rows", op="set"),
                Delta(indices=cell[:, None], mask=None, values=(ids + 1)[:, None],
                      page="claims", kind="rows", op="max")]

    def transition(self, key: jax.Array, state: State, action: jax.Array,
                   params: Any) -> Transition:
        """Merge the agents' submissions, collect the food on claimed cells, regrow food.

        Returns a :class:`~mmsb_jax.agents.Transition` whose reward is the food collected by
        the team; ``info["claims"]`` is the ``int32[G * G]`` claims page of the step.
        """
        g = self.grid
        reset = Delta.full("claims", jnp.zeros((g * g,), jnp.int32))
        moved = [reset, *[stack_merge(d) for d in self.agent_deltas(state, action)]]
        after = apply_batch(state, moved)
        claimed = (after.pages["claims"] > 0).reshape(g, g)
        food = after.pages["food"]
        reward = jnp.sum(jnp.where(claimed, food, 0.0))
        grow = jax.random.bernoulli(key, params.regrow, (g, g)) & ~claimed & (food == 0)
        deltas = [*moved,
                  Delta.masked("food", claimed | grow, jnp.where(grow, 1.0, 0.0)),
                  Delta.full("collected", reward, op="add"),
                  Delta.full("t", jnp.ones((), jnp.int32), op="add")]
        return Transition(deltas, reward, jnp.zeros((), bool), {"claims": after.pages["claims"]})

    def is_truncated(self, state: State, params: Any) -> jax.Array:
        """The episode ends after ``episode_len`` steps."""
        return state.pages["t"] >= params.episode_len


# -- a task where cooperation matters ----------------------------------------------------------


class CoopForagingParams(NamedTuple):
    """Parameters of :class:`CoopForaging`.

    Attributes:
      episode_len: steps per episode (then the episode is truncated).
      light_value: reward for a light item (collected by one agent standing on it).
      heavy_value: reward for a heavy item (collected only by ``need`` agents in reach of it
        at the same step).
    """

    episode_len: int = 32
    light_value: float = 1.0
    heavy_value: float = 4.0


class CoopForaging(BusEnv):
    """Foraging where the valuable items need ``need`` agents next to them at the same step.

    ``A`` agents on a ``G x G`` grid share a team reward. ``num_light`` light items are
    collected by an agent standing on one; ``num_heavy`` heavy items are collected only when at
    least ``need`` agents are *in reach* of the item (on its cell or on one of its four
    neighbours) in the same step. A collected item reappears at once on a random cell holding
    no item and no agent, so the item counts stay fixed.

    Pages: ``agents/pos: int32[A, 2]``, ``light, heavy: float32[G, G]`` (1 where an item
    lies), ``claims: int32[G * G]`` (highest ``agent id + 1`` standing on a cell this step,
    merged with ``max``), ``helpers: int32[G * G]`` (how many agents are in reach of each cell
    this step, merged with ``add``), ``collected: float32[]`` (team reward this episode) and
    ``t: int32[]``; derived: ``obs: float32[A, 3 * (2V + 1)^2 + 2]``, for each agent
    egocentric ``(2V + 1) x (2V + 1)`` windows (zeros off the grid) of the light map, the heavy
    map and the other agents' counts, then its own position scaled to ``[0, 1]``. ``V`` is the
    view radius: by default ``G - 1``, a window large enough to hold the whole grid, so every
    agent sees everything; a smaller ``view`` makes the task partially observable (an agent
    sees items and teammates only within ``V`` cells along each axis).

    A step takes one action per agent (``0`` stay, ``1`` north, ``2`` east, ``3`` south, ``4``
    west; clipped at the walls). Every agent submits three deltas, merged in agent-id order
    (:func:`stack_merge`): a ``set`` of its row of ``agents/pos``, a ``max`` claim of its new
    cell and an ``add`` of 1 on the ``helpers`` rows of the (up to) five cells it reaches. The
    merged ``helpers`` page is the joint-collection rule: a heavy item on cell ``c`` is
    collected iff ``helpers[c] >= need``. Both merges are order-independent (``max``, integer
    ``add``), so the result does not depend on which agent submits first.

    Args:
      num_agents: ``A`` (>= 1).
      grid: ``G`` (>= 2).
      num_light: light items (>= 0).
      num_heavy: heavy items (>= 0).
      need: agents a heavy item needs (>= 1).
      view: ``V``, the view radius (``1 <= V <= G - 1``); ``None`` for ``G - 1`` (full view).

    Raises:
      OptionError: a count or the view out of range, or more items and agents than cells.
    """

    def __init__(self, num_agents: int = 2, grid: int = 6, *, num_light: int = 3,
                 num_heavy: int = 1, need: int = 2, view: int | None = None):
        num_agents, grid = int(num_agents), int(grid)
        view = grid - 1 if view is None else int(view)
        if not 1 <= view <= max(grid - 1, 1):
            raise OptionError(f"view must be in [1, grid - 1 = {grid - 1}], got {view}")
        num_light, num_heavy, need = int(num_light), int(num_heavy), int(need)
        if num_agents < 1:
            raise OptionError(f"num_agents must be >= 1, got {num_agents}")
        if grid < 2:
            raise OptionError(f"grid must be >= 2, got {grid}")
        if num_light < 0 or num_heavy < 0 or need < 1:
            raise OptionError(f"need num_light >= 0, num_heavy >= 0, need >= 1; got "
                              f"{num_light}, {num_heavy}, {need}")
        if num_light + num_heavy + num_agents > grid * grid:
            raise OptionError(f"{num_light + num_heavy} items and {num_agents} agents do not "
                              f"fit on a {grid} x {grid} grid")
        self.num_agents, self.grid = num_agents, grid
        self.num_light, self.num_heavy, self.need = num_light, num_heavy, need
        self.view = view
        cells = grid * grid
        schema = Schema([PageSpec("agents/pos", (num_agents, 2), "int32"),
                         PageSpec("light", (grid, grid), "float32"),
                         PageSpec("heavy", (grid, grid), "float32"),
                         PageSpec("claims", (cells,), "int32"),
                         PageSpec("helpers", (cells,), "int32"),
                         PageSpec("collected", (), "float32"),
                         PageSpec("t", (), "int32")])
        super().__init__(Graph(schema).derive(OBS_PAGE, ("agents/pos", "light", "heavy"),
                                              self._observe))

    def _observe(self, pos: jax.Array, light: jax.Array, heavy: jax.Array) -> jax.Array:
        g, v = self.grid, self.view
        side = 2 * v + 1
        occupied = jnp.zeros((g, g), jnp.float32).at[pos[:, 0], pos[:, 1]].add(1.0)

        def view(agent_pos: jax.Array) -> jax.Array:
            def window(grid_map: jax.Array) -> jax.Array:
                return jax.lax.dynamic_slice(jnp.pad(grid_map, v),
                                             (agent_pos[0], agent_pos[1]), (side, side))

            others = occupied.at[agent_pos[0], agent_pos[1]].add(-1.0)
            where = agent_pos.astype(jnp.float32) / (g - 1)
            return jnp.concatenate([window(light).ravel(), window(heavy).ravel(),
                                    window(others).ravel(), where])

        return jax.vmap(view)(pos)

    @property
    def default_params(self) -> CoopForagingParams:
        """:class:`CoopForagingParams` defaults."""
        return CoopForagingParams()

    @property
    def num_actions(self) -> int:
        """5 per agent: stay, north, east, south, west."""
        return 5

    @property
    def obs_dim(self) -> int:
        """``3 * (2V + 1)^2 + 2``, the observation size of one agent."""
        return 3 * (2 * self.view + 1) ** 2 + 2

    def initial_deltas(self, key: jax.Array, params: Any) -> list[Delta]:
        """Random agent cells; the items on distinct random cells."""
        k_pos, k_items = jax.random.split(key)
        g = self.grid
        pos = jax.random.randint(k_pos, (self.num_agents, 2), 0, g, jnp.int32)
        cells = jax.random.permutation(k_items, g * g)
        heavy = jnp.zeros((g * g,), jnp.float32).at[cells[: self.num_heavy]].set(1.0)
        light = jnp.zeros((g * g,), jnp.float32).at[
            cells[self.num_heavy: self.num_heavy + self.num_light]].set(1.0)
        return [Delta.full("agents/pos", pos), Delta.full("light", light.reshape(g, g)),
                Delta.full("heavy", heavy.reshape(g, g))]

    def agent_deltas(self, state: State, actions: jax.Array) -> list[Delta]:
        """Every agent's submission, stacked on a leading agent axis (before merging).

        Args:
          state: the current State.
          actions: ``int32[A]``.

        Returns:
          ``[rows set on agents/pos: indices [A, 1], values [A, 1, 2];
          rows max on claims: indices [A, 1], values [A, 1];
          rows add on helpers: indices [A, 5] (-1 off the grid), values ones [A, 5]]``.

        Raises:
          ShapeError: ``actions`` is not ``[A]``.
        """
        actions = jnp.asarray(actions)
        if actions.shape != (self.num_agents,):
            raise ShapeError(f"CoopForaging takes one action per agent: shape "
                             f"({self.num_agents},), got {actions.shape}")
        g = self.grid
        ids = jnp.arange(self.num_agents, dtype=jnp.int32)
        moves = jnp.asarray(_MOVES)
        new = jnp.clip(state.pages["agents/pos"] + moves[actions], 0, g - 1)
        reach = new[:, None, :] + moves[None, :, :]  # [A, 5, 2]: own cell and 4 neighbours
        inside = jnp.all((reach >= 0) & (reach < g), axis=-1)
        reach_cell = jnp.where(inside, reach[..., 0] * g + reach[..., 1], -1)
        return [Delta(indices=ids[:, None], mask=None, values=new[:, None, :],
                      page="agents/pos", kind="rows", op="set"),
                Delta(indices=(new[:, 0] * g + new[:, 1])[:, None], mask=None,
                      values=(ids + 1)[:, None], page="claims", kind="rows", op="max"),
                Delta(indices=reach_cell.astype(jnp.int32), mask=None,
                      values=jnp.ones(reach_cell.shape, jnp.int32), page="helpers",
                      kind="rows", op="add")]

    def _respawn(self, key: jax.Array, free: jax.Array, count: jax.Array, limit: int
                 ) -> tuple[jax.Array, jax.Array]:
        """Place ``count <= limit`` items on distinct random free cells: (new bool[G*G], free)."""
        new = jnp.zeros_like(free)
        for i, k in enumerate(jax.random.split(key, limit)):
            cell = jax.random.categorical(k, jnp.where(free, 0.0, -jnp.inf))
            put = (jnp.arange(free.size) == cell) & (i < count)
            new, free = new | put, free & ~put
        return new, free

    def transition(self, key: jax.Array, state: State, action: jax.Array,
                   params: Any) -> Transition:
        """Merge the submissions, collect light and (jointly) heavy items, respawn them.

        Returns a :class:`~mmsb_jax.agents.Transition` whose reward is ``light_value *
        lights + heavy_value * heavies`` collected this step; ``info`` holds the step's
        ``claims`` and ``helpers`` pages and the counts ``light``, ``heavy`` (``int32[]``).
        """
        g = self.grid
        zeros = jnp.zeros((g * g,), jnp.int32)
        moved = [Delta.full("claims", zeros), Delta.full("helpers", zeros),
                 *[stack_merge(d) for d in self.agent_deltas(state, action)]]
        after = apply_batch(state, moved)
        claims, helpers = after.pages["claims"], after.pages["helpers"]
        light = after.pages["light"].reshape(-1) > 0
        heavy = after.pages["heavy"].reshape(-1) > 0
        got_light = light & (claims > 0)
        got_heavy = heavy & (helpers >= self.need)
        n_light, n_heavy = got_light.sum(), got_heavy.sum()
        reward = (params.light_value * n_light + params.heavy_value * n_heavy).astype(
            jnp.float32)
        free = ~light & ~heavy & (claims == 0)
        k_light, k_heavy = jax.random.split(key)
        new_heavy, free = self._respawn(k_heavy, free, n_heavy, self.num_heavy)
        new_light, _ = self._respawn(k_light, free, n_light,
                                     min(self.num_light, self.num_agents))

        def item_delta(page: str, got: jax.Array, new: jax.Array) -> Delta:
            return Delta.masked(page, (got | new).reshape(g, g),
                                jnp.where(new, 1.0, 0.0).reshape(g, g).astype(jnp.float32))

        deltas = [*moved, item_delta("light", got_light, new_light),
                  item_delta("heavy", got_heavy, new_heavy),
                  Delta.full("collected", reward, op="add"),
                  Delta.full("t", jnp.ones((), jnp.int32), op="add")]
        info = {"claims": claims, "helpers": helpers, "light": n_light.astype(jnp.int32),
                "heavy": n_heavy.astype(jnp.int32)}
        return Transition(deltas, reward, jnp.zeros((), bool), info)

    def is_truncated(self, state: State, params: Any) -> jax.Array:
        """The episode ends after ``episode_len`` steps."""
        return state.pages["t"] >= params.episode_len


COOP_HEURISTICS = ("nearest", "nearest_light", "rendezvous", "rendezvous_light", "split",
                   "split_flock", "split_roam", "split_center", "split_explore")


def coop_heuristic(env: CoopForaging, name: str
                   ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A hand-written team policy for :class:`CoopForaging`, acting on the observations.

    Every agent decodes the whole grid from its own observation and decides alone; the rules
    only use global quantities (ties broken by cell index), so agents that follow the same
    rule agree on a common target without communicating.

    * ``"nearest"``: walk to the nearest item of either kind (and stay on a heavy one).
    * ``"nearest_light"``: walk to the nearest light item.
    * ``"rendezvous"``: every agent walks to the heavy item the team reaches first (the one
      whose ``need``-th nearest agent is nearest) and waits in reach of it.
    * ``"rendezvous_light"``: as ``"rendezvous"``, but an agent uses the time it would wait
      for the others: it detours over the nearest light item it can collect and still be in
      reach of the target when the team is, prefers steps that land on light items, and
      collects light items when there is no heavy one.
    * ``"split"``: as ``"rendezvous_light"`` for the ``need`` agents nearest the target (ties
      by cell); every other agent goes to the heavy item nearest it among the rest, to be in
      reach when a partner comes over, and collects light items on the way and while it waits
      (its slack: the team's steps to the target plus the walk from there).
    * ``"split_flock"``: as ``"split"``, but an agent that sees no item and sees a teammate
      more than one cell away walks towards the nearest one (so agents that meet stay a pair
      that can take a heavy item at once); with a full view it is ``"split"``.
    * ``"split_roam"``: as ``"split"``, but a light item in view beats a heavy item the team
      in view cannot take, and an agent waiting alone at such a beacon with nothing else in
      view leaves it with probability 1/2 per step (to find a partner or light items).
    * ``"split_center"``: as ``"split"``, but an agent that sees no item walks towards the
      grid centre, where its window covers the most cells (and moves at random once within
      one cell of it).
    * ``"split_explore"``: ``"split_roam"`` and ``"split_center"`` together.

    Args:
      env: the environment.
      name: one of :data:`COOP_HEURISTICS`.

    With a partial view (``env.view < G - 1``) the rules use what the agent sees: teammates
    and items out of view do not exist for it; a heavy item with too few teammates in view is
    a beacon (the agent waits in reach of the nearest one); an agent that sees no item takes a
    uniformly random move that stays on the grid (``key`` draws these moves and the
    ``split_roam`` coin).

    Returns:
      ``policy(key, obs [A, D]) -> int32[A]``, traceable.

    Raises:
      OptionError: unknown ``name``.
    """
    if name not in COOP_HEURISTICS:
        raise OptionError(f"heuristic must be one of {COOP_HEURISTICS}, got {name!r}")
    g, need, v = env.grid, env.need, env.view
    side = 2 * v + 1
    rc = jnp.stack(jnp.meshgrid(jnp.arange(g), jnp.arange(g), indexing="ij"), -1).reshape(-1, 2)
    dist = jnp.abs(rc[:, None, :] - rc[None, :, :]).sum(-1)  # [G*G, G*G] Manhattan
    moves = jnp.asarray(_MOVES)
    big = 10 * g * g
    roam = name in ("split_roam", "split_explore")
    centre_bias = name in ("split_center", "split_explore")

    def decide(key: jax.Array, obs: jax.Array) -> jax.Array:
        pos = jnp.round(obs[-2:] * (g - 1)).astype(jnp.int32)
        me = pos[0] * g + pos[1]
        offset = rc - pos + v  # [G*G, 2]: each cell's place in my window
        seen = jnp.all((offset >= 0) & (offset < side), axis=-1)
        offset = jnp.clip(offset, 0, side - 1)

        def unwindow(i: int) -> jax.Array:  # egocentric window -> global [G*G] (0 unseen)
            w = obs[i * side * side:(i + 1) * side * side].reshape(side, side)
            return jnp.where(seen, w[offset[:, 0], offset[:, 1]], 0.0)

        light, heavy, others = unwindow(0) > 0, unwindow(1) > 0, unwindow(2)
        agents = others.at[me].add(1.0)  # agent counts per cell
        d_me = dist[me]

        def nearest(mask: jax.Array) -> jax.Array:
            return jnp.argmin(jnp.where(mask, d_me, big))

        # Steps until the need-th agent is in reach of each cell: the smallest s with
        # need agents within s + 1 of it.
        within = (agents[None, None, :] * (dist[None] <= jnp.arange(2 * g)[:, None, None] + 1)
                  ).sum(-1)  # [S, G*G]
        # With a partial view the visible team may be too small: then the nearest heavy item,
        # where the agent waits in reach (a beacon for the teammates that come into view).
        formable = (within >= need).any(axis=0)
        team_steps = jnp.where(formable, jnp.argmax(within >= need, axis=0), big + d_me)
        target = jnp.argmin(jnp.where(heavy, team_steps, big * big))
        wait = jnp.where(formable[target], team_steps[target], 0)
        in_reach = d_me[target] <= 1
        def via_light(goal: jax.Array, slack: jax.Array) -> jax.Array:
            """Detour over the nearest light item that still leaves me in reach in time."""
            cost = d_me + jnp.maximum(dist[:, goal] - 1, 0)
            ok = light & (cost <= jnp.maximum(slack, jnp.maximum(d_me[goal] - 1, 0)))
            detour = jnp.argmin(jnp.where(ok, cost * big + d_me, big * big))
            return jnp.where(ok.any(), detour, jnp.where(d_me[goal] <= 1, me, goal))

        if name == "nearest":
            goal = nearest(light | heavy)
        elif name == "nearest_light":
            goal = nearest(light)
        elif name == "rendezvous":
            goal = jnp.where(in_reach, me, target)
        else:
            goal = via_light(target, wait)
            if name.startswith("split"):
                cells = jnp.arange(g * g)
                key_of = dist[:, target] * big + cells  # rank by distance to target, then cell
                rank = jnp.sum(agents * (key_of < key_of[me]))
                others_heavy = heavy & (cells != target)
                second = nearest(others_heavy)
                spare = via_light(second, wait + dist[target, second] - 1)
                goal = jnp.where((rank >= need) & others_heavy.any(), spare, goal)
            goal = jnp.where(heavy.any(), goal, nearest(light))
            if roam:
                goal = jnp.where(formable[target] | ~light.any(), goal, nearest(light))
        # The step that brings the agent closest to its goal; ties: land on a light item
        # (rendezvous_light), then the longer axis, then the action order.
        new = jnp.clip(pos + moves, 0, g - 1)
        cell = new[:, 0] * g + new[:, 1]
        delta = jnp.abs(rc[goal] - pos)
        axis = jnp.where(delta[0] >= delta[1], jnp.array([0, 1, 0, 1, 0]),
                         jnp.array([0, 0, 1, 0, 1]))
        prefer_light = light[cell] if name == "rendezvous_light" else jnp.zeros(5, bool)
        score = dist[cell, goal] * 4 - 2 * prefer_light - axis
        # Nothing in view: explore, a uniformly random move that stays on the grid.
        k_move, k_leave = jax.random.split(key)
        wander = jax.random.categorical(k_move, jnp.where(
            jnp.any(new != pos, axis=-1), 0.0, -jnp.inf))
        blind = ~(light.any() | heavy.any())
        if roam:  # leave a beacon nobody is coming to, with probability 1/2 per step
            blind = blind | (heavy.any() & ~formable[target] & ~light.any()
                             & (d_me[target] <= 1) & (jax.random.uniform(k_leave) < 0.5))
        if centre_bias:  # explore towards the centre, where most of the grid is in view
            centre = (g // 2) * g + g // 2
            go_c = jnp.argmin(dist[cell, centre] * 4 - axis)
            wander = jnp.where(d_me[centre] > 1, go_c, wander)
        if name == "split_flock":
            mate = jnp.argmin(jnp.where(others > 0, d_me, big))
            far = (others > 0).any() & (d_me[mate] > 1)
            toward = jnp.argmin(dist[cell, mate] * 4 - axis)
            wander = jnp.where(far, toward, wander)
        return jnp.where(blind, wander, jnp.argmin(score)).astype(jnp.int32)

    def policy(key: jax.Array, obs: jax.Array) -> jax.Array:
        return jax.vmap(decide)(jax.random.split(key, obs.shape[0]), obs)

    return policy
