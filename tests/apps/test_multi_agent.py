"""Multi-agent shared state: deterministic merge, the Foraging task and independent PPO;
CoopForaging (full and partial view), its heuristics and IPPO on it."""

from __future__ import annotations

import functools
import random

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mmsb_jax as mm
import mmsb_jax.apps as apps
from mmsb_jax.agents import GridWorld, PPOConfig
from mmsb_jax.errors import OptionError, ShapeError, UnknownPageError
from mmsb_jax.runtime.bus import Bus
from mmsb_jax.store.replay import replay

N, K, AGENTS = 8, 3, 4
SCHEMA = mm.Schema([mm.PageSpec("owner", (N,), "int32"), mm.PageSpec("claims", (N,), "int32"),
                    mm.PageSpec("count", (N,), "int32"), mm.PageSpec("load", (N,), "float32")])

rows = st.lists(st.integers(-1, N - 1), min_size=K, max_size=K)


@st.composite
def submissions(draw):
    subs = {}
    for agent in range(AGENTS):
        idx = [np.asarray(draw(rows), np.int32) for _ in range(4)]
        load = np.asarray(draw(st.lists(st.floats(-10, 10, width=32), min_size=K, max_size=K)),
                          np.float32)
        subs[agent] = [mm.Delta.rows("owner", idx[0], np.full(K, agent, np.int32)),
                       mm.Delta.rows("claims", idx[1], np.full(K, 10 + agent, np.int32), "max"),
                       mm.Delta.rows("count", idx[2], np.ones(K, np.int32), "add"),
                       mm.Delta.rows("load", idx[3], load, "add")]
    return subs


_apply_all = jax.jit(lambda s, ds: mm.apply_batch(s, ds))


@settings(max_examples=30, deadline=None)
@given(subs=submissions(), seed=st.integers(0, 2**31 - 1))
def test_merge_is_independent_of_submission_order_and_resolves_by_op(subs, seed):
    state = mm.init_state(SCHEMA)
    items = list(subs.items())
    random.Random(seed).shuffle(items)
    a = apps.commit_agents(state, subs)
    b = apps.commit_agents(state, items)
    c = _apply_all(state, apps.merge_submissions(dict(reversed(items))))
    for name in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(a.pages[name]), np.asarray(b.pages[name]))
        np.testing.assert_array_equal(np.asarray(a.pages[name]), np.asarray(c.pages[name]))
        assert int(a.epochs[name]) == int(b.epochs[name]) == AGENTS
    # The ops resolve conflicts: set -> highest agent id, max -> max claim, add -> sum.
    owner = np.zeros(N, np.int32)
    claims = np.zeros(N, np.int32)
    count = np.zeros(N, np.int32)
    load = np.zeros(N, np.float64)
    for agent in range(AGENTS):
        d_owner, d_claims, d_count, d_load = subs[agent]
        for i in np.asarray(d_owner.indices):
            if i >= 0:
                owner[i] = agent
        for i in np.asarray(d_claims.indices):
            if i >= 0:
                claims[i] = max(claims[i], 10 + agent)
        for i in np.asarray(d_count.indices):
            if i >= 0:
                count[i] += 1
        for i, v in zip(np.asarray(d_load.indices), np.asarray(d_load.values), strict=True):
            if i >= 0:
                load[i] += v
    np.testing.assert_array_equal(np.asarray(a.pages["owner"]), owner)
    np.testing.assert_array_equal(np.asarray(a.pages["claims"]), claims)
    np.testing.assert_array_equal(np.asarray(a.pages["count"]), count)
    np.testing.assert_allclose(np.asarray(a.pages["load"]), load, rtol=1e-5, atol=1e-4)
    # Sequentially applying every delta in agent-id order gives the same pages.
    seq = functools.reduce(mm.apply, apps.merge_submissions(subs), state)
    for name in ("owner", "claims", "count"):
        np.testing.assert_array_equal(np.asarray(seq.pages[name]), np.asarray(a.pages[name]))
    np.testing.assert_allclose(np.asarray(seq.pages["load"]), np.asarray(a.pages["load"]),
                               rtol=1e-5, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(subs=submissions())
def test_stack_merge_under_jit_equals_host_merge(subs):
    state = mm.init_state(SCHEMA)
    stacked = [mm.Delta(indices=jnp.stack([subs[a][j].indices for a in range(AGENTS)]),
                        mask=None, values=jnp.stack([subs[a][j].values for a in range(AGENTS)]),
                        page=subs[0][j].page, kind="rows", op=subs[0][j].op)
               for j in range(4)]
    got = _apply_agents_jit(state, stacked)
    want = apps.commit_agents(state, subs)
    for name in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(got.pages[name]), np.asarray(want.pages[name]))
        assert int(got.epochs[name]) == AGENTS


