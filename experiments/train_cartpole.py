"""Train ``RLAgent`` (PPO) on gymnax CartPole-v1 through the bus environment protocol.

Writes ``experiments/results/train_cartpole.json`` and the learning curve
``experiments/results/train_cartpole.png``:

1. Environment throughput, as ratios measured in this process against plain gymnax:
   (a) a jitted, vmapped random-policy rollout (``lax.scan`` over steps) through
       ``GymnaxBusEnv`` — whose state is an ``mm.State`` and whose steps are deltas — against
       the same rollout through the raw gymnax environment (target >= 0.8);
   (b) the whole PPO training loop (same config, same keys) with the bus environment against
       the same loop with the raw gymnax environment: environment steps per second of training,
       compile time excluded.
2. A full PPO run with PureJaxRL's CartPole configuration (5e5 steps), with a tqdm progress
   bar fed from inside the compiled loop, its wall time, and the learning curve.
3. Evaluation over 100 episodes, greedy and sampled (target: mean return >= 475).

Run ``python experiments/train_cartpole.py [--quick] [--seed N]``; ``--quick`` trains 1e5 steps
and times shorter rollouts (the result then does not claim the solve target).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
from _common import RESULTS, write_json

import mmsb_jax.agents as ag


class PlainGymnax:
    """Raw gymnax behind the 5-tuple ``step`` that ``make_train`` expects (no mmsb at all)."""

    def __init__(self, env: Any, params: Any):
        self.env, self.default_params = env, params
        self.num_actions = env.num_actions
        self.name = env.name

    def reset(self, key, params):
        return self.env.reset(key, params)

    def step(self, key, state, action, params):
        obs, state, reward, terminated, truncated, info = self.env.step(key, state, action,
                                                                         params)
        return obs, state, reward, jnp.logical_or(terminated, truncated), info


def rollout_fn(env: Any, params: Any, num_envs: int, num_steps: int):
    """A jitted random-policy rollout of ``num_envs`` vmapped environments for ``num_steps``."""

    @jax.jit
    def run(key):
        reset_key, key = jax.random.split(key)
        _, state = jax.vmap(env.reset, (0, None))(jax.random.split(reset_key, num_envs), params)

        def body(carry, key):
            state, total = carry
            act_key, step_key = jax.random.split(key)
            action = jax.random.randint(act_key, (num_envs,), 0, env.num_actions)
            _, state, reward, _, _ = jax.vmap(env.step, (0, 0, 0, None))(
                jax.random.split(step_key, num_envs), state, action, params)
            return (state, total + reward.sum()), None

        (_, total), _ = jax.lax.scan(body, (state, jnp.float32(0)),
                                     jax.random.split(key, num_steps))
        return total

    return run


def interleaved_medians(fns: dict[str, Any], args: tuple, repeat: int) -> dict[str, float]:
    """Median seconds of each compiled function, timed alternately (shared-CPU noise)."""
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def rollout_throughput(bus_env, params, raw_env, raw_params, *, num_envs: int,
                       num_steps: int, repeat: int) -> dict[str, Any]:
    plain = PlainGymnax(raw_env, raw_params)
    fns = {"plain_gymnax": rollout_fn(plain, raw_params, num_envs, num_steps),
           "mmsb_bus_env": rollout_fn(bus_env, params, num_envs, num_steps)}
    secs = interleaved_medians(fns, (jax.random.key(0),), repeat)
    steps = num_envs * num_steps
    sps = {k: steps / v for k, v in secs.items()}
    return {"num_envs": num_envs, "num_steps": num_steps, "repeat": repeat,
            "steps_per_s": sps, "ratio": sps["mmsb_bus_env"] / sps["plain_gymnax"]}


def training_throughput(bus_env, params, raw_env, raw_params, config: ag.PPOConfig,
                        repeat: int) -> dict[str, Any]:
    plain = PlainGymnax(raw_env, raw_params)
    key = jax.random.key(0)
    compiled = {}
    for name, env, p in (("plain_gymnax", plain, raw_params), ("mmsb_bus_env", bus_env, params)):
        compiled[name] = jax.jit(ag.make_train(config, env, p)).lower(key).compile()
    secs = interleaved_medians(compiled, (key,), repeat)
    sps = {k: config.total_timesteps / v for k, v in secs.items()}
    return {"total_timesteps": config.total_timesteps, "repeat": repeat, "steps_per_s": sps,
            "ratio": sps["mmsb_bus_env"] / sps["plain_gymnax"]}


def plot_curve(metrics: dict[str, np.ndarray], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = metrics["timesteps"]
    returns = metrics["episode_return"]
    ok = np.isfinite(returns)
    window = 20
    smooth = np.convolve(np.where(ok, returns, 0), np.ones(window), "same") / np.maximum(
        np.convolve(ok.astype(float), np.ones(window), "same"), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps[ok], returns[ok], ".", ms=2, alpha=0.35, label="episodes ending in update")
    ax.plot(steps, smooth, lw=2, label=f"moving mean ({window} updates)")
    ax.axhline(475, color="k", ls="--", lw=1, label="solved (475)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.set_ylim(0, 520)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1e5 steps, short timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=100)
    args = parser.parse_args()

    bus_env, params = ag.from_gymnax("CartPole-v1")
    raw_env, raw_params = gymnax.make("CartPole-v1")
    config = ag.PPOConfig(total_timesteps=100_000 if args.quick else 500_000)

    print("1/3 throughput against plain gymnax (same process)")
    rollout = rollout_throughput(bus_env, params, raw_env, raw_params, num_envs=64,
                                 num_steps=200 if args.quick else 1000,
                                 repeat=3 if args.quick else 7)
    rollout_small = rollout_throughput(bus_env, params, raw_env, raw_params, num_envs=4,
                                       num_steps=500 if args.quick else 2000,
                                       repeat=3 if args.quick else 7)
    training = training_throughput(
        bus_env, params, raw_env, raw_params,
        ag.PPOConfig(total_timesteps=25_600 if args.quick else 102_400), repeat=3)
    print(f"   rollout ratio (64 envs) {rollout['ratio']:.3f}, (4 envs) "
          f"{rollout_small['ratio']:.3f}; PPO training ratio {training['ratio']:.3f}")

    print(f"2/3 PPO on CartPole-v1 for {config.total_timesteps} steps")
    agent = ag.RLAgent(bus_env, params, config, seed=args.seed)
    t0 = time.perf_counter()
    out = agent.train(jax.random.key(args.seed), progress=True)
    wall = time.perf_counter() - t0
    metrics = {k: np.asarray(v) for k, v in out.metrics.items()}

    print(f"3/3 evaluation over {args.episodes} episodes")
    eval_key = jax.random.key(args.seed + 1000)
    greedy = ag.evaluate(agent, bus_env, params, eval_key, num_episodes=args.episodes,
                         greedy=True)
    sampled = ag.evaluate(agent, bus_env, params, eval_key, num_episodes=args.episodes)
    random = ag.evaluate(ag.RandomAgent(2), bus_env, params, eval_key,
                         num_episodes=args.episodes)

    name = "train_cartpole_quick" if args.quick else "train_cartpole"
    png = RESULTS / f"{name}.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot_curve(metrics, png, f"PPO on CartPole-v1 via GymnaxBusEnv (seed {args.seed})")
    finite = metrics["episode_return"][np.isfinite(metrics["episode_return"])]
    payload = {
        "env": "CartPole-v1 (gymnax) through mmsb_jax.agents.GymnaxBusEnv",
        "config": {k: getattr(config, k) for k in config.__dataclass_fields__},
        "seed": args.seed,
        "train_wall_s": wall,
        "train_steps_per_s_incl_compile": config.total_timesteps / wall,
        "eval": {
            "episodes": args.episodes,
            "greedy_mean_return": greedy.mean_return,
            "greedy_min_return": float(np.min(np.asarray(greedy.returns))),
            "sampled_mean_return": sampled.mean_return,
            "random_policy_mean_return": random.mean_return,
        },
        "target_mean_return": 475.0,
        "solved_greedy": greedy.mean_return >= 475.0,
        "solved_sampled": sampled.mean_return >= 475.0,
        "throughput": {
            "target_ratio": 0.8,
            "rollout_64_envs": rollout,
            "rollout_4_envs": rollout_small,
            "ppo_training": training,
        },
        "learning_curve": {
            "timesteps": metrics["timesteps"].tolist(),
            "episode_return": [None if not np.isfinite(x) else float(x)
                               for x in metrics["episode_return"]],
            "final_100_updates_mean_return": float(np.mean(finite[-100:])) if finite.size
            else None,
        },
        "plot": png.name,
    }
    path = write_json(name, payload)
    print(f"greedy mean return {greedy.mean_return:.1f}, sampled {sampled.mean_return:.1f} "
          f"(random {random.mean_return:.1f}); train {wall:.1f} s; rollout ratio "
          f"{rollout['ratio']:.3f}; wrote {path} and {png}")


if __name__ == "__main__":
    main()
