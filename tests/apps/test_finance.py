"""Finance: price paths, derived risk pages, utilities, constrained rebalancing, backtests."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

import mmsb_jax as mm
import mmsb_jax.apps as apps
from mmsb_jax.apps import _finance as fin
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import DomainError, OptionError, ShapeError, StoreError

MU = np.array([4e-4, 6e-4, 5e-4])
COV = np.array([[1e-4, 2e-5, 0.0], [2e-5, 2e-4, 1e-5], [0.0, 1e-5, 1.5e-4]])


def test_gbm_paths_are_deterministic_and_have_the_right_statistics():
    cov = np.array([[0.04, 0.012], [0.012, 0.09]])
    mu = np.array([0.05, 0.1])
    a = apps.gbm_paths(jax.random.key(0), [100.0, 50.0], mu, cov, 20000)
    b = apps.gbm_paths(jax.random.key(0), [100.0, 50.0], mu, cov, 20000)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == (20001, 2) and a.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(a[0]), [100.0, 50.0], rtol=1e-6)
    r = np.diff(np.log(np.asarray(a, np.float64)), axis=0)
    dt = 1 / 252
    np.testing.assert_allclose(np.cov(r.T) / dt, cov, rtol=0.05, atol=2e-3)
    np.testing.assert_allclose(r.mean(0) / dt, mu - np.diag(cov) / 2, atol=0.05)
    with pytest.raises(DomainError):
        apps.gbm_paths(jax.random.key(0), [1.0, 1.0], mu, [[1.0, 2.0], [2.0, 1.0]], 5)
    with pytest.raises(DomainError):
        apps.gbm_paths(jax.random.key(0), [1.0, -1.0], mu, cov, 5)
    with pytest.raises(ShapeError):
        apps.gbm_paths(jax.random.key(0), [1.0, 1.0], mu, np.eye(3), 5)
    with pytest.raises(DomainError):
        apps.gbm_paths(jax.random.key(0), [1.0, 1.0], mu, cov, 0)


_project = jax.jit(apps.project_simplex)


@settings(max_examples=50, deadline=None)
@given(v=hnp.arrays(np.float32, 6, elements=st.floats(-5, 5, width=32)))
def test_project_simplex_is_the_euclidean_projection(v):
    x = np.asarray(_project(jnp.asarray(v)), np.float64)
    assert np.all(x >= 0)
    np.testing.assert_allclose(x.sum(), 1.0, atol=1e-5)
    # KKT: v - x equals theta on the support and v <= theta off it.
    theta = (v - x)[x > 0]
    np.testing.assert_allclose(theta, theta.mean(), atol=1e-5)
    assert np.all(v[x == 0] <= theta.mean() + 1e-5)
    np.testing.assert_allclose(np.asarray(_project(jnp.asarray(x, jnp.float32))), x, atol=1e-6)
    rng = np.random.default_rng(0)
    others = rng.dirichlet(np.ones(6), 64)
    assert np.linalg.norm(x - v) <= np.min(np.linalg.norm(others - v, axis=1)) + 1e-5


def test_utilities_have_the_analytic_gradients():
    w = jnp.asarray([0.2, 0.3, 0.1], jnp.float32)
    mu, cov = jnp.asarray(MU, jnp.float32), jnp.asarray(COV, jnp.float32)
    g = jax.grad(apps.mean_variance)(w, mu, cov, 4.0)
    np.testing.assert_allclose(np.asarray(g), np.asarray(mu - 4.0 * cov @ w), rtol=1e-5)
    w64 = np.asarray(w, np.float64)
    s = np.sqrt(w64 @ COV @ w64)
    want = MU / s - (w64 @ MU) * (COV @ w64) / s**3
    np.testing.assert_allclose(np.asarray(jax.grad(apps.sharpe)(w, mu, cov)), want, rtol=1e-3)
    # Scale invariance of the Sharpe ratio.
    np.testing.assert_allclose(float(apps.sharpe(2 * w, mu, cov)), float(apps.sharpe(w, mu, cov)),
                               rtol=1e-5)


def test_rebalance_reaches_the_closed_form_optima_within_the_constraints():
    lam = 20.0
    interior = np.linalg.solve(COV, MU) / lam  # >= 0 and sums to < 1: inside the simplex
    res = apps.rebalance(MU, COV, objective="mean_variance", risk_aversion=lam, steps=400,
                         learning_rate=0.01)
    np.testing.assert_allclose(np.asarray(res.weights), interior, atol=2e-4)
    np.testing.assert_allclose(float(res.cash), 1 - interior.sum(), atol=5e-4)
    assert res.history.shape == (400,)
    tangency = np.linalg.solve(COV, MU)
    tangency /= tangency.sum()
    for method, tol in (("projected", 1e-3), ("softmax", 1e-2)):
        res = apps.rebalance(MU, COV, objective="sharpe", method=method, steps=400,
                             learning_rate=0.05 if method == "softmax" else 0.01,
                             allow_cash=False)
        np.testing.assert_allclose(np.asarray(res.weights), tangency, atol=tol)
        assert float(res.cash) == 0.0
    # A corner: one asset dominates, the no-short constraint binds.
    mu = np.array([1e-3, -1e-3, -2e-3])
    res = apps.rebalance(mu, np.diag([1e-4, 1e-4, 1e-4]), objective="mean_variance",
                         risk_aversion=1.0, steps=300, learning_rate=0.01)
    assert np.all(np.asarray(res.weights) >= 0)
    np.testing.assert_allclose(np.asarray(res.weights), [1.0, 0.0, 0.0], atol=1e-3)
    eq = apps.rebalance(MU, COV, objective="equal")
    np.testing.assert_allclose(np.asarray(eq.weights), np.full(3, 1 / 3))


def test_rebalance_compiles_once_and_refuses_bad_input(monkeypatch):
    guarded = jax.jit(chex.assert_max_traces(fin._rebalance_impl, n=1),
                      static_argnames=("objective", "method", "steps", "allow_cash"))
    monkeypatch.setattr(fin, "_rebalance", guarded)
    rng = np.random.default_rng(1)
    for _ in range(3):
        a = rng.normal(size=(3, 3)) * 1e-2
        apps.rebalance(rng.normal(size=3) * 1e-3, a @ a.T + 1e-5 * np.eye(3), steps=20)
    with pytest.raises(OptionError):
        apps.rebalance(MU, COV, objective="kelly")
    with pytest.raises(OptionError):
        apps.rebalance(MU, COV, method="newton")
    with pytest.raises(OptionError):
        apps.rebalance(MU, COV, steps=0)
    with pytest.raises(ShapeError):
        apps.rebalance(MU, np.eye(2))
    with pytest.raises(ShapeError):
        apps.rebalance(MU, COV, weights=[0.5, 0.5])
    with pytest.raises(DomainError):
        apps.rebalance([np.nan, 0.0, 0.0], COV)


def test_derived_pages_match_numpy_and_risk_is_differentiable():
    window, m = 4, 2
    g = apps.portfolio_graph(m, window)
    rng = np.random.default_rng(0)
    prices = rng.uniform(50, 150, (7, m)).astype(np.float32)
    state = mm.init_state(g.schema)
    for d in range(7):  # the ring buffer of 5 rows wraps
        state = mm.apply_batch(state, [
            mm.Delta.rows("prices", np.array([d % (window + 1)], np.int32), prices[d][None]),
            mm.Delta.full("day", np.int32(1), op="add")])
    w = np.array([0.6, 0.3], np.float32)
    state = mm.apply_batch(state, [mm.Delta.full("weights", w),
                                   mm.Delta.full("shares", np.array([1.0, 2.0], np.float32)),
                                   mm.Delta.full("cash", np.float32(5.0))])
    state = propagate(g, state, g.base.names)
    r = np.diff(np.log(prices[-window - 1:].astype(np.float64)), axis=0)
    np.testing.assert_allclose(np.asarray(state.pages["returns"]), r, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.pages["mean"]), r.mean(0), rtol=1e-4, atol=1e-6)
    c = np.cov(r.T)
    np.testing.assert_allclose(np.asarray(state.pages["cov"]), c, rtol=1e-3, atol=1e-7)
    np.testing.assert_allclose(float(state.pages["risk"]), np.sqrt(w @ c @ w), rtol=1e-3)
    np.testing.assert_allclose(float(state.pages["value"]), 5 + prices[-1] @ [1.0, 2.0],
                               rtol=1e-6)

    def risk_of(weights):
        s = mm.apply(state, mm.Delta.full("weights", weights))
        return propagate(g, s, ("weights",)).pages["risk"]

    grad = jax.grad(risk_of)(jnp.asarray(w))
    cf = np.asarray(state.pages["cov"], np.float64)
    np.testing.assert_allclose(np.asarray(grad), cf @ w / np.sqrt(w @ cf @ w), rtol=1e-3)
    # Partial history: only the returns between written days count.
    young = mm.apply_batch(mm.init_state(g.schema), [
        mm.Delta.rows("prices", np.array([0, 1], np.int32), prices[:2]),
        mm.Delta.full("day", np.int32(2))])
    young = propagate(g, young, g.base.names)
    np.testing.assert_allclose(np.asarray(young.pages["mean"]),
                               np.log(prices[1] / prices[0]), rtol=1e-4)
    np.testing.assert_array_equal(np.asarray(young.pages["cov"]), np.zeros((m, m)))
    with pytest.raises(OptionError):
        apps.portfolio_schema(0, 5)


def test_backtest_replays_bit_exactly_from_its_log(tmp_path):
    vol = np.array([0.2, 0.3, 0.25])
    cov = (0.3 + 0.7 * np.eye(3)) * np.outer(vol, vol)
    prices = apps.gbm_paths(jax.random.key(3), [100.0, 80.0, 120.0], [0.05, 0.1, 0.08], cov, 40)
    config = apps.BacktestConfig(window=10, rebalance_every=5, steps=50, fee=0.001)
    live = apps.backtest(tmp_path / "a", prices, config, sync="never")
    assert live.equity.shape == (41,) and live.weights.shape == (41, 3)
    np.testing.assert_array_equal(live.rebalance_days, [10, 15, 20, 25, 30, 35, 40])
    assert live.seq == 1 + 41 + 7
    np.testing.assert_array_equal(live.equity[:10], np.ones(10, np.float32))
    assert np.all(live.weights >= 0) and np.all(live.weights.sum(1) <= 1 + 1e-5)
    assert live.turnover[10] > 0 and live.turnover[11] == 0
    replayed = apps.replay_backtest(tmp_path / "a")
    for field in ("equity", "weights", "rebalance_days", "turnover"):
        np.testing.assert_array_equal(getattr(replayed, field), getattr(live, field))
    assert replayed.seq == live.seq
    again = apps.backtest(tmp_path / "b", prices, config, sync="never")
    np.testing.assert_array_equal(again.equity, live.equity)
    with pytest.raises(StoreError):
        apps.backtest(tmp_path / "a", prices, config, sync="never")
    with pytest.raises(ShapeError):
        apps.backtest(tmp_path / "c", prices[:5], config)
    with pytest.raises(DomainError):
        apps.backtest(tmp_path / "c", -np.asarray(prices), config)
    for bad in (dict(window=1), dict(objective="x"), dict(method="x"), dict(fee=1.5),
                dict(initial_cash=0.0)):
        with pytest.raises(OptionError):
            apps.BacktestConfig(**bad)
