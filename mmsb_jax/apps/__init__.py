"""Layer 12: applications built on the bus.

* World simulation (:class:`World`): entities as struct-of-arrays pages, physics (integration,
  wall bounces, elastic collisions with a dense or grid broad phase) as derived pages, one
  commit per step on a bus, bit-exact replay of a run, ``jax.vmap`` over many worlds.
* Multi-agent shared state: agents' deltas merged in agent-id order
  (:func:`merge_submissions`, :func:`commit_agents`, :func:`stack_merge`), a cooperative
  environment (:class:`Foraging`), one where items need two agents at once
  (:class:`CoopForaging`, with hand-written heuristics :func:`coop_heuristic`) and independent
  PPO (:func:`train_ippo`).
* Finance: portfolio pages with derived returns, covariance and risk
  (:func:`portfolio_graph`), differentiable utilities (:func:`mean_variance`, :func:`sharpe`),
  constrained rebalancing with optax (:func:`rebalance`), backtests on geometric Brownian
  motion paths (:func:`gbm_paths`, :func:`backtest`) that replay bit-exactly from the log
  (:func:`replay_backtest`).
* LLM tools: JSON-schema tool definitions over a bus (:func:`tool_definitions`), a validating
  dispatcher (:func:`call_tool`) and an MCP server over stdio (:func:`serve_mcp`,
  ``python -m mmsb_jax.apps.mcp_server DIR``).
"""

from __future__ import annotations

import os
from typing import Any

from mmsb_jax.apps._finance import (
    OBJECTIVES,
    BacktestConfig,
    BacktestResult,
    RebalanceResult,
    backtest,
    gbm_paths,
    mean_variance,
    portfolio_graph,
    portfolio_schema,
    portfolio_value,
    project_simplex,
    rebalance,
    replay_backtest,
    sharpe,
)
from mmsb_jax.apps._ippo import (
    IPPO,
    IPPOOutput,
    evaluate_team,
    make_ippo_train,
    team_policy,
    train_ippo,
)
from mmsb_jax.apps._llm_tools import MAX_READ_ELEMENTS, TOOL_NAMES, call_tool, tool_definitions
from mmsb_jax.apps._multi_agent import (
    COOP_HEURISTICS,
    CoopForaging,
    CoopForagingParams,
    Foraging,
    ForagingParams,
    apply_agents,
    commit_agents,
    coop_heuristic,
    merge_submissions,
    stack_merge,
)
from mmsb_jax.apps._world import (
    BROADPHASES,
    ENTITY_FIELDS,
    World,
    WorldParams,
    collide,
    integrate,
    world_graph,
    world_schema,
    world_step,
)


def serve_mcp(directory: str | os.PathLike, *, schema: Any = None, sync: str = "batch") -> None:
    """Serve the bus in ``directory`` over MCP on stdio (see :mod:`mmsb_jax.apps.mcp_server`).

    Imports the ``mcp`` package only when called.

    Args:
      directory: the bus directory.
      schema: a Schema for a new bus.
      sync: the bus sync policy.
    """
    from mmsb_jax.apps.mcp_server import serve_mcp as _serve

    _serve(directory, schema=schema, sync=sync)


__all__ = [
    "BROADPHASES",
    "COOP_HEURISTICS",
    "ENTITY_FIELDS",
    "IPPO",
    "MAX_READ_ELEMENTS",
    "OBJECTIVES",
    "TOOL_NAMES",
    "BacktestConfig",
    "BacktestResult",
    "CoopForaging",
    "CoopForagingParams",
    "Foraging",
    "ForagingParams",
    "IPPOOutput",
    "RebalanceResult",
    "World",
    "WorldParams",
    "apply_agents",
    "backtest",
    "call_tool",
    "collide",
    "commit_agents",
    "coop_heuristic",
    "evaluate_team",
    "gbm_paths",
    "integrate",
    "make_ippo_train",
    "mean_variance",
    "merge_submissions",
    "portfolio_graph",
    "portfolio_schema",
    "portfolio_value",
    "project_simplex",
    "rebalance",
    "replay_backtest",
    "serve_mcp",
    "sharpe",
    "stack_merge",
    "team_policy",
    "tool_definitions",
    "train_ippo",
    "world_graph",
    "world_schema",
    "world_step",
]
