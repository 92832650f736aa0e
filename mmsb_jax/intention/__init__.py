"""Layer 7 — intention: goals, preferences, attractor states and emergent goals.

A :class:`Goal` asks a page to reach a target or satisfy a predicate and scores the State with
a differentiable utility; :class:`Preference` s weight utilities; :func:`preference_utility`
combines both. The dynamics of a page (a state map ``[*S] -> [*S]``) have fixed points, found
by iteration or Newton (:func:`find_fixed_point`, differentiable by the implicit function
theorem) and labelled by the Jacobian's eigenvalues (:func:`stability`); the stable ones found
from many starts (:func:`find_attractors`) become goals ranked by utility
(:func:`emergent_goals`). :func:`hebbian_weights` and :func:`hopfield_map` give the classic test
system whose attractors are stored patterns.
"""

from mmsb_jax.intention._attractors import (
    Attractors,
    EmergentGoal,
    emergent_goals,
    find_attractors,
)
from mmsb_jax.intention._fixed_points import (
    MARGINAL,
    METHODS,
    SADDLE,
    STABILITY_LABELS,
    STABLE,
    UNSTABLE,
    FixedPoint,
    Stability,
    find_fixed_point,
    jacobian,
    settle,
    stability,
    stability_label,
)
from mmsb_jax.intention._goals import Goal, Preference, goals_satisfied, preference_utility
from mmsb_jax.intention._hopfield import hebbian_weights, hopfield_energy, hopfield_map

__all__ = [
    "MARGINAL",
    "METHODS",
    "SADDLE",
    "STABILITY_LABELS",
    "STABLE",
    "UNSTABLE",
    "Attractors",
    "EmergentGoal",
    "FixedPoint",
    "Goal",
    "Preference",
    "Stability",
    "emergent_goals",
    "find_attractors",
    "find_fixed_point",
    "goals_satisfied",
    "hebbian_weights",
    "hopfield_energy",
    "hopfield_map",
    "jacobian",
    "preference_utility",
    "settle",
    "stability",
    "stability_label",
]
