"""World physics: elastic disc collisions (narrow phase, dense or grid broad phase) and
integration with reflecting walls. Pure, fixed-shape functions of struct-of-arrays pages; the
world (:mod:`mmsb_jax.apps._world`) runs them as derived pages of a Graph.

Broad phase. ``"dense"`` tests all pairs (``O(N^2)`` time and memory: use it up to a few
thousand entities). ``"grid"`` hashes entities into cells of side at least ``2 * max_radius``
(so touching discs are in neighbouring cells), sorts them by cell and tests each entity against
the entities of its 3 x 3 neighbouring cells. Cells are numbered row by row, so the three cells
of one row form a contiguous window of the sorted entities; at most ``max_per_row`` entities of
each of the three windows are examined (``O(N * 3 * max_per_row)`` after an ``O(N log N)``
sort), and the ``overflow`` page reports a window that held more.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from mmsb_jax.errors import OptionError

__all__ = ["BROADPHASES", "DENSE_MAX", "WorldParams", "collide", "integrate"]

BROADPHASES: tuple[str, ...] = ("auto", "dense", "grid")
"""Broad-phase choices; ``"auto"`` is ``"dense"`` up to :data:`DENSE_MAX` slots, else ``"grid"``."""

DENSE_MAX = 64
"""``broadphase="auto"`` uses the dense all-pairs test up to this capacity."""


@dataclasses.dataclass(frozen=True)
class WorldParams:
    """Static parameters of a world (hashable; part of the compiled step).

    Attributes:
      dt: time step, > 0.
      capacity: ``N``, number of entity slots.
      bounds: ``(W, H)``, the box ``[0, W] x [0, H]`` the entities bounce in.
      restitution: ``e`` in ``[0, 1]``; 1 is perfectly elastic (entity-entity collisions;
        walls reflect elastically).
      max_radius: the largest radius an entity may have; sets the grid cell size
        ``>= 2 * max_radius``.
      broadphase: ``"dense"``, ``"grid"`` or ``"auto"`` (resolved at construction).
      max_per_row: grid broad phase: entities examined in each of the three rows of three
        neighbouring cells.
      max_rounds: most matching rounds of the collision resolution per step.
    """

    dt: float
    capacity: int = 1024
    bounds: tuple[float, float] = (1.0, 1.0)
    restitution: float = 1.0
    max_radius: float = 0.01
    broadphase: str = "auto"
    max_per_row: int = 8
    max_rounds: int = 8

    def __post_init__(self) -> None:
        dt = float(self.dt)
        if not (math.isfinite(dt) and dt > 0):
            raise OptionError(f"dt must be a finite number > 0, got {self.dt!r}")
        capacity = int(self.capacity)
        if capacity < 1:
            raise OptionError(f"capacity must be >= 1, got {self.capacity!r}")
        try:
            bounds = tuple(float(b) for b in self.bounds)
        except TypeError as e:
            raise OptionError(f"bounds must be (W, H), got {self.bounds!r}") from e
        if len(bounds) != 2 or not all(math.isfinite(b) and b > 0 for b in bounds):
            raise OptionError(f"bounds must be two finite numbers > 0, got {self.bounds!r}")
        e = float(self.restitution)
        if not 0.0 <= e <= 1.0:
            raise OptionError(f"restitution must be in [0, 1], got {self.restitution!r}")
        r = float(self.max_radius)
        if not (math.isfinite(r) and 0 < 2 * r <= min(bounds)):
            raise OptionError(f"max_radius must be in (0, min(bounds) / 2], got "
                              f"{self.max_radius!r}")
        if self.broadphase not in BROADPHASES:
            raise OptionError(f"broadphase must be one of {BROADPHASES}, got "
                              f"{self.broadphase!r}")
        if int(self.max_per_row) < 1:
            raise OptionError(f"max_per_row must be >= 1, got {self.max_per_row!r}")
        if int(self.max_rounds) < 1:
            raise OptionError(f"max_rounds must be >= 1, got {self.max_rounds!r}")
        broadphase = self.broadphase
        if broadphase == "auto":
            broadphase = "dense" if capacity <= DENSE_MAX else "grid"
        for name, value in (("dt", dt), ("capacity", capacity), ("bounds", bounds),
                            ("restitution", e), ("max_radius", r), ("broadphase", broadphase),
                            ("max_per_row", int(self.max_per_row)),
                            ("max_rounds", int(self.max_rounds))):
            object.__setattr__(self, name, value)

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(gx, gy)``: grid cells per axis; each cell is at least ``2 * max_radius`` wide."""
        cell = 2.0 * self.max_radius
        return (max(1, int(self.bounds[0] // cell)), max(1, int(self.bounds[1] // cell)))


# -- narrow phase ------------------------------------------------------------------------------

def _pair_impulse(pi: jax.Array, pj: jax.Array, vi: jax.Array, vj: jax.Array, ri: jax.Array,
                  rj: jax.Array, mi: jax.Array, mj: jax.Array, valid: jax.Array,
                  restitution: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Contact test and two-body impulse of ``i`` against ``j`` (broadcasting over pairs).

    Shapes: ``pi, pj, vi, vj: [..., 2]``; ``ri, rj, mi, mj, valid: [...]``.

    Returns:
      ``(hit: bool[...], urgency: [...], dv: [..., 2])``: whether the discs overlap and
      approach; ``approach / |d|^2`` (negative, more negative = the contact closes faster
      relative to its distance; ``+inf`` where there is no hit); and the velocity change of
      ``i`` from the two-body impulse. Every quantity is computed from ``d = p_i - p_j`` and
      ``v_i - v_j``, which flip sign exactly when ``i`` and ``j`` swap, so ``urgency`` is
      symmetric and ``dv_i * m_i == -dv_j * m_j`` bit for bit.
    """
    d = pi - pj
    dist2 = jnp.sum(d * d, axis=-1)
    reach = ri + rj
    vrel = vi - vj
    approach = jnp.sum(vrel * d, axis=-1)  # |d| * (normal relative speed); < 0 approaching
    hit = valid & (dist2 < reach * reach) & (dist2 > 0) & (approach < 0)
    safe = jnp.where(hit, dist2, 1.0)
    urgency = jnp.where(hit, approach / safe, jnp.inf)
    # J = -(1 + e) vn / (1/mi + 1/mj) with vn = approach / |d|; dv_i = J / mi * d / |d|.
    inv_sum = 1.0 / mi + 1.0 / mj
    scale = jnp.where(hit, -(1.0 + restitution) * urgency / (inv_sum * mi), 0.0)
    return hit, urgency, scale[..., None] * d


def _resolve(pos: jax.Array, vel: jax.Array, radius: jax.Array, mass: jax.Array,
             cand: jax.Array, valid: jax.Array, params: WorldParams) -> jax.Array:
    """Resolve contacts as a sequence of matchings (sequential impulses, vectorised).

    Shapes: ``pos, vel: [N, 2]``, ``radius, mass: [N]``; ``cand: int32[N, M]`` candidate
    partners of each entity, ``valid: bool[N, M]``. Returns the new ``vel: [N, 2]``.

    Each round, every entity with an approaching contact picks the most urgent one; pairs that
    pick each other collide as isolated two-body collisions (exact, so momentum and, for
    ``e = 1``, kinetic energy are conserved up to rounding). The contacts are then re-tested
    with the new velocities. The pair with the globally most urgent contact always picks
    mutually, so every round resolves at least one pair; rounds stop when no contact
    approaches or after ``max_rounds`` (contacts left over are resolved in the next step).
    """
    n = pos.shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    pj, rj, mj = pos[cand], radius[cand], mass[cand]
    pi, ri, mi = pos[:, None], radius[:, None], mass[:, None]

    def test(v):
        return _pair_impulse(pi, pj, v[:, None], v[cand], ri, rj, mi, mj, valid,
                             params.restitution)

    def cond(carry):
        _, rounds, hit, _, _ = carry
        return (rounds < params.max_rounds) & jnp.any(hit)

    def body(carry):
        v, rounds, hit, urgency, dv = carry
        best = jnp.argmin(urgency, axis=1)
        has = jnp.any(hit, axis=1)
        partner = jnp.where(has, jnp.take_along_axis(cand, best[:, None], 1)[:, 0], -1)
        mutual = has & (partner[jnp.maximum(partner, 0)] == iota)
        chosen = jnp.take_along_axis(dv, best[:, None, None], 1)[:, 0]
        v = v + jnp.where(mutual[:, None], chosen, 0.0)
        return (v, rounds + 1, *test(v))

    v, _, _, _, _ = lax.while_loop(cond, body, (vel, jnp.int32(0), *test(vel)))
    return v


def _cell_index(pos: jax.Array, alive: jax.Array, params: WorldParams):
    gx, gy = params.grid_shape
    w, h = params.bounds
    cx = jnp.clip(jnp.floor(pos[:, 0] * (gx / w)).astype(jnp.int32), 0, gx - 1)
    cy = jnp.clip(jnp.floor(pos[:, 1] * (gy / h)).astype(jnp.int32), 0, gy - 1)
    cell = jnp.where(alive, cy * gx + cx, gx * gy)  # dead entities sort past every cell
    return cx, cy, cell


class _Grid(NamedTuple):
    order: jax.Array  # [N] entity at each sorted position
    cand: jax.Array  # [N, 3 * K] sorted positions of the candidates of each sorted entity
    valid: jax.Array  # [N, 3 * K]
    overflow: jax.Array  # []


def _grid(pos: jax.Array, alive: jax.Array, params: WorldParams) -> _Grid:
    """Broad phase in sorted order: entities sorted by cell, candidates as row windows.

    Cells are numbered row by row, so the three cells ``(cx - 1 .. cx + 1, row)`` hold a
    contiguous range of the sorted entities; each entity examines at most ``K = max_per_row``
    entities of each of its three rows (``overflow`` is set when a row held more).
    """
    n = pos.shape[0]
    gx, gy = params.grid_shape
    k = params.max_per_row
    cx, cy, cell = _cell_index(pos, alive, params)
    iota = jnp.arange(n, dtype=jnp.int32)
    sorted_cell, order = lax.sort((cell, iota), num_keys=1, is_stable=True)
    counts = jnp.zeros((gx * gy + 1,), jnp.int32).at[cell].add(1)
    starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(counts, dtype=jnp.int32)])
    live = sorted_cell < gx * gy
    scx, scy = cx[order], cy[order]
    rows = scy[:, None] + jnp.arange(-1, 2, dtype=jnp.int32)[None, :]  # [N, 3]
    row_ok = (rows >= 0) & (rows < gy) & live[:, None]
    rows = jnp.clip(rows, 0, gy - 1)
    lo = starts[rows * gx + jnp.maximum(scx - 1, 0)[:, None]]
    hi = starts[rows * gx + jnp.minimum(scx + 1, gx - 1)[:, None] + 1]
    slot = jnp.arange(k, dtype=jnp.int32)
    cand = lo[:, :, None] + slot[None, None, :]  # [N, 3, K]
    valid = row_ok[:, :, None] & (cand < hi[:, :, None]) & (cand != iota[:, None, None])
    overflow = jnp.any(row_ok & (hi - lo > k))
    cand = jnp.clip(cand, 0, n - 1).reshape(n, 3 * k)
    return _Grid(order, cand, valid.reshape(n, 3 * k), overflow)


def collide(pos: jax.Array, vel: jax.Array, radius: jax.Array, mass: jax.Array,
            alive: jax.Array, params: WorldParams) -> jax.Array:
    """Velocities after one round of pairwise collisions.

    A live pair whose discs overlap and whose centres approach collides with the two-body
    impulse ``J = -(1 + e) v_n / (1/m_i + 1/m_j)`` along the line of centres. Several contacts
    are resolved as a sequence of matchings: each round, every disc takes its most urgent
    approaching contact, pairs that chose each other collide, and the contacts are re-tested
    with the new velocities, until none approaches or ``max_rounds`` rounds ran. So momentum
    is conserved and, for ``e = 1``, kinetic energy too (up to float rounding).

    Args:
      pos: ``float32[N, 2]`` positions.
      vel: ``float32[N, 2]`` velocities.
      radius: ``float32[N]`` radii.
      mass: ``float32[N]`` masses (> 0 for live entities).
      alive: ``bool[N]``; dead slots neither move nor collide.
      params: the world's :class:`WorldParams` (broad phase, restitution, grid).

    Returns:
      ``float32[N, 2]`` velocities (dead slots unchanged).
    """
    mass = jnp.where(alive, mass, 1.0)
    n = pos.shape[0]
    if params.broadphase == "dense":
        iota = jnp.arange(n, dtype=jnp.int32)
        cand = jnp.broadcast_to(iota[None, :], (n, n))
        valid = alive[:, None] & alive[None, :] & (cand != iota[:, None])
        new = _resolve(pos, vel, radius, mass, cand, valid, params)
    else:
        grid = _grid(pos, alive, params)
        o = grid.order
        new_sorted = _resolve(pos[o], vel[o], radius[o], mass[o], grid.cand, grid.valid, params)
        new = jnp.zeros_like(vel).at[o].set(new_sorted, unique_indices=True)
    return jnp.where(alive[:, None], new, vel)


def integrate(pos: jax.Array, vel: jax.Array, radius: jax.Array, alive: jax.Array,
              params: WorldParams) -> tuple[jax.Array, jax.Array]:
    """Semi-implicit Euler step and elastic reflection off the walls.

    Args:
      pos: ``float32[N, 2]`` positions.
      vel: ``float32[N, 2]`` velocities after collisions.
      radius: ``float32[N]`` radii.
      alive: ``bool[N]``.
      params: the world's :class:`WorldParams`.

    Returns:
      ``(pos', vel')``, both ``float32[N, 2]``: ``p + dt v`` folded back into
      ``[r, bound - r]`` on each axis, with the velocity component pointing away from a wall it
      crossed. Dead slots are unchanged.
    """
    p = pos + params.dt * vel
    bound = jnp.asarray(params.bounds, jnp.float32)
    lo = radius[:, None]
    hi = bound[None, :] - radius[:, None]
    below = p < lo
    above = p > hi
    p = jnp.where(below, 2.0 * lo - p, jnp.where(above, 2.0 * hi - p, p))
    p = jnp.clip(p, lo, hi)
    v = jnp.where(below, jnp.abs(vel), jnp.where(above, -jnp.abs(vel), vel))
    live = alive[:, None]
    return jnp.where(live, p, pos), jnp.where(live, v, vel)
