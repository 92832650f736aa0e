"""RLAgent and make_train: PPO on vmapped bus environments in one jitted function."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mmsb_jax.agents as ag
from mmsb_jax.errors import OptionError, ShapeError

TINY = ag.PPOConfig(num_envs=2, num_steps=16, total_timesteps=64, num_minibatches=2,
                    update_epochs=2, hidden=8)


def test_short_training_beats_random(cartpole_env, short_trained):
    env, params = cartpole_env
    agent, out = short_trained
    returns = np.asarray(out.metrics["episode_return"])
    assert returns.shape == (agent.config.total_timesteps // 512,)
    assert np.nanmean(returns[-5:]) > 1.5 * np.nanmean(returns[:5])
    trained = ag.evaluate(agent, env, params, jax.random.key(7), num_episodes=16, greedy=True)
    random = ag.evaluate(ag.RandomAgent(2), env, params, jax.random.key(7), num_episodes=16)
    assert trained.returns.shape == (16,) and bool(trained.finished.all())
    assert trained.mean_return > 2.0 * random.mean_return
    assert 10.0 < random.mean_return < 40.0   # CartPole's random policy: about 22


def test_train_metrics(short_trained):
    agent, out = short_trained
    m = out.metrics
    n = agent.config.num_updates
    assert set(m) == {"episode_return", "episodes", "timesteps", "total_loss", "value_loss",
                      "actor_loss", "entropy"}
    assert all(v.shape == (n,) for v in m.values())
    np.testing.assert_array_equal(m["timesteps"], 512 * np.arange(1, n + 1))
    assert bool(jnp.all(m["episodes"] > 0))
    assert bool(jnp.all(jnp.isfinite(m["total_loss"])))
    # entropy of a 2-action policy is at most log 2
    assert bool(jnp.all(m["entropy"] <= np.log(2) + 1e-5))
    # the final env state is a vmapped mmsb State, one row per environment
    assert out.env_state.pages["obs"].shape == (agent.config.num_envs, 4)
    assert agent.opt_state is out.opt_state


def test_agent_acts_from_its_params(cartpole_env, short_trained):
    env, params = cartpole_env
    agent, _ = short_trained
    obs, state = env.reset(jax.random.key(0), params)
    logits, value = agent.apply(obs)
    assert logits.shape == (2,) and value.shape == ()
    probs = agent.policy(jax.random.key(0), obs, state)
    np.testing.assert_allclose(probs, jax.nn.softmax(logits), rtol=1e-6)
    assert int(agent.act(jax.random.key(0), obs, greedy=True)) == int(jnp.argmax(logits))
    keys = jax.random.split(jax.random.key(1), 64)
    sampled = jax.vmap(lambda k: agent.act(k, obs))(keys)
    np.testing.assert_array_equal(sampled, jax.vmap(lambda k: jax.random.categorical(
        k, logits))(keys))
    batch = jnp.stack([obs, obs])
    assert agent.logits(batch).shape == (2, 2) and agent.value(batch).shape == (2,)
    with pytest.raises(ShapeError):
        agent.act(jax.random.key(0), batch)
    assert isinstance(agent.model, ag.ActorCritic)


def test_make_train_is_one_function_with_progress_and_no_recompile(cartpole_env):
    env, params = cartpole_env
    calls = []
    train = jax.jit(chex.assert_max_traces(
        ag.make_train(TINY, env, params, progress=lambda i, r: calls.append(int(i))), n=1))
    out1 = train(jax.random.key(0))
    out2 = train(jax.random.key(1))
    jax.effects_barrier()
    assert TINY.num_updates == 2
    assert sorted(calls) == [0, 0, 1, 1]
    assert out1.metrics["episode_return"].shape == (2,)
    leaves1, leaves2 = jax.tree.leaves(out1.params), jax.tree.leaves(out2.params)
    assert any(not np.array_equal(a, b) for a, b in zip(leaves1, leaves2, strict=True))
    # same key, same result: the run is deterministic
    out3 = train(jax.random.key(0))
    chex.assert_trees_all_equal(out1.params, out3.params)


def test_resume_continues_from_params_and_optimizer(short_trained, capsys):
    agent, first = short_trained
    saved = agent.params, agent.opt_state
    try:
        second = agent.train(jax.random.key(1), resume=True, progress=True)
        steps = agent.config.num_updates * agent.config.update_epochs \
            * agent.config.num_minibatches
        get = optax.tree_utils.tree_get_all_with_path
        counts = [int(v) for _, v in get(second.opt_state, "count")]
        first_counts = [int(v) for _, v in get(first.opt_state, "count")]
        assert set(first_counts) == {steps} and set(counts) == {2 * steps}
        changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved[0]),
                                                            jax.tree.leaves(agent.params),
                                                            strict=True)]
        assert any(changed)
        # fresh and resumed runs share one compiled function
        assert agent._train._cache_size() == 1
        # the progress bar ticked once per update
        err = capsys.readouterr().err
        n = agent.config.num_updates
        assert f"{n}/{n}" in err and "episode_return=" in err
    finally:
        agent.params, agent.opt_state = saved


def test_actor_critic_shapes_and_init():
    model = ag.ActorCritic(5, 3, hidden=16, rngs=nnx.Rngs(0))
    logits, value = model(jnp.ones((7, 5)))
    assert logits.shape == (7, 3) and value.shape == (7,)
    # the policy head starts near uniform (orthogonal init with gain 0.01)
    assert float(jnp.abs(logits).max()) < 0.1
    relu = ag.ActorCritic(5, 3, hidden=16, activation="relu", rngs=nnx.Rngs(0))
    assert relu(jnp.ones((5,)))[0].shape == (3,)


def test_optimizer_anneals_learning_rate():
    cfg = ag.PPOConfig(total_timesteps=4 * 512)
    tx = ag.make_optimizer(cfg)
    p = {"w": jnp.ones(())}
    state = tx.init(p)
    g = {"w": jnp.ones(())}
    sizes = []
    for _ in range(cfg.num_updates * cfg.update_epochs * cfg.num_minibatches):
        updates, state = tx.update(g, state, p)
        sizes.append(abs(float(updates["w"])))
    # Adam's step is about the learning rate: it falls in four plateaus to 1/4 of lr
    assert sizes[0] == pytest.approx(cfg.lr, rel=1e-3)
    assert sizes[-1] == pytest.approx(cfg.lr / 4, rel=1e-2)


def test_config_validation():
    with pytest.raises(OptionError, match="num_envs"):
        ag.PPOConfig(num_envs=0)
    with pytest.raises(OptionError, match="divisible"):
        ag.PPOConfig(num_envs=3, num_steps=5, num_minibatches=4)
    with pytest.raises(OptionError, match="less than one update"):
        ag.PPOConfig(total_timesteps=100)
    with pytest.raises(OptionError, match="activation"):
        ag.PPOConfig(activation="gelu")
    with pytest.raises(OptionError, match="gamma"):
        ag.PPOConfig(gamma=1.5)
    with pytest.raises(OptionError, match="lr"):
        ag.PPOConfig(lr=0.0)
    with pytest.raises(OptionError, match="config"):
        ag.RLAgent(ag.GridWorld(3), config={"lr": 1.0})
    with pytest.raises(OptionError, match="gymnax-style"):
        ag.RLAgent(object())
    cfg = ag.PPOConfig()
    assert cfg.num_updates == 976 and cfg.minibatch_size == 128


@pytest.mark.slow
def test_solves_cartpole(cartpole_env):
    env, params = cartpole_env
    agent = ag.RLAgent(env, params, ag.PPOConfig(), seed=0)
    agent.train(jax.random.key(0))
    result = ag.evaluate(agent, env, params, jax.random.key(1), num_episodes=100, greedy=True)
    assert result.mean_return >= 475.0


def _numpy_gae(reward, value, done, last_value, gamma, lam):
    adv = np.zeros_like(value)
    next_adv, next_value = np.zeros_like(last_value), last_value
    for t in reversed(range(reward.shape[0])):
        not_done = 1.0 - done[t]
        delta = reward[t] + gamma * next_value * not_done - value[t]
        next_adv = delta + gamma * lam * not_done * next_adv
        adv[t], next_value = next_adv, value[t]
    return adv


def test_gae_matches_a_reference_with_and_without_an_agent_axis():
    rng = np.random.default_rng(0)
    for shape in ((6, 3), (6, 3, 2)):  # [T, E] and [T, E, A]
        reward, value = (rng.normal(size=shape).astype(np.float32) for _ in range(2))
        done = rng.random(shape) < 0.3
        last = rng.normal(size=shape[1:]).astype(np.float32)
        tr = ag.Rollout(done=jnp.asarray(done), action=jnp.zeros(shape, jnp.int32),
                        value=jnp.asarray(value), reward=jnp.asarray(reward),
                        log_prob=jnp.zeros(shape), obs=jnp.zeros((*shape, 1)))
        adv, targets = jax.jit(lambda tr, v: ag.gae(tr, v, gamma=0.9, gae_lambda=0.8))(
            tr, jnp.asarray(last))
        want = _numpy_gae(reward, value, done.astype(np.float32), last, 0.9, 0.8)
        np.testing.assert_allclose(adv, want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(targets, want + value, rtol=1e-5, atol=1e-6)


def test_ppo_update_vmapped_over_agents_is_independent_learners():
    cfg = ag.PPOConfig(num_envs=2, num_steps=8, total_timesteps=16, num_minibatches=2,
                       update_epochs=2, hidden=8)
    model_fn = lambda k: ag.ActorCritic(3, 4, hidden=8, rngs=nnx.Rngs(params=k))
    graphdef = nnx.split(model_fn(jax.random.key(0)))[0]
    apply_fn = lambda p, o: nnx.merge(graphdef, p)(o)
    tx = ag.make_optimizer(cfg)
    agents = 3
    params = ag.init_params(model_fn, jax.random.key(1), agents)
    assert all(x.shape[0] == agents for x in jax.tree.leaves(params))
    n = cfg.num_envs * cfg.num_steps
    keys = jax.random.split(jax.random.key(2), 5)
    batch = ag.Rollout(done=jnp.zeros((agents, n), bool),
                       action=jax.random.randint(keys[0], (agents, n), 0, 4),
                       value=jax.random.normal(keys[1], (agents, n)),
                       reward=jnp.zeros((agents, n)),
                       log_prob=jnp.full((agents, n), -np.log(4.0)),
                       obs=jax.random.normal(keys[2], (agents, n, 3)))
    adv, targets = jax.random.normal(keys[3], (2, agents, n))
    update = functools.partial(ag.ppo_update, cfg, tx, apply_fn)
    opt = jax.vmap(tx.init)(params)
    vp, _, vl = jax.jit(jax.vmap(update, (0, 0, 0, 0, 0, None)))(params, opt, batch, adv,
                                                                  targets, keys[4])
    assert vl[0].shape == (agents, cfg.update_epochs, cfg.num_minibatches)
    for a in range(agents):
        one = lambda x, a=a: x[a]
        pa, _, la = jax.jit(update)(jax.tree.map(one, params), jax.tree.map(one, opt),
                                    jax.tree.map(one, batch), adv[a], targets[a], keys[4])
        chex.assert_trees_all_close(jax.tree.map(one, vp), pa, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(vl[0][a], la[0], rtol=1e-5, atol=1e-6)


def test_make_train_agent_axis_checks_the_observation(cartpole_env):
    env, params = cartpole_env
    with pytest.raises(OptionError, match=r"\[A, \.\.\.\]"):
        ag.make_train(TINY, env, params, num_agents=4)
    with pytest.raises(OptionError, match="num_agents"):
        ag.make_train(TINY, env, params, num_agents=0)
