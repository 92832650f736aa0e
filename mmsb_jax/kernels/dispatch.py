"""Which implementation a merge or semiring product runs: Pallas or XLA.

The setting is one of :data:`BACKENDS`:

* ``"auto"`` (default): the Pallas kernel when the computation is lowered for an NVIDIA GPU,
  the XLA reference everywhere else.
* ``"pallas"``: always the Pallas kernel; compiled on an NVIDIA GPU, ``interpret=True``
  elsewhere (slow; for tests and debugging).
* ``"xla"``: always the pure-``jnp`` reference.

Precedence: a per-call ``backend=`` argument, then :func:`use_backend` / :func:`set_backend`,
then the ``MMSB_KERNELS`` environment variable, then ``"auto"``.

The choice is made when a function is *traced*. The Python setting lives in a
``jax.make_user_context`` value, which is part of JAX's jit cache key: changing it with
:func:`set_backend` or :func:`use_backend` retraces jitted functions instead of silently reusing
a compilation made under the old setting. The environment variable is read at trace time and is
not part of the cache key (set it before the first trace, or call ``jax.clear_caches()``).

"GPU" is decided at lowering time with ``lax.platform_dependent`` when a GPU backend is present
(so a ``jit`` placed on the CPU of a GPU machine still gets the XLA path), and statically when
JAX has no GPU backend at all (nothing extra is traced).

Inputs a kernel does not handle (a dtype outside ``KERNEL_DTYPES``, a sharded page, more rows
than int32 indexing allows) fall back to XLA with a ``logging.debug`` line on the
``"mmsb_jax.kernels"`` logger; they never raise.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Literal

import jax

from mmsb_jax.errors import KernelBackendError

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "Route",
    "get_backend",
    "gpu_present",
    "route",
    "set_backend",
    "use_backend",
]

BACKENDS: tuple[str, ...] = ("auto", "pallas", "xla")
ENV_VAR = "MMSB_KERNELS"

logger = logging.getLogger("mmsb_jax.kernels")

# ``None`` means "not set in Python: read the environment variable".
_setting = jax.make_user_context(default_value=None)

Route = Literal["xla", "interpret", "gpu_or_interpret", "gpu_or_xla"]
"""How a call runs: ``"xla"`` (reference), ``"interpret"`` (Pallas interpret mode),
``"gpu_or_interpret"`` / ``"gpu_or_xla"`` (compiled Pallas when lowered for CUDA, otherwise
interpret mode / the reference, chosen by ``lax.platform_dependent``)."""


def _check_backend(name: Any, source: str) -> str:
    if name not in BACKENDS:
        raise KernelBackendError(f"unknown kernel backend {name!r} from {source}; expected one "
                                 f"of {BACKENDS}")
    return name


def set_backend(name: str | None) -> None:
    """Set the kernel backend for this process (``None`` restores the environment's choice).

    Args:
      name: ``"auto" | "pallas" | "xla"`` or None.

    Raises:
      KernelBackendError: ``name`` is not a backend.
    """
    if name is not None:
        _check_backend(name, "set_backend")
    _setting.set_global(name)


def use_backend(name: str) -> Any:
    """Context manager that selects the kernel backend for the calls (and traces) inside it.

    >>> import jax.numpy as jnp, mmsb_jax.kernels as mk
    >>> with mk.use_backend("xla"):
    ...     mk.merge_rows(jnp.zeros((3,)), jnp.array([1]), jnp.array([5.0]), "set").tolist()
    [0.0, 5.0, 0.0]

    Raises:
      KernelBackendError: ``name`` is not a backend.
    """
    return _setting(_check_backend(name, "use_backend"))


def get_backend() -> str:
    """The backend setting now in force (context, then process setting, then environment).

    Raises:
      KernelBackendError: the environment variable holds an unknown name.
    """
    value = _setting.value
    if value is not None:
        return value
    return _check_backend(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto",
                          f"${ENV_VAR}")


@functools.lru_cache(maxsize=1)
def gpu_present() -> bool:
    """Whether JAX has a usable GPU backend in this process."""
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def route(kernel: str, unsupported: str | None, backend: str | None = None) -> Route:
    """Decide how one call of ``kernel`` runs.

    Args:
      kernel: the kernel's name (for the log line).
      unsupported: why the Pallas kernel cannot take these inputs, or None when it can.
      backend: a per-call override of the setting, or None.

    Returns:
      The :data:`Route`.
    """
    setting = _check_backend(backend, "backend=") if backend is not None else get_backend()
    if setting == "xla":
        return "xla"
    if unsupported is not None:
        logger.debug("mmsb_jax.kernels.%s: using the XLA path: %s", kernel, unsupported)
        return "xla"
    if setting == "pallas":
        return "gpu_or_interpret" if gpu_present() else "interpret"
    return "gpu_or_xla" if gpu_present() else "xla"
