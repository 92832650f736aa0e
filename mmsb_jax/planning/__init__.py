"""Layer 9 — planning: tree search, gradient trajectory optimisation and goal decomposition.

Every planner consumes a model of the bus: a :class:`TransitionModel` whose ``step`` turns an
action into deltas (:func:`delta_model` builds one from ``action -> Delta`` and a reward).

* :func:`plan_mcts` — Monte Carlo tree search with mctx (``gumbel_muzero`` or ``muzero``),
  batched over roots with ``vmap``, invalid actions masked; :func:`mcts_policy` replans it at
  every step of :func:`rollout`.
* :func:`plan_gradient` — optimise a continuous action sequence through differentiable
  transitions with optax, in one jitted ``lax.scan``.
* :func:`decompose` / :func:`decompose_grid` — waypoints along a TROPICAL-closure shortest
  path; :func:`plan_hierarchical` plans each one in turn with :func:`mcts_segment` or
  :func:`gradient_segment`.
* :func:`train_maze_agent` / :func:`plan_learned` — an AlphaZero-style value/policy
  network (:class:`MazeNet`, fully convolutional, any maze size) trained from Gumbel MuZero
  search with the true model, on :func:`dfs_mazes` (perfect depth-first-search mazes).
* Measuring tasks on the bus: a deterministic gridworld (:func:`gridworld_model`,
  :func:`random_mazes`, :func:`greedy_policy`) and a point-mass world
  (:func:`point_mass_step`, :func:`point_mass_costs`).
"""

from mmsb_jax.planning._gradient import (
    DEFAULT_OPTIMIZER,
    GradientPlan,
    plan_gradient,
    trajectory_cost,
)
from mmsb_jax.planning._gridworld import (
    MOVES,
    greedy_policy,
    gridworld_model,
    gridworld_moves,
    gridworld_schema,
    gridworld_state,
    gridworld_states,
    maze_distances,
    random_mazes,
)
from mmsb_jax.planning._hierarchical import (
    GradientSegment,
    HierarchicalResult,
    MCTSSegment,
    SegmentInfo,
    Subgoals,
    decompose,
    decompose_grid,
    gradient_segment,
    grid_adjacency,
    grid_cells,
    mcts_segment,
    plan_hierarchical,
)
from mmsb_jax.planning._learned import (
    TRAIN_SEED_MIN,
    LearnedTrajectory,
    MazeMaps,
    MazeNet,
    TrainResult,
    dfs_mazes,
    learned_search,
    maze_model,
    plan_learned,
    train_maze_agent,
)
from mmsb_jax.planning._mcts import (
    POLICIES,
    POLICY_OPTIONS,
    MCTSPolicy,
    PlanResult,
    mcts_policy,
    plan_mcts,
    principal_variation,
)
from mmsb_jax.planning._model import (
    Policy,
    RandomPolicy,
    Trajectory,
    TransitionModel,
    batch_size,
    delta_model,
    random_policy,
    rollout,
    rollout_value,
)
from mmsb_jax.planning._pointmass import (
    point_mass_costs,
    point_mass_schema,
    point_mass_state,
    point_mass_step,
)

__all__ = [
    "TRAIN_SEED_MIN",
    "train_maze_agent",
    "plan_learned",
    "maze_model",
    "learned_search",
    "dfs_mazes",
    "TrainResult",
    "MazeNet",
    "MazeMaps",
    "LearnedTrajectory",
    "DEFAULT_OPTIMIZER",
    "MOVES",
    "POLICIES",
    "POLICY_OPTIONS",
    "GradientPlan",
    "GradientSegment",
    "HierarchicalResult",
    "MCTSPolicy",
    "MCTSSegment",
    "PlanResult",
    "Policy",
    "RandomPolicy",
    "SegmentInfo",
    "Subgoals",
    "Trajectory",
    "TransitionModel",
    "batch_size",
    "decompose",
    "decompose_grid",
    "delta_model",
    "gradient_segment",
    "greedy_policy",
    "grid_adjacency",
    "grid_cells",
    "gridworld_model",
    "gridworld_moves",
    "gridworld_schema",
    "gridworld_state",
    "gridworld_states",
    "maze_distances",
    "mcts_policy",
    "mcts_segment",
    "plan_gradient",
    "plan_hierarchical",
    "plan_mcts",
    "point_mass_costs",
    "point_mass_schema",
    "point_mass_state",
    "point_mass_step",
    "principal_variation",
    "random_mazes",
    "random_policy",
    "rollout",
    "rollout_value",
    "trajectory_cost",
]
