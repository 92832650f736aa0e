"""Graph rewriting: fuse chains of derived pages, drop derived pages nobody reads.

Both rewrites return a new :class:`~mmsb_jax.core.graph.Graph` with fewer pages for
:func:`mm.propagate <mmsb_jax.core.propagate.propagate>` to store, compare and cut off. The
functions themselves are not changed, only composed, so the propagated values of the kept pages
equal the original's: bit for bit for exact computations (integer, bool, min/max, selections),
and for floating point up to rounding. XLA decides per compiled program how to fuse elementwise
float ops (e.g. ``a * b + c`` into an FMA), and a page boundary that disappears changes what it
fuses; already ``jax.jit(f)`` and eager ``f`` can differ by an ulp on CPU.
:func:`drop_dead` alone changes nothing that a kept page computes and stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from mmsb_jax.core.graph import Derivation, Graph
from mmsb_jax.core.pages import State
from mmsb_jax.errors import GraphError, SchemaMismatchError, UnknownPageError

__all__ = ["drop_dead", "fuse_chains", "live_pages", "restrict_state"]


def _names(names: str | Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        return (names,)
    try:
        out = tuple(names)
    except TypeError:
        raise GraphError(f"{what} must be a page name or an iterable of page names") from None
    for n in out:
        if not isinstance(n, str):
            raise GraphError(f"{what} must be page names (str), got {n!r}")
    return out


def _check_graph(graph: Any) -> None:
    if not isinstance(graph, Graph):
        raise GraphError(f"expected a Graph, got {type(graph).__name__}")


def _check_known(graph: Graph, names: tuple[str, ...]) -> None:
    for n in names:
        if n not in graph:
            raise UnknownPageError(n, graph.schema.names)


def live_pages(graph: Graph, outputs: str | Iterable[str]) -> tuple[str, ...]:
    """Derived pages that some page of ``outputs`` depends on (or is), in topological order.

    Raises:
      GraphError: ``graph`` is not a Graph or ``outputs`` is not a list of names.
      UnknownPageError: an output is not a page of the graph.
    """
    _check_graph(graph)
    outputs = _names(outputs, "outputs")
    _check_known(graph, outputs)
    live: set[str] = set()
    stack = [n for n in outputs if graph.is_derived(n)]
    while stack:
        n = stack.pop()
        if n in live:
            continue
        live.add(n)
        stack.extend(i for i in graph.inputs(n) if graph.is_derived(i))
    return tuple(n for n in graph.derived if n in live)


def drop_dead(graph: Graph, outputs: str | Iterable[str]) -> Graph:
    """Remove the derived pages that no page of ``outputs`` depends on.

    Pages a dead page is derived from may be live; a dead page's descendants are all dead (an
    output depending on one would depend on it), so the graph stays well formed. Signal edges
    of removed pages go with them.

    Args:
      graph: the dependency graph.
      outputs: the pages whose values are wanted (base or derived).

    Returns:
      A new Graph with the base schema and the live derived pages (:func:`live_pages`); the
      propagated values of every kept page equal the original's bit for bit.

    Raises:
      GraphError: ``graph`` is not a Graph or ``outputs`` is not a list of names.
      UnknownPageError: an output is not a page of the graph.
    """
    live = set(live_pages(graph, outputs))
    out = graph
    for n in reversed(graph.derived):
        if n not in live:
            out = out.remove(n)
    return out


def _substitute(consumer: Derivation, producer: Derivation) -> tuple[tuple[str, ...],
                                                                     Callable[..., Any]]:
    """Inputs and function of ``consumer`` with ``producer`` computed inline."""
    inputs = tuple(dict.fromkeys(i for name in consumer.inputs
                                 for i in (producer.inputs if name == producer.name else (name,))))
    where = {n: k for k, n in enumerate(inputs)}
    inner_pos = tuple(where[i] for i in producer.inputs)
    outer = tuple(None if name == producer.name else where[name] for name in consumer.inputs)
    inner_fn, outer_fn = producer.fn, consumer.fn

    def fused(*args: Any) -> Any:
        mid = inner_fn(*(args[k] for k in inner_pos))
        return outer_fn(*(mid if k is None else args[k] for k in outer))

    fused.__name__ = (f"{getattr(outer_fn, '__name__', 'fn')}_of_"
                      f"{getattr(inner_fn, '__name__', 'fn')}")
    fused.__qualname__ = fused.__name__
    return inputs, fused


def fuse_chains(graph: Graph, keep: str | Iterable[str] = ()) -> Graph:
    """Inline every derived page that has exactly one reader into that reader.

    A derived page ``B`` read by a single derived page ``C`` (and not in ``keep``, not an end of
    a signal edge) is removed and ``C`` is redefined as ``C.fn`` composed with ``B.fn`` on
    ``B``'s inputs, so a chain ``A -> B1 -> ... -> Bk -> C`` becomes one page ``C = f(A)``.
    Pages with two or more readers stay (inlining them would compute them twice). Repeated
    until no page qualifies.

    Args:
      graph: the dependency graph.
      keep: pages whose values are read outside the graph (outputs); they are never inlined.
        Derived pages nobody reads are not in any chain and always stay (see
        :func:`drop_dead`).

    Returns:
      A new Graph; the propagated value and epoch of every page it keeps equal the original's
      (each original function runs on the same inputs; only intermediate pages are not
      stored): bit for bit for exact (integer/bool) computations, up to float rounding
      otherwise (see the module docstring).

    Raises:
      GraphError: ``graph`` is not a Graph or ``keep`` is not a list of names.
      UnknownPageError: a page of ``keep`` is not a page of the graph.
    """
    _check_graph(graph)
    keep_set = set(_names(keep, "keep"))
    _check_known(graph, tuple(keep_set))
    keep_set.update(n for edge in graph.signals for n in edge)
    defs = {n: graph.derivation(n) for n in graph.derived}
    readers: dict[str, list[str]] = {}
    for n, d in defs.items():
        for i in dict.fromkeys(d.inputs):
            readers.setdefault(i, []).append(n)
    inputs = {n: d.inputs for n, d in defs.items()}
    fns = {n: d.fn for n, d in defs.items()}
    removed: set[str] = set()
    for b in graph.derived:  # topological order: a chain folds into its last page
        rd = readers.get(b, [])
        if b in keep_set or len(rd) != 1:
            continue
        c = rd[0]
        producer = Derivation(b, inputs[b], fns[b], defs[b].spec, "", 0)
        consumer = Derivation(c, inputs[c], fns[c], defs[c].spec, "", 0)
        new_inputs, fused = _substitute(consumer, producer)
        for i in dict.fromkeys(inputs[b]):
            readers[i] = [r for r in readers[i] if r != b]
            if c not in readers[i]:
                readers[i].append(c)
        inputs[c], fns[c] = new_inputs, fused
        removed.add(b)
    out = Graph(graph.base)
    for n in graph.derived:
        if n not in removed:
            out = out.derive(n, inputs[n], fns[n], sharding=defs[n].spec.sharding)
    for src, dst in graph.signals:
        out = out.signal(src, dst)
    return out


def restrict_state(state: State, graph: Graph) -> State:
    """The pages and epochs of ``state`` that ``graph.schema`` names (to run a rewritten graph).

    Raises:
      SchemaMismatchError: ``state`` lacks a page of ``graph.schema``.
    """
    _check_graph(graph)
    if not isinstance(state, State):
        raise GraphError(f"expected a State, got {type(state).__name__}")
    names = graph.schema.names
    missing = [n for n in names if n not in state.pages]
    if missing:
        raise SchemaMismatchError(f"state has no page {missing[0]!r} of the graph")
    kept = set(names)
    return State({n: state.pages[n] for n in names}, {n: state.epochs[n] for n in names},
                 tuple((n, s) for n, s in state.shardings if n in kept))