@chex.assert_max_traces(n=1)
def _apply_agents_impl(state, stacked):
    return apps.apply_agents(state, stacked)


_apply_agents_jit = jax.jit(_apply_agents_impl)


@pytest.mark.parametrize("op", ["set", "add", "max"])
@pytest.mark.parametrize("kind", ["masked", "full"])
def test_stack_merge_of_dense_deltas_equals_sequential_agents(op, kind):
    rng = np.random.default_rng(0)
    values = rng.integers(-5, 5, (3, N)).astype(np.int32)
    masks = rng.random((3, N)) < 0.5
    state = mm.apply(mm.init_state(SCHEMA), mm.Delta.full("count", np.arange(N, dtype=np.int32)))
    stacked = mm.Delta(indices=None, mask=jnp.asarray(masks) if kind == "masked" else None,
                       values=jnp.asarray(values), page="count", kind=kind, op=op)
    merged = apps.stack_merge(stacked)
    assert merged.count == 3
    got = mm.apply(state, merged)
    want = state
    for a in range(3):
        one = (mm.Delta.masked("count", masks[a], values[a], op) if kind == "masked"
               else mm.Delta.full("count", values[a], op))
        want = mm.apply(want, one)
    np.testing.assert_array_equal(np.asarray(got.pages["count"]), np.asarray(want.pages["count"]))
    assert int(got.epochs["count"]) == int(want.epochs["count"])


def test_bad_submissions_are_refused_before_anything_changes(tmp_path):
    ok = mm.Delta.rows("owner", np.array([1], np.int32), np.array([7], np.int32))
    with pytest.raises(OptionError):
        apps.merge_submissions([(1, [ok]), (1, [ok])])
    with pytest.raises(OptionError):
        apps.merge_submissions({-1: [ok]})
    with pytest.raises(OptionError):
        apps.merge_submissions([(True, [ok])])
    with pytest.raises(OptionError):
        apps.merge_submissions([ok])
    with pytest.raises(TypeError):
        apps.merge_submissions({0: ["not a delta"]})
    with pytest.raises(OptionError):
        apps.commit_agents(object(), {0: ok})
    bad = mm.Delta.rows("nope", np.array([1], np.int32), np.array([7], np.int32))
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        info = apps.commit_agents(bus, {2: [ok], 0: ok})
        assert info.seq == 1 and info.pages == ("owner",)
        with pytest.raises(UnknownPageError):
            apps.commit_agents(bus, {0: [ok], 1: [bad]})
        assert bus.seq == 1
        np.testing.assert_array_equal(bus.read("owner"), [0, 7, 0, 0, 0, 0, 0, 0])
        assert int(bus.state.epochs["owner"]) == 2
        rebuilt = replay(mm.init_state(SCHEMA), bus.log)
        np.testing.assert_array_equal(np.asarray(rebuilt.pages["owner"]), bus.read("owner"))
    with pytest.raises(ShapeError):
        apps.stack_merge(mm.Delta(indices=jnp.zeros((3,), jnp.int32), mask=None,
                                  values=jnp.zeros((3,), jnp.int32), page="owner", kind="rows"))
    with pytest.raises(ShapeError):
        apps.stack_merge(mm.Delta(indices=None, mask=jnp.zeros((2, 3), bool),
                                  values=jnp.zeros((2, 4), jnp.int32), page="owner",
                                  kind="masked"))
    with pytest.raises(TypeError):
        apps.stack_merge("delta")


