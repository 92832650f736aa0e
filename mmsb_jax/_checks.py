"""Argument checks shared by every layer: Python ints and finite real numbers.

``bool`` is an ``int`` subclass in Python; none of these accept it (``True`` is not a count).
Each check raises the given typed error (:class:`~mmsb_jax.errors.OptionError` by default)
with a message naming the argument and what it got, and returns the value as ``int``/``float``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmsb_jax.errors import MMSBError, OptionError

__all__ = ["check_int", "check_number", "is_int"]


def is_int(value: Any) -> bool:
    """True for Python and numpy integers, False for ``bool`` and everything else."""
    return not isinstance(value, bool | np.bool_) and isinstance(value, int | np.integer)


def check_int(name: str, value: Any, *, minimum: int | None = None,
              error: type[MMSBError] = OptionError) -> int:
    """``int(value)`` if it is an integer ``>= minimum``; else raise ``error``.

    >>> check_int("steps", 3, minimum=1)
    3
    >>> check_int("steps", True, minimum=1)
    Traceback (most recent call last):
    ...
    mmsb_jax.errors.OptionError: steps must be an int >= 1, got True
    """
    if not is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise error(f"{name} must be an int{bound}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, minimum: float | None = 0.0, strict: bool = False,
                 error: type[MMSBError] = OptionError) -> float:
    """``float(value)`` if it is a finite real ``>= minimum`` (``>`` if ``strict``).

    >>> check_number("tol", 1e-6, strict=True)
    1e-06
    >>> check_number("tol", float("nan"))
    Traceback (most recent call last):
    ...
    mmsb_jax.errors.OptionError: tol must be a finite number >= 0.0, got nan
    """
    ok = (not isinstance(value, bool | np.bool_) and isinstance(value, int | float | np.number)
          and math.isfinite(value))
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise error(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)
