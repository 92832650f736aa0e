"""plan_mcts: real search over the bus, masking, batching, determinism, compile-once, errors.

Every search here uses the same model, batch shapes and simulation count where it can, so the
file compiles few programs.
"""

from __future__ import annotations

import chex
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import planning as mp

SIMS = 48
B = 4  # one batch size for (almost) every search: one compilation
MODEL = mp.gridworld_model()
STATIC = ("walls",)

# Greedy walks into the wall column and oscillates; the way round is 7 steps.
WALLS = np.zeros((5, 5), bool)
WALLS[1:4, 2] = True
START, GOAL = np.array([2, 1]), np.array([2, 4])


def states_of(walls, starts, goals) -> mm.State:
    return mp.gridworld_states(np.asarray(walls), np.asarray(starts), np.asarray(goals))


def trap(n: int = B) -> mm.State:
    return states_of(np.stack([WALLS] * n), np.stack([START] * n), np.stack([GOAL] * n))


def plan(states, key, **kw):
    return mp.plan_mcts(MODEL, states, key, num_simulations=kw.pop("num_simulations", SIMS),
                        static_pages=kw.pop("static_pages", STATIC), **kw)


def test_search_builds_a_real_tree():
    out = plan(trap(), jax.random.key(0))
    tree = out.search_tree
    assert isinstance(tree, mctx.Tree)
    assert tree.node_visits.shape == (B, SIMS + 1)
    # Every simulation expanded a new node, below more than one root child.
    assert bool(jnp.all(tree.node_visits > 0))
    assert int(jnp.sum(out.visit_counts[0])) == SIMS
    assert int(jnp.sum(out.visit_counts[0] > 0)) >= 2
    # Depth of each node: the search went several levels deep.
    parents = np.asarray(tree.parents[0])
    depth = np.zeros(SIMS + 1, int)
    for i in range(1, SIMS + 1):
        depth[i] = depth[parents[i]] + 1
    assert depth.max() >= 3
    # Node embeddings are the States reached by deltas: the dynamic pages only.
    assert set(tree.embeddings.pages) == {"pos", "goal"}
    assert tree.embeddings.pages["pos"].shape == (B, SIMS + 1, 2)
    emb = np.asarray(tree.embeddings.pages["pos"][0])
    assert not WALLS[emb[:, 0], emb[:, 1]].any()
    assert int(tree.embeddings.epochs["pos"][0].max()) >= 4
    pv, length = mp.principal_variation(tree, 8)
    assert pv.shape == (B, 8) and int(length[0]) >= 2
    assert int(pv[0, 0]) == int(jnp.argmax(out.visit_counts[0]))
    assert bool(jnp.all(pv[0, int(length[0]):] == -1))


def test_mcts_reaches_the_goal_where_greedy_fails():
    states = trap()
    policy = mp.mcts_policy(MODEL, num_simulations=SIMS, static_pages=STATIC)
    traj = mp.rollout(MODEL, states, policy, jax.random.key(1), num_steps=12)
    greedy = mp.rollout(MODEL, states, mp.greedy_policy, jax.random.key(1), num_steps=12)
    assert not bool(jnp.any(greedy.done[:, -1]))
    assert bool(jnp.all(traj.done[:, -1]))
    assert bool(jnp.all(traj.steps_to_done <= 9))  # optimum: 7 steps
    assert bool(jnp.all(traj.total_reward > greedy.total_reward))


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.bool_, (4, 5, 5), elements=st.booleans()),
       st.integers(0, 2**31 - 1))
def test_invalid_actions_are_never_chosen(walls, seed):
    rng = np.random.default_rng(seed)
    starts, goals = np.zeros((4, 2), np.int32), np.zeros((4, 2), np.int32)
    for i in range(4):
        walls[i, rng.integers(5), rng.integers(5)] = False  # at least one free cell
        free = np.argwhere(~walls[i])
        starts[i] = free[rng.integers(len(free))]
        goals[i] = free[rng.integers(len(free))]
    states = states_of(walls, starts, goals)
    out = plan(states, jax.random.key(seed))
    valid = np.asarray(jax.vmap(MODEL.valid_actions)(states))
    np.testing.assert_array_equal(np.asarray(out.valid_actions), valid)
    a = np.asarray(out.action)
    has = valid.any(axis=1)
    assert valid[np.arange(4), a][has].all()
    w = np.asarray(out.action_weights)
    assert np.all(w[~valid & has[:, None]] == 0)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)


def test_batch_equals_one_root_at_a_time():
    walls, starts, goals = mp.random_mazes(5, 4, 5, 5, wall_density=0.3, min_distance=3)
    states = states_of(walls, starts, goals)
    keys = jax.random.split(jax.random.key(3), 4)
    together = plan(states, keys)
    for i in range(4):
        alone = plan(states_of(walls[i:i + 1], starts[i:i + 1], goals[i:i + 1]), keys[i:i + 1])
        assert int(alone.action[0]) == int(together.action[i])
        np.testing.assert_allclose(alone.action_weights[0], together.action_weights[i],
                                   rtol=1e-6)
        np.testing.assert_array_equal(alone.visit_counts[0], together.visit_counts[i])
    # One key is split into one key per root.
    np.testing.assert_array_equal(plan(states, jax.random.key(3)).action, together.action)


