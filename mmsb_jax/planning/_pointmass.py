"""A differentiable point-mass world on the bus: the measuring task for gradient planning.

Pages: ``pos: f32[2]``, ``vel: f32[2]``, ``goal: f32[2]`` and ``obstacles: f32[K, 3]`` (circles
``(x, y, radius)``; a radius of 0 disables a slot). An action is a planar force ``f32[2]``;
one step of semi-implicit Euler is two ``add`` deltas::

    vel += dt * (force / mass - drag * vel)
    pos += dt * vel'
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mmsb_jax._checks import check_int
from mmsb_jax.core.delta import Delta, apply_batch
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.errors import OptionError, ShapeError

__all__ = [
    "point_mass_costs",
    "point_mass_schema",
    "point_mass_state",
    "point_mass_step",
]


def point_mass_schema(num_obstacles: int = 0) -> Schema:
    """The pages of a point-mass world with ``num_obstacles`` circle slots.

    Raises:
      OptionError: ``num_obstacles`` is not an int ``>= 0``.
    """
    check_int("num_obstacles", num_obstacles, minimum=0)
    return Schema([PageSpec("pos", (2,)), PageSpec("vel", (2,)), PageSpec("goal", (2,)),
                   PageSpec("obstacles", (int(num_obstacles), 3))])


def point_mass_state(pos: jax.Array, goal: jax.Array, *, vel: jax.Array | None = None,
                     obstacles: jax.Array | None = None) -> State:
    """One point-mass State, written with full-page deltas.

    Args:
      pos: ``f32[2]`` start position.
      goal: ``f32[2]`` goal position.
      vel: ``f32[2]`` start velocity (default 0).
      obstacles: ``f32[K, 3]`` circles ``(x, y, radius)`` (default none, ``K = 0``).

    Returns:
      ``State`` with pages ``pos``, ``vel``, ``goal``, ``obstacles``.

    Raises:
      ShapeError: a wrong shape.
    """
    pos = jnp.asarray(pos, jnp.float32)
    goal = jnp.asarray(goal, jnp.float32)
    vel = jnp.zeros((2,), jnp.float32) if vel is None else jnp.asarray(vel, jnp.float32)
    obstacles = (jnp.zeros((0, 3), jnp.float32) if obstacles is None
                 else jnp.asarray(obstacles, jnp.float32))
    for name, x in (("pos", pos), ("goal", goal), ("vel", vel)):
        if tuple(x.shape) != (2,):
            raise ShapeError(f"{name} must be f32[2], got shape {tuple(x.shape)}")
    if obstacles.ndim != 2 or obstacles.shape[1] != 3:
        raise ShapeError(f"obstacles must be f32[K, 3], got shape {tuple(obstacles.shape)}")
    state = init_state(point_mass_schema(obstacles.shape[0]))
    return apply_batch(state, [Delta.full("pos", pos), Delta.full("vel", vel),
                               Delta.full("goal", goal), Delta.full("obstacles", obstacles)])


@functools.lru_cache(maxsize=64)
def point_mass_step(*, dt: float = 0.1, mass: float = 1.0, drag: float = 0.1):
    """The point-mass transition ``(state, force: f32[2]) -> state'`` as two ``add`` deltas.

    Equal arguments return the same (cached) function, so jitted planners compile once.

    Args:
      dt: time step (``> 0``).
      mass: mass (``> 0``).
      drag: linear drag coefficient (``>= 0``).

    Returns:
      ``step(state, force) -> state``, differentiable in ``force`` and in the state's pages.

    Raises:
      OptionError: a non-positive ``dt``/``mass`` or a negative ``drag``.
    """
    if not float(dt) > 0 or not float(mass) > 0 or not float(drag) >= 0:
        raise OptionError(f"need dt > 0, mass > 0, drag >= 0; got dt={dt}, mass={mass}, "
                          f"drag={drag}")
    dt, mass, drag = float(dt), float(mass), float(drag)

    def step(state: State, force: jax.Array) -> State:
        vel = state.pages["vel"]
        dv = dt * (jnp.asarray(force, jnp.float32) / mass - drag * vel)
        return apply_batch(state, [Delta.full("vel", dv, op="add"),
                                   Delta.full("pos", dt * (vel + dv), op="add")])

    return step


def _obstacle_penalty(state: State, margin: float) -> jax.Array:
    obs = state.pages["obstacles"]
    if obs.shape[0] == 0:
        return jnp.zeros((), jnp.float32)
    d = jnp.sqrt(jnp.sum((state.pages["pos"][None, :] - obs[:, :2]) ** 2, axis=1) + 1e-12)
    depth = jnp.where(obs[:, 2] > 0, jax.nn.relu(obs[:, 2] + margin - d), 0.0)
    return jnp.sum(depth ** 2)


@functools.lru_cache(maxsize=64)
def point_mass_costs(*, effort: float = 1e-3, velocity_weight: float = 0.1,
                     obstacle_weight: float = 100.0, margin: float = 0.1):
    """Running and terminal costs for reaching the ``goal`` page and stopping there.

    ``running(s, a) = effort * |a|^2 + obstacle_weight * sum_k relu(r_k + margin - |pos -
    c_k|)^2`` and ``terminal(s) = |pos - goal|^2 + velocity_weight * |vel|^2 +`` the obstacle
    term. Equal arguments return the same (cached) functions.

    Args:
      effort: weight of the squared force.
      velocity_weight: weight of the squared final speed.
      obstacle_weight: weight of the squared penetration of the obstacles (plus ``margin``).
      margin: clearance kept around obstacles.

    Returns:
      ``(running_cost, terminal_cost)`` for :func:`~mmsb_jax.planning.plan_gradient`.

    Raises:
      OptionError: a negative weight or margin.
    """
    for name, v in (("effort", effort), ("velocity_weight", velocity_weight),
                    ("obstacle_weight", obstacle_weight), ("margin", margin)):
        if not float(v) >= 0:
            raise OptionError(f"{name} must be >= 0, got {v!r}")
    effort, vw, ow, margin = float(effort), float(velocity_weight), float(obstacle_weight), \
        float(margin)

    def running(state: State, action: jax.Array) -> jax.Array:
        return effort * jnp.sum(action ** 2) + ow * _obstacle_penalty(state, margin)

    def terminal(state: State) -> jax.Array:
        miss = jnp.sum((state.pages["pos"] - state.pages["goal"]) ** 2)
        return miss + vw * jnp.sum(state.pages["vel"] ** 2) + ow * _obstacle_penalty(state,
                                                                                   margin)

    return running, terminal
