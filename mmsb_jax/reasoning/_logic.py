"""Logic as BOOLEAN-semiring fixed points: Horn rules and Datalog-style binary relations.

Horn rules. Propositions are indices ``0..P-1`` and a truth assignment is a boolean page
``bool[P]``. A rule ``head :- b1, ..., bn`` fires when every body atom holds. Forward chaining
iterates the immediate-consequence operator

    x ← facts ⊕ (⊕_{r: head[r] = p} ⊗_{b ∈ body[r]} x[b])

in the BOOLEAN semiring (``⊕ = or``, ``⊗ = and``): the ``⊗`` over a rule's body is an
``and``-reduction, the ``⊕`` over the rules that share a head is the semiring's segment
reduction (:data:`mmsb_jax.core.semiring.BOOLEAN`). The operator is monotone, so from ``facts``
the iteration climbs to the *least* fixed point — the set of atoms the rules entail — in at
most ``P + 1`` rounds (each round that does not stop adds an atom). Rules are a fixed-capacity
table (body padded with ``-1``), so rule sets of one capacity never recompile.

Binary relations. A relation over ``N`` entities is a matrix ``bool[N, N]``; the Datalog program
``path(X, Y) :- edge(X, Y).  path(X, Z) :- edge(X, Y), path(Y, Z).`` has as its least model the
transitive closure ``A⁺ = A ⊗ A*``, computed with the semiring's Kleene star
(:func:`mmsb_jax.core.semiring.closure`). :func:`ancestors` and :func:`descendants` read it by
rows and columns and agree with ``networkx.ancestors`` / ``networkx.descendants``.

>>> rules = horn_rules([("wet", ["rain"]), ("slippery", ["wet", "cold"])],
...                    names=["rain", "cold", "wet", "slippery"])
>>> horn_fixpoint(jnp.array([True, True, False, False]), rules).facts.tolist()
[True, True, True, True]
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax.core import semiring as sr
from mmsb_jax.errors import DTypeError, InvalidProblemError, ShapeError

__all__ = [
    "HornResult",
    "HornRules",
    "ancestors",
    "descendants",
    "horn_fixpoint",
    "horn_rules",
    "transitive_closure",
]


class HornRules(NamedTuple):
    """A fixed-capacity table of Horn rules ``head :- body`` (a pytree).

    Attributes:
      body: ``int32[R, B]`` proposition indices of each rule's body; ``-1`` pads. An all-padding
        body is an unconditional rule (its head is a fact).
      head: ``int32[R]`` the proposition each rule derives; ``-1`` disables the rule (padding).
    """

    body: jax.Array  # int32[R, B]
    head: jax.Array  # int32[R]


class HornResult(NamedTuple):
    """Result of :func:`horn_fixpoint`.

    Attributes:
      facts: ``bool[P]`` the least fixed point: every entailed proposition.
      depth: ``int32[P]`` the round in which each proposition was first derived (``0`` for a
        given fact, ``-1`` if never): the height of its shortest derivation.
      rounds: ``int32[]`` rounds of forward chaining run (the last one changed nothing).
    """

    facts: jax.Array  # bool[P]
    depth: jax.Array  # int32[P]
    rounds: jax.Array  # int32[]


def horn_rules(rules: Sequence[tuple[Any, Sequence[Any]]], *,
               names: Sequence[str] | None = None, num_props: int | None = None,
               max_body: int | None = None) -> HornRules:
    """Compile ``(head, body)`` pairs into a padded :class:`HornRules` table.

    Atoms are proposition indices, or names looked up in ``names``.

    Args:
      rules: ``[(head, [body atoms...]), ...]``, read as ``head :- body``.
      names: optional proposition names; position = index.
      num_props: ``P`` for range checks (defaults to ``len(names)`` when names are given).
      max_body: body capacity ``B`` (default: the longest body, at least 1); pad to a fixed
        capacity to reuse one compilation across rule sets.

    Returns:
      :class:`HornRules` with ``body: int32[R, B]``, ``head: int32[R]``.

    Raises:
      InvalidProblemError: an unknown name, an index outside ``[0, P)``, or a body longer than
        ``max_body``.

    >>> horn_rules([(2, [0, 1]), (3, [2])]).body.tolist()
    [[0, 1], [2, -1]]
    """
    index = {name: i for i, name in enumerate(names)} if names is not None else {}
    if num_props is None and names is not None:
        num_props = len(names)

    def atom(a: Any) -> int:
        if isinstance(a, str):
            if a not in index:
                raise InvalidProblemError(f"unknown proposition {a!r}")
            return index[a]
        try:
            i = operator.index(a)
        except TypeError:
            raise InvalidProblemError(f"an atom must be an int or a name, got {a!r}") from None
        if i < 0 or (num_props is not None and i >= num_props):
            raise InvalidProblemError(f"proposition {i} outside [0, {num_props})")
        return i

    heads = []
    bodies = []
    for rule in rules:
        try:
            head, body = rule
        except (TypeError, ValueError):
            raise InvalidProblemError(f"a rule is a (head, body) pair, got {rule!r}") from None
        if isinstance(body, str):
            body = [body]
        heads.append(atom(head))
        bodies.append([atom(b) for b in body])
    longest = max((len(b) for b in bodies), default=0)
    width = max(longest, 1) if max_body is None else operator.index(max_body)
    if longest > width or width < 1:
        raise InvalidProblemError(f"a body has {longest} atoms; max_body={width} (needs >= 1)")
    table = np.full((len(bodies), width), -1, np.int32)
    for r, body in enumerate(bodies):
        table[r, :len(body)] = body
    return HornRules(jnp.asarray(table), jnp.asarray(np.asarray(heads, np.int32)))


def _check_rules(facts: Any, rules: HornRules) -> tuple[jax.Array, HornRules]:
    facts = jnp.asarray(facts)
    if facts.dtype != jnp.bool_:
        raise DTypeError(f"facts must be bool[P], got {facts.dtype}")
    if facts.ndim != 1:
        raise ShapeError(f"facts must be bool[P] (vmap for batches), got {tuple(facts.shape)}")
    if not isinstance(rules, HornRules):
        raise InvalidProblemError(f"rules must be HornRules (see horn_rules), got "
                                  f"{type(rules).__name__}")
    body = jnp.asarray(rules.body)
    head = jnp.asarray(rules.head)
    for what, x, ndim in (("body", body, 2), ("head", head, 1)):
        if x.dtype == jnp.bool_ or not jnp.issubdtype(x.dtype, jnp.integer):
            raise DTypeError(f"rule {what} must be integers, got {x.dtype}")
        if x.ndim != ndim:
            raise ShapeError(f"rule {what} must have {ndim} dims, got {tuple(x.shape)}")
    if body.shape[0] != head.shape[0]:
        raise ShapeError(f"{body.shape[0]} bodies but {head.shape[0]} heads")
    num_props = facts.shape[0]
    if not isinstance(body, jax.core.Tracer) and not isinstance(head, jax.core.Tracer):
        for what, x in (("body", body), ("head", head)):
            host = np.asarray(x)
            bad = host[(host < -1) | (host >= num_props)]
            if bad.size:
                raise InvalidProblemError(f"rule {what} atoms {sorted(set(bad.tolist()))[:8]} "
                                          f"outside [-1, P={num_props})")
    return facts, HornRules(body.astype(jnp.int32), head.astype(jnp.int32))


@jax.jit
def _horn_jit(facts: jax.Array, rules: HornRules) -> HornResult:
    boolean = sr.BOOLEAN
    num_props = facts.shape[0]
    body_valid = rules.body >= 0
    safe_body = jnp.where(body_valid, rules.body, 0)
    # Disabled rules (head -1) go to segment P, which the segment reduction drops.
    target = jnp.where(rules.head >= 0, rules.head, num_props)

    def consequences(x: jax.Array) -> jax.Array:
        # ⊗ over the body; padding is the ⊗-identity `one`, so an empty body always fires.
        fired = jnp.all(jnp.where(body_valid, x[safe_body], boolean.one), axis=1)
        derived = boolean.segment_reduce(fired, target, num_props).astype(bool)  # ⊕ per head
        return boolean.add(facts, derived)

    def cond(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]) -> jax.Array:
        return carry[2]

    def body(carry: tuple[jax.Array, jax.Array, jax.Array, jax.Array]):
        x, depth, _, rounds = carry
        new = consequences(x)
        rounds = rounds + 1
        depth = jnp.where(new & ~x, rounds, depth)
        return new, depth, jnp.any(new != x), rounds

    depth0 = jnp.where(facts, 0, -1).astype(jnp.int32)
    x, depth, _, rounds = lax.while_loop(
        cond, body, (facts, depth0, jnp.bool_(True), jnp.int32(0)))
    return HornResult(x, depth, rounds)


def horn_fixpoint(facts: Any, rules: HornRules) -> HornResult:
    """Forward-chain Horn rules from ``facts`` to the least fixed point (BOOLEAN semiring).

    Pure and jittable; ``jax.vmap`` over ``facts`` answers many queries against one rule set.
    Terminates after at most ``P + 1`` rounds.

    Args:
      facts: ``bool[P]`` the given propositions.
      rules: :class:`HornRules` (``body: int32[R, B]``, ``head: int32[R]``).

    Returns:
      :class:`HornResult` ``(facts: bool[P], depth: int32[P], rounds: int32[])``.

    Raises:
      DTypeError: facts not bool, or non-integer rule indices.
      ShapeError: facts not 1-D, or bodies and heads of different lengths.
      InvalidProblemError: an atom outside ``[-1, P)``.

    >>> rules = horn_rules([(1, [0]), (2, [1]), (4, [3])])
    >>> r = horn_fixpoint(jnp.array([True, False, False, False, False]), rules)
    >>> r.facts.tolist(), r.depth.tolist()
    ([True, True, True, False, False], [0, 1, 2, -1, -1])
    """
    facts, rules = _check_rules(facts, rules)
    return _horn_jit(facts, rules)


def _check_relation(edges: Any) -> jax.Array:
    edges = jnp.asarray(edges)
    if edges.dtype != jnp.bool_:
        raise DTypeError(f"a relation must be bool[N, N], got {edges.dtype}")
    if edges.ndim != 2 or edges.shape[0] != edges.shape[1]:
        raise ShapeError(f"a relation must be a square bool[N, N], got {tuple(edges.shape)}")
    return edges


def _plus(edges: jax.Array) -> jax.Array:
    """``A⁺ = A ⊗ A*``: paths of length ``>= 1`` (BOOLEAN semiring)."""
    return sr.matmul(sr.BOOLEAN, edges, sr.closure(sr.BOOLEAN, edges))


def transitive_closure(edges: Any, *, reflexive: bool | None = False) -> jax.Array:
    """The transitive closure of a relation, as ``networkx.transitive_closure`` defines it.

    ``edges[u, v]`` is the edge ``u -> v``. Off the diagonal the result has ``[u, v]`` set when
    a path of length ``>= 1`` leads from ``u`` to ``v`` (``A⁺ = A ⊗ A*`` in the BOOLEAN
    semiring). The diagonal follows networkx's ``reflexive`` flag.

    Args:
      edges: ``bool[N, N]``.
      reflexive: ``False`` — ``[u, u]`` when ``u`` lies on a cycle (a self-loop included),
        networkx's default, i.e. ``A⁺``; ``True`` — every ``[u, u]`` (the reflexive closure
        ``A*``); ``None`` — no new ``[u, u]``: only the self-loops already in ``edges``.

    Returns:
      ``bool[N, N]``.

    Raises:
      DTypeError: not bool.
      ShapeError: not square.

    >>> transitive_closure(jnp.array([[False, True], [False, False]])).tolist()
    [[False, True], [False, False]]
    """
    edges = _check_relation(edges)
    if reflexive is True:
        return sr.closure(sr.BOOLEAN, edges)
    plus = _plus(edges)
    if reflexive is None:
        eye = jnp.eye(edges.shape[0], dtype=bool)
        return jnp.where(eye, edges, plus)
    return plus


def descendants(edges: Any) -> jax.Array:
    """``[u, v]``: ``v`` is reachable from ``u`` (``v != u``), as ``networkx.descendants(G, u)``.

    Args:
      edges: ``bool[N, N]``, ``edges[u, v]`` is the edge ``u -> v``.

    Returns:
      ``bool[N, N]`` whose row ``u`` is the descendant set of ``u`` (never ``u`` itself).

    Raises:
      DTypeError: not bool.
      ShapeError: not square.

    >>> descendants(jnp.array([[False, True], [False, False]]))[0].tolist()
    [False, True]
    """
    edges = _check_relation(edges)
    return _plus(edges) & ~jnp.eye(edges.shape[0], dtype=bool)


def ancestors(edges: Any) -> jax.Array:
    """``[v, u]``: ``u`` has a path to ``v`` (``u != v``), as ``networkx.ancestors(G, v)``.

    The Datalog query ``ancestor(U, V) :- parent(U, V). ancestor(U, W) :- parent(U, V),
    ancestor(V, W).`` answered for every node at once.

    Args:
      edges: ``bool[N, N]``, ``edges[u, v]`` is the edge ``u -> v`` (``u`` a parent of ``v``).

    Returns:
      ``bool[N, N]`` whose row ``v`` is the ancestor set of ``v`` (never ``v`` itself).

    Raises:
      DTypeError: not bool.
      ShapeError: not square.

    >>> ancestors(jnp.array([[False, True], [False, False]]))[1].tolist()
    [True, False]
    """
    return descendants(edges).T
