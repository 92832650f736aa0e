"""The original MMSB's API on top of mmsb-jax, for byte pages.

The seed exposed a mutable, imperative API (Julia):

.. code-block:: julia

    state = mmsb_start(enable_gpu=false)
    page  = create_page(state, size=1024, location=:cpu)
    update_page(state, page.id, rand(UInt8, 1024))
    data  = query_page(state, page.id)
    mmsb_stop(state, checkpoint_path="state.mmsb")

This module reproduces it in Python. Underneath, each page is a ``uint8[size]`` page of an
``mm.State``; an update sets the bytes that changed (``state x delta -> state'``, as the rest of
the library), and an update with identical bytes is a no-op (the epoch does not move), as in
the seed.

Like the seed's pages (host memory), the compat pages are **write-back**: ``update_page``
writes a host copy of the page and marks it dirty; the device ``State`` is brought up to date
(one jitted host-to-device copy per dirty page, the epochs advanced) the next time
``state.state`` is read. ``query_page`` and ``page_epoch`` read the host copy, so the
imperative API never waits on a device; a program that mixes it with ``mm.*`` functions reads
``state.state`` and always sees every update.
``mmsb_stop(checkpoint_path=...)`` writes the seed's ``MMSBSNAP`` snapshot format, so the file
can be read by the original and imported with ``mmsb import-seed``.

Locations: ``:cpu`` / ``"cpu"`` (and ``"unified"``, stored on the CPU) always work; ``"gpu"``
places the page on a JAX GPU device when one exists and otherwise raises
:class:`~mmsb_jax.errors.DeviceUnavailableError`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mmsb_jax.core.pages import State
from mmsb_jax.errors import (
    DeviceUnavailableError,
    DTypeError,
    MMSBError,
    ShapeError,
    UnknownPageError,
)
from mmsb_jax.store import seed

__all__ = [
    "CompatPage",
    "MMSBState",
    "create_page",
    "mmsb_start",
    "mmsb_stop",
    "page_epoch",
    "query_page",
    "update_page",
]

_LOCATION_TAGS = {"cpu": 0, "gpu": 1, "unified": 2}


@dataclasses.dataclass(frozen=True)
class CompatPage:
    """Handle returned by :func:`create_page` (``page.id`` as in the seed)."""

    id: int
    size: int
    location: str

    def __int__(self) -> int:
        return self.id

    def __index__(self) -> int:
        return self.id


class MMSBState:
    """The seed's mutable state object: a current :class:`mmsb_jax.State` plus page handles.

    Attributes:
      state: the current immutable ``mm.State`` (pages named ``page_<id>``); reading it
        first uploads the pages updated since the last read. Assigning a State replaces
        the pages (and drops updates not yet read, which the assigned State supersedes).
      pages: ``{id: CompatPage}``.
      enable_gpu: whether GPU placement was requested at start.
      running: False after :func:`mmsb_stop`.
    """

    def __init__(self, enable_gpu: bool = False):
        self._state = State(pages={}, epochs={})
        self.pages: dict[int, CompatPage] = {}
        self.enable_gpu = bool(enable_gpu)
        self.running = True
        self._next_id = 1
        self._lock = threading.Lock()
        # Host copy of each page: (the page array it mirrors, its bytes, its epoch). Valid
        # while ``_state.pages[name]`` is still that array object, or while the page is
        # dirty (the host copy is newer); refreshed otherwise (e.g. when a caller replaced
        # ``state`` by hand).
        self._host: dict[str, tuple[jax.Array, np.ndarray, int]] = {}
        self._dirty: set[str] = set()

    @property
    def state(self) -> State:
        with self._lock:
            return self._flushed()

    @state.setter
    def state(self, value: State) -> None:
        with self._lock:
            self._dirty.clear()
            self._state = value

    def _flushed(self) -> State:
        """``_state`` with the dirty host pages uploaded (call with the lock held)."""
        if self._dirty:
            pages, epochs = {}, {}
            for name in self._dirty:
                _, host, epoch = self._host[name]
                pages[name], epochs[name] = _writer(self._state.pages[name].sharding)(host,
                                                                                      epoch)
                self._host[name] = (pages[name], host, epoch)
            self._state = self._state.with_pages(pages, epochs)
            self._dirty.clear()
        return self._state

    def _mirror(self, name: str) -> tuple[jax.Array, np.ndarray, int]:
        page = self._state.pages[name]
        entry = self._host.get(name)
        if entry is None or (entry[0] is not page and name not in self._dirty):
            entry = (page, np.array(page, dtype=np.uint8), int(self._state.epochs[name]))
            self._host[name] = entry
        return entry

    def _name(self, page_id: Any) -> str:
        pid = int(page_id.id if isinstance(page_id, CompatPage) else page_id)
        if pid not in self.pages:
            raise UnknownPageError(f"page_{pid}", [f"page_{i}" for i in self.pages])
        return f"page_{pid}"

    def _check_running(self) -> None:
        if not self.running:
            raise MMSBError("this MMSB state was stopped (mmsb_stop); start a new one")


def mmsb_start(enable_gpu: bool = False, **_: Any) -> MMSBState:
    """Start an MMSB state (the seed's ``mmsb_start``).

    Args:
      enable_gpu: the seed's flag; with True, :func:`create_page` places ``"gpu"`` pages on a
        GPU (an error is raised there when JAX has none).

    Returns:
      a new :class:`MMSBState` with no pages.
    """
    return MMSBState(enable_gpu=enable_gpu)


def _location_name(location: Any) -> str:
    name = str(location).lstrip(":").lower()
    if name not in _LOCATION_TAGS:
        raise MMSBError(f"unknown page location {location!r}; use 'cpu', 'gpu' or 'unified'")
    return name


def _device_for(location: str) -> jax.Device:
    if location == "gpu":
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
        if not gpus:
            raise DeviceUnavailableError(
                "location 'gpu' requested but JAX sees no GPU (install jax[cuda] on a GPU "
                "machine, or use location='cpu')")
        return gpus[0]
    return jax.devices("cpu")[0]


def create_page(state: MMSBState, size: int = 4096, location: Any = "cpu") -> CompatPage:
    """Allocate a zero-filled byte page and return its handle (ids start at 1 per state).

    Args:
      state: from :func:`mmsb_start`.
      size: page size in bytes (``> 0``).
      location: ``"cpu"``/``:cpu``, ``"gpu"`` or ``"unified"``.

    Returns:
      :class:`CompatPage` with ``.id``, ``.size``, ``.location``.
    """
    state._check_running()
    size = int(size)
    if size <= 0:
        raise ShapeError(f"page size must be positive, got {size}")
    loc = _location_name(location)
    device = _device_for(loc)
    with state._lock:
        pid = state._next_id
        state._next_id += 1
        name = f"page_{pid}"
        try:
            page = jax.device_put(jnp.zeros((size,), jnp.uint8), device)
        except Exception as e:  # e.g. XLA's RESOURCE_EXHAUSTED for a huge page
            state._next_id -= 1
            raise ShapeError(f"cannot allocate a {size}-byte page on {loc}: {e}") from e
        state._state = state._state.with_pages({name: page},
                                               {name: jnp.zeros((), jnp.int32)})
        handle = CompatPage(pid, size, loc)
        state.pages[pid] = handle
    return handle


@functools.lru_cache(maxsize=16)
def _writer(sharding: jax.sharding.Sharding):
    """``(uint8[size] bytes, int epoch) -> (page, int32 epoch)`` placed on ``sharding``.

    A jitted call moves the host bytes in JAX's C++ dispatch path (several times cheaper than
    ``jax.device_put`` from Python).
    """
    return jax.jit(lambda new, epoch: (jnp.asarray(new), jnp.asarray(epoch, jnp.int32)),
                   out_shardings=(sharding, sharding))


def _as_bytes(data: Any, size: int) -> np.ndarray:
    if isinstance(data, bytes | bytearray | memoryview):
        arr = np.frombuffer(bytes(data), np.uint8)
    else:
        arr = np.asarray(data)
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.integer) or (arr.size and (
                    arr.min() < 0 or arr.max() > 255)):
                raise DTypeError(f"page bytes must be uint8 (or ints in 0..255), got {arr.dtype}")
            arr = arr.astype(np.uint8)
    if arr.ndim != 1 or arr.size != size:
        raise ShapeError(f"update of a {size}-byte page needs {size} bytes, got shape {arr.shape}")
    return arr


def update_page(state: MMSBState, page_id: int | CompatPage, data: Any) -> bool:
    """Overwrite a page's bytes (the seed's ``update_page``).

    Only the bytes that differ change (the masked ``set`` delta of the changed bytes, which
    equals the full-page ``set``: the other bytes are equal); identical bytes change nothing,
    not even the epoch. The update is written back (see the module doc): it changes the host
    copy and its epoch now; the device page follows at the next read of ``state.state``.

    Args:
      state: from :func:`mmsb_start`.
      page_id: an id or :class:`CompatPage`.
      data: ``uint8[size]`` (bytes, bytearray or an integer array).

    Returns:
      True if the page changed.
    """
    state._check_running()
    name = state._name(page_id)
    with state._lock:
        page, host, epoch = state._mirror(name)
        new = _as_bytes(data, host.shape[0])
        if np.array_equal(host, new):
            return False
        state._host[name] = (page, new.copy(), epoch + 1)
        state._dirty.add(name)
    return True


def query_page(state: MMSBState, page_id: int | CompatPage) -> np.ndarray:
    """The page's bytes as a fresh ``uint8[size]`` numpy array."""
    name = state._name(page_id)
    with state._lock:
        return state._mirror(name)[1].copy()


def page_epoch(state: MMSBState, page_id: int | CompatPage) -> int:
    """How many changing updates the page has received."""
    name = state._name(page_id)
    with state._lock:
        return state._mirror(name)[2]


def mmsb_stop(state: MMSBState, checkpoint_path: str | os.PathLike | None = None) -> None:
    """Stop the state; with ``checkpoint_path`` write its pages as an ``MMSBSNAP`` snapshot."""
    state._check_running()
    if checkpoint_path is not None:
        pages = tuple(
            seed.SeedPage(pid, page_epoch(state, pid), _LOCATION_TAGS[h.location], {},
                          query_page(state, pid))
            for pid, h in sorted(state.pages.items()))
        tmp = f"{os.fspath(checkpoint_path)}.tmp"
        with open(tmp, "wb") as f:
            f.write(seed.encode_seed_snapshot(seed.SeedSnapshot(pages, 0)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, checkpoint_path)
    state.running = False
