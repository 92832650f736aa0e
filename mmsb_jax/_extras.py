"""Optional dependencies of the upper layers, imported on first use.

The core install (``pip install mmsb-jax``) keeps to the design's packages; a layer that needs
more imports it through :func:`require`, which turns a missing module into a
:class:`~mmsb_jax.errors.MissingExtraError` naming the extra that provides it.

>>> require("json", extra="agents", feature="anything").__name__
'json'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from mmsb_jax.errors import MissingExtraError

__all__ = ["EXTRAS", "require"]

EXTRAS: dict[str, tuple[str, ...]] = {
    "agents": ("gymnax",),
    "mcp": ("mcp", "mcp_types", "jsonschema", "anyio"),
}
"""Extra name -> the top-level modules it installs (see ``pyproject.toml``)."""


def require(module: str, *, extra: str, feature: str) -> ModuleType:
    """Import ``module`` (dotted name), or raise :class:`MissingExtraError` naming ``extra``.

    Args:
      module: the module to import, e.g. ``"gymnax"`` or ``"mcp.server.stdio"``.
      extra: the ``mmsb-jax`` extra that installs it (a key of :data:`EXTRAS`).
      feature: what needs it, for the message (e.g. ``"mmsb_jax.agents.from_gymnax"``).

    Returns:
      The imported module.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module
        if missing.split(".")[0] not in EXTRAS.get(extra, ()) and missing != module:
            raise  # something inside the installed package is broken: not a missing extra
        raise MissingExtraError(
            f"{feature} needs the optional dependency {missing!r}, which is not installed; "
            f'install it with: pip install "mmsb-jax[{extra}]"', extra=extra, name=missing) from e
