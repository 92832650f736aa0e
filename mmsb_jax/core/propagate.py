"""Propagation: recompute derived pages after their inputs changed.

:func:`propagate` is pure and traceable: ``jax.jit`` it with the graph and the dirty set static,
differentiate through it, ``vmap`` it over a batch of states. For one static dirty set the plan
is fixed at trace time:

1. The affected pages are the descendants of the dirty pages (:meth:`Graph.descendants`).
   Everything else is left as it is, without being read.
2. Affected pages are visited once each, in topological order, so every page is computed from
   inputs that are already current (a diamond ``A -> {B, C} -> D`` computes ``D`` once, from the
   new ``B`` and ``C``).
3. Each visited page carries a ``changed`` flag. Dirty pages are changed. A page is recomputed
   iff one of its inputs changed, and it is changed iff it was recomputed and its new value
   differs bit for bit from the old one (NaNs with equal payloads compare equal, ``0.0`` and
   ``-0.0`` do not). A page whose inputs all came out unchanged keeps its old value and epoch:
   this is the early cut-off. Where a flag is known at trace time (a direct child of a dirty
   page is always recomputed) no run-time decision is made.
4. A derived page's epoch advances by one each time a recomputation changes its value.

The run-time decision "recompute or keep" (``skip=``) is implemented either with ``lax.cond``
(the function does not run when the page is cut off; costs a conditional, which blocks XLA
fusion, and on GPU a predicate transfer) or with ``jnp.where`` (the function always runs, the
result is discarded when the page is cut off; fuses with its neighbours). Values, epochs and
``changed`` flags are identical in both modes; only the work done differs. ``skip="auto"``
uses ``lax.cond`` for pages whose estimated cost (:attr:`Derivation.cost`) is at least
:data:`COND_MIN_COST` and ``jnp.where`` for cheaper ones. Measured on CPU
(``experiments/bench_graph.py``): for a page of a few thousand elements or less a conditional
costs more than recomputing, and a plan of 1,000 small pages all under ``lax.cond`` took about
twice as long to compile and ~1.2x as long to run as with ``jnp.where``; from ~10^5 elements of
work per page, skipping with ``lax.cond`` saves most of the time of a cut-off step. Under
``vmap`` a batched predicate turns ``lax.cond`` into a select anyway.

Gradients: a recomputed page's value is always the fresh ``fn(...)`` output (even when it is
bitwise equal to the old value), so gradients flow through every recomputed page; a cut-off
page's descendants keep their old values and get no gradient from this step's inputs, which
matches the derivative wherever ``fn`` is locally constant.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core._sharding import keep_sharding
from mmsb_jax.core.graph import Derivation, Graph
from mmsb_jax.core.pages import State
from mmsb_jax.errors import (
    DTypeError,
    GraphError,
    SchemaMismatchError,
    ShapeError,
    UnknownPageError,
)

__all__ = ["COND_MIN_COST", "SKIP_MODES", "Plan", "plan", "propagate"]

SKIP_MODES: tuple[str, ...] = ("auto", "cond", "where")
"""Ways to skip a cut-off page at run time (see the module docstring)."""

COND_MIN_COST: int = 1 << 16
"""``skip="auto"`` uses ``lax.cond`` for pages with :attr:`Derivation.cost` >= this value."""


class Plan(NamedTuple):
    """The static propagation plan of one graph and dirty set.

    Attributes:
      dirty: the dirty pages, deduplicated, in schema order.
      order: the affected derived pages (descendants of ``dirty``) in topological order.
      reads: every page the plan reads or writes (inputs of ``order`` and ``order``), in
        schema order.
    """

    dirty: tuple[str, ...]
    order: tuple[str, ...]
    reads: tuple[str, ...]


@functools.lru_cache(maxsize=512)
def _plan_cached(graph: Graph, dirty: tuple[str, ...]) -> Plan:
    pos = {n: i for i, n in enumerate(graph.schema.names)}
    dirty = tuple(sorted(set(dirty), key=pos.__getitem__))
    order = graph.descendants(dirty)
    reads = set(order)
    for n in order:
        reads.update(graph.inputs(n))
    return Plan(dirty, order, tuple(sorted(reads, key=pos.__getitem__)))


def plan(graph: Graph, dirty: str | Iterable[str]) -> Plan:
    """The static :class:`Plan` that :func:`propagate` follows for ``dirty``.

    Raises:
      UnknownPageError: a dirty name is not a page of the graph.
    """
    if not isinstance(graph, Graph):
        raise GraphError(f"expected a Graph, got {type(graph).__name__}")
    dirty = (dirty,) if isinstance(dirty, str) else tuple(dirty)
    for n in dirty:
        if not isinstance(n, str) or n not in graph:
            raise UnknownPageError(str(n), graph.schema.names)
    return _plan_cached(graph, dirty)


def _check_present(p: Plan, state: State) -> None:
    if not isinstance(state, State):
        raise GraphError(f"propagate expects a State, got {type(state).__name__}")
    missing = [n for n in p.reads if n not in state.pages]
    missing += [n for n in p.order if n not in state.epochs]
    if missing:
        raise SchemaMismatchError(
            f"state has no page {missing[0]!r} of the graph; build it with "
            "mm.init_state(graph.schema)")


def _check_specs(graph: Graph, p: Plan, pages: Mapping[str, jax.Array]) -> None:
    """Shape and dtype of every page the plan reads (at trace time: shapes are static)."""
    for n in p.reads:
        spec = graph.schema[n]
        page = pages[n]
        if tuple(page.shape) != spec.shape:
            raise ShapeError(
                f"state page {n!r} has shape {tuple(page.shape)}; the graph's schema says "
                f"{spec.shape} (under vmap, map over the batch axis)")
        if np.dtype(page.dtype) != np.dtype(spec.dtype):
            raise DTypeError(f"state page {n!r} is {page.dtype}; the graph's schema says "
                             f"{spec.dtype}")


def _bits(x: jax.Array) -> jax.Array:
    """An integer view of ``x`` whose equality is bitwise equality."""
    dt = np.dtype(x.dtype)
    if jnp.issubdtype(dt, jnp.complexfloating):
        return jnp.stack([_bits(jnp.real(x)), _bits(jnp.imag(x))])
    if jnp.issubdtype(dt, jnp.floating):
        return lax.bitcast_convert_type(x, np.dtype(f"uint{8 * dt.itemsize}"))
    return x


def _differs(new: jax.Array, old: jax.Array) -> jax.Array:
    """``bool[]``: whether ``new`` and ``old`` differ in any bit."""
    if new.size == 0:
        return jnp.zeros((), bool)
    new, old = lax.stop_gradient(new), lax.stop_gradient(old)
    return jnp.any(_bits(new) != _bits(old))


def _call(d: Derivation, args: tuple[jax.Array, ...]) -> jax.Array:
    """Run ``d.fn`` and check that it returns an array of the page's spec."""
    raw = d.fn(*args)
    if not isinstance(raw, jax.Array | np.ndarray | np.generic | int | float | bool | complex):
        raise GraphError(f"derived page {d.name!r}: fn returned {type(raw).__name__}, "
                         "not an array")
    out = jnp.asarray(raw)
    if tuple(out.shape) != d.spec.shape:
        raise ShapeError(f"derived page {d.name!r}: fn returned shape {tuple(out.shape)}, "
                         f"the page has shape {d.spec.shape}")
    if np.dtype(out.dtype) != np.dtype(d.spec.dtype):
        raise DTypeError(f"derived page {d.name!r}: fn returned {out.dtype}, the page is "
                         f"{d.spec.dtype}")
    return lax.convert_element_type(out, d.spec.dtype)  # drops weak types