ENV = apps.Foraging(num_agents=3, grid=5)


def _state_with(pos, food):
    state = ENV.initial_state(jax.random.key(0))
    return mm.apply_batch(state, [mm.Delta.full("agents/pos", jnp.asarray(pos, jnp.int32)),
                                  mm.Delta.full("food", jnp.asarray(food, jnp.float32))])


def test_foraging_collects_a_shared_cell_once_and_claims_by_max():
    food = np.zeros((5, 5), np.float32)
    food[2, 2] = food[0, 4] = 1.0
    state = _state_with([[2, 1], [2, 3], [0, 3]], food)
    params = apps.ForagingParams(regrow=0.0)
    # Agents 0 and 1 both step onto (2, 2); agent 2 steps east onto (0, 4).
    obs, new, reward, done, info = ENV.step(jax.random.key(1), state, jnp.array([2, 4, 2]),
                                            params)
    assert float(reward) == 2.0  # the shared cell counts once
    claims = np.asarray(info["claims"]).reshape(5, 5)
    assert claims[2, 2] == 2 and claims[0, 4] == 3  # highest agent id + 1 wins the claim
    np.testing.assert_array_equal(np.asarray(new.pages["agents/pos"]), [[2, 2], [2, 2], [0, 4]])
    assert float(new.pages["food"].sum()) == 0.0
    assert float(new.pages["collected"]) == 2.0 and not bool(done)
    assert obs.shape == (3, ENV.obs_dim)
    # Egocentric observation: the agent's own cell is the window centre.
    centre = 4 * 9 + 4
    assert float(obs[0, 81 + centre]) == 1.0  # agent 1 stands on agent 0's cell
    with pytest.raises(ShapeError):
        ENV.agent_deltas(state, jnp.array([0, 1]))
    with pytest.raises(OptionError):
        apps.Foraging(num_agents=0)


def test_foraging_episodes_are_deterministic_and_truncate():
    params = apps.ForagingParams(episode_len=4)
    step = jax.jit(chex.assert_max_traces(
        lambda k, s, a: ENV.step(k, s, a, params), n=1))
    _, state = ENV.reset(jax.random.key(2), params)
    trace = []
    for t in range(4):
        actions = jnp.array([t % 5, (t + 1) % 5, (t + 2) % 5], jnp.int32)
        _, state, reward, done, _ = step(jax.random.key(10 + t), state, actions)
        trace.append((float(reward), bool(done)))
    assert [d for _, d in trace] == [False, False, False, True]
    assert int(state.pages["t"]) == 0  # reset after truncation
    again = apps.evaluate_team(ENV, None, jax.random.key(5), 8, params)
    np.testing.assert_array_equal(np.asarray(again),
                                  np.asarray(apps.evaluate_team(ENV, None, jax.random.key(5), 8,
                                                                params)))
    assert again.shape == (8,)


def test_ippo_trains_independent_agents_deterministically():
    config = PPOConfig(num_envs=4, num_steps=8, total_timesteps=64, update_epochs=1,
                       num_minibatches=2, hidden=16)
    ippo = apps.make_ippo_train(config, ENV)
    train = jax.jit(chex.assert_max_traces(ippo.train, n=1))
    params0 = ippo.init(jax.random.key(0))
    out, graphdef = train(jax.random.key(1), params0), ippo.graphdef
    leaves = jax.tree.leaves(out.params)
    assert all(x.shape[0] == 3 for x in leaves)
    assert out.metrics["episode_return"].shape == (2,)
    assert out.metrics["actor_loss"].shape == (2, 3)
    assert np.all(np.isfinite(np.asarray(out.metrics["total_loss"])))
    # Independent: each agent has its own parameters.
    first = np.asarray(leaves[0])
    assert not np.array_equal(first[0], first[1])
    again = train(jax.random.key(1), ippo.init(jax.random.key(0)))
    chex.assert_trees_all_equal(out.params, again.params)
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(params0), leaves, strict=True))
    policy = apps.team_policy(graphdef, out.params)
    obs, _ = ENV.reset(jax.random.key(1))
    actions = policy(jax.random.key(2), obs)
    assert actions.shape == (3,) and actions.dtype == jnp.int32
    assert np.all((np.asarray(actions) >= 0) & (np.asarray(actions) < 5))
    with pytest.raises(OptionError):
        apps.make_ippo_train(config, GridWorld())


