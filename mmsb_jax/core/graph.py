"""The dependency graph of derived pages (the seed's ShadowPageGraph).

A :class:`Graph` starts from a base :class:`~mmsb_jax.core.pages.Schema` and adds *derived*
pages, each computed by a pure function of other pages::

    g = mm.Graph(schema).derive("energy", inputs=("pos", "vel"), fn=energy_fn)
    state = mm.init_state(g.schema)      # base pages, then derived pages (zeros, epoch 0)
    state = mm.propagate(g, state, dirty=("pos",))

A graph is immutable and hashable, so it can be a static argument of ``jax.jit``. Every change
(:meth:`Graph.derive`, :meth:`Graph.signal`, :meth:`Graph.remove`) returns a new graph and leaves
the old one as it was, including when the change is rejected.

Two kinds of edges:

* *data* edges ``input -> derived`` come from :meth:`Graph.derive`; :func:`mm.propagate
  <mmsb_jax.core.propagate.propagate>` recomputes along them. They must form a DAG.
* *signal* edges ``src -> dst`` (:meth:`Graph.signal`) only notify: when ``src`` changes,
  subscribers of ``dst`` are told (:meth:`Graph.notified`); nothing is recomputed. They do not
  take part in ordering or cycle detection (notification is one hop, so a signal cycle cannot
  loop).

Provenance: the jaxpr of each derived function, traced on its input specs, is hashed with its
input names and constants into a SHA-256 digest (:meth:`Graph.provenance`). Checkpoints record
it; :func:`changed_provenance` lists the pages whose definition changed since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.extend.core as jex
import numpy as np

from mmsb_jax.core.pages import PageSpec, Schema
from mmsb_jax.errors import (
    CycleError,
    DependencyError,
    GraphError,
    MMSBError,
    PageExistsError,
    ShapeError,
    UnknownPageError,
)

__all__ = ["Derivation", "Graph", "changed_provenance"]

_ADDRESS_RE = re.compile(r" at 0x[0-9a-fA-FX]+")


@dataclasses.dataclass(frozen=True, eq=False)
class Derivation:
    """The definition of one derived page (immutable; built by :meth:`Graph.derive`).

    Attributes:
      name: the derived page's name.
      inputs: the input page names; ``fn`` receives the input pages positionally in this order.
      fn: ``fn(*inputs) -> Array[*spec.shape]`` of ``spec.dtype``; pure and traceable.
      spec: the output :class:`PageSpec`, inferred by tracing ``fn`` on the input specs.
      digest: SHA-256 hex digest of the input names, the jaxpr and its constants (provenance).
      cost: a static estimate of the work of ``fn`` (elements produced by the jaxpr's
        equations, nested jaxprs included, matmuls counted by multiply-adds). Used by
        ``propagate(skip="auto")`` to decide whether skipping the page with ``lax.cond`` pays.
    """

    name: str
    inputs: tuple[str, ...]
    fn: Callable[..., Any]
    spec: PageSpec
    digest: str
    cost: int

    def _key(self) -> tuple[Any, ...]:
        return (self.name, self.inputs, self.spec, self.digest)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Derivation) and self._key() == other._key()
                and self.fn is other.fn)

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        fn_name = getattr(self.fn, "__name__", type(self.fn).__name__)
        return (f"Derivation({self.name!r} = {fn_name}({', '.join(self.inputs)}) -> "
                f"{self.spec.dtype}{list(self.spec.shape)})")


def _as_names(names: str | Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        return (names,)
    try:
        out = tuple(names)
    except TypeError:
        raise GraphError(f"{what} must be a page name or an iterable of page names, "
                         f"got {type(names).__name__}") from None
    for n in out:
        if not isinstance(n, str):
            raise GraphError(f"{what} must be page names (str), got {n!r}")
    return out


def _estimate_cost(jaxpr: jex.Jaxpr) -> int:
    """Elements produced by the equations of ``jaxpr`` (recursively); matmuls by multiply-adds."""
    total = 0
    for eqn in jaxpr.eqns:
        out = sum(int(np.prod(getattr(v.aval, "shape", ()), dtype=np.int64)) for v in eqn.outvars)
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape  # pyright: ignore[reportAttributeAccessIssue]
            out *= int(np.prod([lhs_shape[d] for d in contract], dtype=np.int64))
        inner = sum(_estimate_cost(j) for j in jex.jaxprs_in_params(eqn.params))
        if eqn.primitive.name == "scan":
            inner *= int(eqn.params.get("length", 1))
        total += out + inner
    return total


def _digest(inputs: tuple[str, ...], closed: jex.ClosedJaxpr) -> str:
    h = hashlib.sha256()
    h.update(repr(inputs).encode())
    h.update(b"\0")
    h.update(_ADDRESS_RE.sub("", str(closed.jaxpr)).encode())
    for c in closed.consts:
        arr = np.asarray(c) if getattr(c, "is_fully_addressable", True) else None
        h.update(f"\0{np.dtype(c.dtype).name}{tuple(c.shape)}".encode())
        if arr is not None:
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _trace(name: str, inputs: tuple[str, ...], fn: Callable[..., Any],
           in_specs: Sequence[PageSpec], sharding: Any) -> Derivation:
    """Trace ``fn`` on the input specs: output spec, provenance digest and cost estimate."""
    structs = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in in_specs]
    try:
        closed, out = jax.make_jaxpr(fn, return_shape=True)(*structs)
    except MMSBError:
        raise
    except (TypeError, ValueError) as e:
        sig = ", ".join(f"{n}: {s.dtype}{list(s.shape)}" for n, s in zip(inputs, in_specs,
                                                                          strict=True))
        raise ShapeError(f"derived page {name!r}: fn fails on its inputs ({sig}): {e}") from e
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise GraphError(f"derived page {name!r}: fn must return one array, got "
                         f"{jax.tree.structure(out)}")
    spec = PageSpec(name, tuple(out.shape), np.dtype(out.dtype).name, sharding)
    return Derivation(name, inputs, fn, spec, _digest(inputs, closed),
                      _estimate_cost(closed.jaxpr))


class Graph:
    """An immutable dependency graph: a base schema plus derived pages and signal edges.

    ``Graph(schema)`` has no derived pages. Build it up with :meth:`derive` and :meth:`signal`
    (each returns a new graph). Equality and hashing use the base schema, the derivations
    (name, inputs, output spec, provenance digest, in definition order) and the signal edges;
    equality additionally requires the *same function objects* (``is``), so a graph rebuilt from
    fresh lambdas is a different static argument to ``jax.jit`` and causes a retrace.

    >>> import jax.numpy as jnp, mmsb_jax as mm
    >>> g = mm.Graph(mm.Schema([mm.PageSpec("x", (3,))]))
    >>> g = g.derive("y", ("x",), lambda x: 2.0 * x).derive("z", ("y",), jnp.sum)
    >>> g.schema.names, g.schema["z"].shape
    (('x', 'y', 'z'), ())
    """

    __slots__ = ("_base", "_by_name", "_children", "_defs", "_hash", "_order", "_schema",
                 "_signals")

    def __init__(self, schema: Schema):
        if not isinstance(schema, Schema):
            raise GraphError(f"Graph expects a Schema, got {type(schema).__name__}")
        self._init(schema, {}, frozenset())

    def _init(self, base: Schema, defs: Mapping[str, Derivation],
              signals: frozenset[tuple[str, str]]) -> None:
        self._base = base
        self._defs: dict[str, Derivation] = dict(defs)  # insertion order = definition order
        self._signals = signals
        children: dict[str, list[str]] = {}
        for d in self._defs.values():
            for i in dict.fromkeys(d.inputs):
                children.setdefault(i, []).append(d.name)
        self._children = {k: tuple(v) for k, v in children.items()}
        self._order = self._toposort()
        self._schema = base.extend(self._defs[n].spec for n in self._order)
        self._by_name = {n: i for i, n in enumerate(self._schema.names)}
        self._hash = hash((base, tuple(d._key() for d in self._defs.values()),
                           tuple(sorted(signals))))

    @classmethod
    def _make(cls, base: Schema, defs: Mapping[str, Derivation],
              signals: frozenset[tuple[str, str]]) -> Graph:
        g = cls.__new__(cls)
        g._init(base, defs, signals)
        return g

    def _toposort(self) -> tuple[str, ...]:
        """Derived pages in topological order; ties broken by definition order (Kahn)."""
        rank = {n: i for i, n in enumerate(self._defs)}
        indeg = {n: sum(1 for i in dict.fromkeys(d.inputs) if i in self._defs)
                 for n, d in self._defs.items()}
        ready = [(rank[n], n) for n, k in indeg.items() if k == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for c in self._children.get(n, ()):
                indeg[c] -= 1
                if indeg[c] == 0:
                    heapq.heappush(ready, (rank[c], c))
        # derive() rejects cycles before a graph is built, so every page is ordered.
        assert len(order) == len(self._defs), "internal error: cycle in a built graph"
        return tuple(order)

    # -- read-only views ---------------------------------------------------------------------
    @property
    def base(self) -> Schema:
        """The base schema (pages written by deltas)."""
        return self._base

    @property
    def schema(self) -> Schema:
        """The base schema followed by the derived pages in topological order."""
        return self._schema

    @property
    def derived(self) -> tuple[str, ...]:
        """Derived page names in topological order."""
        return self._order

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        """Data edges ``(input, derived)``, grouped by derived page in topological order."""
        return tuple((i, n) for n in self._order for i in dict.fromkeys(self._defs[n].inputs))

    @property
    def signals(self) -> tuple[tuple[str, str], ...]:
        """Signal edges ``(src, dst)``, sorted by the pages' schema positions."""
        return tuple(sorted(self._signals, key=lambda e: (self._by_name[e[0]],
                                                          self._by_name[e[1]])))

    def derivation(self, name: str) -> Derivation:
        """The :class:`Derivation` of derived page ``name``.

        Raises:
          UnknownPageError: ``name`` is not a derived page.
        """
        try:
            return self._defs[name]
        except KeyError:
            raise UnknownPageError(name, self._order) from None

    def inputs(self, name: str) -> tuple[str, ...]:
        """The input page names of derived page ``name`` (``fn``'s argument order)."""
        return self.derivation(name).inputs

    def children(self, name: str) -> tuple[str, ...]:
        """Derived pages that read ``name`` directly, in definition order.

        Raises:
          UnknownPageError: ``name`` is not a page of the graph.
        """
        self._check_known((name,))
        return self._children.get(name, ())

    def is_derived(self, name: str) -> bool:
        """Whether ``name`` is a derived page of this graph."""
        return name in self._defs

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        return (isinstance(other, Graph) and self._hash == other._hash
                and self._base == other._base and self._signals == other._signals
                and list(self._defs.values()) == list(other._defs.values()))

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        derived = ", ".join(f"{n}({', '.join(self._defs[n].inputs)})" for n in self._order)
        return (f"Graph(base={len(self._base)} pages, derived=[{derived}], "
                f"signals={len(self._signals)})")

    def _check_known(self, names: Iterable[str]) -> None:
        for n in names:
            if n not in self._by_name:
                raise UnknownPageError(n, self._schema.names)

    # -- traversal -----------------------------------------------------------------------------
    def topological_order(self) -> tuple[str, ...]:
        """Every page, inputs before the pages derived from them.

        Returns:
          ``graph.schema.names``: base pages in schema order, then derived pages in topological
          order (ties broken by the order in which pages were first derived).
        """
        return self._schema.names

    def descendants(self, names: str | Iterable[str]) -> tuple[str, ...]:
        """Derived pages reachable from ``names`` along data edges, in topological order.

        A page of ``names`` is included only if it is reachable from another page of ``names``.

        Raises:
          UnknownPageError: a name is not a page of the graph.
        """
        names = _as_names(names, "names")
        self._check_known(names)
        seen: set[str] = set()
        queue = deque(c for n in names for c in self._children.get(n, ()))
        while queue:
            n = queue.popleft()
            if n not in seen:
                seen.add(n)
                queue.extend(self._children.get(n, ()))
        return tuple(n for n in self._order if n in seen)

    def notified(self, dirty: str | Iterable[str]) -> tuple[str, ...]:
        """Signal targets to notify when ``dirty`` pages change, in schema order.

        A target is listed when its signal source is dirty or a descendant of a dirty page (so
        possibly changed by :func:`propagate`). Notification is one hop: targets' own signals
        and descendants are not followed.
        """
        dirty = _as_names(dirty, "dirty")
        changed = set(dirty) | set(self.descendants(dirty))
        targets = {dst for src, dst in self._signals if src in changed}
        return tuple(n for n in self._schema.names if n in targets)

    def _path(self, src: str, dst: str) -> tuple[str, ...] | None:
        """Shortest data-edge path ``src -> ... -> dst`` (BFS), or None."""
        parent: dict[str, str | None] = {src: None}
        queue = deque([src])
        while queue:
            n = queue.popleft()
            if n == dst:
                path = [n]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])  # type: ignore[arg-type]
                return tuple(reversed(path))
            for c in self._children.get(n, ()):
                if c not in parent:
                    parent[c] = n
                    queue.append(c)
        return None

    # -- changes (each returns a new Graph) ------------------------------------------------------
    def derive(self, name: str, inputs: str | Iterable[str], fn: Callable[..., Any], *,
               sharding: tuple[Any, ...] | None = None) -> Graph:
        """A new graph in which page ``name`` is ``fn(*inputs)``.

        The output spec is inferred by tracing ``fn`` on the inputs' ``ShapeDtypeStruct`` s (as
        ``jax.eval_shape`` does). Redefining an existing derived page replaces its definition
        (it keeps its place in definition order); its dependents are traced again against the
        new spec.

        Args:
          name: the derived page's name (a valid page name).
          inputs: input page names (base or derived), at least one; ``fn`` receives the pages
            positionally in this order.
          fn: pure function ``fn(*[Array[*spec_i.shape]]) -> Array[*out_shape]`` returning one
            array. It must be traceable (it runs under ``jit``, ``grad`` and ``vmap``).
          sharding: optional ``PartitionSpec`` axes for the derived page (see :class:`PageSpec`).

        Returns:
          A new :class:`Graph`; ``self`` is unchanged.

        Raises:
          PageExistsError: ``name`` is a base page.
          UnknownPageError: an input is not a page of the graph.
          CycleError: the definition would close a dependency cycle (``err.cycle`` names the
            pages in order, starting with ``name``).
          ShapeError: ``fn`` (or a dependent's fn, on a redefinition) fails on the input specs.
          GraphError: no inputs, ``fn`` not callable, or ``fn`` returns other than one array.
          SchemaError: ``name`` is not a valid page name.
        """
        if not isinstance(name, str):
            raise GraphError(f"page name must be a str, got {name!r}")
        inputs = _as_names(inputs, "inputs")
        if name in self._base:
            raise PageExistsError(f"{name!r} is a base page of the schema; derive a page with "
                                  "another name")
        if not inputs:
            raise GraphError(f"derived page {name!r} needs at least one input")
        if name in inputs:
            raise CycleError((name,))
        self._check_known(inputs)
        if not callable(fn):
            raise GraphError(f"derived page {name!r}: fn must be callable, got "
                             f"{type(fn).__name__}")
        if name in self._defs:
            for i in inputs:
                path = self._path(name, i)
                if path is not None:
                    raise CycleError(path)
        specs = [self._schema[i] for i in inputs]
        new = _trace(name, inputs, fn, specs, sharding)
        defs = dict(self._defs)
        defs[name] = new
        if name in self._defs and new.spec != self._defs[name].spec:
            defs = self._retrace_dependents(name, defs)
        return Graph._make(self._base, defs, self._signals)

    def _retrace_dependents(self, name: str, defs: dict[str, Derivation]
                            ) -> dict[str, Derivation]:
        """Re-infer the specs of ``name``'s descendants after its spec changed."""
        specs = {s.name: s for s in self._base}
        specs.update((n, d.spec) for n, d in defs.items())
        for n in self.descendants(name):
            d = defs[n]
            redone = _trace(n, d.inputs, d.fn, [specs[i] for i in d.inputs], d.spec.sharding)
            defs[n] = redone
            specs[n] = redone.spec
        return defs

    def signal(self, src: str, dst: str) -> Graph:
        """A new graph with a signal edge ``src -> dst`` (notify only, no recomputation).

        Adding an existing edge returns an equal graph.

        Raises:
          UnknownPageError: ``src`` or ``dst`` is not a page of the graph.
          CycleError: ``src == dst``.
        """
        self._check_known((src, dst))
        if src == dst:
            raise CycleError((src,))
        return Graph._make(self._base, self._defs, self._signals | {(src, dst)})

    def unsignal(self, src: str, dst: str) -> Graph:
        """A new graph without the signal edge ``src -> dst`` (no error if it is absent).

        Raises:
          UnknownPageError: ``src`` or ``dst`` is not a page of the graph.
        """
        self._check_known((src, dst))
        return Graph._make(self._base, self._defs, self._signals - {(src, dst)})

    def remove(self, name: str, *, cascade: bool = False) -> Graph:
        """A new graph without derived page ``name``, its data edges and its signal edges.

        Args:
          name: a derived page.
          cascade: also remove every descendant of ``name``; without it, a page that other
            pages depend on cannot be removed.

        Raises:
          UnknownPageError: ``name`` is not a page of the graph.
          GraphError: ``name`` is a base page.
          DependencyError: other derived pages use ``name`` and ``cascade`` is False
            (``err.dependents`` lists all of its descendants).
        """
        self._check_known((name,))
        if name not in self._defs:
            raise GraphError(f"{name!r} is a base page; only derived pages can be removed")
        below = self.descendants(name)
        if below and not cascade:
            raise DependencyError(name, below)
        drop = {name, *below}
        defs = {n: d for n, d in self._defs.items() if n not in drop}
        signals = frozenset(e for e in self._signals if e[0] not in drop and e[1] not in drop)
        return Graph._make(self._base, defs, signals)

    # -- provenance ------------------------------------------------------------------------------
    def provenance(self) -> dict[str, str]:
        """``{derived page: sha256 hex digest}`` in topological order.

        The digest covers the input names, the jaxpr of ``fn`` traced on the input specs (with
        object addresses removed, so it is stable across processes) and the values of the
        constants it closes over. It changes when the function's computation, its constants,
        its inputs or their shapes change; it also changes across JAX versions that print
        jaxprs differently.
        """
        return {n: self._defs[n].digest for n in self._order}


def changed_provenance(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """Pages whose provenance differs between two :meth:`Graph.provenance` records.

    Args:
      old: ``{page: digest}`` recorded earlier (e.g. in a checkpoint manifest).
      new: ``{page: digest}`` of the current graph.

    Returns:
      Sorted page names whose digest changed, plus pages present in only one of the records.
    """
    return sorted(n for n in set(old) | set(new) if old.get(n) != new.get(n))
