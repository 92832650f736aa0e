"""Structural inference: dependency edges between pages from a log's co-change statistics.

The input is a change matrix ``changes: bool[T, P]`` — ``changes[t, p]`` says that commit ``t``
changed page ``p`` — built from a list of per-commit page sets (:func:`changes_from_commits`)
or read from a transaction log (:func:`changes_from_log`).

Co-change statistics (:func:`cochange_stats`): how often each page changes, how often two
change together, the conditional probability ``P(v changes | u changes)``, lift and pointwise
mutual information.

Two estimators of the dependency edges ``u -> v`` ("``v`` is computed from ``u``"):

* :func:`cochange_dependencies` — the textbook baseline: ``u`` reaches ``v`` when a co-change
  statistic exceeds a threshold, oriented from the rarer to the more frequently changed page,
  then :func:`transitive_reduction`. Exact on clean logs, but a page that also changes by
  accident (noise) dilutes ``P(v | u)``, and pages deep in the graph share most of their
  ancestors' commits, so pairwise statistics confuse siblings with descendants.
* :func:`infer_dependencies` — fits the *single-source cascade* model that generates such logs:
  each commit starts at one source page ``s`` (with probability ``π[s]``) and changes ``s`` and
  everything downstream of it (``cascade[s, v]``); each of those changes is missing from the log
  with probability ``drop_rate`` and every other page changes spuriously with probability
  ``spurious_rate``. The log likelihood is that of a mixture with one component per page. It
  is fitted in two stages, all in one jitted function:

  1. *initialisation* — a free Bernoulli mixture (EM) started from the co-change
     statistics: component ``s`` starts at ``P(v | s)`` over the pages ``v`` that change more
     often than ``s`` (under the model every descendant changes strictly more often than its
     ancestor); its rounded means after ``init_steps`` EM steps (several snapshots) are the
     starting cascade matrices;
  2. *structure search* — from each start (vmapped), hill climbing on the exact marginal
     likelihood of the parametric model: the gain of flipping any one entry of ``cascade`` is
     computed for all entries at once (two ``[P, T] @ [T, P]`` products), the best flip is
     applied, the rates and source weights are re-estimated (an EM step), until no flip
     gains. The start whose climb ends with the highest likelihood wins.

  The reachability is the transitive closure of the fitted cascades (pages that reach each
  other both ways get no relation: their direction is not identified), and the dependency
  edges are its transitive reduction — the direct edges of a graph are only identifiable up to
  transitivity, because a commit changes all descendants, not just children.

Everything is jittable; shapes are fixed by ``[T, P]``, so logs of one size share a compilation.

>>> import numpy as np
>>> log = [{"a", "b", "c"}, {"b", "c"}, {"c"}] * 20      # a -> b -> c, no noise
>>> changes, names = changes_from_commits(log, pages=["a", "b", "c"])
>>> infer_dependencies(changes).edges.astype(int).tolist()
[[0, 1, 0], [0, 0, 1], [0, 0, 0]]
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core import semiring as sr
from mmsb_jax.errors import DTypeError, InvalidProblemError, ShapeError, UnknownPageError

__all__ = [
    "CoChange",
    "DependencyFit",
    "changes_from_commits",
    "changes_from_log",
    "cochange_dependencies",
    "cochange_stats",
    "edge_precision_recall",
    "infer_dependencies",
    "transitive_reduction",
]

_PROB_CLIP = 1e-3  # free-mixture means are kept in [clip, 1 - clip]
_RATE_RANGE = (1e-4, 0.45)  # drop/spurious rates stay below 1/2: a change is evidence
_GAIN_TOL = 1e-4  # a flip must raise the log likelihood by more than this (nats)


class CoChange(NamedTuple):
    """Co-change statistics of a change matrix ``[T, P]`` (:func:`cochange_stats`).

    Attributes:
      num_commits: ``int32[]`` ``T``.
      counts: ``int32[P]`` commits that changed each page.
      joint: ``int32[P, P]`` commits that changed both pages (``joint[u, u] = counts[u]``).
      conditional: ``float32[P, P]`` ``[u, v] = P(v changed | u changed)``; ``0`` where ``u``
        never changed.
      lift: ``float32[P, P]`` ``P(u, v) / (P(u) P(v))``; ``0`` where the pair never co-changed.
      pmi: ``float32[P, P]`` ``log(lift)``; ``-inf`` where the pair never co-changed.
    """

    num_commits: jax.Array  # int32[]
    counts: jax.Array  # int32[P]
    joint: jax.Array  # int32[P, P]
    conditional: jax.Array  # float32[P, P]
    lift: jax.Array  # float32[P, P]
    pmi: jax.Array  # float32[P, P]


class DependencyFit(NamedTuple):
    """Result of :func:`infer_dependencies`.

    Attributes:
      edges: ``bool[P, P]`` the inferred direct dependencies ``u -> v`` (a DAG, transitively
        reduced).
      reachability: ``bool[P, P]`` ``u`` reaches ``v`` (strict; the closure of ``edges``).
      cascade: ``bool[P, P]`` the fitted model: a commit that starts at ``s`` changes ``v``
        (reflexive; not forced to be transitive).
      drop_rate: ``float32[]`` estimated probability that a cascaded change is missing.
      spurious_rate: ``float32[]`` estimated probability of a change outside the cascade.
      source_weights: ``float32[P]`` estimated probability that a commit starts at each page.
      sources: ``int32[T]`` the most likely source page of each commit.
      log_likelihood: ``float32[]`` the model's log likelihood of the log.
      flips: ``int32[]`` structure-search moves applied after initialisation.
      init_steps: ``int32[]`` free-mixture EM steps of the start that won.
    """

    edges: jax.Array  # bool[P, P]
    reachability: jax.Array  # bool[P, P]
    cascade: jax.Array  # bool[P, P]
    drop_rate: jax.Array  # float32[]
    spurious_rate: jax.Array  # float32[]
    source_weights: jax.Array  # float32[P]
    sources: jax.Array  # int32[T]
    log_likelihood: jax.Array  # float32[]
    flips: jax.Array  # int32[]
    init_steps: jax.Array  # int32[]


# -- building change matrices ----------------------------------------------------------------

def changes_from_commits(commits: Iterable[Iterable[str]], pages: Sequence[str] | None = None
                         ) -> tuple[np.ndarray, tuple[str, ...]]:
    """Turn per-commit sets of changed page names into a change matrix.

    Args:
      commits: one iterable of page names per commit, in commit order.
      pages: the page order (columns); default: every page seen, sorted by name.

    Returns:
      ``(changes: bool[T, P], names: tuple of P page names)``.

    Raises:
      UnknownPageError: a commit names a page that is not in ``pages``.
      InvalidProblemError: ``pages`` repeats a name, or a commit is a bare string.

    >>> changes_from_commits([{"x"}, {"x", "y"}])[0].astype(int).tolist()
    [[1, 0], [1, 1]]
    """
    sets = []
    for commit in commits:
        if isinstance(commit, str):
            raise InvalidProblemError(f"a commit is a collection of page names, got the string "
                                      f"{commit!r}")
        sets.append({str(p) for p in commit})
    if pages is None:
        names = tuple(sorted(set().union(*sets))) if sets else ()
    else:
        names = tuple(str(p) for p in pages)
        if len(set(names)) != len(names):
            raise InvalidProblemError("pages must not repeat a name")
    column = {name: i for i, name in enumerate(names)}
    out = np.zeros((len(sets), len(names)), bool)
    for t, changed in enumerate(sets):
        for name in changed:
            if name not in column:
                raise UnknownPageError(name, names)
            out[t, column[name]] = True
    return out, names


def changes_from_log(log: str | os.PathLike | Iterable[Any], pages: Sequence[str] | None = None,
                     *, include_derived: bool = True) -> tuple[np.ndarray, tuple[str, ...]]:
    """The change matrix of a transaction log (``mm.TLog`` directory, bus directory, or
    transactions).

    A commit changes the pages its deltas write and, with ``include_derived``, the derived
    pages it recomputed (the log's DERIVED record).

    Args:
      log: a log directory, a bus directory (its ``log/`` is read), or an iterable of
        transactions (objects with ``deltas`` — each with a ``page`` — and ``derived``).
      pages: the page order; default: every page seen, sorted by name.
      include_derived: count recomputed derived pages as changed.

    Returns:
      ``(changes: bool[T, P], names)``, one row per committed transaction.

    Raises:
      UnknownPageError: a transaction touches a page not in ``pages``.
      StoreError, FormatError: the log cannot be read (from :mod:`mmsb_jax.store`).
    """
    if isinstance(log, str | os.PathLike):
        from mmsb_jax.store.tlog import read_transactions

        path = Path(log)
        if (path / "log").is_dir():
            path = path / "log"
        transactions: Iterable[Any] = read_transactions(path)
    else:
        transactions = log
    commits = []
    for txn in transactions:
        changed = {d.page for d in txn.deltas}
        if include_derived:
            changed.update(getattr(txn, "derived", ()))
        commits.append(changed)
    return changes_from_commits(commits, pages)


def _check_changes(changes: Any) -> jax.Array:
    changes = jnp.asarray(changes)
    if changes.dtype != jnp.bool_:
        raise DTypeError(f"changes must be bool[T, P], got {changes.dtype}")
    if changes.ndim != 2 or changes.shape[0] < 1 or changes.shape[1] < 1:
        raise ShapeError(f"changes must be bool[T, P] with T, P >= 1, got "
                         f"{tuple(changes.shape)}")
    return changes


# -- statistics ------------------------------------------------------------------------------

def _stats(changes: jax.Array) -> CoChange:
    x = changes.astype(jnp.float32)
    num = jnp.float32(changes.shape[0])
    counts = jnp.sum(x, axis=0)
    joint = x.T @ x
    conditional = joint / jnp.maximum(counts[:, None], 1.0)
    lift = joint * num / jnp.maximum(counts[:, None] * counts[None, :], 1.0)
    pmi = jnp.where(joint > 0, jnp.log(jnp.where(joint > 0, lift, 1.0)), -jnp.inf)
    return CoChange(jnp.int32(changes.shape[0]), counts.astype(jnp.int32),
                    joint.astype(jnp.int32), conditional, lift, pmi)


@jax.jit
def _stats_jit(changes: jax.Array) -> CoChange:
    return _stats(changes)


def cochange_stats(changes: Any) -> CoChange:
    """Co-change counts, conditional probabilities, lift and PMI of a change matrix.

    Args:
      changes: ``bool[T, P]``.

    Returns:
      :class:`CoChange`.

    Raises:
      DTypeError: not bool.
      ShapeError: not ``[T, P]`` with ``T, P >= 1``.

    >>> s = cochange_stats(jnp.array([[True, True], [True, False]]))
    >>> s.conditional.tolist()
    [[1.0, 0.5], [1.0, 1.0]]
    """
    return _stats_jit(_check_changes(changes))


# -- relations -------------------------------------------------------------------------------

def _reduce(reach: jax.Array) -> tuple[jax.Array, jax.Array]:
    plus = sr.matmul(sr.BOOLEAN, reach, sr.closure(sr.BOOLEAN, reach))
    order = plus & ~plus.T  # strict partial order: pairs inside a cycle are dropped
    covered = sr.matmul(sr.BOOLEAN, order, order)
    return order & ~covered, order


def transitive_reduction(reach: Any) -> jax.Array:
    """The direct edges of a relation: ``u -> v`` with no ``u -> w -> v`` path around it.

    The relation is first closed transitively; pairs that reach each other both ways (a cycle)
    get no edge, so the result is always a DAG. On a DAG it equals
    ``networkx.transitive_reduction``.

    Args:
      reach: ``bool[N, N]`` any relation (edges or reachability); the diagonal is ignored.

    Returns:
      ``bool[N, N]``.

    Raises:
      DTypeError: not bool.
      ShapeError: not square.

    >>> r = jnp.array([[False, True, True], [False, False, True], [False, False, False]])
    >>> transitive_reduction(r).astype(int).tolist()
    [[0, 1, 0], [0, 0, 1], [0, 0, 0]]
    """
    reach = jnp.asarray(reach)
    if reach.dtype != jnp.bool_:
        raise DTypeError(f"a relation must be bool[N, N], got {reach.dtype}")
    if reach.ndim != 2 or reach.shape[0] != reach.shape[1]:
        raise ShapeError(f"a relation must be square bool[N, N], got {tuple(reach.shape)}")
    return _reduce(reach)[0]


_STATISTICS = ("conditional", "lift", "pmi")


@functools.partial(jax.jit, static_argnums=(1,))
def _cochange_dependencies_jit(changes: jax.Array, statistic: str,
                               threshold: jax.Array) -> jax.Array:
    x = changes.astype(jnp.float32)
    counts = jnp.sum(x, axis=0)
    joint = x.T @ x
    # Compare in multiplied-out form: counts are exact integers in float32, while a division
    # may be computed through a reciprocal and land one ulp below an exact ratio of 1.
    if statistic == "conditional":
        related = joint >= threshold * counts[:, None]
    else:
        factor = threshold if statistic == "lift" else jnp.exp(threshold)
        related = joint * changes.shape[0] >= factor * counts[:, None] * counts[None, :]
    # P(v | u) and P(u | v) can both pass a threshold, and lift and PMI are symmetric: the
    # change frequency gives the direction (upstream pages change less often; ties: index).
    index = jnp.arange(counts.shape[0])
    upstream = (counts[:, None] < counts[None, :]) | (
        (counts[:, None] == counts[None, :]) & (index[:, None] < index[None, :]))
    return _reduce(related & (joint > 0) & upstream)[0]


def cochange_dependencies(changes: Any, *, statistic: str = "conditional",
                          threshold: float = 0.9) -> jax.Array:
    """Baseline: dependency edges from one thresholded co-change statistic.

    ``u`` is taken to reach ``v`` when ``statistic[u, v] >= threshold`` and ``u`` changes less
    often than ``v`` (upstream pages change less often: every commit that changes ``u`` also
    changes ``v``); the edges are the :func:`transitive_reduction` of that relation. Exact on
    noise-free cascade logs with ``conditional`` and ``threshold = 1``; see the module docstring
    for why noise breaks it, and :func:`infer_dependencies` for the robust estimator.

    Args:
      changes: ``bool[T, P]``.
      statistic: ``"conditional"`` (``P(v | u)``), ``"lift"`` or ``"pmi"``.
      threshold: the cut-off for ``statistic``.

    Returns:
      ``bool[P, P]`` edges ``u -> v``.

    Raises:
      DTypeError, ShapeError: bad ``changes``.
      InvalidProblemError: an unknown statistic.

    >>> c = jnp.array([[True, True], [False, True], [True, True]])
    >>> cochange_dependencies(c).astype(int).tolist()
    [[0, 1], [0, 0]]
    """
    changes = _check_changes(changes)
    if statistic not in _STATISTICS:
        raise InvalidProblemError(f"statistic must be one of {_STATISTICS}, got {statistic!r}")
    return _cochange_dependencies_jit(changes, statistic, jnp.float32(threshold))


# -- the cascade model -----------------------------------------------------------------------

def _log_likelihoods(x: jax.Array, log_on: jax.Array, log_off: jax.Array,
                     log_pi: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Total log likelihood and responsibilities ``[T, P]`` of a product-Bernoulli mixture."""
    per = x @ log_on.T + (1.0 - x) @ log_off.T + log_pi[None, :]  # [T, S]
    total = jax.nn.logsumexp(per, axis=1)
    return jnp.sum(total), jnp.exp(per - total[:, None])


def _init_cascades(x: jax.Array, checkpoints: tuple[int, ...]) -> jax.Array:
    """``bool[K, P, P]``: the rounded free-mixture means after each number of EM steps."""
    num_commits, num_pages = x.shape
    counts = jnp.sum(x, axis=0)
    conditional = (x.T @ x) / jnp.maximum(counts[:, None], 1.0)
    eye = jnp.eye(num_pages, dtype=bool)
    downstream = (counts[:, None] < counts[None, :]) | eye
    theta = jnp.clip(jnp.where(downstream, conditional, _PROB_CLIP), _PROB_CLIP, 1 - _PROB_CLIP)
    log_pi = jnp.full((num_pages,), -jnp.log(jnp.float32(num_pages)))

    def em_step(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        theta, log_pi = carry
        _, resp = _log_likelihoods(x, jnp.log(theta), jnp.log1p(-theta), log_pi)
        weight = jnp.sum(resp, axis=0)
        theta = (resp.T @ x + 1e-9) / (weight[:, None] + 2e-9)
        theta = jnp.clip(theta, _PROB_CLIP, 1 - _PROB_CLIP)
        log_pi = jnp.log(jnp.maximum(weight / num_commits, 1e-6))
        return theta, log_pi

    starts = []
    done = 0
    carry = (theta, log_pi)
    for steps in checkpoints:  # sorted; one EM trajectory, snapshotted
        carry = lax.fori_loop(done, steps, em_step, carry)
        done = steps
        starts.append((carry[0] > 0.5) | eye)
    return jnp.stack(starts)


def _rates(x: jax.Array, cascade: jax.Array, resp: jax.Array
           ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """M-step of the parametric model: drop rate, spurious rate, log source weights."""
    weight = jnp.sum(resp, axis=0)  # [S]
    on = resp.T @ x  # [S, P]: expected changes of v in commits sourced at s
    off = weight[:, None] - on
    expected_in = jnp.sum(weight[:, None] * cascade)
    expected_out = jnp.sum(weight[:, None] * ~cascade)
    drop = jnp.sum(jnp.where(cascade, off, 0.0)) / jnp.maximum(expected_in, 1e-9)
    spurious = jnp.sum(jnp.where(cascade, 0.0, on)) / jnp.maximum(expected_out, 1e-9)
    drop = jnp.clip(drop, *_RATE_RANGE)
    spurious = jnp.clip(spurious, *_RATE_RANGE)
    log_pi = jnp.log(jnp.maximum(weight / x.shape[0], 1e-6))
    return drop, spurious, log_pi


def _cascade_loglik(x: jax.Array, cascade: jax.Array, drop: jax.Array, spurious: jax.Array,
                    log_pi: jax.Array) -> tuple[jax.Array, jax.Array]:
    p_on = jnp.where(cascade, 1.0 - drop, spurious)
    return _log_likelihoods(x, jnp.log(p_on), jnp.log1p(-p_on), log_pi)


def _flip_gains(x: jax.Array, cascade: jax.Array, resp: jax.Array, drop: jax.Array,
                spurious: jax.Array) -> jax.Array:
    """Exact log-likelihood gain of flipping each entry ``cascade[s, v]`` (others fixed).

    Flipping ``[s, v]`` multiplies component ``s``'s likelihood of commit ``t`` by
    ``exp(d)``, with ``d`` depending only on ``x[t, v]``; the mixture likelihood of ``t`` then
    changes by the factor ``1 + resp[t, s] (exp(d) - 1)``.
    """
    on_gain = jnp.log1p(-drop) - jnp.log(spurious)  # log-odds of a change: in vs out
    off_gain = jnp.log(drop) - jnp.log1p(-spurious)

    def gains(d_on: jax.Array, d_off: jax.Array) -> jax.Array:
        g_on = jnp.log1p(resp * jnp.expm1(d_on))  # [T, S]
        g_off = jnp.log1p(resp * jnp.expm1(d_off))
        return g_on.T @ x + g_off.T @ (1.0 - x)  # [S, P]

    add = gains(on_gain, off_gain)
    remove = gains(-on_gain, -off_gain)
    g = jnp.where(cascade, remove, add)
    return jnp.where(jnp.eye(cascade.shape[0], dtype=bool), -jnp.inf, g)


def _climb(x: jax.Array, cascade: jax.Array, max_flips: int
           ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Hill-climb the parametric likelihood from ``cascade``; returns (cascade, resp, ll, flips)."""
    num_pages = x.shape[1]
    log_pi = jnp.full((num_pages,), -jnp.log(jnp.float32(num_pages)))
    start = jnp.float32(0.1)
    _, resp = _cascade_loglik(x, cascade, start, start, log_pi)

    def cond(carry: tuple[jax.Array, ...]) -> jax.Array:
        _, _, flips, done = carry
        return ~done & (flips < max_flips)

    def body(carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        cascade, resp, flips, _ = carry
        drop, spurious, log_pi = _rates(x, cascade, resp)
        _, resp = _cascade_loglik(x, cascade, drop, spurious, log_pi)
        gains = _flip_gains(x, cascade, resp, drop, spurious)
        best = jnp.argmax(gains)
        improve = gains.reshape(-1)[best] > _GAIN_TOL
        flip = (jnp.arange(num_pages * num_pages) == best).reshape(num_pages, num_pages)
        cascade = jnp.where(improve, cascade ^ flip, cascade)
        _, resp = _cascade_loglik(x, cascade, drop, spurious, log_pi)
        return cascade, resp, flips + improve.astype(jnp.int32), ~improve

    cascade, resp, flips, _ = lax.while_loop(
        cond, body, (cascade, resp, jnp.int32(0), jnp.bool_(False)))
    drop, spurious, log_pi = _rates(x, cascade, resp)
    loglik, _ = _cascade_loglik(x, cascade, drop, spurious, log_pi)
    return cascade, resp, loglik, flips


@functools.partial(jax.jit, static_argnums=(1, 2))
def _infer_jit(changes: jax.Array, init_steps: tuple[int, ...],
               max_flips: int) -> DependencyFit:
    x = changes.astype(jnp.float32)
    starts = _init_cascades(x, init_steps)  # [K, P, P]
    cascades, resps, logliks, flips = jax.vmap(lambda c: _climb(x, c, max_flips))(starts)
    best = jnp.argmax(logliks)  # model selection: the most likely fitted structure
    cascade, resp = cascades[best], resps[best]
    drop, spurious, log_pi = _rates(x, cascade, resp)
    loglik, resp = _cascade_loglik(x, cascade, drop, spurious, log_pi)
    edges, order = _reduce(cascade)
    return DependencyFit(edges, order, cascade, drop, spurious, jnp.exp(log_pi),
                         jnp.argmax(resp, axis=1).astype(jnp.int32), loglik, flips[best],
                         jnp.asarray(init_steps, jnp.int32)[best])


def infer_dependencies(changes: Any, *, init_steps: int | Sequence[int] = (10, 20, 50, 100),
                       max_flips: int | None = None) -> DependencyFit:
    """Infer dependency edges by fitting the single-source cascade model to a change log.

    See the module docstring for the model and the fit. Deterministic (no random restarts):
    the same log always gives the same graph.

    Args:
      changes: ``bool[T, P]`` commit ``t`` changed page ``p``.
      init_steps: EM steps of the free-mixture initialisation (static). Several values give
        several starting structures (snapshots of one EM run), each refined by the structure
        search (vmapped); the fit with the highest likelihood is returned. Long free-mixture
        runs over-fit the noise, short ones stay close to the raw co-change statistics; the
        default spread was chosen on development seeds of the planted benchmark
        (``experiments/reasoning.py`` reports on other seeds).
      max_flips: cap on structure-search moves per start (static; default ``P * P``).

    Returns:
      :class:`DependencyFit` (``edges``, ``reachability``, fitted rates, commit sources, ...).

    Raises:
      DTypeError: ``changes`` not bool.
      ShapeError: not ``[T, P]`` with ``T, P >= 1``.
      InvalidProblemError: a negative ``init_steps`` or ``max_flips``, or no ``init_steps``.
    """
    changes = _check_changes(changes)
    num_pages = changes.shape[1]
    steps = (init_steps,) if not isinstance(init_steps, Sequence) else tuple(init_steps)
    if not steps:
        raise InvalidProblemError("init_steps needs at least one value")
    steps = tuple(sorted({_non_negative(n, "init_steps") for n in steps}))
    max_flips = num_pages * num_pages if max_flips is None else _non_negative(max_flips,
                                                                              "max_flips")
    return _infer_jit(changes, steps, max_flips)


def _non_negative(n: Any, what: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise InvalidProblemError(f"{what} must be a Python int, got {type(n).__name__}"
                                  ) from None
    if n < 0:
        raise InvalidProblemError(f"{what} must be >= 0, got {n}")
    return n


def edge_precision_recall(true_edges: Any, predicted: Any) -> tuple[float, float]:
    """Precision and recall of predicted directed edges against the true ones (host side).

    Self-loops are ignored. An empty prediction has precision 1; an empty truth, recall 1.

    Args:
      true_edges: ``bool[N, N]``.
      predicted: ``bool[N, N]``.

    Returns:
      ``(precision, recall)`` as Python floats.

    Raises:
      ShapeError: the shapes differ or are not square.

    >>> edge_precision_recall(np.eye(2, k=1, dtype=bool), np.ones((2, 2), bool))
    (0.5, 1.0)
    """
    truth = np.asarray(true_edges, bool)
    pred = np.asarray(predicted, bool)
    if truth.shape != pred.shape or truth.ndim != 2 or truth.shape[0] != truth.shape[1]:
        raise ShapeError(f"need two square matrices of one shape, got {truth.shape} and "
                         f"{pred.shape}")
    off = ~np.eye(truth.shape[0], dtype=bool)
    truth, pred = truth & off, pred & off
    hits = int(np.sum(truth & pred))
    precision = hits / int(pred.sum()) if pred.any() else 1.0
    recall = hits / int(truth.sum()) if truth.any() else 1.0
    return precision, recall