def trained_and_random_returns(config, env, params):
    """Team returns over 256 episodes of IPPO trained with ``config`` and of random agents."""
    out, graphdef = apps.train_ippo(config, env, jax.random.key(0), params)
    trained = apps.evaluate_team(env, apps.team_policy(graphdef, out.params),
                                 jax.random.key(1), 256, params)
    return trained, apps.evaluate_team(env, None, jax.random.key(1), 256, params)


@pytest.mark.slow
def test_ippo_beats_random_on_foraging():
    env = apps.Foraging(num_agents=3, grid=5)
    params = apps.ForagingParams(food_density=0.15, regrow=0.01)
    config = PPOConfig(lr=1e-3, num_envs=32, num_steps=32, total_timesteps=32 * 32 * 80,
                       update_epochs=4, num_minibatches=4, gamma=0.95, hidden=64)
    trained, rand = trained_and_random_returns(config, env, params)
    margin = 3 * float(jnp.std(rand)) / np.sqrt(256)
    assert float(trained.mean()) > float(rand.mean()) + margin


COOP = apps.CoopForaging(num_agents=3, grid=5, num_light=2, num_heavy=1)
COOP_PARAMS = apps.CoopForagingParams(light_value=1.0, heavy_value=4.0)


def _coop_state(pos, light=(), heavy=(), env=COOP, params=COOP_PARAMS):
    g = env.grid
    maps = {}
    for name, cells in (("light", light), ("heavy", heavy)):
        m = np.zeros((g, g), np.float32)
        for r, c in cells:
            m[r, c] = 1.0
        maps[name] = m
    state = env.initial_state(jax.random.key(0), params)
    return env.commit(state, [mm.Delta.full("agents/pos", jnp.asarray(pos, jnp.int32)),
                              mm.Delta.full("light", jnp.asarray(maps["light"])),
                              mm.Delta.full("heavy", jnp.asarray(maps["heavy"]))])


_coop_step = jax.jit(lambda k, s, a: COOP.step(k, s, a, COOP_PARAMS))


def test_coop_heavy_item_needs_two_agents_in_reach_at_once():
    # Heavy item on (2, 2); light items on (0, 0) and (4, 4).
    state = _coop_state([[2, 0], [4, 2], [0, 4]], light=[(0, 0), (4, 4)], heavy=[(2, 2)])
    # Agent 0 steps east into reach (2, 1); agent 1 steps north to (3, 2): both in reach.
    _, new, reward, _, info = _coop_step(jax.random.key(1), state, jnp.array([2, 1, 0]))
    assert float(reward) == 4.0 and int(info["heavy"]) == 1 and int(info["light"]) == 0
    helpers = np.asarray(info["helpers"]).reshape(5, 5)
    assert helpers[2, 2] == 2 and helpers[2, 1] == 1 and helpers[3, 2] == 1
    heavy = np.asarray(new.pages["heavy"])
    assert heavy.sum() == 1.0 and heavy[2, 2] == 0.0  # reappeared on another free cell
    pos = np.asarray(new.pages["agents/pos"])
    assert not heavy[tuple(pos.T)].any() and not np.asarray(new.pages["light"])[
        tuple(pos.T)].any()
    # One agent in reach, or two at distance 2 (a diagonal), collects nothing.
    for agents, action in (([[2, 1], [4, 4], [0, 4]], [0, 4, 0]),
                           ([[1, 1], [3, 3], [0, 4]], [0, 0, 0])):
        _, _, reward, _, info = _coop_step(jax.random.key(2), _coop_state(
            agents, heavy=[(2, 2)]), jnp.array(action))
        assert float(reward) == 0.0 and int(info["heavy"]) == 0
    # A light item needs one agent on it; two agents on one light item collect it once.
    _, new, reward, _, info = _coop_step(jax.random.key(3), _coop_state(
        [[0, 1], [1, 0], [4, 3]], light=[(0, 0), (4, 4)], heavy=[(2, 2)]),
        jnp.array([4, 1, 2]))
    assert float(reward) == 2.0 and int(info["light"]) == 2
    assert float(np.asarray(new.pages["light"]).sum()) == 2.0  # both reappeared
    with pytest.raises(ShapeError):
        COOP.agent_deltas(state, jnp.array([0, 1]))
    for bad in (dict(num_agents=0), dict(grid=1), dict(need=0), dict(num_light=-1),
                dict(grid=2, num_light=3)):
        with pytest.raises(OptionError):
            apps.CoopForaging(**bad)


