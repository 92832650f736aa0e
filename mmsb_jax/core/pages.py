"""Pages, schemas and the State pytree.

A *page* is a fixed-shape, fixed-dtype JAX array with a name. A :class:`Schema` lists the pages
of a store in a fixed order (page order = page index). A :class:`State` holds one array per page
plus an ``int32`` epoch per page that counts the deltas applied to it. ``State`` is a frozen,
registered pytree: it passes through ``jit``, ``vmap``, ``grad`` and ``jax.tree`` utilities.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.errors import SchemaError, UnknownPageError

__all__ = ["PageMap", "PageSpec", "Schema", "State", "init_state"]

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,127}$")


def _canonical_dtype(dtype: Any) -> str:
    try:
        dt = np.dtype(jnp.dtype(dtype))
    except TypeError as e:
        raise SchemaError(f"not a JAX dtype: {dtype!r}") from e
    return dt.name


@dataclasses.dataclass(frozen=True)
class PageSpec:
    """The static description of one page.

    Attributes:
      name: unique page name (letters, digits, ``_ . - /``; at most 128 characters).
      shape: the page's shape, a tuple of non-negative ints. Row deltas index axis 0, so a page
        that receives row deltas needs ``len(shape) >= 1``.
      dtype: any JAX dtype, stored canonically as its numpy name (``"float32"``, ``"uint8"``...).
      sharding: optional ``PartitionSpec`` axes, one entry per dimension (``("data", None)``),
        used when a mesh is given to :func:`init_state`.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    sharding: tuple[str | tuple[str, ...] | None, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise SchemaError(f"invalid page name {self.name!r}")
        try:
            shape = tuple(operator.index(s) for s in self.shape)
        except TypeError as e:
            raise SchemaError(f"page {self.name!r}: shape must be a tuple of ints, got "
                              f"{self.shape!r}") from e
        if any(s < 0 for s in shape):
            raise SchemaError(f"page {self.name!r}: negative dimension in {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", _canonical_dtype(self.dtype))
        if self.sharding is not None:
            sharding = tuple(
                tuple(a) if isinstance(a, list) else a for a in self.sharding
            )
            if len(sharding) > len(shape):
                raise SchemaError(
                    f"page {self.name!r}: sharding {sharding} has more axes than shape {shape}"
                )
            object.__setattr__(self, "sharding", sharding)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return self.size * np.dtype(self.dtype).itemsize

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable description (used by the log and checkpoint manifests)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sharding": None
            if self.sharding is None
            else [list(a) if isinstance(a, tuple) else a for a in self.sharding],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PageSpec:
        """Inverse of :meth:`to_json`; raises :class:`SchemaError` on malformed input."""
        try:
            return cls(
                name=obj["name"],
                shape=tuple(obj["shape"]),
                dtype=obj["dtype"],
                sharding=None if obj.get("sharding") is None else tuple(obj["sharding"]),
            )
        except (KeyError, TypeError) as e:
            raise SchemaError(f"malformed page spec {obj!r}") from e


class Schema:
    """An ordered, immutable, hashable collection of :class:`PageSpec`.

    Page order is page index. Names are unique.

    >>> import mmsb_jax as mm
    >>> s = mm.Schema([mm.PageSpec("pos", (4, 2)), mm.PageSpec("raw", (8,), "uint8")])
    >>> s.names
    ('pos', 'raw')
    >>> s["raw"].dtype
    'uint8'
    """

    __slots__ = ("_by_name", "_specs")

    def __init__(self, specs: Iterable[PageSpec]):
        specs = tuple(specs)
        for s in specs:
            if not isinstance(s, PageSpec):
                raise SchemaError(f"schema entries must be PageSpec, got {type(s).__name__}")
        by_name: dict[str, int] = {}
        for i, s in enumerate(specs):
            if s.name in by_name:
                raise SchemaError(f"duplicate page name {s.name!r}")
            by_name[s.name] = i
        self._specs = specs
        self._by_name = by_name

    @property
    def specs(self) -> tuple[PageSpec, ...]:
        """The page specs, in page-index order."""
        return self._specs

    @property
    def names(self) -> tuple[str, ...]:
        """Page names, in page-index order."""
        return tuple(s.name for s in self._specs)

    def index(self, name: str) -> int:
        """The page index of ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownPageError(name, self.names) from None

    def __getitem__(self, name: str) -> PageSpec:
        return self._specs[self.index(name)]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[PageSpec]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self._specs == other._specs

    def __hash__(self) -> int:
        return hash(self._specs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.name}:{s.dtype}{list(s.shape)}" for s in self._specs)
        return f"Schema({inner})"

    def extend(self, specs: Iterable[PageSpec]) -> Schema:
        """A new schema with ``specs`` appended."""
        return Schema((*self._specs, *specs))

    def without(self, names: Iterable[str]) -> Schema:
        """A new schema without the named pages."""
        drop = set(names)
        for n in drop:
            self.index(n)
        return Schema(s for s in self._specs if s.name not in drop)

    def to_json(self) -> list[dict[str, Any]]:
        """A JSON-serialisable list of page specs."""
        return [s.to_json() for s in self._specs]

    @classmethod
    def from_json(cls, obj: Any) -> Schema:
        """Inverse of :meth:`to_json`."""
        if not isinstance(obj, list):
            raise SchemaError("a schema is a JSON list of page specs")
        return cls(PageSpec.from_json(o) for o in obj)


class PageMap(Mapping[str, Any]):
    """An immutable, *ordered* ``{page name: leaf}`` mapping registered as a pytree.

    Plain dicts are flattened by JAX in sorted key order, which would lose the schema's page
    order after a ``jit`` round trip; ``PageMap`` keeps insertion order in its treedef.
    """

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()):
        object.__setattr__(self, "_data", dict(items))

    @classmethod
    def _wrap(cls, data: dict[str, Any]) -> PageMap:
        """A PageMap owning ``data`` (not copied: the caller hands it over)."""
        out = object.__new__(cls)
        _set_data(out, data)
        return out

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]`` or ``default`` (one dict lookup: the commit path calls this)."""
        return self._data.get(key, default)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("PageMap is immutable")

    def __repr__(self) -> str:
        return f"PageMap({self._data!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PageMap):
            other = other._data
        return isinstance(other, Mapping) and list(self._data) == list(other) and all(
            self._data[k] is other[k] for k in self._data)

    __hash__ = None  # type: ignore[assignment]

    def _tree_flatten_with_keys(self):
        keys = tuple(self._data)
        return [(jax.tree_util.DictKey(k), self._data[k]) for k in keys], keys

    @classmethod
    def _tree_unflatten(cls, keys: tuple[str, ...], children: Iterable[Any]) -> PageMap:
        return cls(zip(keys, children, strict=True))


_set_data = PageMap._data.__set__  # the slot's setter, past the immutability guard

jax.tree_util.register_pytree_with_keys(
    PageMap,
    PageMap._tree_flatten_with_keys,
    PageMap._tree_unflatten,
    flatten_func=lambda m: (tuple(m._data.values()), tuple(m._data)),
)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class State:
    """The contents of a store: one array and one epoch per page.

    Attributes:
      pages: ``{name: Array[*spec.shape]}`` in the page's dtype, a :class:`PageMap` in schema
        order (any mapping given to the constructor is converted).
      epochs: ``{name: int32[]}``, the number of deltas applied to each page (for a derived page:
        the number of recomputations that changed it).
      shardings: static ``((name, NamedSharding), ...)`` of the sharded pages, set by
        :func:`init_state` with a mesh. Kept in the treedef so that ``apply``/``propagate``
        can keep every page's sharding even inside a user's ``jit`` on an auto-sharding mesh,
        where traced arrays carry no sharding.

    ``State`` is a frozen pytree (``jax.tree_util.register_dataclass``): use it under ``jit``,
    ``vmap`` (leading batch axis on every leaf) and ``jax.tree.map``. Epochs are integers, so
    differentiate with respect to ``state.pages`` (or pass ``allow_int=True`` to ``jax.grad``).
    """

    pages: Mapping[str, jax.Array]
    epochs: Mapping[str, jax.Array]
    shardings: tuple[tuple[str, jax.sharding.NamedSharding], ...] = dataclasses.field(
        default=(), metadata=dict(static=True))

    def __post_init__(self) -> None:
        if not isinstance(self.pages, PageMap):
            object.__setattr__(self, "pages", PageMap(self.pages))
        if not isinstance(self.epochs, PageMap):
            object.__setattr__(self, "epochs", PageMap(self.epochs))

    @property
    def names(self) -> tuple[str, ...]:
        """Page names in insertion order."""
        return tuple(self.pages)

    def replace(self, **changes: Any) -> State:
        """A copy with fields replaced (``state.replace(pages=...)``)."""
        return dataclasses.replace(self, **changes)

    def page(self, name: str) -> jax.Array:
        """The array of page ``name``; raises :class:`UnknownPageError`."""
        try:
            return self.pages[name]
        except KeyError:
            raise UnknownPageError(name, tuple(self.pages)) from None

    def with_pages(
        self, pages: Mapping[str, jax.Array], epochs: Mapping[str, jax.Array] | None = None
    ) -> State:
        """A copy with some pages (and optionally epochs) replaced; other pages are shared."""
        new_pages = cast(PageMap, self.pages)._data.copy()
        new_pages.update(pages)
        if epochs is None:
            new_epochs = self.epochs
        else:
            new_epochs = cast(PageMap, self.epochs)._data.copy()
            new_epochs.update(epochs)
            new_epochs = PageMap._wrap(new_epochs)
        return State._wrap(new_pages, new_epochs, self.shardings)

    @staticmethod
    def _wrap(pages: dict[str, Any], epochs: PageMap | dict[str, Any],
              shardings: tuple) -> State:
        """A State owning ``pages``/``epochs`` (fresh dicts the caller hands over, already
        in page order): skips the constructor's conversions (the commit hot path)."""
        out = object.__new__(State)
        if type(epochs) is not PageMap:
            epochs = PageMap._wrap(cast(dict, epochs))
        out.__dict__.update(pages=PageMap._wrap(pages), epochs=epochs, shardings=shardings)
        return out

    def sharding_of(self, name: str) -> jax.sharding.NamedSharding | None:
        """The recorded sharding of page ``name`` (``None`` when it is not sharded)."""
        return dict(self.shardings).get(name)


def _named_sharding(spec: PageSpec, mesh: jax.sharding.Mesh | None):
    if mesh is None or spec.sharding is None:
        return None
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec.sharding))