def test_static_pages_do_not_change_the_search():
    states = trap()
    key = jax.random.key(4)
    a = plan(states, key)
    b = plan(states, key, static_pages=())
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.visit_counts, b.visit_counts)
    np.testing.assert_allclose(a.value, b.value, rtol=1e-6)
    assert set(b.search_tree.embeddings.pages) == {"pos", "walls", "goal"}


def test_search_is_deterministic():
    states = trap()
    key = jax.random.key(5)
    first, second = plan(states, key), plan(states, key)
    np.testing.assert_array_equal(first.action_weights, second.action_weights)
    np.testing.assert_array_equal(first.search_tree.node_values, second.search_tree.node_values)


def test_muzero_search_with_a_random_rollout_value():
    # No heuristic: leaves are scored by one random 6-step rollout each.
    model = mp.gridworld_model(heuristic=False)
    model = model._replace(value_fn=mp.rollout_value(model, 6))
    open_field = np.zeros((5, 5), bool)
    states = states_of(np.stack([open_field, open_field, WALLS, WALLS]),
                       [[2, 2], [0, 0], START, START], [[2, 4], [0, 2], GOAL, GOAL])
    out = mp.plan_mcts(model, states, jax.random.key(0), num_simulations=SIMS,
                       policy="muzero", dirichlet_fraction=0.0, temperature=0.25)
    assert int(jnp.sum(out.visit_counts)) == B * SIMS
    valid = np.asarray(jax.vmap(model.valid_actions)(states))
    assert valid[np.arange(B), np.asarray(out.action)].all()
    assert (np.asarray(out.visit_counts)[~valid] == 0).all()
    # Two cells from the goal in an open field, the search goes right and expects to arrive.
    assert np.asarray(jnp.argmax(out.visit_counts, axis=1))[:2].tolist() == [1, 1]
    assert bool(jnp.all(out.value[:2] > 0.5))


def test_plan_mcts_compiles_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def act(states, key):
        return plan(states, key).action

    for seed in range(3):
        walls, starts, goals = mp.random_mazes(seed, B, 5, 5, min_distance=2)
        a = act(states_of(walls, starts, goals), jax.random.key(seed))
        assert a.shape == (B,)
    # The eager entry point is cached too: new states and keys reuse one executable.
    from mmsb_jax.planning._mcts import _plan_jit

    before = _plan_jit._cache_size()
    for seed in range(3):
        walls, starts, goals = mp.random_mazes(seed + 10, B, 5, 5, min_distance=2)
        plan(states_of(walls, starts, goals), jax.random.key(seed))
    assert _plan_jit._cache_size() <= before + 1
    # Equal settings make equal policies (jit-static friendly).
    p1 = mp.mcts_policy(MODEL, num_simulations=SIMS, static_pages=STATIC)
    p2 = mp.mcts_policy(MODEL, num_simulations=SIMS, static_pages=list(STATIC))
    assert p1 == p2 and hash(p1) == hash(p2)


def test_plan_mcts_rejects_bad_input():
    s = trap()
    key = jax.random.key(0)
    with pytest.raises(errors.OptionError, match="policy"):
        plan(s, key, policy="alphazero")
    with pytest.raises(errors.OptionError, match="unknown option"):
        plan(s, key, temperature=1.0)  # a MuZero option
    with pytest.raises(errors.OptionError):
        plan(s, key, gumbel_scale=jnp.float32(1.0))
    with pytest.raises(errors.OptionError):
        plan(s, key, num_simulations=0)
    with pytest.raises(errors.OptionError):
        plan(s, key, max_depth=-1)
    with pytest.raises(errors.UnknownPageError):
        plan(s, key, static_pages=("wall",))
    with pytest.raises(errors.OptionError, match="every page"):
        plan(s, key, static_pages=("pos", "walls", "goal"))
    with pytest.raises(errors.ShapeError):
        plan(jax.tree.map(lambda x: x[0], s), key)  # not a batch
    with pytest.raises(errors.ShapeError):
        plan(s, jax.random.split(key, 3))  # 3 keys for 4 roots
    with pytest.raises(errors.OptionError):
        mp.plan_mcts("model", s, key, num_simulations=4)
    with pytest.raises(errors.OptionError):
        mp.mcts_policy("model", num_simulations=4)
    with pytest.raises(errors.ShapeError):
        mp.principal_variation("tree", 3)
    with pytest.raises(errors.OptionError):
        mp.principal_variation(plan(s, key).search_tree, 0)


def test_raw_uint32_keys_are_accepted():
    s = trap()
    raw = jax.random.PRNGKey(0)
    a = plan(s, raw)
    b = plan(s, jax.random.split(raw, B))
    np.testing.assert_array_equal(a.action, b.action)