def test_coop_merge_is_agent_order_independent_and_matches_a_reference():
    rng = np.random.default_rng(0)
    for _ in range(5):
        pos = rng.integers(0, 5, (3, 2))
        state = _coop_state(pos, heavy=[(2, 2)])
        actions = jnp.asarray(rng.integers(0, 5, 3), jnp.int32)
        stacked = COOP.agent_deltas(state, actions)
        merged = mm.apply_batch(state, [apps.stack_merge(d) for d in stacked])
        per_agent = {a: [mm.Delta(indices=d.indices[a], mask=None, values=d.values[a],
                                  page=d.page, kind="rows", op=d.op) for d in stacked]
                     for a in range(3)}
        order = list(per_agent.items())
        rng.shuffle(order)
        host = apps.commit_agents(state, order)
        for name in ("agents/pos", "claims", "helpers"):
            np.testing.assert_array_equal(np.asarray(merged.pages[name]),
                                          np.asarray(host.pages[name]))
        new = np.asarray(merged.pages["agents/pos"])
        reach = np.zeros((5, 5), np.int32)
        for r, c in new:
            for dr, dc in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                if 0 <= r + dr < 5 and 0 <= c + dc < 5:
                    reach[r + dr, c + dc] += 1
        np.testing.assert_array_equal(np.asarray(merged.pages["helpers"]).reshape(5, 5), reach)
    a = apps.evaluate_team(COOP, None, jax.random.key(4), 8, COOP_PARAMS)
    b = apps.evaluate_team(COOP, None, jax.random.key(4), 8, COOP_PARAMS)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_coop_heuristics_rendezvous_and_split():
    env = apps.CoopForaging(num_agents=2, grid=5, num_light=0, num_heavy=1)
    state = _coop_state([[0, 0], [4, 4]], heavy=[(2, 2)], env=env)
    step = jax.jit(lambda k, s, a: env.step(k, s, a, COOP_PARAMS))
    observe = jax.jit(lambda s: env.observe(s, COOP_PARAMS))
    rendezvous = jax.jit(apps.coop_heuristic(env, "rendezvous"))
    total = 0.0
    for t in range(3):  # each agent is 4 steps from (2, 2): 3 steps bring both into reach
        _, state, reward, _, _ = step(jax.random.key(t), state,
                                      rendezvous(jax.random.key(0), observe(state)))
        total += float(reward)
    assert total == 4.0
    # Greedy-nearest: an agent on the heavy item stays there (it waits for a partner).
    state = _coop_state([[2, 2], [4, 4]], heavy=[(2, 2)], env=env)
    nearest = apps.coop_heuristic(env, "nearest")(jax.random.key(0), observe(state))
    assert int(nearest[0]) == 0 and int(nearest[1]) in (1, 4)
    # split, 3 agents and 2 heavy items: the two agents nearest (1, 1) go there, the third
    # walks to (3, 4), the other item, collecting nothing alone but ready for a partner.
    env3 = apps.CoopForaging(num_agents=3, grid=5, num_light=0, num_heavy=2)
    state = _coop_state([[0, 0], [0, 2], [4, 0]], heavy=[(1, 1), (3, 4)], env=env3)
    acts = apps.coop_heuristic(env3, "split")(jax.random.key(0), env3.observe(state,
                                                                             COOP_PARAMS))
    assert int(acts[0]) in (0, 2, 3) and int(acts[1]) in (0, 3, 4)  # in reach or closer
    assert int(acts[2]) == 2  # east, toward (3, 4)
    together = apps.coop_heuristic(env3, "rendezvous")(jax.random.key(0), env3.observe(
        state, COOP_PARAMS))
    assert int(together[2]) == 1  # rendezvous sends the third agent north to (1, 1) too
    with pytest.raises(OptionError):
        apps.coop_heuristic(env, "telepathy")


