"""Layers 10-11: the environment protocol and agents.

* Environments (layer 10): :class:`BusEnv`, a gymnax-style pure interface whose state is an
  :class:`mmsb_jax.State` and whose transitions are deltas plus propagation;
  :class:`GymnaxBusEnv` / :func:`from_gymnax` use any gymnax environment that way;
  :class:`GridWorld` is a small native environment with derived pages.
* Agents (layer 11): :class:`RLAgent` (flax.nnx actor-critic trained by PPO in one jitted
  function, :func:`make_train`), :class:`SymbolicAgent` (prioritised rules),
  :class:`PlanningAgent` (mctx over the environment's deltas), :class:`HybridAgent`
  (probability mixture of a learned agent and a guide), :class:`RandomAgent`, and
  :func:`evaluate`. PPO's pieces are public (:func:`gae`, :func:`ppo_loss`,
  :func:`ppo_update`); ``make_train(..., num_agents=A)`` trains independent learners.
* On the bus: :func:`subscribe_agent` lets an agent react to commits;
  :class:`AgentCheckpointer` saves parameters, optimiser state and bus State with Orbax.
"""

from mmsb_jax.agents._base import Agent, EvalResult, RandomAgent, evaluate
from mmsb_jax.agents._checkpoint import AgentCheckpoint, AgentCheckpointer
from mmsb_jax.agents._env import (
    OBS_PAGE,
    STATE_PREFIX,
    BusEnv,
    GridWorld,
    GridWorldParams,
    GymnaxBusEnv,
    Transition,
    from_gymnax,
)
from mmsb_jax.agents._events import AgentEvent, AgentSubscription, subscribe_agent
from mmsb_jax.agents._planning import PlanningAgent, env_model
from mmsb_jax.agents._ppo import (
    ActorCritic,
    PPOConfig,
    RLAgent,
    Rollout,
    TrainOutput,
    default_model_fn,
    gae,
    init_params,
    make_optimizer,
    make_train,
    ppo_loss,
    ppo_update,
)
from mmsb_jax.agents._symbolic import HybridAgent, Rule, SymbolicAgent

__all__ = [
    "OBS_PAGE",
    "STATE_PREFIX",
    "ActorCritic",
    "Agent",
    "AgentCheckpoint",
    "AgentCheckpointer",
    "AgentEvent",
    "AgentSubscription",
    "BusEnv",
    "EvalResult",
    "GridWorld",
    "GridWorldParams",
    "GymnaxBusEnv",
    "HybridAgent",
    "PPOConfig",
    "PlanningAgent",
    "RLAgent",
    "RandomAgent",
    "Rollout",
    "Rule",
    "SymbolicAgent",
    "TrainOutput",
    "Transition",
    "default_model_fn",
    "env_model",
    "evaluate",
    "from_gymnax",
    "gae",
    "init_params",
    "make_optimizer",
    "make_train",
    "ppo_loss",
    "ppo_update",
    "subscribe_agent",
]
