"""World simulation on the bus: entities as struct-of-arrays pages, physics as propagation.

A world has a fixed capacity ``N`` of entity slots. Its base pages are

* ``pos: float32[N, 2]``, ``vel: float32[N, 2]``: position and velocity,
* ``radius: float32[N]``, ``mass: float32[N]``: disc radius and mass,
* ``kind: int32[N]``: a user label (an int, or an index into ``World(kinds=...)``),
* ``alive: bool[N]``: which slots hold an entity (free slots are ``False``),
* ``tick: int32[]``: the number of steps taken.

Physics is a set of derived pages of an :class:`mmsb_jax.Graph` (:func:`world_graph`):

* ``physics/vel: float32[N, 2]``: velocities after this step's collisions (the *narrow
  phase*: a two-body impulse along the line of centres for every overlapping pair that is
  approaching; several contacts are resolved as a sequence of matchings, see :func:`collide`,
  so momentum and, for elastic collisions, kinetic energy are conserved). Candidate pairs come
  from all ``N^2`` pairs or from a uniform grid (the *broad phase*, see below).
* ``physics/next_pos``, ``physics/next_vel: float32[N, 2]``: semi-implicit Euler integration
  ``p + dt * v`` followed by reflection off the walls of the box ``[0, W] x [0, H]``.
* ``energy: float32[]``, ``momentum: float32[2]``: kinetic energy and momentum of live entities.
* ``overflow: bool[]``: the grid broad phase dropped candidates because three neighbouring
  cells of one row held more than ``max_per_row`` entities (always False for the dense broad
  phase).

A step writes the derived next state back with two ``full`` deltas (``pos``, ``vel``) and one
``add`` delta on ``tick``, then propagates, which precomputes the step after it. So a step is
``state x deltas -> state'`` like any other change, and a world bound to a :class:`~mmsb_jax.Bus`
commits one transaction per step: :meth:`World.replay` rebuilds the whole run from the log, bit
for bit. :meth:`World.open` opens its bus with the world's graph, so the bus holds the derived
pages too and each step is one commit that applies and propagates in one jitted call; a world
can also be bound to a bus of the base pages only (then it propagates itself, a second call).

The physics (narrow and broad phase) lives in :mod:`mmsb_jax.apps._physics`.

Everything is pure and fixed-shape: :func:`world_step` runs under ``jit``, ``vmap`` (many worlds
at once: a batch axis on every leaf of the State) and ``lax.scan`` (:meth:`World.simulate`).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax._checks import check_int
from mmsb_jax.apps._physics import (
    BROADPHASES,
    WorldParams,
    _grid,
    collide,
    integrate,
)
from mmsb_jax.core.delta import Delta, apply_batch
from mmsb_jax.core.graph import Graph
from mmsb_jax.core.pages import PageSpec, Schema, State, init_state
from mmsb_jax.core.propagate import propagate
from mmsb_jax.errors import (
    CapacityError,
    DomainError,
    OptionError,
    SchemaMismatchError,
    ShapeError,
    UnknownPageError,
)

__all__ = [
    "BROADPHASES",
    "ENTITY_FIELDS",
    "World",
    "WorldParams",
    "collide",
    "integrate",
    "world_graph",
    "world_schema",
    "world_step",
]

ENTITY_FIELDS: tuple[str, ...] = ("pos", "vel", "radius", "mass")
"""Per-entity fields that :meth:`World.add_entity` accepts as keyword arguments."""

STEP_DIRTY: tuple[str, ...] = ("pos", "vel", "tick")


def world_schema(capacity: int) -> Schema:
    """The base pages of a world with ``capacity`` slots (see the module docstring)."""
    n = int(capacity)
    return Schema([
        PageSpec("pos", (n, 2), "float32"),
        PageSpec("vel", (n, 2), "float32"),
        PageSpec("radius", (n,), "float32"),
        PageSpec("mass", (n,), "float32"),
        PageSpec("kind", (n,), "int32"),
        PageSpec("alive", (n,), "bool"),
        PageSpec("tick", (), "int32"),
    ])


@functools.lru_cache(maxsize=64)
def world_graph(params: WorldParams) -> Graph:
    """The world's graph: :func:`world_schema` plus the physics and observable derived pages.

    Cached per ``params``: worlds with equal parameters share one graph, hence one compiled
    step.

    Args:
      params: static world parameters.

    Returns:
      A Graph with derived pages ``physics/vel``, ``physics/next_pos``, ``physics/next_vel``,
      ``energy``, ``momentum`` and ``overflow`` (see the module docstring).
    """
    if not isinstance(params, WorldParams):
        raise OptionError(f"world_graph expects WorldParams, got {type(params).__name__}")

    def physics_vel(pos, vel, radius, mass, alive):
        return collide(pos, vel, radius, mass, alive, params)

    def next_pos(pos, vel, radius, alive):
        return integrate(pos, vel, radius, alive, params)[0]

    def next_vel(pos, vel, radius, alive):
        return integrate(pos, vel, radius, alive, params)[1]

    def energy(vel, mass, alive):
        return 0.5 * jnp.sum(jnp.where(alive, mass * jnp.sum(vel * vel, axis=-1), 0.0))

    def momentum(vel, mass, alive):
        return jnp.sum(jnp.where(alive[:, None], mass[:, None] * vel, 0.0), axis=0)

    def overflow(pos, alive):
        if params.broadphase == "dense":
            return jnp.zeros((), bool)
        return _grid(pos, alive, params).overflow

    g = Graph(world_schema(params.capacity))
    g = g.derive("physics/vel", ("pos", "vel", "radius", "mass", "alive"), physics_vel)
    g = g.derive("physics/next_pos", ("pos", "physics/vel", "radius", "alive"), next_pos)
    g = g.derive("physics/next_vel", ("pos", "physics/vel", "radius", "alive"), next_vel)
    g = g.derive("energy", ("vel", "mass", "alive"), energy)
    g = g.derive("momentum", ("vel", "mass", "alive"), momentum)
    return g.derive("overflow", ("pos", "alive"), overflow)


_ONE_TICK = np.ones((), np.int32)


def step_deltas(state: State) -> list[Delta]:
    """The deltas of one step: the derived next state written back to the base pages.

    Args:
      state: a world State whose derived pages are current.

    Returns:
      ``[full set pos, full set vel, add 1 to tick]``.
    """
    # The values are the derived pages themselves (no dispatch) and a host constant for tick:
    # building the step's deltas costs no device work, traced or not.
    return [Delta.full("pos", state.pages["physics/next_pos"]),
            Delta.full("vel", state.pages["physics/next_vel"]),
            Delta.full("tick", _ONE_TICK, op="add")]


def world_step(graph: Graph, state: State) -> State:
    """One physics step: apply :func:`step_deltas`, then propagate (precomputing the next one).

    Pure; jit it with ``graph`` static, vmap it over a batch of States.

    Args:
      graph: the world's :func:`world_graph`.
      state: ``State`` of ``graph.schema`` with current derived pages.

    Returns:
      The State one step later, derived pages current.
    """
    return propagate(graph, apply_batch(state, step_deltas(state)), STEP_DIRTY)


def _simulate_impl(graph: Graph, num_steps: int, state: State) -> State:
    def body(s, _):
        return world_step(graph, s), None

    return lax.scan(body, state, None, length=num_steps)[0]


def _refresh_impl(graph: Graph, state: State) -> State:
    return propagate(graph, state, graph.base.names)


_step_jit = jax.jit(world_step, static_argnums=0)
_simulate_jit = jax.jit(_simulate_impl, static_argnums=(0, 1))
_refresh_jit = jax.jit(_refresh_impl, static_argnums=0)


def _lattice_state(graph: Graph, params: WorldParams, key: jax.Array, count: int,
                   radius: float, speed: float, mass: float, kind: int) -> State:
    w, h = params.bounds
    side = math.ceil(math.sqrt(count * w / h))
    rows = math.ceil(count / side)
    sx, sy = w / side, h / rows
    k_perm, k_jit, k_vel = jax.random.split(key, 3)
    cells = jax.random.permutation(k_perm, side * rows)[:count]
    centre = jnp.stack([(cells % side + 0.5) * sx, (cells // side + 0.5) * sy], -1)
    slack = jnp.asarray([sx / 2 - radius, sy / 2 - radius], jnp.float32) * 0.95
    jitter = jax.random.uniform(k_jit, (count, 2), jnp.float32, -1.0, 1.0) * slack
    slots = jnp.arange(count, dtype=jnp.int32)
    deltas = [
        Delta.rows("pos", slots, (centre + jitter).astype(jnp.float32)),
        Delta.rows("vel", slots, speed * jax.random.normal(k_vel, (count, 2), jnp.float32)),
        Delta.rows("radius", slots, jnp.full((count,), radius, jnp.float32)),
        Delta.rows("mass", slots, jnp.full((count,), mass, jnp.float32)),
        Delta.rows("kind", slots, jnp.full((count,), kind, jnp.int32)),
        Delta.rows("alive", slots, jnp.ones((count,), bool)),
    ]
    return _refresh_impl(graph, apply_batch(init_state(graph.schema), deltas))


class World:
    """A fixed-capacity 2-D world of discs, stepped as deltas on a State (optionally on a Bus).

    Args:
      dt: time step.
      capacity: ``N`` entity slots.
      bounds: ``(W, H)`` of the box.
      restitution: entity-entity restitution in ``[0, 1]``.
      max_radius: largest allowed radius (grid cell size ``>= 2 * max_radius``).
      broadphase: ``"auto"``, ``"dense"`` (all pairs) or ``"grid"``.
      max_per_row: grid broad phase: entities examined per row of three neighbouring cells.
      max_rounds: most matching rounds of the collision resolution per step.
      kinds: optional names for entity kinds; ``add_entity("ball", ...)`` stores the name's
        index in the ``kind`` page.
      bus: a :class:`~mmsb_jax.Bus` to bind to (see :meth:`bind`).

    Attributes:
      params: the :class:`WorldParams`.
      graph: the world's :func:`world_graph`; ``graph.base`` is the schema a bound bus holds.
      kinds: the kind names.

    >>> import mmsb_jax.apps as apps
    >>> w = apps.World(0.01, capacity=8, max_radius=0.1)
    >>> a = w.add_entity(0, pos=(0.3, 0.5), vel=(1.0, 0.0), radius=0.1)
    >>> b = w.add_entity(0, pos=(0.55, 0.5), vel=(0.0, 0.0), radius=0.1)
    >>> w.step(10)
    >>> w.read("vel")[[a, b]].round(3).tolist()      # elastic head-on collision: swapped
    [[0.0, 0.0], [1.0, 0.0]]
    """

    def __init__(self, dt: float, *, capacity: int = 1024,
                 bounds: tuple[float, float] = (1.0, 1.0), restitution: float = 1.0,
                 max_radius: float = 0.01, broadphase: str = "auto", max_per_row: int = 8,
                 max_rounds: int = 8, kinds: Sequence[str] = (), bus: Any = None):
        self.params = WorldParams(dt=dt, capacity=capacity, bounds=tuple(bounds),
                                  restitution=restitution, max_radius=max_radius,
                                  broadphase=broadphase, max_per_row=max_per_row,
                                  max_rounds=max_rounds)
        self.kinds = tuple(str(k) for k in kinds)
        if len(set(self.kinds)) != len(self.kinds):
            raise OptionError(f"duplicate kind names in {self.kinds}")
        self.graph = world_graph(self.params)
        self._state = init_state(self.graph.schema)
        self._pending: set[str] = set(self.graph.base.names)  # derived pages computed lazily
        self._bus: Any = None
        self._propagating = False  # bound to a bus that holds (and propagates) derived pages
        self._owns_bus = False
        if bus is not None:
            self.bind(bus)

    # -- construction helpers ---------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike, dt: float, *, sync: str = "batch",
             write_behind: bool = False, checkpoint_every: int | None = None,
             **kwargs: Any) -> World:
        """A World bound to the bus in ``directory`` (created, or resumed from its log).

        The bus is opened with the world's graph (``Bus.open(directory, graph=world.graph)``):
        it holds the derived pages as well, and a step's commit applies and propagates in one
        jitted call. A directory written by a bus of the base pages only (as ``open`` made
        them before) is resumed as such.

        Such a bus rebuilds its derived pages exactly as they were live, epochs included, by
        propagating after every logged commit: resuming a run (and ``bus.at(seq)``) runs its
        physics again from the nearest checkpoint (1,000 steps of 1k entities: 1.7 s, against
        0.25 s for a bus of the base pages, which only applies the logged deltas). Pass
        ``checkpoint_every`` for long runs; :meth:`replay` only applies the deltas.

        Args:
          directory: the bus directory.
          dt: time step.
          sync: the bus sync policy.
          write_behind: open the bus with ``write_behind`` (``sync="never"`` only): each
            step's record is written during the next step, so stepping does not wait for the
            physics it logs (see :meth:`mmsb_jax.Bus.open`).
          checkpoint_every: the bus's ``checkpoint_every`` (a checkpoint every this many
            commits, so resuming replays at most that many).
          **kwargs: other :class:`World` arguments.

        Returns:
          The World; :meth:`close` (or ``with``) also closes the bus it opened.
        """
        from mmsb_jax.runtime.bus import Bus

        world = cls(dt, **kwargs)
        options = dict(sync=sync, write_behind=write_behind, checkpoint_every=checkpoint_every)
        try:
            bus = Bus.open(directory, world.graph.base, graph=world.graph, **options)
        except SchemaMismatchError:  # a log of the base pages only: resume it as it is
            bus = Bus.open(directory, world.graph.base, **options)
        try:
            world.bind(bus)
        except BaseException:
            bus.close()
            raise
        world._owns_bus = True
        return world

    def bind(self, bus: Any) -> None:
        """Commit every later change of this world to ``bus`` (one transaction per step).

        Either a bus with the world's graph (``Bus.open(d, graph=world.graph)``, as
        :meth:`open` makes: it propagates, so a step is one jitted call) or a bus of exactly
        :attr:`graph.base <mmsb_jax.Graph.base>` (``Bus.open(d, world.graph.base)``: the
        world then propagates each step itself). If the bus already holds commits, the world
        adopts the bus's state (resuming a run); otherwise the world's current state is
        committed first.

        Raises:
          SchemaMismatchError: the bus holds other pages, or derived pages computed by other
            code than this world's (their :meth:`~mmsb_jax.Graph.provenance` differs).
        """
        graph = getattr(bus, "graph", None)
        if graph is not None:
            if (bus.schema != self.graph.schema
                    or graph.provenance() != self.graph.provenance()):
                raise SchemaMismatchError(
                    f"bus graph {graph} is not this world's graph {self.graph}; open the bus "
                    "with graph=world.graph")
            self._bind_propagating(bus)
            return
        if bus.schema != self.graph.base:
            raise SchemaMismatchError(
                f"bus schema {bus.schema} is not the world's base schema {self.graph.base}; "
                "open the bus with schema=world.graph.base or graph=world.graph")
        if bus.seq > 0:
            base = bus.state
            self._state = _refresh_jit(self.graph, self._state.with_pages(
                {n: base.pages[n] for n in self.graph.base.names},
                {n: base.epochs[n] for n in self.graph.base.names}))
            self._pending.clear()
        else:
            changed = self._edits()
            if changed:
                bus.commit(changed)
                self._adopt_bus_pages(bus, tuple(d.page for d in changed))
        self._bus = bus
        self._propagating = False

    def _edits(self) -> list[Delta]:
        """``full`` deltas of the base pages edited so far (epoch > 0): what binding a fresh
        bus commits first."""
        state = self._state
        return [Delta.full(n, state.pages[n]) for n in self.graph.base.names
                if int(state.epochs[n]) > 0]

    def _bind_propagating(self, bus: Any) -> None:
        """:meth:`bind` to a bus with this world's graph: the bus's state is the world's."""
        if bus.seq == 0:
            changed = self._edits()
            if changed:
                bus.commit(changed)
        # An empty world's derived pages are zeros, as the fresh bus holds them.
        self._state = bus.state
        self._pending.clear()
        self._bus = bus
        self._propagating = True

    @property
    def bus(self) -> Any:
        """The bound Bus, or None."""
        return self._bus

    def close(self) -> None:
        """Close the bus if this world opened it (:meth:`open`); idempotent."""
        if self._bus is not None and self._owns_bus:
            self._bus.close()
        self._owns_bus = False

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The current State (base and derived pages; derived pages current)."""
        if self._pending:
            # One plan for every host-side edit: recompute all derived pages (one compile).
            self._state = _refresh_jit(self.graph, self._state)
            self._pending.clear()
        return self._state

    def read(self, name: str) -> np.ndarray:
        """A numpy copy of page ``name`` (base or derived).

        Raises:
          UnknownPageError: not a page of the world.
        """
        return np.array(self.state.page(name), copy=True)

    @property
    def num_entities(self) -> int:
        """Number of live entities."""
        return int(np.count_nonzero(np.asarray(self._state.pages["alive"])))

    def _adopt_bus_pages(self, bus: Any, pages: Sequence[str]) -> None:
        base = bus.state
        self._state = self._state.with_pages({n: base.pages[n] for n in pages},
                                             {n: base.epochs[n] for n in pages})

    def _commit(self, deltas: list[Delta]) -> None:
        if self._propagating:
            self._bus.commit(deltas)
            self._state = self._bus.state
            return
        pages = tuple(dict.fromkeys(d.page for d in deltas))
        if self._bus is not None:
            self._bus.commit(deltas)
            self._adopt_bus_pages(self._bus, pages)
        else:
            self._state = apply_batch(self._state, deltas)
        self._pending.update(pages)

    # -- entities ---------------------------------------------------------------------------
    def _kind_id(self, kind: int | str) -> int:
        if isinstance(kind, str):
            if kind not in self.kinds:
                raise OptionError(f"unknown entity kind {kind!r}; known kinds: {self.kinds} "
                                  "(declare them with World(kinds=...))")
            return self.kinds.index(kind)
        return check_int("kind (a name or an int)", kind, minimum=0)

    def add_entities(self, kind: int | str, *, pos: Any, vel: Any = 0.0,
                     radius: Any = None, mass: Any = 1.0) -> np.ndarray:
        """Add ``k`` entities of one kind in the lowest free slots (row deltas, one commit).

        Args:
          kind: a kind name from :attr:`kinds` or an int ``>= 0``.
          pos: ``[k, 2]`` positions; each disc must lie inside the box.
          vel: ``[k, 2]`` velocities, or anything broadcastable to it.
          radius: ``[k]`` radii in ``(0, max_radius]`` (default ``max_radius``).
          mass: ``[k]`` masses ``> 0``.

        Returns:
          ``int64[k]``: the slots the entities occupy.

        Raises:
          CapacityError: fewer than ``k`` free slots. ShapeError: bad field shapes.
          DomainError: a non-finite value, a radius or mass out of range, or a disc outside
          the box. OptionError: an unknown kind. Nothing changes when any is raised.
        """
        kind_id = self._kind_id(kind)
        pos = np.asarray(pos, np.float64)
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] < 1:
            raise ShapeError(f"pos must be [k, 2] with k >= 1, got shape {pos.shape}")
        k = pos.shape[0]
        radius = self.params.max_radius if radius is None else radius
        fields = {}
        for name, value, shape in (("vel", vel, (k, 2)), ("radius", radius, (k,)),
                                   ("mass", mass, (k,))):
            arr = np.asarray(value, np.float64)
            try:
                fields[name] = np.broadcast_to(arr, shape)
            except ValueError as e:
                raise ShapeError(f"{name} of shape {arr.shape} does not fit {k} entities "
                                 f"(expected {shape})") from e
        for name, arr in (("pos", pos), *fields.items()):
            if not np.all(np.isfinite(arr)):
                raise DomainError(f"{name} has non-finite values")
        r, m = fields["radius"], fields["mass"]
        if np.any(r <= 0) or np.any(r > self.params.max_radius):
            raise DomainError(f"radius must be in (0, max_radius={self.params.max_radius}], "
                              f"got {r[(r <= 0) | (r > self.params.max_radius)][:4].tolist()}")
        if np.any(m <= 0):
            raise DomainError(f"mass must be > 0, got {m[m <= 0][:4].tolist()}")
        bound = np.asarray(self.params.bounds)
        outside = np.any((pos < r[:, None]) | (pos > bound[None, :] - r[:, None]), axis=1)
        if np.any(outside):
            raise DomainError(f"entities at {pos[outside][:4].tolist()} do not fit inside the "
                              f"box {tuple(bound.tolist())} with their radius")
        free = np.flatnonzero(~np.asarray(self._state.pages["alive"]))
        if free.size < k:
            raise CapacityError(f"cannot add {k} entities: {free.size} of "
                                f"{self.params.capacity} slots are free")
        slots = free[:k].astype(np.int32)
        f32 = np.float32
        self._commit([
            Delta.rows("pos", slots, pos.astype(f32)),
            Delta.rows("vel", slots, fields["vel"].astype(f32)),
            Delta.rows("radius", slots, r.astype(f32)),
            Delta.rows("mass", slots, m.astype(f32)),
            Delta.rows("kind", slots, np.full((k,), kind_id, np.int32)),
            Delta.rows("alive", slots, np.ones((k,), bool)),
        ])
        return slots.astype(np.int64)

    def add_entity(self, kind: int | str, **fields: Any) -> int:
        """Add one entity in the lowest free slot.

        Args:
          kind: a kind name from :attr:`kinds` or an int ``>= 0``.
          **fields: ``pos=(x, y)`` (required), ``vel=(vx, vy)``, ``radius=r``, ``mass=m``.

        Returns:
          The entity's slot index.

        Raises:
          UnknownPageError: a field that is not an entity field (:data:`ENTITY_FIELDS`).
          CapacityError, ShapeError, DomainError, OptionError: as :meth:`add_entities`.
        """
        for name in fields:
            if name not in ENTITY_FIELDS:
                raise UnknownPageError(name, ENTITY_FIELDS)
        if "pos" not in fields:
            raise ShapeError("add_entity needs pos=(x, y)")
        one = {"pos": np.asarray(fields["pos"], np.float64)[None]}
        for name in ("vel", "radius", "mass"):
            if name in fields:
                one[name] = np.asarray(fields[name], np.float64)[None]
        return int(self.add_entities(kind, **one)[0])

    def remove_entity(self, slots: int | Sequence[int]) -> None:
        """Free entity slots (``alive`` set to False, velocity zeroed) with row deltas.

        Raises:
          IndexOutOfRangeError: a slot outside ``[0, capacity)`` (from the delta validation).
          DomainError: a slot that holds no entity.
        """
        idx = np.atleast_1d(np.asarray(slots, np.int64))
        n = self.params.capacity
        if np.any((idx < 0) | (idx >= n)):
            from mmsb_jax.errors import IndexOutOfRangeError

            raise IndexOutOfRangeError(f"slots {idx[(idx < 0) | (idx >= n)].tolist()} outside "
                                       f"[0, {n})")
        alive = np.asarray(self._state.pages["alive"])
        if not np.all(alive[idx]):
            raise DomainError(f"slots {idx[~alive[idx]].tolist()} hold no entity")
        idx32 = idx.astype(np.int32)
        self._commit([Delta.rows("alive", idx32, np.zeros(idx.shape, bool)),
                      Delta.rows("vel", idx32, np.zeros((idx.size, 2), np.float32))])

    # -- stepping ---------------------------------------------------------------------------
    def step(self, num_steps: int = 1) -> None:
        """Advance ``num_steps`` steps.

        Unbound, the steps run as one compiled ``lax.scan`` (one compilation per distinct
        ``num_steps``; ``step(1)`` uses the single-step function). Bound to a bus, each step is
        one commit (its deltas are logged), so the run can be replayed; with the world's graph
        on the bus (:meth:`open`), that commit is the step's only jitted call.
        """
        num_steps = int(num_steps)
        if num_steps < 0:
            raise OptionError(f"num_steps must be >= 0, got {num_steps}")
        if num_steps == 0:
            return
        state = self.state
        if self._bus is None:
            self._state = (_step_jit(self.graph, state) if num_steps == 1
                           else _simulate_jit(self.graph, num_steps, state))
            return
        bus = self._bus
        if self._propagating:
            for _ in range(num_steps):  # apply + propagate: one jitted call per commit
                bus.commit(step_deltas(state))
                state = self._state = bus.state
            return
        for _ in range(num_steps):
            bus.commit(step_deltas(state))
            base = bus.state
            state = state.with_pages({n: base.pages[n] for n in STEP_DIRTY},
                                     {n: base.epochs[n] for n in STEP_DIRTY})
            state = _propagate_step_jit(self.graph, state)
            self._state = state

    @property
    def step_fn(self):
        """The pure, jitted ``State -> State`` step of this world (vmap it for many worlds)."""
        return functools.partial(_step_jit, self.graph)

    def simulate(self, state: State, num_steps: int) -> State:
        """``num_steps`` pure steps from ``state`` (one compiled ``lax.scan``; vmappable).

        Args:
          state: a State of :attr:`graph.schema <mmsb_jax.Graph.schema>`, derived pages current
            (or a batch of them, leading axis on every leaf, inside ``jax.vmap``).
          num_steps: number of steps (static).

        Returns:
          The State after ``num_steps`` steps.
        """
        return _simulate_jit(self.graph, int(num_steps), state)

    def random_state(self, key: jax.Array, count: int, *, radius: float | None = None,
                     speed: float = 0.1, mass: float = 1.0, kind: int = 0) -> State:
        """A pure random world: ``count`` discs on a jittered lattice, none overlapping.

        Vmap it over keys to build a batch of worlds. Does not touch :attr:`state`.

        Args:
          key: PRNG key.
          count: number of entities (static, ``<= capacity``).
          radius: disc radius (default ``max_radius``).
          speed: standard deviation of each velocity component.
          mass: entity mass.
          kind: kind id stored for every entity.

        Returns:
          A State of :attr:`graph.schema <mmsb_jax.Graph.schema>` with slots ``0..count-1``
          alive and derived pages current.

        Raises:
          CapacityError: ``count > capacity``. DomainError: the discs do not fit on the
          lattice, or a bad radius or mass.
        """
        count = int(count)
        if not 1 <= count <= self.params.capacity:
            raise CapacityError(f"count must be in [1, {self.params.capacity}], got {count}")
        radius = self.params.max_radius if radius is None else float(radius)
        if not 0 < radius <= self.params.max_radius:
            raise DomainError(f"radius must be in (0, {self.params.max_radius}], got {radius}")
        if not mass > 0:
            raise DomainError(f"mass must be > 0, got {mass}")
        w, h = self.params.bounds
        side = math.ceil(math.sqrt(count * w / h))
        rows = math.ceil(count / side)
        if min(w / side, h / rows) <= 2 * radius:
            raise DomainError(f"{count} discs of radius {radius} do not fit in the box "
                              f"{self.params.bounds} on a lattice")
        return _lattice_jit(self.graph, self.params, key, count, radius, float(speed),
                            float(mass), int(kind))

    def set_state(self, state: State) -> None:
        """Replace the world's state (e.g. by a :meth:`random_state`); committed if bound.

        Raises:
          SchemaMismatchError: ``state`` does not hold the world's pages with their shapes.
        """
        for spec in self.graph.schema:
            page = state.pages.get(spec.name) if isinstance(state, State) else None
            if page is None or tuple(page.shape) != spec.shape:
                raise SchemaMismatchError(f"state does not hold page {spec.name!r} with shape "
                                          f"{spec.shape}")
        deltas = [Delta.full(n, jnp.asarray(state.pages[n], self.graph.schema[n].dtype))
                  for n in self.graph.base.names]
        self._commit(deltas)

    # -- replay -----------------------------------------------------------------------------
    def replay(self, source: Any = None, *, to_seq: int | None = None) -> State:
        """Rebuild a State of this world from a bus log (its bound bus by default).

        Replays the logged deltas of the base pages, then computes the derived pages once
        (not after every step: a log of ``k`` steps replays without simulating them again).

        Args:
          source: a bus directory, a TLog or a Bus (default: the bound bus).
          to_seq: stop after this commit (default: the last one).

        Returns:
          The replayed State with derived pages recomputed; its pages and its base pages'
          epochs equal the live ones bit for bit. (A bus with the world's graph also counts
          the derived pages' changes in their epochs: ``bus.at(seq)`` rebuilds those too, by
          propagating after every commit.)
        """
        from mmsb_jax.store.replay import replay

        if source is None:
            if self._bus is None:
                raise OptionError("replay needs a source: this world is not bound to a bus")
            source = self._bus
        log = getattr(source, "log", source)
        base = replay(init_state(self.graph.base), log, to_seq=to_seq)
        state = init_state(self.graph.schema).with_pages(
            {n: base.pages[n] for n in self.graph.base.names},
            {n: base.epochs[n] for n in self.graph.base.names})
        return _refresh_jit(self.graph, state)

    def __repr__(self) -> str:
        bound = f", bus={self._bus!r}" if self._bus is not None else ""
        return (f"World(dt={self.params.dt}, capacity={self.params.capacity}, "
                f"broadphase={self.params.broadphase!r}, entities={self.num_entities}{bound})")


def _propagate_step_impl(graph: Graph, state: State) -> State:
    return propagate(graph, state, STEP_DIRTY)


_propagate_step_jit = jax.jit(_propagate_step_impl, static_argnums=0)
_lattice_jit = jax.jit(_lattice_state, static_argnums=(0, 1, 3, 4, 5, 6, 7))