@pytest.mark.slow
def test_ippo_learns_coop_foraging():
    env = apps.CoopForaging(num_agents=2, grid=5, num_light=2, num_heavy=1)
    config = PPOConfig(lr=1e-3, num_envs=32, num_steps=32, total_timesteps=32 * 32 * 150,
                       update_epochs=4, num_minibatches=4, gamma=0.95, hidden=64)
    out, graphdef = apps.train_ippo(config, env, jax.random.key(0), COOP_PARAMS)
    trained = apps.evaluate_team(env, apps.team_policy(graphdef, out.params),
                                 jax.random.key(1), 256, COOP_PARAMS)
    light = apps.evaluate_team(env, apps.coop_heuristic(env, "nearest_light"),
                               jax.random.key(1), 256, COOP_PARAMS)
    assert float(trained.mean()) > float(light.mean())


# -- CoopForaging with a partial view ----------------------------------------------------------

PARTIAL = apps.CoopForaging(num_agents=3, grid=8, num_light=3, num_heavy=2, need=2, view=2)
PARTIAL_PARAMS = apps.CoopForagingParams(episode_len=24)

def _partial_state(pos, light=(), heavy=()):
    return _coop_state(pos, light, heavy, env=PARTIAL, params=PARTIAL_PARAMS)


def test_partial_view_window_shape_and_contents():
    assert PARTIAL.obs_dim == 3 * 5 * 5 + 2
    state = _partial_state([[0, 0], [7, 7], [1, 2]], light=[(2, 2), (6, 6)], heavy=[(0, 1)])
    obs = np.asarray(state.pages["obs"])
    assert obs.shape == (3, PARTIAL.obs_dim)
    light0 = obs[0, :25].reshape(5, 5)  # agent 0 at (0, 0): window rows/cols -2..2
    assert light0[4, 4] == 1.0 and light0.sum() == 1.0  # (2, 2) seen, (6, 6) out of view
    heavy0 = obs[0, 25:50].reshape(5, 5)
    assert heavy0[2, 3] == 1.0
    others0 = obs[0, 50:75].reshape(5, 5)
    assert others0[3, 4] == 1.0 and others0.sum() == 1.0  # agent 2 at (1, 2); agent 1 unseen
    full = apps.CoopForaging(num_agents=3, grid=8, num_light=3, num_heavy=2)
    assert full.view == 7 and full.obs_dim == 3 * 15 * 15 + 2


@pytest.mark.parametrize("view", [0, 8, -1])
def test_bad_view_is_refused(view):
    with pytest.raises(OptionError):
        apps.CoopForaging(num_agents=3, grid=8, view=view)


