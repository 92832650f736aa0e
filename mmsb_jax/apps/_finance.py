"""Finance on the bus: portfolio pages, derived risk, differentiable utilities, backtests.

Pages (:func:`portfolio_schema`, ``M`` assets, a window of ``W`` daily returns):

* ``prices: float32[W + 1, M]``: a ring buffer of the last ``W + 1`` daily prices; day ``d``
  (counting from 0) is written to row ``d % (W + 1)`` with one row delta;
* ``day: int32[]``: days recorded so far;
* ``weights: float32[M]``: the target weights of the last rebalance (the rest is cash);
* ``shares: float32[M]``: units held; ``cash: float32[]``: cash held.

Derived pages (:func:`portfolio_graph`, recomputed by propagation): ``returns: float32[W, M]``
(daily log returns in the window, oldest first, zero where history is missing),
``mean: float32[M]`` and ``cov: float32[M, M]`` (sample mean and covariance of the valid
returns), ``risk: float32[]`` (daily volatility of the current weights, ``sqrt(w' C w)``),
``expected_return: float32[]`` (``w' mu``) and ``value: float32[]`` (cash plus holdings at the
latest prices).

Utilities are plain differentiable functions of the weights (:func:`mean_variance`,
:func:`sharpe`); :func:`rebalance` maximises one with optax under the budget and no-short
constraints, either by projected steps onto the simplex (:func:`project_simplex`, risky weights
plus cash sum to one, all non-negative) or through a softmax parameterisation.
:func:`backtest` commits every day's prices and every rebalance to a :class:`~mmsb_jax.Bus`;
:func:`replay_backtest` rebuilds the equity curve from the log alone, bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from mmsb_jax.core.delta import Delta
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import DomainError, OptionError, ShapeError

__all__ = [
    "OBJECTIVES",
    "BacktestConfig",
    "BacktestResult",
    "RebalanceResult",
    "backtest",
    "gbm_paths",
    "mean_variance",
    "portfolio_graph",
    "portfolio_schema",
    "portfolio_value",
    "project_simplex",
    "rebalance",
    "replay_backtest",
    "sharpe",
]

OBJECTIVES: tuple[str, ...] = ("sharpe", "mean_variance", "equal")
"""Rebalancing objectives; ``"equal"`` is the equal-weight baseline (no optimisation)."""

METHODS: tuple[str, ...] = ("projected", "softmax")
TRADING_DAYS = 252


# -- price paths -------------------------------------------------------------------------------

def gbm_paths(key: jax.Array, s0: Any, mu: Any, cov: Any, num_days: int, *,
              dt: float = 1.0 / TRADING_DAYS) -> jax.Array:
    """Correlated geometric Brownian motion, deterministic for a key.

    ``log S[t+1] = log S[t] + (mu - diag(cov) / 2) dt + chol(cov) z sqrt(dt)``, ``z ~ N(0, I)``.

    Args:
      key: PRNG key.
      s0: ``[M]`` initial prices (> 0).
      mu: ``[M]`` drifts per unit time (annual with the default ``dt``).
      cov: ``[M, M]`` covariance of the log returns per unit time (symmetric positive definite).
      num_days: ``T`` steps.
      dt: step length in units of time.

    Returns:
      ``float32[T + 1, M]`` prices, row 0 being ``s0``.

    Raises:
      ShapeError: inconsistent shapes. DomainError: non-positive prices, a covariance that is
      not symmetric positive definite, ``T < 1`` or ``dt <= 0``.
    """
    s0 = np.asarray(s0, np.float64)
    mu = np.asarray(mu, np.float64)
    cov = np.asarray(cov, np.float64)
    m = s0.shape[0] if s0.ndim == 1 else -1
    if s0.ndim != 1 or mu.shape != (m,) or cov.shape != (m, m):
        raise ShapeError(f"expected s0 [M], mu [M], cov [M, M]; got {s0.shape}, {mu.shape}, "
                         f"{cov.shape}")
    if np.any(~np.isfinite(s0)) or np.any(s0 <= 0):
        raise DomainError("initial prices must be finite and > 0")
    if int(num_days) < 1 or not dt > 0:
        raise DomainError(f"need num_days >= 1 and dt > 0, got {num_days}, {dt}")
    if not np.allclose(cov, cov.T) or np.any(~np.isfinite(cov)):
        raise DomainError("cov must be a finite symmetric matrix")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as e:
        raise DomainError("cov is not positive definite") from e
    return _gbm(key, jnp.asarray(s0, jnp.float32), jnp.asarray(mu, jnp.float32),
                jnp.asarray(chol, jnp.float32), int(num_days), float(dt))


@functools.partial(jax.jit, static_argnums=(4, 5))
def _gbm(key, s0, mu, chol, num_days, dt):
    z = jax.random.normal(key, (num_days, s0.shape[0]), jnp.float32)
    drift = (mu - 0.5 * jnp.sum(chol * chol, axis=1)) * dt
    steps = drift + (z @ chol.T) * jnp.sqrt(jnp.float32(dt))
    logs = jnp.log(s0) + jnp.concatenate([jnp.zeros_like(s0)[None], jnp.cumsum(steps, 0)])
    return jnp.exp(logs)


# -- pages and derived risk ------------------------------------------------------------------------

def portfolio_schema(num_assets: int, window: int) -> Schema:
    """Base pages of a portfolio of ``M = num_assets`` assets with a ``W = window`` (see above).

    Raises:
      OptionError: ``num_assets < 1`` or ``window < 2``.
    """
    m, w = int(num_assets), int(window)
    if m < 1 or w < 2:
        raise OptionError(f"need num_assets >= 1 and window >= 2, got {num_assets}, {window}")
    return Schema([PageSpec("prices", (w + 1, m), "float32"), PageSpec("day", (), "int32"),
                   PageSpec("weights", (m,), "float32"), PageSpec("shares", (m,), "float32"),
                   PageSpec("cash", (), "float32")])


def _chronological(prices: jax.Array, day: jax.Array) -> jax.Array:
    """Ring buffer ``[W + 1, M]`` -> oldest-first rows (zeros where nothing was written)."""
    slots = prices.shape[0]
    return jnp.roll(prices, -(day % slots), axis=0)


def _returns(prices: jax.Array, day: jax.Array) -> jax.Array:
    ordered = _chronological(prices, day)
    prev, cur = ordered[:-1], ordered[1:]
    ok = (prev > 0) & (cur > 0)
    return jnp.where(ok, jnp.log(jnp.where(ok, cur, 1.0) / jnp.where(ok, prev, 1.0)), 0.0)


def _valid_rows(prices: jax.Array, day: jax.Array) -> jax.Array:
    ordered = _chronological(prices, day)
    return jnp.all((ordered[:-1] > 0) & (ordered[1:] > 0), axis=1)


def _mean(returns: jax.Array, prices: jax.Array, day: jax.Array) -> jax.Array:
    valid = _valid_rows(prices, day)
    n = jnp.maximum(jnp.sum(valid), 1).astype(returns.dtype)
    return jnp.sum(jnp.where(valid[:, None], returns, 0.0), axis=0) / n


def _cov(returns: jax.Array, mean: jax.Array, prices: jax.Array, day: jax.Array) -> jax.Array:
    valid = _valid_rows(prices, day)
    n = jnp.sum(valid).astype(returns.dtype)
    centred = jnp.where(valid[:, None], returns - mean, 0.0)
    return centred.T @ centred / jnp.maximum(n - 1.0, 1.0)


def portfolio_value(prices: jax.Array, day: jax.Array, shares: jax.Array,
                    cash: jax.Array) -> jax.Array:
    """``cash + shares . latest prices`` (``float32[]``).

    Args:
      prices: ``float32[W + 1, M]`` ring buffer.
      day: ``int32[]`` days recorded (the latest price is row ``(day - 1) % (W + 1)``).
      shares: ``float32[M]``.
      cash: ``float32[]``.
    """
    latest = prices[(day - 1) % prices.shape[0]]
    return cash + jnp.dot(shares, jnp.where(day > 0, latest, 0.0))


def portfolio_graph(num_assets: int, window: int) -> Graph:
    """:func:`portfolio_schema` plus the derived pages ``returns, mean, cov, risk,
    expected_return, value`` (see the module docstring)."""
    g = Graph(portfolio_schema(num_assets, window))
    g = g.derive("returns", ("prices", "day"), _returns)
    g = g.derive("mean", ("returns", "prices", "day"), _mean)
    g = g.derive("cov", ("returns", "mean", "prices", "day"), _cov)
    g = g.derive("risk", ("weights", "cov"), lambda w, c: jnp.sqrt(jnp.maximum(w @ c @ w, 0.0)))
    g = g.derive("expected_return", ("weights", "mean"), jnp.dot)
    return g.derive("value", ("prices", "day", "shares", "cash"), portfolio_value)


_portfolio_graph = functools.lru_cache(maxsize=32)(portfolio_graph)


# -- utilities and constraints ---------------------------------------------------------------------

def mean_variance(weights: jax.Array, mean: jax.Array, cov: jax.Array,
                  risk_aversion: float | jax.Array = 1.0) -> jax.Array:
    """Mean-variance utility ``w' mu - (lambda / 2) w' C w`` (cash earns 0, no risk).

    Args:
      weights: ``[M]`` risky weights.
      mean: ``[M]`` expected returns per period.
      cov: ``[M, M]`` covariance per period.
      risk_aversion: ``lambda >= 0``.

    Returns:
      ``float32[]``; differentiable in every argument.
    """
    return weights @ mean - 0.5 * risk_aversion * (weights @ cov @ weights)


def sharpe(weights: jax.Array, mean: jax.Array, cov: jax.Array,
           eps: float = 1e-12) -> jax.Array:
    """Sharpe ratio ``w' mu / sqrt(w' C w + eps)`` per period (risk-free rate 0).

    Args:
      weights: ``[M]`` risky weights.
      mean: ``[M]`` expected returns per period.
      cov: ``[M, M]`` covariance per period.
      eps: keeps the ratio finite (and differentiable) at zero risk.

    Returns:
      ``float32[]``; differentiable.
    """
    return weights @ mean / jnp.sqrt(weights @ cov @ weights + eps)


def project_simplex(v: jax.Array, total: float = 1.0) -> jax.Array:
    """Euclidean projection onto ``{x : x >= 0, sum(x) = total}`` (Duchi et al., 2008).

    Sort-based, exact, ``O(n log n)``; traceable and differentiable almost everywhere.

    Args:
      v: ``[n]`` any real vector.
      total: the simplex's sum, > 0.

    Returns:
      ``[n]``: the closest point of the simplex to ``v``.
    """
    n = v.shape[-1]
    u = jnp.sort(v)[::-1]
    css = jnp.cumsum(u) - total
    k = jnp.arange(1, n + 1, dtype=v.dtype)
    cond = u - css / k > 0
    rho = jnp.max(jnp.where(cond, jnp.arange(n), -1))
    theta = css[rho] / (rho + 1).astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


class RebalanceResult(NamedTuple):
    """What :func:`rebalance` returns.

    Attributes:
      weights: ``float32[M]`` risky weights (non-negative; with the cash weight they sum to 1).
      cash: ``float32[]`` cash weight (0 when cash is not allowed).
      utility: ``float32[]`` the objective at ``weights``.
      history: ``float32[steps]`` the objective after each optimiser step.
    """

    weights: jax.Array
    cash: jax.Array
    utility: jax.Array
    history: jax.Array


def _objective(name: str, w: jax.Array, mean: jax.Array, cov: jax.Array,
               risk_aversion: jax.Array) -> jax.Array:
    if name == "sharpe":
        return sharpe(w, mean, cov)
    return mean_variance(w, mean, cov, risk_aversion)


def _rebalance_impl(mean, cov, w0, risk_aversion, learning_rate, *, objective, method, steps,
                   allow_cash):
    m = mean.shape[0]
    if allow_cash:
        full0 = jnp.concatenate([w0, jnp.maximum(1.0 - jnp.sum(w0), 0.0)[None]])
    else:
        full0 = w0
    full0 = project_simplex(full0)
    tx = optax.adam(learning_rate)

    def weights_of(params):
        full = jax.nn.softmax(params) if method == "softmax" else params
        return full[:m], full

    def loss(params):
        w, _ = weights_of(params)
        return -_objective(objective, w, mean, cov, risk_aversion)

    params0 = jnp.log(jnp.maximum(full0, 1e-6)) if method == "softmax" else full0

    def step(carry, _):
        params, state = carry
        grads = jax.grad(loss)(params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        if method == "projected":
            params = project_simplex(params)
        return (params, state), -loss(params)

    (params, _), history = lax.scan(step, (params0, tx.init(params0)), None, length=steps)
    w, full = weights_of(params)
    cash = full[m] if allow_cash else jnp.zeros((), w.dtype)
    return RebalanceResult(w, cash, -loss(params), history)


_rebalance = jax.jit(_rebalance_impl,
                     static_argnames=("objective", "method", "steps", "allow_cash"))


def rebalance(mean: Any, cov: Any, weights: Any = None, *, objective: str = "sharpe",
              risk_aversion: float = 1.0, method: str = "projected", steps: int = 200,
              learning_rate: float = 0.02, allow_cash: bool = True) -> RebalanceResult:
    """Maximise a utility of the weights by gradient steps (optax Adam) under constraints.

    Budget and no-short: risky weights and the cash weight are non-negative and sum to one
    (without cash, the risky weights alone do). ``method="projected"`` takes an Adam step on the
    weights and projects them back onto the simplex (:func:`project_simplex`);
    ``method="softmax"`` optimises unconstrained logits ``z`` with ``w = softmax(z)``.

    Args:
      mean: ``[M]`` expected returns per period (e.g. the ``mean`` page).
      cov: ``[M, M]`` covariance per period (e.g. the ``cov`` page).
      weights: ``[M]`` starting weights (default equal weights).
      objective: ``"sharpe"``, ``"mean_variance"`` or ``"equal"`` (returns equal weights).
      risk_aversion: ``lambda`` of :func:`mean_variance`.
      method: ``"projected"`` or ``"softmax"``.
      steps: optimiser steps (static).
      learning_rate: Adam step size.
      allow_cash: include a cash position (0 return, 0 risk).

    Returns:
      :class:`RebalanceResult`.

    Raises:
      OptionError: unknown objective or method, ``steps < 1``, non-positive learning rate.
      ShapeError: inconsistent shapes. DomainError: non-finite inputs.
    """
    if objective not in OBJECTIVES:
        raise OptionError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if method not in METHODS:
        raise OptionError(f"method must be one of {METHODS}, got {method!r}")
    if int(steps) < 1 or not learning_rate > 0:
        raise OptionError(f"need steps >= 1 and learning_rate > 0, got {steps}, "
                          f"{learning_rate}")
    mean = jnp.asarray(mean, jnp.float32)
    cov = jnp.asarray(cov, jnp.float32)
    m = mean.shape[0] if mean.ndim == 1 else -1
    if mean.ndim != 1 or cov.shape != (m, m):
        raise ShapeError(f"expected mean [M] and cov [M, M], got {mean.shape} and {cov.shape}")
    w0 = jnp.full((m,), 1.0 / m, jnp.float32) if weights is None else jnp.asarray(
        weights, jnp.float32)
    if w0.shape != (m,):
        raise ShapeError(f"weights must be [{m}], got {w0.shape}")
    if not (bool(jnp.all(jnp.isfinite(mean))) and bool(jnp.all(jnp.isfinite(cov)))
            and bool(jnp.all(jnp.isfinite(w0)))):
        raise DomainError("mean, cov and weights must be finite")
    if objective == "equal":
        w = jnp.full((m,), 1.0 / m, jnp.float32)
        u = sharpe(w, mean, cov)
        return RebalanceResult(w, jnp.zeros((), jnp.float32), u, u[None])
    return _rebalance(mean, cov, w0, jnp.float32(risk_aversion), jnp.float32(learning_rate),
                      objective=objective, method=method, steps=int(steps),
                      allow_cash=bool(allow_cash))


# -- backtest -------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class BacktestConfig:
    """Parameters of :func:`backtest`.

    Attributes:
      window: ``W`` daily returns used to estimate ``mean`` and ``cov``.
      rebalance_every: trading days between rebalances (the first is on day ``W``).
      objective: one of :data:`OBJECTIVES`.
      risk_aversion: ``lambda`` for ``"mean_variance"``.
      method: ``"projected"`` or ``"softmax"``.
      steps: optimiser steps per rebalance.
      learning_rate: Adam step size.
      fee: proportional transaction cost on the traded value.
      initial_cash: starting capital.
      allow_cash: allow a cash position.
    """

    window: int = 60
    rebalance_every: int = 5
    objective: str = "sharpe"
    risk_aversion: float = 5.0
    method: str = "projected"
    steps: int = 200
    learning_rate: float = 0.02
    fee: float = 0.0005
    initial_cash: float = 1.0
    allow_cash: bool = True

    def __post_init__(self) -> None:
        if int(self.window) < 2 or int(self.rebalance_every) < 1:
            raise OptionError("need window >= 2 and rebalance_every >= 1")
        if self.objective not in OBJECTIVES:
            raise OptionError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.method not in METHODS:
            raise OptionError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= float(self.fee) < 1.0:
            raise OptionError(f"fee must be in [0, 1), got {self.fee}")
        if not float(self.initial_cash) > 0:
            raise OptionError(f"initial_cash must be > 0, got {self.initial_cash}")


class BacktestResult(NamedTuple):
    """What :func:`backtest` and :func:`replay_backtest` return.

    Attributes:
      equity: ``float32[T + 1]`` portfolio value at the end of each day (after trading).
      weights: ``float32[T + 1, M]`` target weights in force at the end of each day.
      rebalance_days: ``int64[R]`` days on which the portfolio was rebalanced.
      turnover: ``float32[T + 1]`` traded value each day.
      seq: seq of the last commit.
      seconds: wall time of the run (or of the replay).
    """

    equity: np.ndarray
    weights: np.ndarray
    rebalance_days: np.ndarray
    turnover: np.ndarray
    seq: int
    seconds: float


def _price_deltas(day: int, prices: np.ndarray, slots: int) -> list[Delta]:
    return [Delta.rows("prices", np.array([day % slots], np.int32), prices[None]),
            Delta.full("day", np.ones((), np.int32), op="add")]


@jax.jit
def _trade(prices, day, shares, cash, weights, fee):
    """Target weights -> ``(shares', cash')`` at the latest prices, after the fee."""
    latest = prices[(day - 1) % prices.shape[0]]
    value = cash + jnp.dot(shares, latest)
    new_shares = weights * value / latest
    traded = jnp.sum(jnp.abs(new_shares - shares) * latest)
    new_cash = value - jnp.dot(new_shares, latest) - fee * traded
    return new_shares, new_cash


@jax.jit
def _traded(prices, day, shares, new_shares):
    """Value traded to go from ``shares`` to ``new_shares`` at the latest prices."""
    latest = prices[(day - 1) % prices.shape[0]]
    return jnp.sum(jnp.abs(new_shares - shares) * latest)


@jax.jit
def _value_of(pages: dict[str, jax.Array]) -> jax.Array:
    return portfolio_value(pages["prices"], pages["day"], pages["shares"], pages["cash"])


def _derive(graph: Graph, base: State) -> State:
    full = init_state(graph.schema).with_pages(dict(base.pages), dict(base.epochs))
    return propagate(graph, full, graph.base.names)


def backtest(directory: str | os.PathLike, prices: Any, config: BacktestConfig | None = None,
             *, sync: str = "batch") -> BacktestResult:
    """Run a rebalancing strategy over a price path, committing everything to a Bus.

    Day ``d`` commits one transaction with its prices (a row delta on the ``prices`` ring and
    ``day += 1``). On rebalance days the derived ``mean`` and ``cov`` of the last ``W``
    returns feed :func:`rebalance`; the new ``weights``, ``shares`` and ``cash`` (after a
    proportional fee on the traded value) are committed as a second transaction. The equity of
    day ``d`` is the derived ``value`` after that day's commits.

    Args:
      directory: a new bus directory (it must not hold a log yet).
      prices: ``[T + 1, M]`` prices (e.g. from :func:`gbm_paths`), all > 0.
      config: :class:`BacktestConfig` (default: Sharpe, projected, W = 60, every 5 days).
      sync: the bus sync policy.

    Returns:
      :class:`BacktestResult`.

    Raises:
      ShapeError: ``prices`` is not ``[T + 1, M]`` with ``T + 1 > W``. DomainError:
      non-positive or non-finite prices. StoreError: ``directory`` already holds a log.
    """
    from mmsb_jax.errors import StoreError
    from mmsb_jax.runtime.bus import Bus

    config = BacktestConfig() if config is None else config
    prices = np.asarray(prices, np.float32)
    if prices.ndim != 2 or prices.shape[0] <= config.window:
        raise ShapeError(f"prices must be [T + 1, M] with T + 1 > window={config.window}, got "
                         f"{prices.shape}")
    if np.any(~np.isfinite(prices)) or np.any(prices <= 0):
        raise DomainError("prices must be finite and > 0")
    days, m = prices.shape
    graph = _portfolio_graph(m, config.window)
    slots = config.window + 1
    t0 = time.perf_counter()
    with Bus.open(directory, graph.base, sync=sync) as bus:
        if bus.seq != 0:
            raise StoreError(f"{directory} already holds a backtest log (seq {bus.seq})")
        bus.commit([Delta.full("cash", np.float32(config.initial_cash))])
        equity = np.zeros(days, np.float32)
        weights = np.zeros((days, m), np.float32)
        turnover = np.zeros(days, np.float32)
        rebalanced = []
        current = jnp.zeros((m,), jnp.float32)
        for d in range(days):
            bus.commit(_price_deltas(d, prices[d], slots))
            if d >= config.window and (d - config.window) % config.rebalance_every == 0:
                derived = _derive(graph, bus.state)
                start = current if float(jnp.sum(current)) > 0 else None
                res = rebalance(derived.pages["mean"], derived.pages["cov"], start,
                                objective=config.objective, risk_aversion=config.risk_aversion,
                                method=config.method, steps=config.steps,
                                learning_rate=config.learning_rate,
                                allow_cash=config.allow_cash)
                p = bus.state.pages
                new_shares, new_cash = _trade(p["prices"], p["day"], p["shares"], p["cash"],
                                              res.weights, jnp.float32(config.fee))
                traded = _traded(p["prices"], p["day"], p["shares"], new_shares)
                bus.commit([Delta.full("weights", res.weights),
                            Delta.full("shares", new_shares), Delta.full("cash", new_cash)])
                current = res.weights
                turnover[d] = float(traded)
                rebalanced.append(d)
            equity[d] = float(_value_of(dict(bus.state.pages)))
            weights[d] = np.asarray(bus.state.pages["weights"])
        seq = bus.seq
    return BacktestResult(equity, weights, np.asarray(rebalanced, np.int64), turnover, seq,
                          time.perf_counter() - t0)


def _transactions(directory: str | os.PathLike) -> Iterator[Any]:
    from mmsb_jax.store.tlog import TLog

    with TLog.open(os.path.join(directory, "log"), readonly=True) as log:
        yield log.schema
        yield from log.transactions()


def replay_backtest(directory: str | os.PathLike) -> BacktestResult:
    """Rebuild a backtest's equity curve, weights and turnover from its bus log alone.

    Each logged transaction is applied exactly as the Bus committed it
    (:func:`mmsb_jax.store.apply_transaction`); a day ends right before the next price
    transaction. The result equals :func:`backtest`'s bit for bit (``np.array_equal``).

    Args:
      directory: the backtest's bus directory.

    Returns:
      :class:`BacktestResult` (``seconds`` is the replay time).
    """
    from mmsb_jax.core.transaction import apply_transaction

    t0 = time.perf_counter()
    txns = _transactions(directory)
    schema = next(txns)
    state = init_state(schema)
    m = schema["weights"].shape[0]
    equity: list[float] = []
    weights: list[np.ndarray] = []
    turnover: list[float] = []
    rebalanced: list[int] = []
    seq = 0
    started = False
    for t in txns:
        pages = {d.page for d in t.deltas}
        if "prices" in pages:
            if started:
                equity.append(float(_value_of(dict(state.pages))))
                weights.append(np.asarray(state.pages["weights"]))
            started = True
            turnover.append(0.0)
        elif "shares" in pages:
            p = state.pages
            new_shares = next(d.values for d in t.deltas if d.page == "shares")
            turnover[-1] = float(_traded(p["prices"], p["day"], p["shares"],
                                         jnp.asarray(new_shares)))
            rebalanced.append(len(turnover) - 1)
        state = apply_transaction(state, t.deltas)
        seq = t.seq
    if started:
        equity.append(float(_value_of(dict(state.pages))))
        weights.append(np.asarray(state.pages["weights"]))
    return BacktestResult(np.asarray(equity, np.float32),
                          np.asarray(weights, np.float32).reshape(-1, m),
                          np.asarray(rebalanced, np.int64), np.asarray(turnover, np.float32),
                          seq, time.perf_counter() - t0)
