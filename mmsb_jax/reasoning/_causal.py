"""Causal structure of pages: from what a log holds (writes and changes) and from probes.

A commit log holds, per commit, the pages the commit WROTE (its deltas' target pages: base
pages, the *interventions*) and — after replaying it with the graph — the derived pages whose
value CHANGED (a derived page whose recomputation gives the same value keeps its epoch: early
cut-off). :class:`ChangeLog` holds both as ``written: bool[T, P]`` and ``changed: bool[T, P]``
(written pages count as changed); :func:`changelog_from_bus` builds it from a Bus or a TLog.

Two estimators of the direct dependency edges ``u -> v`` ("``v`` is computed from ``u``"):

* :func:`infer_causal` — observational, from a :class:`ChangeLog`. Each page's change is
  modelled as a *noisy-OR* of its parents' changes with a leak (a change of parent ``u``
  reaches ``v`` with probability ``q[u, v]``, so cut-off is part of the model; the leak
  absorbs spurious changes). Three steps:

  1. *reachability from interventions*: a written page's parents are cut in that commit, so
     the noisy-OR regression of ``changed[:, v]`` on ``written`` (rows where ``v`` itself is
     not written) measures the total effect of writing ``u`` on ``v``; significant effects
     give ``u`` reaches ``v`` — an oriented relation, since writes do not flow upstream;
  2. *candidate parents*: the pages that reach ``v`` (for pages that are never written, the
     pages before ``v`` in a topological order — the log's own page order for a Bus, whose
     schema lists derived pages in topological order — or one inferred from step 1);
  3. *grow-shrink parent selection* (a conditional-independence search, as IAMB/PC): add the
     candidate whose change most raises the likelihood of ``v``'s change given the parents
     chosen so far while the likelihood-ratio test rejects ``v ⟂ u | parents`` at level
     ``alpha`` and its strength ``q[u, v] >= min_strength``; then remove every parent that
     is independent given the others (this removes indirect edges ``u -> w -> v``: given
     ``w``, ``u`` adds nothing). Rows where ``v`` is written are left out (intervened).

  All noisy-OR fits of one step (every target with every candidate added or removed) are one
  jitted EM of fixed shape, so a log of one shape compiles once.

  With ``search="exact"`` step 3 is instead a score-based exact search (as in bounded
  in-degree exact structure learning, e.g. Silander & Myllymäki 2006, under the order of
  step 2): every subset of at most ``max_exact_parents`` candidates is fitted and the one
  with the best BIC (log-likelihood minus ``log(T)/2`` per parent) is kept. Greedy growth
  can commit early to a page that explains ``v``'s changes only together with others; the
  exhaustive search cannot. It costs ``sum_k C(candidates, k)`` fits per page.

* :func:`probe_dependencies` — interventional: on copies of States (e.g. ``bus.at(seq)`` at
  several seqs, plus synthetic contexts made from them; nothing is committed or logged), each
  page in turn is set to random (and non-finite) values and the graph propagates (the commit
  law, ``apply`` then ``propagate``); the pages whose value changes are its descendants. Each
  pair ``u ⇝ v`` is then probed again with every other derived page held at its value (graph
  surgery: ``do(w := w)``), so ``v`` changes only if ``u`` is one of its inputs: every edge
  found is real, and direct edges that a transitive reduction would drop are kept.
  :func:`probe_bus` runs it on a Bus at one or more seqs.

>>> import numpy as np
>>> written = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]] * 30, bool)
>>> changed = np.array([[1, 1, 1], [0, 1, 1], [0, 0, 1], [0, 0, 0]] * 30, bool)  # a->b->c
>>> infer_causal(written, changed).edges.astype(int).tolist()
[[0, 1, 0], [0, 0, 1], [0, 0, 0]]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import (
    DTypeError,
    GraphError,
    InvalidProblemError,
    ShapeError,
    UnknownPageError,
)

__all__ = [
    "CausalFit",
    "ChangeLog",
    "ProbeResult",
    "changelog_from_bus",
    "changelog_from_sets",
    "infer_causal",
    "probe_bus",
    "probe_dependencies",
]

_Q_CLIP = 1e-4  # noisy-OR strengths and leaks stay in [clip, 1 - clip]
_EM_STEPS = 100


class ChangeLog(NamedTuple):
    """What a commit log says about each commit (:func:`changelog_from_bus`).

    Attributes:
      written: ``bool[T, P]`` commit ``t`` wrote page ``p`` (one of its deltas targets it).
      changed: ``bool[T, P]`` page ``p`` changed in commit ``t`` (written pages included;
        derived pages: their epoch moved, i.e. the recomputed value differs).
      names: the ``P`` page names (columns).
      order: a known topological order of the pages (parents first) as column indices, or
        ``None``. For a Bus log it is the log's page order (base pages, then derived pages in
        the graph's topological order, as the log's schema and DERIVED records list them).
    """

    written: np.ndarray  # bool[T, P]
    changed: np.ndarray  # bool[T, P]
    names: tuple[str, ...]
    order: tuple[int, ...] | None = None


class CausalFit(NamedTuple):
    """Result of :func:`infer_causal`.

    Attributes:
      edges: ``bool[P, P]`` inferred direct dependencies ``u -> v`` (a DAG).
      strength: ``float32[P, P]`` fitted noisy-OR strength ``q[u, v]`` of each edge (0 off
        the edges): the probability that a change of ``u`` changes ``v``.
      leak: ``float32[P]`` probability that ``v`` changes with no parent changed (noise).
      reach: ``bool[P, P]`` ``u`` reaches ``v`` as measured from the writes (interventions);
        rows of pages that are never written are empty.
      order: ``int32[P]`` the topological order used to orient candidates.
    """

    edges: np.ndarray  # bool[P, P]
    strength: np.ndarray  # float32[P, P]
    leak: np.ndarray  # float32[P]
    reach: np.ndarray  # bool[P, P]
    order: np.ndarray  # int32[P]


class ProbeResult(NamedTuple):
    """Result of :func:`probe_dependencies`.

    Attributes:
      edges: ``bool[P, P]`` direct dependencies found by probing (``graph.schema`` order).
      reachability: ``bool[P, P]`` ``u``'s probes changed ``v`` (strict).
      names: the page names of the rows and columns.
      probes: number of propagations run.
      contexts: number of states probed (given states plus synthetic contexts).
    """

    edges: np.ndarray  # bool[P, P]
    reachability: np.ndarray  # bool[P, P]
    names: tuple[str, ...]
    probes: int
    contexts: int = 1


# -- building change logs ------------------------------------------------------------------

def changelog_from_sets(written: Iterable[Iterable[str]], changed: Iterable[Iterable[str]],
                        pages: Sequence[str]) -> ChangeLog:
    """A :class:`ChangeLog` from per-commit sets of written and changed page names.

    Args:
      written: one iterable of written page names per commit.
      changed: one iterable of changed page names per commit (the written pages are added).
      pages: the page order (columns).

    Returns:
      :class:`ChangeLog` with ``order=None``.

    Raises:
      UnknownPageError: a name not in ``pages``. InvalidProblemError: the two sequences differ
      in length, a commit is a bare string, or ``pages`` repeats a name.
    """
    names = tuple(str(p) for p in pages)
    if len(set(names)) != len(names):
        raise InvalidProblemError("pages must not repeat a name")
    column = {n: i for i, n in enumerate(names)}
    rows_w, rows_c = list(written), list(changed)
    if len(rows_w) != len(rows_c):
        raise InvalidProblemError(f"{len(rows_w)} written sets but {len(rows_c)} changed sets")
    w = np.zeros((len(rows_w), len(names)), bool)
    c = np.zeros_like(w)
    for out, rows in ((w, rows_w), (c, rows_c)):
        for t, row in enumerate(rows):
            if isinstance(row, str):
                raise InvalidProblemError(f"a commit is a collection of page names, got {row!r}")
            for n in row:
                if n not in column:
                    raise UnknownPageError(n, names)
                out[t, column[n]] = True
    return ChangeLog(w, c | w, names, None)


def changelog_from_bus(source: Any, *, graph: Any = None, start: int = 0,
                       stop: int | None = None) -> ChangeLog:
    """The :class:`ChangeLog` of a Bus (or a TLog) between two seqs.

    Written pages come from each transaction's deltas. Changed derived pages come from
    replaying the log with the graph (epochs moved: values differ), starting from the state at
    ``start``; without a graph, from the log's DERIVED records (the pages propagation
    recomputed — an over-approximation that ignores cut-off). Nothing is written: the live log
    and state are only read.

    Args:
      source: an open ``mm.Bus`` or an ``mm.TLog`` (then ``start`` must be 0).
      graph: the ``mm.Graph`` of the derived pages (default: the Bus's graph). A graph the
        Bus does not hold (e.g. a World's physics pages over a plain bus) is replayed on top of
        the logged base pages.
      start: first seq is ``start + 1``.
      stop: last seq (default: the end of the log).

    Returns:
      :class:`ChangeLog`; columns in the graph's schema order (the log's page order, with
      derived pages topologically ordered), ``order`` set accordingly when a graph is known.

    Raises:
      InvalidProblemError: ``start``/``stop`` out of range, or a TLog with ``start > 0``.
    """
    from mmsb_jax.core.pages import init_state
    from mmsb_jax.core.propagate import propagate
    from mmsb_jax.core.transaction import TransactionRunner
    from mmsb_jax.store.tlog import TLog

    if isinstance(source, TLog):
        tlog, bus = source, None
    elif hasattr(source, "log") and hasattr(source, "at"):
        tlog, bus = source.log, source
    else:
        raise InvalidProblemError(f"expected an mm.Bus or mm.TLog, got {type(source).__name__}")
    if graph is None and bus is not None:
        graph = bus.graph
    last = tlog.last_seq if stop is None else int(stop)
    start = int(start)
    if not 0 <= start <= last <= tlog.last_seq:
        raise InvalidProblemError(f"need 0 <= start <= stop <= {tlog.last_seq}, got "
                                  f"{start}, {last}")
    txns = list(tlog.transactions(start, last))
    schema = tlog.schema if graph is None else graph.schema
    names = tuple(schema.names)
    column = {n: i for i, n in enumerate(names)}
    written = np.zeros((len(txns), len(names)), bool)
    changed = np.zeros_like(written)
    for t, txn in enumerate(txns):
        for d in txn.deltas:
            written[t, column[d.page]] = True
    if graph is None:
        for t, txn in enumerate(txns):
            for n in txn.derived:
                if n in column:
                    changed[t, column[n]] = True
        return ChangeLog(written, changed | written, names, None)
    if start > 0 and bus is None:
        raise InvalidProblemError("a TLog is replayed from seq 0; pass a Bus for start > 0")
    base = bus.at(start) if bus is not None else init_state(tlog.schema)
    state = init_state(graph.schema)
    state = state.with_pages({n: base.pages[n] for n in graph.base.names},
                             {n: base.epochs[n] for n in graph.base.names})
    if graph.derived:
        state = propagate(graph, state, tuple(graph.base.names))
    derived = [n for n in graph.derived]
    runner = TransactionRunner(state, graph=graph, check=False, record_epochs=True)
    for txn in txns:
        runner.add(list(txn.deltas))
    runner.flush()
    prev = {n: int(state.epochs[n]) for n in derived}
    t = 0
    for count, epochs in runner.epochs:
        cols = {n: np.asarray(epochs[n]).reshape(count) for n in derived if n in epochs}
        for j in range(count):
            for n, col in cols.items():
                v = int(col[j])
                if v != prev[n]:
                    prev[n] = v
                    changed[t, column[n]] = True
            t += 1
    return ChangeLog(written, changed | written, names, tuple(range(len(names))))


# -- the noisy-OR fits ---------------------------------------------------------------------

def _fit_families(y: jax.Array, rows: jax.Array, x: jax.Array, masks: jax.Array
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """EM fits of noisy-OR families.

    Args:
      y: ``float32[T, F]`` the target of each family (1 = changed).
      rows: ``float32[T, F]`` rows that count for each family.
      x: ``float32[T, C]`` candidate causes.
      masks: ``float32[F, C]`` the causes of each family.

    Returns:
      ``(q: float32[F, C], leak: float32[F], loglik: float32[F])``.
    """
    n_rows = jnp.maximum(jnp.sum(rows, axis=0), 1.0)  # [F]
    exposure = (rows.T @ x)  # [F, C]: counted rows where each cause is on
    q0 = masks * 0.5
    leak0 = jnp.full(masks.shape[:1], 0.05)

    def log_off(q: jax.Array, leak: jax.Array) -> jax.Array:
        return jnp.log1p(-leak)[None, :] + x @ jnp.log1p(-q).T  # [T, F]

    def step(_: int, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        q, leak = carry
        p_on = -jnp.expm1(log_off(q, leak))
        w = y * rows / jnp.maximum(p_on, 1e-12)  # [T, F]
        q_new = q * (w.T @ x) / jnp.maximum(exposure, 1e-9)
        q_new = jnp.where(masks > 0, jnp.clip(q_new, _Q_CLIP, 1 - _Q_CLIP), 0.0)
        leak_new = jnp.clip(leak * jnp.sum(w, axis=0) / n_rows, _Q_CLIP, 1 - _Q_CLIP)
        return q_new, leak_new

    q, leak = jax.lax.fori_loop(0, _EM_STEPS, step, (q0, leak0))
    return q, leak, _loglik(y, rows, x, q, leak)


def _loglik(y: jax.Array, rows: jax.Array, x: jax.Array, q: jax.Array,
            leak: jax.Array) -> jax.Array:
    off = jnp.log1p(-leak)[None, :] + x @ jnp.log1p(-q).T
    on = jnp.log(jnp.maximum(-jnp.expm1(off), 1e-12))
    return jnp.sum(rows * (y * on + (1.0 - y) * off), axis=0)


@jax.jit
def _reach_fit(written: jax.Array, changed: jax.Array, allowed: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Noisy-OR of each page's change on all writes; returns ``q [P, P]`` (cause, target),
    the likelihood-ratio statistic of dropping each cause ``[P, P]``, and the leaks ``[P]``."""
    x = written.astype(jnp.float32)
    y = changed.astype(jnp.float32)
    rows = 1.0 - x  # a written target is intervened
    masks = allowed.T.astype(jnp.float32)  # [F = targets, C = causes]
    q, leak, ll = _fit_families(y, rows, x, masks)

    def drop(c: jax.Array) -> jax.Array:
        q_minus = q.at[:, c].set(0.0)
        return _loglik(y, rows, x, q_minus, leak)

    ll_minus = jax.vmap(drop)(jnp.arange(x.shape[1]))  # [C, F]
    lr = 2.0 * (ll[None, :] - ll_minus)
    return q.T, lr, leak


@jax.jit
def _grow_step(changed: jax.Array, rows: jax.Array, parents: jax.Array, allowed: jax.Array
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Fit every target with its parents plus each candidate.

    ``parents, allowed: bool[P, P]`` (cause, target). Returns ``(ll_base [P], ll_add [P, P],
    q_add [P, P], q_base [P, P])`` indexed (cause, target) where two-dimensional.
    """
    num = changed.shape[1]
    x = changed.astype(jnp.float32)
    base = parents.T.astype(jnp.float32)  # [target, cause]
    add = base[:, None, :] + jnp.eye(num)[None, :, :] * allowed.T[:, :, None]
    add = jnp.minimum(add, 1.0).reshape(num * num, num)  # family (target, candidate)
    masks = jnp.concatenate([base, add])
    target = jnp.concatenate([jnp.arange(num), jnp.repeat(jnp.arange(num), num)])
    y = x[:, target]
    r = rows[:, target]
    q, _, ll = _fit_families(y, r, x, masks)
    q_base = q[:num].T
    q_add = jnp.diagonal(q[num:].reshape(num, num, num), axis1=1, axis2=2).T
    return ll[:num], ll[num:].reshape(num, num).T, q_add, q_base


@jax.jit
def _shrink_step(changed: jax.Array, rows: jax.Array, parents: jax.Array
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Fit every target with its parents and with each parent removed (cause, target)."""
    num = changed.shape[1]
    x = changed.astype(jnp.float32)
    base = parents.T.astype(jnp.float32)
    minus = (base[:, None, :] * (1.0 - jnp.eye(num))[None, :, :]).reshape(num * num, num)
    masks = jnp.concatenate([base, minus])
    target = jnp.concatenate([jnp.arange(num), jnp.repeat(jnp.arange(num), num)])
    q, leak, ll = _fit_families(x[:, target], rows[:, target], x, masks)
    return ll[:num], ll[num:].reshape(num, num).T, q[:num].T, leak[:num]


def _grow_shrink(c: np.ndarray, rows: np.ndarray, allowed: np.ndarray, pos: np.ndarray,
                 max_parents: int, crit: float, min_strength: float
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3 by conditional-independence tests: ``(parents, strength, leak)``."""
    num = c.shape[1]
    parents = np.zeros((num, num), bool)
    bonus = 1e-3 * pos[:, None] / max(num, 1)  # ties (identical columns): the nearest page
    for _ in range(max_parents):
        ll_base, ll_add, q_add, _ = (np.asarray(a) for a in _grow_step(c, rows, parents,
                                                                      allowed))
        gain = 2.0 * (ll_add - ll_base[None, :])
        ok = allowed & ~parents & (gain >= crit) & (q_add >= min_strength)
        if not ok.any():
            break
        score = np.where(ok, gain + bonus, -np.inf)
        best = np.argmax(score, axis=0)
        grow = ok[best, np.arange(num)]
        parents[best[grow], np.arange(num)[grow]] = True
    strength = np.zeros((num, num), np.float32)
    leak = np.zeros(num, np.float32)
    for _ in range(num * max_parents):
        ll_base, ll_minus, q_base, leak = (np.asarray(a) for a in _shrink_step(c, rows, parents))
        stat = 2.0 * (ll_base[None, :] - ll_minus)
        weak = parents & ((stat < crit) | (q_base < min_strength))
        strength = np.where(parents, q_base, 0.0).astype(np.float32)
        if not weak.any():
            break
        score = np.where(weak, stat, np.inf)
        worst = np.argmin(score, axis=0)
        drop = weak[worst, np.arange(num)]
        parents[worst[drop], np.arange(num)[drop]] = False
    return parents, strength, leak


_EXACT_MAX_FAMILIES = 1 << 15


def _exact_parents(c: np.ndarray, rows: np.ndarray, allowed: np.ndarray, pos: np.ndarray,
                   max_size: int, min_strength: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3 by exhaustive best-BIC search: ``(parents, strength, leak)``."""
    num = c.shape[1]
    x = jnp.asarray(c, jnp.float32)
    parents = np.zeros((num, num), bool)
    strength = np.zeros((num, num), np.float32)
    leak = np.zeros(num, np.float32)
    sizes = allowed.sum(0)
    for v in range(num):  # refuse before any fit
        count = sum(math.comb(int(sizes[v]), k) for k in range(min(max_size, sizes[v]) + 1))
        if count > _EXACT_MAX_FAMILIES:
            raise InvalidProblemError(
                f"exact search for page {v}: {count} parent sets of {sizes[v]} candidates; "
                "lower max_exact_parents or use search='grow-shrink'")
    for v in range(num):
        cands = sorted(np.flatnonzero(allowed[:, v]).tolist(), key=lambda u: -pos[u])
        size = min(max_size, len(cands))
        families = [f for k in range(size + 1) for f in itertools.combinations(cands, k)]
        padded = 1 << max(0, (len(families) - 1).bit_length())  # few shapes, few compiles
        masks = np.zeros((padded, num), np.float32)
        for i, f in enumerate(families):
            masks[i, list(f)] = 1.0
        y = jnp.broadcast_to(x[:, v:v + 1], (c.shape[0], padded))
        r = jnp.broadcast_to(jnp.asarray(rows[:, v:v + 1]), (c.shape[0], padded))
        q, lk, ll = (np.asarray(a) for a in _fit_families_jit(y, r, x, jnp.asarray(masks)))
        n_rows = max(float(rows[:, v].sum()), 2.0)
        bic = ll[:len(families)] - 0.5 * np.log(n_rows) * masks[:len(families)].sum(1)
        best = int(np.argmax(bic))  # ties: the first, i.e. the smallest set of nearest pages
        chosen = [u for u in families[best] if q[best, u] >= min_strength]
        parents[chosen, v] = True
        strength[chosen, v] = q[best, chosen]
        leak[v] = lk[best]
    return parents, strength, leak


_fit_families_jit = jax.jit(_fit_families)


def _check_log(written: Any, changed: Any) -> tuple[np.ndarray, np.ndarray]:
    w, c = np.asarray(written), np.asarray(changed)
    for what, a in (("written", w), ("changed", c)):
        if a.dtype != np.bool_:
            raise DTypeError(f"{what} must be bool[T, P], got {a.dtype}")
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ShapeError(f"{what} must be bool[T, P] with T, P >= 1, got {a.shape}")
    if w.shape != c.shape:
        raise ShapeError(f"written {w.shape} and changed {c.shape} differ")
    return w, c | w


def _chi2_1(alpha: float) -> float:
    """Critical value of the chi-square distribution with one degree of freedom."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1.0 - alpha / 2.0) ** 2


def infer_causal(written: Any, changed: Any | None = None, *,
                 order: Sequence[int] | None = None, alpha: float = 1e-3,
                 min_strength: float = 0.15, reach_strength: float = 0.05,
                 min_writes: int = 5, max_parents: int = 8, search: str = "grow-shrink",
                 max_exact_parents: int = 4) -> CausalFit:
    """Infer direct dependency edges from the writes and changes of a log (see module doc).

    Args:
      written: ``bool[T, P]`` pages each commit wrote, or a :class:`ChangeLog` (then
        ``changed`` and ``order`` come from it unless given).
      changed: ``bool[T, P]`` pages each commit changed (written pages are added).
      order: a known topological order (column indices, parents first). Without it the order
        is inferred from the writes (pages that are never written are then ordered by how
        many written pages reach them, then by change count).
      alpha: level of the likelihood-ratio (conditional-independence) tests.
      min_strength: an edge needs noisy-OR strength ``q[u, v] >= min_strength``: weaker
        effects are attributed to noise in the log (a dropped change of an intermediate page
        makes its ancestor look like a weak parent).
      reach_strength: minimum total effect of a write for ``u`` reaches ``v``.
      min_writes: pages written in fewer commits count as never written.
      max_parents: cap on the grow steps (parents per page).
      search: ``"grow-shrink"`` (conditional-independence tests, default) or ``"exact"``
        (best-BIC parent set by exhaustive search; see the module doc).
      max_exact_parents: ``search="exact"``: the largest parent set tried.

    Returns:
      :class:`CausalFit`.

    Raises:
      DTypeError, ShapeError: bad ``written``/``changed``. InvalidProblemError: bad
      ``order`` or option values.
    """
    if isinstance(written, ChangeLog):
        log = written
        written, changed = log.written, log.changed if changed is None else changed
        order = log.order if order is None else order
    if changed is None:
        raise InvalidProblemError("changed is required unless a ChangeLog is given")
    w, c = _check_log(written, changed)
    num = w.shape[1]
    if not 0.0 < alpha < 1.0:
        raise InvalidProblemError(f"alpha must be in (0, 1), got {alpha}")
    if not 0.0 <= min_strength < 1.0 or not 0.0 <= reach_strength < 1.0:
        raise InvalidProblemError("strength thresholds must be in [0, 1)")
    if int(max_parents) < 1 or int(min_writes) < 0 or int(max_exact_parents) < 1:
        raise InvalidProblemError("max_parents and max_exact_parents must be >= 1 and "
                                  "min_writes >= 0")
    if search not in ("grow-shrink", "exact"):
        raise InvalidProblemError(f"search must be 'grow-shrink' or 'exact', got {search!r}")
    if order is not None:
        order = [int(i) for i in order]
        if sorted(order) != list(range(num)):
            raise InvalidProblemError(f"order must be a permutation of range({num})")
    crit = _chi2_1(alpha)
    eye = np.eye(num, dtype=bool)
    writes = w.sum(0)
    exogenous = writes >= int(min_writes)
    # 1. reachability from the interventions
    allowed_reach = exogenous[:, None] & ~eye
    q_reach, lr_reach, _ = (np.asarray(a) for a in _reach_fit(w, c, allowed_reach))
    reach = allowed_reach & (q_reach >= reach_strength) & (lr_reach >= crit)
    # 2. an order and the candidate parents
    if order is None:
        rank = reach.sum(0).astype(int) - reach.sum(1).astype(int)  # ancestors - descendants
        counts = c.sum(0)
        order = sorted(range(num), key=lambda i: (int(rank[i]), int(counts[i]), i))
    pos = np.empty(num, int)
    pos[np.asarray(order)] = np.arange(num)
    before = pos[:, None] < pos[None, :]
    # writes orient the candidates; the order only settles pairs that reach both ways
    allowed = np.where(exogenous[:, None], reach & (before | ~reach.T), before) & ~eye
    # 3. grow-shrink parent selection on the changes (rows where the target is not written)
    rows = (~w).astype(np.float32)
    if search == "exact":
        parents, strength, leak = _exact_parents(c, rows, allowed, pos, int(max_exact_parents),
                                                 min_strength)
    else:
        parents, strength, leak = _grow_shrink(c, rows, allowed, pos, int(max_parents), crit,
                                               min_strength)
    # measurement noise: when an intermediate w's change is missing from the log, its
    # ancestor u looks like a direct parent of v. Keep u -> v (u also reaching another parent
    # w) only if its exclusive support — v changed, u changed, no such w changed — exceeds
    # what missing records explain (twice the estimated noise rate, the median leak).
    noise = float(np.median(leak))
    for v in range(num):
        for u in np.flatnonzero(parents[:, v]):
            via = [x for x in np.flatnonzero(parents[:, v]) if x != u and reach[u, x]]
            if not via:
                continue
            counted = ~w[:, v] & c[:, u]
            alone = counted & ~c[:, via].any(axis=1) & c[:, v]
            if alone.sum() < (2.0 * noise + 0.02) * max(counted.sum(), 1):
                parents[u, v] = False
                strength[u, v] = 0.0
    return CausalFit(parents, strength, leak.astype(np.float32), reach,
                     np.asarray(order, np.int32))


# -- probes ----------------------------------------------------------------------------------

def _perturb(x: jax.Array, key: jax.Array, k: int) -> jax.Array:
    """A value of ``x``'s shape and dtype that differs from ``x`` (probe ``k``).

    Negative ``k`` are the non-finite probes of floating pages: ``-1`` all ``+inf``, ``-2``
    all ``-inf``, ``-3`` all NaN.
    """
    dtype = x.dtype
    if k < 0:
        return jnp.full(x.shape, (jnp.inf, -jnp.inf, jnp.nan)[-k - 1], dtype)
    if dtype == jnp.bool_:
        return ~x if k == 0 else jax.random.bernoulli(key, 0.5, x.shape)
    if jnp.issubdtype(dtype, jnp.integer):
        return (x + jax.random.randint(key, x.shape, 1, 100)).astype(dtype)
    noise = jax.random.normal(key, x.shape) * (1.0 + jnp.abs(x)) + (0.5 + k)
    return (x + noise).astype(dtype)


def _differs(a: jax.Array, b: jax.Array) -> bool:
    """Whether the bits differ (``-0.0`` vs ``0.0`` is a change a later page may see)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.shape != b.shape or a.tobytes() != b.tobytes()


def _complete_state(graph: Any, state: Any) -> Any:
    """``state`` with every page of ``graph.schema`` (derived pages computed if missing)."""
    from mmsb_jax.core.pages import init_state
    from mmsb_jax.core.propagate import propagate

    missing = [n for n in graph.schema.names if n not in state.pages]
    if not missing:
        return state
    full = init_state(graph.schema)
    full = full.with_pages({n: state.pages[n] for n in graph.base.names},
                           {n: state.epochs[n] for n in graph.base.names})
    return propagate(graph, full, tuple(graph.base.names))


def _context_page(x: jax.Array, key: jax.Array, j: int) -> jax.Array:
    """Base page ``x`` in synthetic context ``j`` (1, 2, ...).

    Odd ``j`` *spread* the page (every element moved by noise of its own scale: opens gates,
    changes which input of a max wins); even ``j`` *concentrate* it (its rows resampled from
    ``max(1, rows >> j)`` of its own rows with a small jitter: coincidences such as
    overlapping entities or crowded cells; boolean pages all True). Scalars and pages of one
    row are only spread.
    """
    dtype = x.dtype
    k_rows, k_noise = jax.random.split(key)
    if j % 2 or x.ndim == 0 or x.shape[0] < 2:
        if dtype == jnp.bool_:
            return jax.random.bernoulli(k_noise, 0.5, x.shape)
        if jnp.issubdtype(dtype, jnp.integer):
            return (x + jax.random.randint(k_noise, x.shape, -3, 4)).astype(dtype)
        return (x + jax.random.normal(k_noise, x.shape) * (1.0 + jnp.abs(x))).astype(dtype)
    if dtype == jnp.bool_:
        return jnp.ones_like(x)
    n = x.shape[0]
    pool = jax.random.choice(k_rows, n, (max(1, n >> j),), replace=False)
    rows = x[pool[jax.random.randint(k_noise, (n,), 0, pool.shape[0])]]
    if not jnp.issubdtype(dtype, jnp.floating):
        return rows
    jitter = jax.random.normal(jax.random.fold_in(k_noise, 1), x.shape) * 1e-3
    return (rows + jitter * (1.0 + jnp.abs(rows))).astype(dtype)


def _contexts(graph: Any, state: Any, key: jax.Array, count: int) -> list[Any]:
    """``count`` synthetic states: every base page of ``state`` replaced by
    :func:`_context_page`, derived pages recomputed."""
    from mmsb_jax.core.propagate import propagate

    base = tuple(graph.base.names)
    out = []
    for j in range(1, count + 1):
        keys = jax.random.split(jax.random.fold_in(key, j), len(base))
        pages = {n: _context_page(state.pages[n], keys[i], j) for i, n in enumerate(base)}
        out.append(propagate(graph, state.with_pages(pages), base))
    return out


def _held_graph(graph: Any, middle: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """``graph`` with every page of ``middle`` cut from its inputs (graph surgery).

    Each held page ``w`` becomes a copy of a new base page ``hold(w)``; setting ``hold(w)``
    to ``w``'s value in a state is ``do(w := w)``. One graph per set of held pages, whatever
    the state, so probing several states compiles it once.

    Returns:
      ``(held graph, {w: hold(w)})``.
    """
    from mmsb_jax.core.graph import Graph
    from mmsb_jax.core.pages import PageSpec, Schema

    taken = set(graph.schema.names)
    hold = {}
    for w in middle:
        name, i = f"probe_hold/{w}", 0
        while name in taken:
            i += 1
            name = f"probe_hold{i}/{w}"
        hold[w] = name
        taken.add(name)
    specs = list(graph.base.specs)
    for w in middle:
        spec = graph.schema[w]
        specs.append(PageSpec(hold[w], spec.shape, spec.dtype))
    held = Graph(Schema(specs))
    for n in graph.topological_order():
        if not graph.is_derived(n):
            continue
        if n in hold:
            held = held.derive(n, (hold[n],), _identity)
        else:
            d = graph.derivation(n)
            held = held.derive(n, d.inputs, d.fn)
    return held, hold


def _identity(x: jax.Array) -> jax.Array:
    return x


def probe_dependencies(graph: Any, state: Any, *, key: jax.Array | int = 0,
                       num_probes: int = 3, contexts: int = 4, nonfinite: bool = True,
                       direct: bool = True) -> ProbeResult:
    """Direct dependency edges of ``graph`` by interventions on copies of ``state``.

    Probing runs in several *contexts*: the given state(s) and ``contexts`` synthetic states
    made from the first one (its base pages spread by noise or concentrated onto a few of
    their own rows, derived pages recomputed), because a function may ignore an input in one
    state (a closed gate, a collision that does not happen) and read it in another. In each
    context, each page ``u`` is set to ``num_probes`` random values in turn and propagated
    (``mm.propagate`` with ``dirty=(u,)``, the commit law); the pages whose value changes are
    reachable from ``u``. With ``direct``, every reachable pair ``u ⇝ v`` is probed again on
    a graph in which every derived page but ``v`` is held at the context's values (graph
    surgery, ``do(w := w)``: the controlled direct effect), so ``v`` changes only if it reads
    ``u`` itself. A change of ``v``'s bits is proof of that, so every edge found is real
    (precision 1); an input that no context makes matter is missed. The graph's functions
    are only evaluated, never inspected (its edges only say which pages propagation
    recomputes), and nothing is committed.

    Args:
      graph: an ``mm.Graph``.
      state: a State of ``graph.schema``, or a non-empty sequence of them (e.g. a bus's
        states at several seqs); derived pages are computed if a state lacks them.
      key: a PRNG key or seed for the probe values and the synthetic contexts.
      num_probes: random values per probed page and context (several guard against cut-off,
        e.g. a thresholded function that ignores one particular change).
      contexts: synthetic contexts added to the given states (0: only the given states).
      nonfinite: also probe floating pages with ``+inf``, ``-inf`` and NaN in every context.
        Non-finite values flow through arithmetic that cuts every finite change off (``0 *
        x``, a saturated ``clip`` of a sum), so a change then still proves that ``v`` reads
        ``u``.
      direct: probe each reachable pair with the other derived pages held (one held graph
        per derived page); otherwise edges are the transitive reduction of the
        reachability.

    Returns:
      :class:`ProbeResult` in ``graph.schema`` order.

    Raises:
      GraphError: ``graph`` is not an ``mm.Graph``. InvalidProblemError: ``num_probes < 1``,
      ``contexts < 0`` or no state.
    """
    from mmsb_jax.core.graph import Graph
    from mmsb_jax.core.pages import State
    from mmsb_jax.core.propagate import propagate
    from mmsb_jax.reasoning._structure import transitive_reduction

    if not isinstance(graph, Graph):
        raise GraphError(f"probe_dependencies needs an mm.Graph, got {type(graph).__name__}")
    num_probes = _at_least(num_probes, 1, "num_probes")
    contexts = _at_least(contexts, 0, "contexts")
    given = [state] if isinstance(state, State) else list(state)
    if not given:
        raise InvalidProblemError("probe_dependencies needs at least one state")
    key = jax.random.key(key) if isinstance(key, int) else key
    key, k_ctx = jax.random.split(key)
    states = [_complete_state(graph, s) for s in given]
    states += _contexts(graph, states[0], k_ctx, contexts)
    names = tuple(graph.schema.names)
    num = len(names)
    index = {n: i for i, n in enumerate(names)}
    reach = np.zeros((num, num), bool)
    runs = 0

    def probe(g: Any, st: Any, u: str, k: int, sub: jax.Array, watch: Iterable[str]
              ) -> set[str]:
        value = _perturb(st.pages[u], sub, k)
        out = propagate(g, st.with_pages({u: value}, {u: st.epochs[u]}), (u,))
        return {n for n in watch if _differs(out.pages[n], st.pages[n])}

    keys = jax.random.split(key, num * num_probes).reshape(num, num_probes)

    def kinds(u: str) -> range:
        floating = jnp.issubdtype(graph.schema[u].dtype, jnp.floating)
        return range(-3 if nonfinite and floating else 0, num_probes)

    for c, st in enumerate(states):
        for u in names:
            for k in kinds(u):
                sub = jax.random.fold_in(keys[index[u], max(k, 0)], c)
                for n in probe(graph, st, u, k, sub, graph.descendants(u)):
                    reach[index[u], index[n]] = True
                runs += 1
    if not direct:
        edges = np.array(transitive_reduction(jnp.asarray(reach)))
        return ProbeResult(edges, reach, names, runs, len(states))
    edges = np.zeros_like(reach)
    for v in graph.derived:
        iv = index[v]
        sources = [u for u in names if reach[index[u], iv]]
        if not sources:
            continue
        # every derived page but v held at the context's values: v changes only through
        # an input it reads directly
        held, hold = _held_graph(graph, [w for w in graph.derived if w != v])
        for c, st in enumerate(states):
            held_state = _with_holds(held, st, hold)
            for u in sources:
                iu = index[u]
                if edges[iu, iv]:
                    continue
                for k in kinds(u):
                    runs += 1
                    sub = jax.random.fold_in(jax.random.fold_in(keys[iu, max(k, 0)], iv), c)
                    if probe(held, held_state, u, k, sub, (v,)):
                        edges[iu, iv] = True
                        break
    return ProbeResult(edges, reach, names, runs, len(states))


def _with_holds(held: Any, state: Any, hold: dict[str, str]) -> Any:
    """``state`` in ``held``'s schema: each hold page set to the value of the page it holds."""
    from mmsb_jax.core.pages import State

    source = {h: w for w, h in hold.items()}
    names = held.schema.names
    return State(pages={n: state.pages[source.get(n, n)] for n in names},
                 epochs={n: state.epochs[source.get(n, n)] for n in names})


def _at_least(value: Any, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise InvalidProblemError(f"{what} must be an int >= {low}, got {value!r}")
    return int(value)


def probe_bus(bus: Any, seq: int | Sequence[int] | None = None, *, graph: Any = None,
              key: jax.Array | int = 0, num_probes: int = 3, contexts: int = 4,
              nonfinite: bool = True, direct: bool = True) -> ProbeResult:
    """:func:`probe_dependencies` on the state(s) of a Bus after commit ``seq``.

    The states come from time travel (``bus.at(seq)``); the probes run on copies, so the
    bus, its state and its log are left exactly as they were.

    Args:
      bus: an open ``mm.Bus``.
      seq: the commit whose state is probed, or several (each state is a context; the
        synthetic contexts are made from the first); default: the current seq.
      graph: the graph of derived pages (default: the Bus's own graph).
      key, num_probes, contexts, nonfinite, direct: as :func:`probe_dependencies`.

    Returns:
      :class:`ProbeResult`.

    Raises:
      GraphError: no graph (the bus has none and none is given).
      UnknownSeqError: a ``seq`` is out of range (from ``bus.at``).
      InvalidProblemError: an empty sequence of seqs, or a bad ``num_probes``/``contexts``.
    """
    graph = bus.graph if graph is None else graph
    if graph is None:
        raise GraphError("the bus has no graph of derived pages; pass graph=")
    seqs = [bus.seq] if seq is None else [seq] if isinstance(seq, int | np.integer) else seq
    states = [bus.at(int(s)) for s in seqs]
    return probe_dependencies(graph, states, key=key, num_probes=num_probes,
                              contexts=contexts, nonfinite=nonfinite, direct=direct)

