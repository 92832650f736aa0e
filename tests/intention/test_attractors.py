"""Attractors from many starts: Hopfield memories, known test systems, emergent goals."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mm
from mmsb_jax import errors
from mmsb_jax import intention as mi
from mmsb_jax import utility as mu
from mmsb_jax.intention import _attractors as att_mod

N, STARTS, NOISE = 64, 40, 0.1


def hopfield_case(seed: int, num_patterns: int):
    """Random +-1 patterns, their Hebbian weights and STARTS noisy starts (10% bits flipped).

    Start ``i`` is a noisy copy of pattern ``i // (STARTS // num_patterns)`` (the remainder,
    if any, copies the last pattern); a fixed number of starts keeps one compilation.
    """
    k_pat, k_noise = jax.random.split(jax.random.PRNGKey(seed))
    patterns = jnp.where(jax.random.bernoulli(k_pat, 0.5, (num_patterns, N)), 1.0, -1.0)
    source = np.minimum(np.arange(STARTS) // (STARTS // num_patterns), num_patterns - 1)
    flips = jax.random.bernoulli(k_noise, NOISE, (STARTS, N))
    starts = patterns[source] * jnp.where(flips, -1.0, 1.0)
    return patterns, mi.hebbian_weights(patterns), starts, source


def match_patterns(points: np.ndarray, patterns: np.ndarray) -> list[int]:
    """For each point, the index of the stored pattern it equals up to sign (-1: none)."""
    out = []
    for p in np.sign(points):
        hits = [i for i, q in enumerate(patterns) if np.all(p == q) or np.all(p == -q)]
        out.append(hits[0] if hits else -1)
    return out


@functools.partial(jax.jit, static_argnames="beta")
@chex.assert_max_traces(n=2)  # one trace per beta: new weights and starts do not recompile
def hopfield_search(weights, starts, beta):
    return mi.find_attractors(mi.hopfield_map(weights, beta), starts)


@pytest.mark.parametrize(("seed", "num_patterns", "beta"), [(0, 3, None), (1, 4, 4.0),
                                                            (2, 5, 4.0)])
def test_hopfield_recovers_stored_patterns_as_stable_attractors(seed, num_patterns, beta):
    patterns, w, starts, source = hopfield_case(seed, num_patterns)
    att = hopfield_search(w, starts, beta)
    valid = np.asarray(att.valid)
    points = np.asarray(att.points)[valid]
    assert int(att.count) == num_patterns == valid.sum()
    found = match_patterns(points, np.asarray(patterns))
    assert sorted(found) == list(range(num_patterns))
    assert att.labels() == ["stable"] * num_patterns
    assert np.all(np.asarray(att.spectral_radius)[valid] < 1.0)
    if beta is not None:  # tanh(beta W x) saturates towards +-1
        assert np.all(np.abs(points) > 0.9)
    # every start converged, to the attractor of the pattern it was a noisy copy of
    assert bool(jnp.all(att.converged))
    reached = np.asarray(found)[np.asarray(att.assignment)]
    np.testing.assert_array_equal(reached, source)
    np.testing.assert_array_equal(np.asarray(att.basin_size)[valid],
                                  np.bincount(source)[np.asarray(found)])
    # empty slots carry the sentinels
    assert np.all(np.asarray(att.code)[~valid] == -1)
    assert np.all(np.asarray(att.points)[~valid] == 0)


def test_hopfield_origin_is_a_saddle_found_by_newton():
    _, w, _, _ = hopfield_case(0, 3)
    f = mi.hopfield_map(w, 4.0)
    starts = 0.01 * jax.random.normal(jax.random.PRNGKey(3), (4, N))
    att = mi.find_attractors(f, starts, method="newton")
    assert int(att.count) == 1
    assert float(jnp.max(jnp.abs(att.points[0]))) < 1e-5
    assert att.labels() == ["saddle"]
    # the unstable directions are the stored patterns' span: 3 eigenvalues outside
    mags = np.abs(np.asarray(att.eigenvalues[0]))
    assert int(np.sum(mags > 1)) == 3


def cubic2d(v):
    return v + 0.1 * (v - v**3)


GRID = jnp.stack(jnp.meshgrid(jnp.linspace(-1.4, 1.4, 7), jnp.linspace(-1.4, 1.4, 7)),
                 axis=-1).reshape(-1, 2).astype(jnp.float32)


def test_newton_finds_all_nine_fixed_points_of_a_2d_map():
    att = mi.find_attractors(cubic2d, GRID, method="newton", dedup_tol=1e-3)
    k = int(att.count)
    assert k == 9
    valid = np.asarray(att.valid)
    assert np.all(valid[:k]) and not np.any(valid[k:])  # used slots first
    pts = np.round(np.asarray(att.points)[:k]).astype(int)
    assert sorted(map(tuple, pts)) == [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    labels = dict(zip(map(tuple, pts), att.labels(), strict=True))
    assert labels[(0, 0)] == "unstable"
    assert all(labels[(a, b)] == "stable" for a in (-1, 1) for b in (-1, 1))
    assert all(labels[p] == "saddle" for p in ((0, 1), (0, -1), (1, 0), (-1, 0)))
    # invariants of the deduplication
    conv = np.asarray(att.converged)
    assign = np.asarray(att.assignment)
    assert np.sum(np.asarray(att.basin_size)) == conv.sum()
    assert np.all((assign >= 0) == conv)
    # iteration reaches only the four attractors
    it = mi.find_attractors(cubic2d, GRID + 0.01)
    assert int(it.count) == 4 and it.labels() == ["stable"] * 4


def test_logistic_map_attractors():
    r = 2.8

    def logistic(x):
        return r * x * (1 - x)

    newton = mi.find_attractors(logistic, jnp.linspace(-0.3, 1.3, 12), method="newton")
    pts = np.asarray(newton.points)[np.asarray(newton.valid)]
    order = np.argsort(pts)
    np.testing.assert_allclose(pts[order], [0.0, 1 - 1 / r], atol=1e-5)
    assert [newton.labels()[i] for i in order] == ["unstable", "stable"]
    it = mi.find_attractors(logistic, jnp.linspace(0.05, 0.95, 12))
    assert int(it.count) == 1 and it.labels() == ["stable"]
    assert float(it.points[0]) == pytest.approx(1 - 1 / r, abs=1e-5)


def test_emergent_goals_ranked_by_utility():
    schema = mm.Schema([mm.PageSpec("pos", (2,)), mm.PageSpec("other", (3,))])
    state = mm.init_state(schema).with_pages({"other": jnp.ones(3)})
    att = mi.find_attractors(cubic2d, GRID, method="newton")
    aim = np.array([0.9, 0.6])
    u = -mu.goal_distance("pos", aim) + mu.page_sum("other")
    goals = mi.emergent_goals(att, u, state, "pos", weight=2.0)
    targets = [tuple(np.round(np.asarray(g.goal.target)).astype(int)) for g in goals]
    expect = sorted([(a, b) for a in (-1, 1) for b in (-1, 1)],
                    key=lambda p: np.linalg.norm(np.asarray(p) - aim))
    assert targets == expect
    utilities = [g.utility for g in goals]
    assert utilities == sorted(utilities, reverse=True)
    assert utilities[0] == pytest.approx(3.0 - np.linalg.norm(np.array([1, 1]) - aim),
                                         abs=1e-4)
    for g in goals:
        assert g.label == "stable" and g.goal.weight == 2.0 and g.goal.page == "pos"
        at = state.with_pages({"pos": g.goal.target})
        assert bool(g.goal.satisfied(at)) and float(g.goal.utility(at)) == 0.0
    every = mi.emergent_goals(att, u, state, "pos", stable_only=False)
    assert len(every) == 9
    assert sorted(g.label for g in every).count("saddle") == 4


def test_hopfield_emergent_goals_rank_stored_patterns_first():
    patterns, w, noisy, _ = hopfield_case(4, 3)
    rand = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(9), 0.5, (24, N)), 1.0, -1.0)
    f = mi.hopfield_map(w, 4.0)
    att = mi.find_attractors(f, jnp.concatenate([noisy, rand]))
    schema = mm.Schema([mm.PageSpec("x", (N,))])
    state = mm.init_state(schema)
    neg_energy = mu.Utility(lambda s: -mi.hopfield_energy(w, s.pages["x"]), "-energy", ("x",))
    goals = mi.emergent_goals(att, neg_energy, state, "x")
    kinds = match_patterns(np.stack([np.asarray(g.goal.target) for g in goals]),
                           np.asarray(patterns))
    stored = [k >= 0 for k in kinds]
    assert sum(stored) >= 3  # each pattern (or its negation) is an attractor
    first_spurious = stored.index(False) if False in stored else len(stored)
    assert all(stored[:first_spurious]) and not any(stored[first_spurious:])


def test_attractor_search_compiles_once():
    _, w, starts, _ = hopfield_case(0, 3)
    f = mi.hopfield_map(w, 4.0)
    mi.find_attractors(f, starts)
    size = att_mod._find_attractors_jit._cache_size()
    for k in range(2):
        flip = jnp.where(jax.random.bernoulli(jax.random.PRNGKey(k), 0.05, starts.shape),
                         -1.0, 1.0)
        mi.find_attractors(f, starts * flip)
    assert att_mod._find_attractors_jit._cache_size() == size


def test_attractor_and_hopfield_errors():
    state = mm.init_state(mm.Schema([mm.PageSpec("pos", (3,))]))
    with pytest.raises(errors.ShapeError):
        mi.find_attractors(cubic2d, jnp.float32(1.0))
    with pytest.raises(errors.DTypeError):
        mi.find_attractors(cubic2d, jnp.zeros((3, 2), jnp.int32))
    with pytest.raises(errors.OptionError):
        mi.find_attractors(cubic2d, GRID, dedup_tol=-1.0)
    with pytest.raises(errors.OptionError):
        mi.find_attractors(cubic2d, GRID, method="secant")
    with pytest.raises(errors.ShapeError):
        mi.find_attractors(lambda v: v[:1], GRID)
    att = mi.find_attractors(cubic2d, GRID + 0.01)  # same call as above: cached
    with pytest.raises(errors.ShapeError):
        mi.emergent_goals(att, mu.page_sum("pos"), state, "pos")
    with pytest.raises(errors.UnknownPageError):
        mi.emergent_goals(att, mu.page_sum("pos"), state, "nope")
    with pytest.raises(errors.OptionError):
        mi.emergent_goals(tuple(att), mu.page_sum("pos"), state, "pos")
    with pytest.raises(errors.DomainError):
        mi.hebbian_weights(jnp.asarray([[1.0, 0.5]]))
    with pytest.raises(errors.ShapeError):
        mi.hebbian_weights(jnp.ones(4))
    with pytest.raises(errors.DomainError):
        mi.hopfield_map(jnp.eye(3), beta=0.0)
    with pytest.raises(errors.ShapeError):
        mi.hopfield_map(jnp.ones((2, 3)))
    with pytest.raises(errors.ShapeError):
        mi.hopfield_energy(jnp.eye(3), jnp.ones(4))
    w = mi.hebbian_weights(jnp.asarray([[1.0, -1.0, 1.0]]))
    np.testing.assert_allclose(np.diag(np.asarray(w)), 0.0)
    np.testing.assert_allclose(w, w.T)
    assert float(mi.hopfield_energy(w, jnp.asarray([1.0, -1.0, 1.0]))) == pytest.approx(-1.0)