def _use_cond(d: Derivation, skip: str) -> bool:
    return skip == "cond" or (skip == "auto" and d.cost >= COND_MIN_COST)


def _recompute(d: Derivation, args: tuple[jax.Array, ...], old: jax.Array, epoch: jax.Array):
    """``(new, epoch', changed)`` for a page whose inputs changed."""
    new = _call(d, args)
    flag = _differs(new, old)
    return new, epoch + flag.astype(jnp.int32), flag


def _float0_like(x: jax.Array) -> np.ndarray:
    return np.zeros(np.shape(x), jax.dtypes.float0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def _maybe_recompute(d: Derivation, use_cond: bool, trigger: jax.Array,
                     args: tuple[jax.Array, ...], old: jax.Array, epoch: jax.Array):
    """``(new, epoch', changed)`` of a page whose inputs changed only if ``trigger``.

    With ``use_cond`` the recomputation sits in a ``lax.cond`` branch, so nothing of it runs
    when the page is cut off; otherwise it is computed and discarded with ``jnp.where``.

    Differentiation: the page's value is ``d.fn(*args)`` whether or not it was recomputed (a
    cut-off page's inputs are bit-identical to those it was last computed from), so its tangent
    is always the tangent of ``d.fn`` at ``args`` — never zero just because the value was kept.
    """
    if use_cond:
        # The whole step (value, comparison, epoch) sits in the branch, so nothing of it runs
        # when the page is cut off.
        return lax.cond(trigger, lambda xs, o, e: _recompute(d, xs, o, e),
                        lambda xs, o, e: (o, e, jnp.zeros((), bool)), args, old, epoch)
    # Not triggered: new is old, so _differs is False without "trigger &"; keeping flags one
    # level deep stops a scalar chain through every ancestor.
    new = jnp.where(trigger, _call(d, args), old)
    flag = _differs(new, old)
    return new, epoch + flag.astype(jnp.int32), flag


@_maybe_recompute.defjvp
def _maybe_recompute_jvp(d, use_cond, primals, tangents):
    trigger, args, old, epoch = primals
    _, targs, _, _ = tangents
    out = _maybe_recompute(d, use_cond, trigger, args, old, epoch)
    _, tnew = jax.jvp(lambda *xs: _call(d, xs), args, targs)
    return out, (tnew, _float0_like(epoch), _float0_like(out[2]))


def _propagate_impl(graph: Graph, dirty: tuple[str, ...], skip: str,
                    pages: Mapping[str, jax.Array], epochs: Mapping[str, jax.Array],
                    shardings: tuple[tuple[str, Any], ...] = ()):
    """Run the plan. ``pages`` holds ``plan.reads``; ``epochs`` holds ``plan.order``.

    ``shardings`` (static) are the recorded shardings of derived pages: each recomputed page is
    placed back on its recorded sharding, whatever sharding XLA would infer from its inputs.
    """
    p = _plan_cached(graph, dirty)
    _check_specs(graph, p, pages)
    pages = dict(pages)
    epochs = dict(epochs)
    # changed[n] is True (known at trace time) or a traced bool[]; pages absent are unchanged.
    # A dirty page stays changed even when it is also recomputed: its children were computed
    # before it was written, so they must be recomputed whatever its new value is.
    changed: dict[str, Any] = dict.fromkeys(p.dirty, True)
    for n in p.order:
        d = graph.derivation(n)
        flags = [changed[i] for i in d.inputs if i in changed]
        args = tuple(pages[i] for i in d.inputs)
        old, epoch = pages[n], epochs[n]
        if any(f is True for f in flags):
            new, epoch, flag = _recompute(d, args, old, epoch)
        else:
            trigger = functools.reduce(jnp.logical_or, flags)
            new, epoch, flag = _maybe_recompute(d, _use_cond(d, skip), trigger, args, old, epoch)
        pages[n] = new
        epochs[n] = epoch
        if changed.get(n) is not True:
            changed[n] = flag
    held = dict(shardings)
    out_pages = {n: keep_sharding(pages[n], held.get(n)) for n in p.order}
    return out_pages, epochs, {n: jnp.asarray(changed[n], bool) for n in p.order}


_propagate_jit = jax.jit(_propagate_impl, static_argnums=(0, 1, 2, 5))


def propagate(graph: Graph, state: State, dirty: str | Iterable[str], *,
              return_changed: bool = False,
              skip: Literal["auto", "cond", "where"] = "auto",
              ) -> State | tuple[State, dict[str, jax.Array]]:
    """Recompute the derived pages affected by changes to ``dirty`` pages.

    Pure: returns a new State. Call it eagerly (it runs a cached jitted plan, one compilation
    per graph, dirty set and page shapes) or inside your own ``jax.jit`` with ``graph`` and
    ``dirty`` static, e.g. ``jax.jit(mm.propagate, static_argnames=("graph", "dirty"))``.
    Works under ``jax.grad`` and ``jax.vmap`` (batch axis on every leaf of ``state``).

    Args:
      graph: the dependency graph; ``state`` must hold ``graph.schema``'s pages.
      state: pages ``{name: [*spec.shape]}`` and epochs ``{name: int32[]}``.
      dirty: names of pages that changed since the derived pages were last computed (usually
        the pages of the deltas just applied). A dirty derived page counts as changed; it is
        recomputed only if it also descends from another dirty page.
      return_changed: also return, for every page of ``graph.schema``, a ``bool[]`` saying
        whether this call changed it (dirty pages: True; cut-off or untouched pages: False).
      skip: how a page whose inputs all came out unchanged is skipped at run time:
        ``"cond"`` (``lax.cond``), ``"where"`` (``jnp.where``) or ``"auto"`` (``cond`` for
        pages with estimated cost >= :data:`COND_MIN_COST`). Results are identical.

    Returns:
      ``state'`` with every affected derived page recomputed once, in topological order, and its
      epoch advanced by one if its value changed; or ``(state', changed)`` with
      ``return_changed=True``.
      On a sharded state (``init_state(graph.schema, mesh=...)``) every recomputed derived page
      keeps the sharding recorded in ``state.shardings`` (its ``sharding=`` spec, or replicated);
      base pages are not touched.

    >>> import jax.numpy as jnp, mmsb_jax as mm
    >>> g = mm.Graph(mm.Schema([mm.PageSpec("x", (3,))])).derive("y", ("x",), jnp.sum)
    >>> s = mm.apply(mm.init_state(g.schema), mm.Delta.full("x", jnp.array([1.0, 2.0, 3.0])))
    >>> s, changed = mm.propagate(g, s, ("x",), return_changed=True)
    >>> float(s.pages["y"]), int(s.epochs["y"]), bool(changed["y"])
    (6.0, 1, True)
    >>> s = mm.propagate(g, mm.apply(s, mm.Delta.full("x", jnp.array([3.0, 2.0, 1.0]))), "x")
    >>> float(s.pages["y"]), int(s.epochs["y"])   # same sum: cut off, epoch unchanged
    (6.0, 1)

    Raises:
      UnknownPageError: a dirty name is not a page of the graph.
      SchemaMismatchError: ``state`` lacks a page the plan needs.
      ShapeError, DTypeError: a state page differs from the graph's spec, or a derived
        function returns an array of the wrong shape or dtype (raised at trace time, before
        anything is computed).
    """
    if skip not in SKIP_MODES:
        raise GraphError(f"skip must be one of {SKIP_MODES}, got {skip!r}")
    p = plan(graph, dirty)
    _check_present(p, state)
    if p.order:
        pages = {n: state.pages[n] for n in p.reads}
        epochs = {n: state.epochs[n] for n in p.order}
        held = tuple((n, sh) for n, sh in state.shardings if n in set(p.order))
        new_pages, new_epochs, flags = _propagate_jit(graph, p.dirty, skip, pages, epochs,
                                                      held)
        new_state = state.with_pages(new_pages, new_epochs)
    else:
        new_state, flags = state, {}
    if not return_changed:
        return new_state
    dirty_set = set(p.dirty)
    changed = {
        n: flags[n] if n in flags else jnp.asarray(n in dirty_set)
        for n in graph.schema.names
    }
    return new_state, changed
