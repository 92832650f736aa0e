"""World simulation: physics, entities, vmap over worlds, bus binding and bit-exact replay."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import mmsb_jax.apps as apps
from mmsb_jax.apps import _world as world_mod
from mmsb_jax.errors import (
    CapacityError,
    DomainError,
    IndexOutOfRangeError,
    OptionError,
    SchemaMismatchError,
    ShapeError,
    UnknownPageError,
)
from mmsb_jax.runtime.bus import Bus

BASE = ("pos", "vel", "radius", "mass", "kind", "alive", "tick")
# Few distinct parameter sets: worlds with equal parameters share one graph and one compile.
SMALL = dict(dt=0.01, capacity=4, max_radius=0.1)
GRID = dict(dt=0.005, capacity=64, max_radius=0.02, broadphase="grid")


def _two_discs(m1: float, m2: float, v1: float, v2: float, **kw) -> tuple[apps.World, int, int]:
    w = apps.World(**{**SMALL, **kw})
    a = w.add_entity(0, pos=(0.3, 0.5), vel=(v1, 0.0), radius=0.1, mass=m1)
    b = w.add_entity(0, pos=(0.55, 0.5), vel=(v2, 0.0), radius=0.1, mass=m2)
    return w, a, b


@pytest.mark.parametrize("broadphase", ["dense", "grid"])
@pytest.mark.parametrize("m1,m2", [(1.0, 1.0), (1.0, 3.0), (2.0, 0.5)])
def test_head_on_collision_matches_1d_elastic_formula(broadphase, m1, m2):
    v1, v2 = 1.0, -0.5
    w, a, b = _two_discs(m1, m2, v1, v2, broadphase=broadphase)
    w.step(6)  # contact after ~4 steps; one collision
    vel = w.read("vel")
    want1 = ((m1 - m2) * v1 + 2 * m2 * v2) / (m1 + m2)
    want2 = ((m2 - m1) * v2 + 2 * m1 * v1) / (m1 + m2)
    np.testing.assert_allclose(vel[[a, b], 0], [want1, want2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vel[[a, b], 1], 0.0, atol=1e-7)
    np.testing.assert_allclose(w.read("momentum")[0], m1 * v1 + m2 * v2, rtol=1e-5)
    np.testing.assert_allclose(w.read("energy"), 0.5 * (m1 * v1**2 + m2 * v2**2), rtol=1e-5)
    assert int(w.read("tick")) == 6


def test_wall_bounce_reflects_and_keeps_discs_inside():
    w = apps.World(**SMALL)
    i = w.add_entity(0, pos=(0.85, 0.85), vel=(8.0, 12.0), radius=0.1)
    w.step(1)
    np.testing.assert_allclose(w.read("vel")[i], [-8.0, -12.0])
    np.testing.assert_allclose(w.read("pos")[i], [2 * 0.9 - 0.93, 2 * 0.9 - 0.97], rtol=1e-6)
    w.step(50)
    pos = w.read("pos")[i]
    assert np.all((pos >= 0.1) & (pos <= 0.9))
    np.testing.assert_allclose(np.abs(w.read("vel")[i]), [8.0, 12.0])


def test_dead_slots_neither_move_nor_collide():
    w = apps.World(**SMALL)
    a = w.add_entity(0, pos=(0.3, 0.5), vel=(1.0, 0.0), radius=0.1)
    b = w.add_entity(0, pos=(0.55, 0.5), vel=(0.0, 0.0), radius=0.1)
    w.remove_entity(b)
    w.step(10)
    assert not w.read("alive")[b]
    np.testing.assert_allclose(w.read("pos")[b], [0.55, 0.5])
    np.testing.assert_allclose(w.read("vel")[a], [1.0, 0.0])  # passed through the dead disc
    assert w.num_entities == 1
    assert w.add_entity(0, pos=(0.8, 0.8)) == b  # the freed slot is reused


def _random_discs(seed: int, n: int, cap: int):
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.1, 0.9, (cap, 2)).astype(np.float32)
    vel = rng.normal(0, 1, (cap, 2)).astype(np.float32)
    radius = rng.uniform(0.02, 0.06, cap).astype(np.float32)
    mass = rng.uniform(0.5, 2.0, cap).astype(np.float32)
    alive = np.arange(cap) < n
    return tuple(jnp.asarray(x) for x in (pos, vel, radius, mass, alive))


def _collider(restitution: float, broadphase: str):
    params = world_mod.WorldParams(dt=0.01, capacity=32, max_radius=0.06, broadphase=broadphase,
                                   max_per_row=32, max_rounds=64, restitution=restitution)
    return jax.jit(lambda *a: world_mod.collide(*a, params))


_COLLIDE = {(e, b): _collider(e, b) for e in (0.0, 0.5, 1.0) for b in ("dense", "grid")}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 32))
def test_collide_conserves_momentum_and_energy_and_grid_equals_dense(seed, n):
    pos, vel, radius, mass, alive = _random_discs(seed, n, 32)
    out_d = _COLLIDE[1.0, "dense"](pos, vel, radius, mass, alive)
    out_g = _COLLIDE[1.0, "grid"](pos, vel, radius, mass, alive)
    m = np.asarray(mass, np.float64)[:, None] * np.asarray(alive)[:, None]
    v = np.asarray(vel, np.float64)
    for out in (out_d, out_g):
        o = np.asarray(out, np.float64)
        np.testing.assert_allclose((m * o).sum(0), (m * v).sum(0), atol=1e-4)
        np.testing.assert_allclose((m * o * o).sum(), (m * v * v).sum(), rtol=1e-4)
        np.testing.assert_array_equal(o[n:], v[n:])  # dead slots untouched
    # Same candidates, same matching rounds: the two broad phases agree.
    np.testing.assert_allclose(np.asarray(out_g), np.asarray(out_d), rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), e=st.sampled_from([0.0, 0.5]))
def test_inelastic_collide_loses_energy_and_keeps_momentum(seed, e):
    pos, vel, radius, mass, alive = _random_discs(seed, 32, 32)
    out = np.asarray(_COLLIDE[e, "dense"](pos, vel, radius, mass, alive), np.float64)
    m = np.asarray(mass, np.float64)[:, None]
    v = np.asarray(vel, np.float64)
    assert (m * out * out).sum() <= (m * v * v).sum() * (1 + 1e-6)
    np.testing.assert_allclose((m * out).sum(0), (m * v).sum(0), atol=1e-4)


def test_perfectly_inelastic_pair_moves_together():
    pos = jnp.zeros((32, 2)).at[0].set(jnp.array([0.3, 0.5])).at[1].set(jnp.array([0.35, 0.5]))
    vel = jnp.zeros((32, 2)).at[0].set(jnp.array([1.0, 0.0]))
    alive = jnp.arange(32) < 2
    out = _COLLIDE[0.0, "dense"](pos, vel, jnp.full((32,), 0.05), jnp.ones((32,)), alive)
    np.testing.assert_allclose(np.asarray(out[:2, 0]), [0.5, 0.5], rtol=1e-6)


def test_energy_conserved_over_a_grid_run_and_overflow_flag():
    w = apps.World(**GRID)
    s = w.random_state(jax.random.key(1), 64, speed=1.0)
    assert not bool(s.pages["overflow"])
    out = s
    for _ in range(20):
        out = w.step_fn(out)
    np.testing.assert_allclose(float(out.pages["energy"]), float(s.pages["energy"]), rtol=1e-4)
    pos = np.asarray(out.pages["pos"])
    assert np.all((pos >= 0.02) & (pos <= 0.98))
    params = world_mod.WorldParams(**{**SMALL, "broadphase": "grid", "max_per_row": 2})
    crowd = jnp.array([[0.5, 0.5], [0.52, 0.5], [0.54, 0.5], [0.1, 0.1]])
    assert bool(world_mod._grid(crowd, jnp.array([True, True, True, False]), params).overflow)
    assert not bool(world_mod._grid(crowd, jnp.array([True, True, False, True]), params).overflow)


def test_add_entity_bad_input_is_refused_and_nothing_changes():
    w = apps.World(**{**SMALL, "capacity": 2}, kinds=("ball", "rock"))
    w.add_entity("rock", pos=(0.5, 0.5))
    before = {n: np.asarray(w.state.pages[n]).copy() for n in BASE}
    epochs = {n: int(w.state.epochs[n]) for n in BASE}
    bad = [(UnknownPageError, dict(pos=(0.2, 0.2), colour=3)),
           (DomainError, dict(pos=(0.2, 0.2), radius=0.5)),
           (DomainError, dict(pos=(0.01, 0.2))),
           (DomainError, dict(pos=(0.2, 0.2), mass=0.0)),
           (DomainError, dict(pos=(0.2, float("nan")))),
           (ShapeError, dict(vel=(1.0, 0.0))),
           (ShapeError, dict(pos=(0.2, 0.2), vel=(1.0, 0.0, 0.0)))]
    for err, fields in bad:
        with pytest.raises(err):
            w.add_entity("ball", **fields)
    with pytest.raises(OptionError):
        w.add_entity("tree", pos=(0.2, 0.2))
    with pytest.raises(OptionError):
        w.add_entity(-1, pos=(0.2, 0.2))
    with pytest.raises(CapacityError):
        w.add_entities("ball", pos=[[0.2, 0.2], [0.7, 0.7]])
    with pytest.raises(IndexOutOfRangeError):
        w.remove_entity(5)
    with pytest.raises(DomainError):
        w.remove_entity(1)
    for n in BASE:
        np.testing.assert_array_equal(np.asarray(w.state.pages[n]), before[n])
        assert int(w.state.epochs[n]) == epochs[n]
    assert w.read("kind")[0] == 1
    w.add_entity("ball", pos=(0.2, 0.2))
    with pytest.raises(CapacityError):
        w.add_entity("ball", pos=(0.7, 0.7))


def test_params_validation():
    for bad in (dict(dt=0.0), dict(dt=float("inf")), dict(dt=0.1, capacity=0),
                dict(dt=0.1, bounds=(1.0, -1.0)), dict(dt=0.1, restitution=1.5),
                dict(dt=0.1, max_radius=0.6), dict(dt=0.1, broadphase="octree"),
                dict(dt=0.1, max_per_row=0), dict(dt=0.1, max_rounds=0)):
        with pytest.raises(OptionError):
            apps.WorldParams(**bad)
    assert apps.WorldParams(0.1, capacity=10).broadphase == "dense"
    assert apps.WorldParams(0.1, capacity=10_000).broadphase == "grid"
    with pytest.raises(OptionError):
        apps.World(0.1, kinds=("a", "a"))
    w = apps.World(**SMALL)
    with pytest.raises(CapacityError):
        w.random_state(jax.random.key(0), 5)
    with pytest.raises(DomainError):
        w.random_state(jax.random.key(0), 4, radius=0.2)
    with pytest.raises(DomainError):
        apps.World(0.01, capacity=400, max_radius=0.05).random_state(jax.random.key(0), 400)
    with pytest.raises(OptionError):
        w.step(-1)


def test_vmap_over_worlds_matches_one_world_at_a_time():
    w = apps.World(**SMALL)
    keys = jax.random.split(jax.random.key(3), 3)
    batch = jax.vmap(lambda k: w.random_state(k, 4, speed=5.0, radius=0.1))(keys)
    assert batch.pages["pos"].shape == (3, 4, 2)
    stepped = jax.vmap(w.step_fn)(batch)
    for b in range(3):
        one = jax.tree.map(lambda x, b=b: x[b], batch)
        single = w.step_fn(one)
        for name in ("pos", "vel", "energy"):
            np.testing.assert_allclose(np.asarray(stepped.pages[name][b]),
                                       np.asarray(single.pages[name]), rtol=1e-6, atol=1e-7)
        assert int(stepped.pages["tick"][b]) == 1


def test_physics_with_and_without_jit_agree():
    params = world_mod.WorldParams(**SMALL)
    pos, vel, radius, mass, alive = _random_discs(5, 4, 4)
    radius = radius * 2.0

    def physics(pos, vel, radius, mass, alive):
        v = world_mod.collide(pos, vel, radius, mass, alive, params)
        return world_mod.integrate(pos, v, radius, alive, params)

    jitted = jax.jit(physics)(pos, vel, radius, mass, alive)
    with jax.disable_jit():
        eager = physics(pos, vel, radius, mass, alive)
    chex.assert_trees_all_close(eager, jitted, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(np.asarray(jitted[0]), np.asarray(pos))


def test_step_compiles_once(monkeypatch):
    monkeypatch.setattr(world_mod, "_step_jit", jax.jit(
        chex.assert_max_traces(world_mod.world_step, n=1), static_argnums=0))
    monkeypatch.setattr(world_mod, "_propagate_step_jit", jax.jit(
        chex.assert_max_traces(world_mod._propagate_step_impl, n=1), static_argnums=0))
    w = apps.World(**SMALL)
    w.add_entities(0, pos=[[0.2, 0.2], [0.5, 0.5]], vel=[[1.0, 0.0], [0.0, 1.0]])
    for _ in range(4):
        w.step(1)
    w.add_entity(0, pos=(0.8, 0.8))
    w.step(1)


def test_bound_world_replays_bit_exactly_and_resumes(tmp_path):
    d = tmp_path / "world"
    with apps.World.open(d, sync="never", **GRID) as w:
        rng = np.random.default_rng(0)
        w.add_entities(0, pos=rng.uniform(0.1, 0.9, (10, 2)), vel=rng.normal(0, 1, (10, 2)))
        w.add_entity(0, pos=(0.5, 0.5), vel=(0.3, -0.2), radius=0.015, mass=2.0)
        w.step(25)
        live = w.state
        assert w.bus.seq == 2 + 25
        replayed = w.replay()
        for n in w.graph.schema.names:
            np.testing.assert_array_equal(np.asarray(replayed.pages[n]), np.asarray(live.pages[n]))
        for n in BASE:
            assert int(replayed.epochs[n]) == int(live.epochs[n])
        mid = w.replay(to_seq=12)
        assert int(mid.pages["tick"]) == 10
        np.testing.assert_array_equal(np.asarray(mid.pages["pos"]),
                                      np.asarray(w.bus.at(12).pages["pos"]))
    # Re-simulating the logged start with the pure step reproduces the logged run.
    fresh = apps.World(**GRID)
    again = fresh.replay(d, to_seq=2)
    for _ in range(25):
        again = fresh.step_fn(again)
    np.testing.assert_array_equal(np.asarray(again.pages["pos"]), np.asarray(live.pages["pos"]))
    with apps.World.open(d, sync="never", **GRID) as w2:
        np.testing.assert_array_equal(w2.read("vel"), np.asarray(live.pages["vel"]))
        w2.step(1)
        assert w2.bus.seq == 28
    with pytest.raises(OptionError):
        fresh.replay()


def test_open_propagates_on_the_bus_one_jitted_call_per_step(tmp_path, monkeypatch):
    from mmsb_jax.core import transaction as txn_mod

    rng = np.random.default_rng(3)
    pos, vel = rng.uniform(0.1, 0.9, (12, 2)), rng.normal(0, 1, (12, 2))
    free = apps.World(**GRID)
    free.add_entities(0, pos=pos, vel=vel)
    with apps.World.open(tmp_path / "w", sync="never", **GRID) as w:
        assert w.bus.graph is w.graph and w.bus.schema == w.graph.schema
        w.add_entities(0, pos=pos, vel=vel)
        w.step(3)
        for _ in range(3):
            free.step(1)
        # the world steps without its own propagation: only the bus's compiled transaction
        monkeypatch.setattr(world_mod, "_propagate_step_jit", None)
        monkeypatch.setattr(world_mod, "_step_jit", None)

        def sizes():
            return (txn_mod._flat_jit.cache_info().currsize,
                    [p.compiled._fn._cache_size() for p in w.bus._pipe._plans.values()])

        before = sizes()
        w.step(6)
        assert sizes() == before  # no retrace, no new plan
        monkeypatch.undo()
        for _ in range(6):
            free.step(1)
        live = w.state
        assert live is w.bus.state
        # the same run as the unbound world's, bit for bit, base epochs included
        for n in w.graph.schema.names:
            np.testing.assert_array_equal(np.asarray(live.pages[n]),
                                          np.asarray(free.state.pages[n]), err_msg=n)
        for n in BASE:
            assert int(live.epochs[n]) == int(free.state.epochs[n]), n
        # replay (from the bus or its directory) rebuilds every page and the base epochs
        for replayed in (w.replay(), w.replay(tmp_path / "w")):
            for n in w.graph.schema.names:
                np.testing.assert_array_equal(np.asarray(replayed.pages[n]),
                                              np.asarray(live.pages[n]), err_msg=n)
            for n in BASE:
                assert int(replayed.epochs[n]) == int(live.epochs[n]), n
        at, again = w.bus.at(5), w.replay(to_seq=5)
        for n in w.graph.schema.names:
            np.testing.assert_array_equal(np.asarray(at.pages[n]), np.asarray(again.pages[n]),
                                          err_msg=n)
    with apps.World.open(tmp_path / "w", sync="never", checkpoint_every=4, **GRID) as w2:
        # recovery propagates after every commit: derived pages' epochs as they were live
        for n in w2.graph.schema.names:
            np.testing.assert_array_equal(w2.read(n), np.asarray(live.pages[n]), err_msg=n)
            assert int(w2.state.epochs[n]) == int(live.epochs[n]), n
        w2.step(1)
        assert w2.bus.seq == 11 and int(w2.state.pages["tick"]) == 10
        w2.step(1)  # seq 12: checkpointed (every 4 commits)
        w2.bus.sync()
        resumed_from = w2.state
    with apps.World.open(tmp_path / "w", sync="never", **GRID) as w3:
        assert 12 in w3.bus._ckpts.steps()  # the periodic checkpoint (recovery starts there)
        assert w3.bus.seq == 12 and int(w3.state.pages["tick"]) == 11
        for n in w3.graph.schema.names:
            np.testing.assert_array_equal(w3.read(n), np.asarray(resumed_from.pages[n]))
            assert int(w3.state.epochs[n]) == int(resumed_from.epochs[n]), n


def test_open_resumes_a_log_of_the_base_pages_only(tmp_path):
    d = tmp_path / "old"
    w0 = apps.World(**GRID)
    with Bus.open(d, w0.graph.base, sync="never") as bus:  # what open() wrote before
        w0.bind(bus)
        w0.add_entities(0, pos=[[0.3, 0.3], [0.6, 0.6]], vel=[[1.0, 0.0], [0.0, 1.0]])
        w0.step(4)
        live = w0.state
    with apps.World.open(d, sync="never", **GRID) as w:
        assert w.bus.graph is None and w.bus.schema == w.graph.base
        np.testing.assert_array_equal(w.read("pos"), np.asarray(live.pages["pos"]))
        w.step(2)
        assert w.bus.seq == 7
        np.testing.assert_array_equal(np.asarray(w.replay().pages["pos"]), w.read("pos"))


def test_bind_refuses_a_bus_whose_derived_pages_are_another_worlds(tmp_path):
    w = apps.World(**GRID)
    other = apps.World(**{**GRID, "restitution": 0.5})  # same pages, other physics
    with Bus.open(tmp_path / "a", graph=other.graph, sync="never") as bus:
        with pytest.raises(SchemaMismatchError, match="graph"):
            w.bind(bus)
        assert w.bus is None and bus.seq == 0
    with Bus.open(tmp_path / "b", graph=w.graph, sync="never") as bus:
        w.add_entity(0, pos=(0.5, 0.5), vel=(0.1, 0.0))
        w.bind(bus)  # the world's edits are committed, then the bus's state is the world's
        assert bus.seq == 1 and w.state is bus.state
        np.testing.assert_allclose(w.read("energy"), 0.5 * 0.1**2, rtol=1e-6)


def test_bind_refuses_other_schema_and_commits_existing_state(tmp_path):
    w = apps.World(**SMALL)
    with Bus.open(tmp_path / "a", world_mod.world_schema(3), sync="never") as bus:
        with pytest.raises(SchemaMismatchError):
            w.bind(bus)
    w.add_entity(0, pos=(0.5, 0.5), vel=(0.1, 0.0))
    with Bus.open(tmp_path / "b", w.graph.base, sync="never") as bus:
        w.bind(bus)
        assert bus.seq == 1
        np.testing.assert_array_equal(bus.read("pos"), w.read("pos"))
        w.step(2)
        np.testing.assert_array_equal(bus.read("pos"), w.read("pos"))
        np.testing.assert_array_equal(np.asarray(w.replay().pages["pos"]), w.read("pos"))


def test_set_state_and_random_state_are_deterministic():
    w = apps.World(**GRID)
    a = w.random_state(jax.random.key(7), 10)
    b = w.random_state(jax.random.key(7), 10)
    chex.assert_trees_all_equal(a.pages, b.pages)
    w.set_state(a)
    np.testing.assert_array_equal(w.read("pos"), np.asarray(a.pages["pos"]))
    assert w.num_entities == 10
    with pytest.raises(SchemaMismatchError):
        w.set_state(apps.World(**SMALL).state)