def test_partial_view_episode_is_deterministic_and_joint_rule_holds():
    step = jax.jit(lambda k, s, a: PARTIAL.step(k, s, a, PARTIAL_PARAMS))
    policy = jax.jit(apps.coop_heuristic(PARTIAL, "split"))

    def run(key):
        obs, state = PARTIAL.reset(key, PARTIAL_PARAMS)
        rewards, heavies = [], []
        for k in jax.random.split(key, 12):
            ka, ks = jax.random.split(k)
            obs, state, r, _, info = step(ks, state, policy(ka, obs))
            rewards.append(float(r))
            heavies.append(int(info["heavy"]))
        return rewards, heavies, np.asarray(state.pages["agents/pos"])

    a, b = run(jax.random.key(3)), run(jax.random.key(3))
    assert a[0] == b[0] and a[1] == b[1] and np.array_equal(a[2], b[2])
    # A lone agent next to a heavy item does not collect it; two in reach do.
    state = _partial_state([[3, 3], [0, 7], [7, 0]], heavy=[(3, 4)])
    _, _, r, _, info = step(jax.random.key(0), state, jnp.array([0, 0, 0]))
    assert int(info["heavy"]) == 0 and float(r) == 0.0
    state = _partial_state([[3, 3], [4, 4], [7, 0]], heavy=[(3, 4)])
    _, _, r, _, info = step(jax.random.key(0), state, jnp.array([0, 0, 0]))
    assert int(info["heavy"]) == 1 and float(r) == PARTIAL_PARAMS.heavy_value


def test_heuristics_see_only_their_window():
    policy = apps.coop_heuristic(PARTIAL, "rendezvous")
    # Agent 0 sees the heavy item at (0, 2) but no teammate: it walks into reach and waits.
    state = _partial_state([[0, 0], [7, 7], [7, 4]], heavy=[(0, 2)])
    act = np.asarray(policy(jax.random.key(0), state.pages["obs"]))
    assert act[0] == 2  # east, to (0, 1), in reach
    state = _partial_state([[0, 1], [7, 7], [7, 4]], heavy=[(0, 2)])
    # It stays in reach: stay, or north into the wall (clipped: the same cell).
    assert int(policy(jax.random.key(0), state.pages["obs"])[0]) in (0, 1)
    # Agents that see nothing wander: random legal moves (key-dependent, never into a wall).
    blind = _partial_state([[7, 7], [7, 6], [6, 7]], heavy=[(0, 0)])
    moves = {tuple(np.asarray(policy(k, blind.pages["obs"])))
             for k in jax.random.split(jax.random.key(1), 8)}
    assert len(moves) > 1
    assert all(m[0] in (1, 4) for m in moves)  # from (7, 7) only north or west move


@pytest.mark.slow  # 43 s of training; experiments/multi_agent_coop.py measures the same over seeds
def test_short_ippo_run_beats_random_with_a_partial_view():
    config = PPOConfig(lr=1e-3, num_envs=32, num_steps=24, total_timesteps=32 * 24 * 120,
                       update_epochs=4, num_minibatches=4, gamma=0.95, hidden=64)
    trained, rand = trained_and_random_returns(config, PARTIAL, PARTIAL_PARAMS)
    assert float(trained.mean()) > 1.5 * float(rand.mean())


def test_exploring_heuristics_head_for_the_centre_and_leave_lone_beacons():
    keys = jax.random.split(jax.random.key(2), 16)
    # Nothing in view from (0, 0): split_center walks towards the centre (south or east) on
    # every key; split wanders at random.
    blind = _partial_state([[0, 0], [7, 7], [7, 6]], heavy=[(7, 0)])
    centre = {int(apps.coop_heuristic(PARTIAL, "split_center")(k, blind.pages["obs"])[0])
              for k in keys}
    assert centre <= {2, 3} and len(centre) == 1
    # Alone next to a heavy item, nothing else in view: split waits in reach on every key,
    # split_roam leaves on some.
    beacon = _partial_state([[0, 0], [7, 7], [7, 6]], heavy=[(0, 1)])

    def first_moves(name):
        policy = apps.coop_heuristic(PARTIAL, name)
        return [int(policy(k, beacon.pages["obs"])[0]) for k in keys]

    assert all(a in (0, 1, 4) for a in first_moves("split"))  # stay, or into a wall
    assert any(a in (2, 3) for a in first_moves("split_roam"))
    with pytest.raises(OptionError):
        apps.coop_heuristic(PARTIAL, "split_everything")
