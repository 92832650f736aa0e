"""Goals (a target or a predicate on a page, with a weight) and weighted preferences."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmsb_jax._checks import check_number
from mmsb_jax.core.pages import State
from mmsb_jax.errors import DomainError, OptionError, ShapeError
from mmsb_jax.utility._base import Utility, _check_weight, as_utility, weighted_sum
from mmsb_jax.utility._builtins import (
    NORMS,
    _target_shape_check,
    as_float,
    distance,
    numeric_array,
)

__all__ = ["Goal", "Preference", "goals_satisfied", "preference_utility"]


@dataclasses.dataclass(frozen=True, eq=False)
class Goal:
    """A desired condition on one page: reach a target, or make a predicate hold.

    Exactly one of ``target`` and ``predicate`` is given.

    * Target goal: ``distance = ||page - target||_norm``; satisfied when ``distance <= tol``;
      ``utility = -weight * distance`` (0 at the goal, differentiable).
    * Predicate goal: ``predicate(page)`` returns either a ``bool[]`` (satisfied or not) or a
      real ``margin: f32[]`` that is ``>= 0`` exactly when the goal holds (e.g.
      ``lambda x: 1.0 - jnp.max(jnp.abs(x))`` for "every element within [-1, 1]"). With a
      margin, ``distance = relu(-margin)`` and ``utility = -weight * relu(-margin)^2``, which
      is differentiable; with a bool, ``utility = -weight * (1 - satisfied)``, a step whose
      gradient is zero.

    Attributes:
      page: the page the goal reads; ``[*S]``.
      target: array broadcastable to ``[*S]``, or None.
      predicate: function ``[*S] -> bool[] | f32[]``, or None.
      weight: finite importance ``>= 0`` (scales the utility).
      tol: satisfaction tolerance ``>= 0`` for target goals (in the goal's norm).
      norm: one of :data:`mmsb_jax.utility.NORMS` for target goals.
      name: readable name (default ``"goal(<page>)"``).

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (2,))]))
    >>> g = mm.intention.Goal("x", target=jnp.array([3.0, 4.0]), weight=2.0)
    >>> float(g.utility(s)), bool(g.satisfied(s))
    (-10.0, False)
    """

    page: str
    target: Any = None
    predicate: Callable[[jax.Array], jax.Array] | None = None
    weight: float = 1.0
    tol: float = 1e-3
    norm: str = "l2"
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.page, str):
            raise OptionError(f"Goal.page must be a page name, got {type(self.page).__name__}")
        if (self.target is None) == (self.predicate is None):
            raise OptionError("a Goal needs exactly one of target= and predicate=")
        if self.predicate is not None and not callable(self.predicate):
            raise OptionError("Goal.predicate must be a function of the page")
        if self.target is not None:
            t = numeric_array(self.target, "Goal.target")
            object.__setattr__(self, "target", as_float(t))
        w = _check_weight(self.weight, "Goal.weight")
        if isinstance(w, float) and w < 0:
            raise DomainError(f"Goal.weight must be >= 0, got {w}")
        object.__setattr__(self, "weight", w)
        check_number("Goal.tol", self.tol)
        if self.norm not in NORMS:
            raise OptionError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if not self.name:
            object.__setattr__(self, "name", f"goal({self.page})")

    def _predicate(self, state: State) -> jax.Array:
        out = jnp.asarray(self.predicate(state.page(self.page)))
        if out.shape != ():
            raise ShapeError(f"predicate of {self.name!r} returned shape {tuple(out.shape)}; "
                             "it must return a scalar bool or margin")
        return out

    def _distance(self, state: State) -> tuple[jax.Array, bool]:
        """(distance, whether it came from a real-valued margin)."""
        if self.target is not None:
            x = state.page(self.page)
            _target_shape_check(self.page, x.shape, self.target.shape)
            return distance(x, self.target, self.norm), False
        out = self._predicate(state)
        if out.dtype == jnp.bool_:
            return jnp.where(out, 0.0, 1.0).astype(jnp.float32), False
        return jax.nn.relu(-as_float(out)), True

    def distance(self, state: State) -> jax.Array:
        """How far ``state`` is from the goal: ``f32[] >= 0``, 0 when it holds exactly.

        Target goals: ``||page - target||``. Margin predicates: ``relu(-margin)``. Bool
        predicates: ``0.0`` if satisfied else ``1.0``.
        """
        return self._distance(state)[0]

    def satisfied(self, state: State) -> jax.Array:
        """``bool[]``: target within ``tol``, or the predicate holds (margin ``>= 0``)."""
        if self.target is not None:
            return self.distance(state) <= self.tol
        out = self._predicate(state)
        return out if out.dtype == jnp.bool_ else out >= 0

    def utility(self, state: State) -> jax.Array:
        """``f32[] <= 0``: ``-weight * distance`` (``-weight * relu(-margin)^2`` for margins)."""
        d, margin = self._distance(state)
        return -self.weight * (d * d if margin else d)

    def as_utility(self) -> Utility:
        """This goal's :meth:`utility` as a :class:`~mmsb_jax.utility.Utility`."""
        pages = (self.page,)
        return Utility(self.utility, self.name, pages)


class Preference(NamedTuple):
    """A weighted utility: how much an agent cares about one score of the State.

    Attributes:
      weight: finite real weight (negative to penalise a cost).
      utility: a :class:`~mmsb_jax.utility.Utility` or a function ``State -> []``.
    """

    weight: float
    utility: Utility | Callable[[State], jax.Array]


def preference_utility(items: Iterable[Preference | Goal | tuple[float, Any]]) -> Utility:
    """One utility from preferences and goals: ``sum_i w_i u_i + sum_j goal_j.utility``.

    Args:
      items: :class:`Preference` s, ``(weight, utility)`` pairs and :class:`Goal` s (a goal's
        own ``weight`` is already inside its utility, so it enters with weight 1).

    Returns:
      A :class:`~mmsb_jax.utility.Utility`.

    >>> import mmsb_jax as mm, jax.numpy as jnp
    >>> from mmsb_jax import utility as mu
    >>> s = mm.init_state(mm.Schema([mm.PageSpec("x", (2,))]))
    >>> u = mm.intention.preference_utility([
    ...     mm.intention.Preference(-1.0, mu.smoothness("x")),
    ...     mm.intention.Goal("x", target=1.0, norm="sq")])
    >>> float(u(s))
    -2.0
    """
    terms = []
    for it in items:
        if isinstance(it, Goal):
            terms.append((1.0, it.as_utility()))
        elif isinstance(it, tuple) and len(it) == 2:
            terms.append((it[0], as_utility(it[1])))
        else:
            raise OptionError(f"expected a Preference, Goal or (weight, utility), got {it!r}")
    return weighted_sum(terms)


def goals_satisfied(goals: Sequence[Goal], state: State) -> jax.Array:
    """Which goals hold in ``state``.

    Args:
      goals: ``G`` goals.
      state: the State to test.

    Returns:
      ``bool[G]`` (``bool[0]`` for no goals).
    """
    goals = list(goals)
    for g in goals:
        if not isinstance(g, Goal):
            raise OptionError(f"expected Goals, got {type(g).__name__}")
    if not goals:
        return jnp.zeros((0,), jnp.bool_)
    return jnp.stack([g.satisfied(state) for g in goals])
