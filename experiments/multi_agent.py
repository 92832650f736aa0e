"""Independent PPO on a cooperative multi-agent bus task, against the random policy.

Writes ``experiments/results/multi_agent.json`` and ``experiments/results/multi_agent.png``.

Task: :class:`mmsb_jax.apps.Foraging` — 3 agents on a 7 x 7 grid, 32-step episodes, food on
15 % of the cells at the start, regrowing with probability 1 % per empty cell and step. Each
step every agent submits its own deltas (its row of ``agents/pos``, a ``max`` claim on the
shared ``claims`` page); the submissions are merged in agent-id order; the team reward is the
food on claimed cells, collected once per cell.

Training: independent PPO (:func:`mmsb_jax.apps.train_ippo`: one actor-critic and one Adam
state per agent, vmapped; PureJaxRL-style PPO, one jitted run), 32 environments x 32 steps per
update. Evaluation: mean team return over 512 episodes with fixed keys for the trained agents
(sampling and greedy) and for uniformly random actions, with standard errors. The run is
repeated for several seeds and once more with the first seed to check that training is
bit-for-bit deterministic. Run ``python experiments/multi_agent.py [--quick | --full]``
(default: 2 seeds x 150 updates, about a minute and a half on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time

import jax
import matplotlib
import numpy as np
from _common import RESULTS, write_json

import mmsb_jax.apps as apps
from mmsb_jax.agents import PPOConfig

matplotlib.use("Agg")
import matplotlib.pyplot as plt

EPISODES = 512


def summary(returns: jax.Array) -> dict:
    r = np.asarray(returns, np.float64)
    return {"mean": float(r.mean()), "stderr": float(r.std(ddof=1) / np.sqrt(r.size))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one seed, 60 updates")
    parser.add_argument("--full", action="store_true", help="three seeds, 250 updates")
    args = parser.parse_args()
    env = apps.Foraging(num_agents=3, grid=7)
    params = apps.ForagingParams()
    updates = 60 if args.quick else 250 if args.full else 150
    config = PPOConfig(lr=1e-3, num_envs=32, num_steps=32, total_timesteps=32 * 32 * updates,
                       update_epochs=4, num_minibatches=4, gamma=0.95, hidden=64)
    seeds = [0] if args.quick else [0, 1, 2] if args.full else [0, 1]
    eval_key = jax.random.key(12345)
    random_returns = summary(apps.evaluate_team(env, None, eval_key, EPISODES, params))
    print("random", random_returns)
    runs, curves = [], {}
    first_params = None
    for seed in seeds:
        t0 = time.perf_counter()
        out, graphdef = apps.train_ippo(config, env, jax.random.key(seed), params)
        seconds = time.perf_counter() - t0
        if first_params is None:
            first_params = out.params
        sampled = summary(apps.evaluate_team(env, apps.team_policy(graphdef, out.params),
                                             eval_key, EPISODES, params))
        greedy = summary(apps.evaluate_team(
            env, apps.team_policy(graphdef, out.params, greedy=True), eval_key, EPISODES,
            params))
        curve = np.asarray(out.metrics["episode_return"], np.float64)
        curves[seed] = curve
        row = {"seed": seed, "train_s": seconds, "env_steps": config.num_updates * 32 * 32,
               "env_steps_per_s": config.num_updates * 32 * 32 / seconds,
               "trained_sampled": sampled, "trained_greedy": greedy,
               "ratio_sampled_over_random": sampled["mean"] / random_returns["mean"],
               "beats_random_by_3_stderr": bool(
                   sampled["mean"] - 3 * np.hypot(sampled["stderr"], random_returns["stderr"])
                   > random_returns["mean"]),
               "final_training_return": float(np.nanmean(curve[-10:]))}
        runs.append(row)
        print(row)
    again, _ = apps.train_ippo(config, env, jax.random.key(seeds[0]), params)
    deterministic = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree.leaves(first_params), jax.tree.leaves(again.params), strict=True))
    print("deterministic", deterministic)
    path = write_json("multi_agent", {
        "task": {"agents": 3, "grid": 7, **params._asdict()},
        "ppo": {k: getattr(config, k) for k in ("lr", "num_envs", "num_steps",
                                                  "total_timesteps", "update_epochs",
                                                  "num_minibatches", "gamma", "hidden")},
        "eval_episodes": EPISODES, "updates": updates, "random": random_returns, "runs": runs,
        "training_bit_deterministic": deterministic})
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, curve in curves.items():
        ax.plot(np.arange(1, curve.size + 1) * 32 * 32, curve, label=f"IPPO seed {seed}")
    ax.axhline(random_returns["mean"], color="k", ls="--", label="random policy")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("team return per episode")
    ax.set_title("Foraging, 3 agents, 7x7: independent PPO")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "multi_agent.png", dpi=120)
    print("wrote", path)


if __name__ == "__main__":
    main()