def init_state(schema: Schema, *, mesh: jax.sharding.Mesh | None = None) -> State:
    """A State with every page zero-filled and every epoch 0.

    Args:
      schema: the pages to allocate.
      mesh: when given, pages whose spec has ``sharding`` are created as ``NamedSharding`` arrays
        on this mesh; other pages are replicated on it.

    Returns:
      ``State`` with ``pages[name]: spec.dtype[*spec.shape]`` zeros and
      ``epochs[name]: int32[] = 0``.
    """
    if not isinstance(schema, Schema):
        raise SchemaError(f"init_state expects a Schema, got {type(schema).__name__}")
    pages: dict[str, jax.Array] = {}
    epochs: dict[str, jax.Array] = {}
    shardings: list[tuple[str, jax.sharding.NamedSharding]] = []
    for spec in schema:
        if mesh is not None:
            sharding = _named_sharding(spec, mesh) or jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()
            )
            pages[spec.name] = jnp.zeros(spec.shape, spec.dtype, device=sharding)
            shardings.append((spec.name, sharding))
            epochs[spec.name] = jnp.zeros((), jnp.int32, device=jax.sharding.NamedSharding(
                mesh, jax.sharding.PartitionSpec()))
        else:
            pages[spec.name] = jnp.zeros(spec.shape, spec.dtype)
            epochs[spec.name] = jnp.zeros((), jnp.int32)
    return State(pages=pages, epochs=epochs, shardings=tuple(shardings))
