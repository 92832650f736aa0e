"""Typed exceptions raised by mmsb-jax.

Every error the library raises on purpose derives from :class:`MMSBError`, so a caller can catch
the whole family with one ``except``. Each error is raised *before* anything changes: a failed
``apply`` returns nothing, a failed ``Bus.commit`` leaves the log and the state as they were.

Several classes also derive from the matching builtin (``KeyError``, ``TypeError``,
``ValueError``, ``IndexError``) so that generic code catching those keeps working.
"""

from __future__ import annotations

__all__ = [
    "CapacityError",
    "CheckFailedError",
    "ComposeError",
    "CycleError",
    "DependencyError",
    "DTypeError",
    "DeviceUnavailableError",
    "DomainError",
    "FormatError",
    "GivensConflictError",
    "GraphError",
    "IndexOutOfRangeError",
    "InvalidProblemError",
    "KernelBackendError",
    "LogCorruptError",
    "MMSBError",
    "MaskError",
    "MissingExtraError",
    "OpError",
    "OptionError",
    "PageExistsError",
    "SchemaError",
    "SchemaMismatchError",
    "SearchLimitError",
    "SeedFormatError",
    "SemiringError",
    "ShapeError",
    "StoreError",
    "ToolError",
    "UnknownPageError",
    "UnknownSeqError",
    "UnknownSemiringError",
    "UnsatisfiableError",
]


class MMSBError(Exception):
    """Base class of every error raised by mmsb-jax."""


class SchemaError(MMSBError, ValueError):
    """A schema or page specification is invalid (duplicate names, bad shape or dtype)."""


class UnknownPageError(MMSBError, KeyError):
    """A page name is not in the schema or state."""

    def __init__(self, name: str, known: tuple[str, ...] | list[str] = ()):
        self.name = name
        self.known = tuple(known)
        hint = f"; known pages: {', '.join(self.known)}" if self.known else ""
        super().__init__(f"unknown page {name!r}{hint}")

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0])


class PageExistsError(MMSBError, ValueError):
    """A page of that name already exists (and cannot be redefined this way)."""


class DTypeError(MMSBError, TypeError):
    """Values have a dtype other than the page's dtype."""


class ShapeError(MMSBError, ValueError):
    """Values, indices or masks have a shape incompatible with the page."""


class MaskError(ShapeError):
    """A mask has the wrong shape or is not boolean."""


class IndexOutOfRangeError(MMSBError, IndexError):
    """A row index lies outside ``[-1, num_rows)`` (``-1`` is the padding sentinel)."""


class OpError(MMSBError, ValueError):
    """An unknown delta op, or an op that is not valid for the page's dtype."""


class ComposeError(MMSBError, ValueError):
    """Two deltas cannot be composed into one delta (different pages, kinds or ops)."""


class DeviceUnavailableError(MMSBError, RuntimeError):
    """A page was asked to live on a device kind (e.g. ``"gpu"``) that JAX does not have."""


class KernelBackendError(MMSBError, ValueError):
    """An unknown kernel backend name (``MMSB_KERNELS`` or ``mmsb_jax.kernels.set_backend``)."""


class SemiringError(MMSBError, ValueError):
    """A semiring operation got an argument it cannot use (``max_iter < 0``, a bad ``tol``)."""


class UnknownSemiringError(SemiringError, TypeError):
    """An object passed as a semiring is not a ``mm.semiring.Semiring``."""


class InvalidProblemError(MMSBError, ValueError):
    """A constraint problem, rule set or puzzle is malformed (values outside the domain, bad
    variable or proposition indices, a group that names a variable twice)."""


class UnsatisfiableError(MMSBError, ValueError):
    """A constraint problem has no solution: the search explored every branch and found none."""


class GivensConflictError(InvalidProblemError, UnsatisfiableError):
    """The givens of a puzzle already violate a constraint (two equal values in one group).

    ``conflicts`` lists the offending pairs of cells as ``((row, col), (row, col))``.
    """

    def __init__(self, message: str, conflicts: tuple = ()):
        self.conflicts = tuple(conflicts)
        super().__init__(message)


class SearchLimitError(MMSBError, RuntimeError):
    """A search stopped at its step or stack limit before finding a solution or proving none."""


class CheckFailedError(MMSBError, RuntimeError):
    """A value check inside a ``mm.checked`` function failed."""


class CycleError(MMSBError, ValueError):
    """A graph change would close a dependency cycle; ``cycle`` names its pages in order."""

    def __init__(self, cycle: tuple[str, ...] | list[str]):
        self.cycle = tuple(cycle)
        path = " -> ".join((*self.cycle, self.cycle[0])) if self.cycle else "?"
        super().__init__(f"dependency cycle: {path}")


class GraphError(MMSBError, ValueError):
    """An invalid dependency-graph definition or operation (e.g. removing a base page)."""


class DependencyError(GraphError):
    """A page cannot be removed because other pages depend on it (``dependents``)."""

    def __init__(self, page: str, dependents: tuple[str, ...] | list[str]):
        self.page = page
        self.dependents = tuple(dependents)
        super().__init__(
            f"page {page!r} has dependents {', '.join(self.dependents)}; remove them first "
            "or pass cascade=True"
        )


class StoreError(MMSBError, OSError):
    """A durable-storage operation failed (log write, checkpoint, directory lock)."""


class SchemaMismatchError(MMSBError, ValueError):
    """A stored schema differs from the one given by the caller."""


class UnknownSeqError(MMSBError, LookupError):
    """A commit sequence number the store does not hold (in the future, or pruned away)."""


class OptionError(MMSBError, ValueError):
    """An invalid option value (unknown sync policy, non-positive size or interval, ...)."""


class DomainError(MMSBError, ValueError):
    """A value lies outside a function's domain (negative counts, a non-finite weight, ...)."""


class CapacityError(MMSBError, IndexError):
    """A fixed-capacity structure is full (e.g. no free entity slot left in a ``World``)."""


class ToolError(MMSBError, ValueError):
    """An LLM tool call was refused: unknown tool, or arguments that fail its JSON schema.

    ``tool`` names the tool; ``path`` is the JSON path of the offending argument (may be empty).
    """

    def __init__(self, message: str, tool: str = "", path: tuple[str | int, ...] = ()):
        self.tool = tool
        self.path = tuple(path)
        super().__init__(message)


class FormatError(MMSBError, ValueError):
    """A file does not follow its documented format (bad magic, version, length, checksum)."""


class LogCorruptError(FormatError):
    """A log record is corrupt and valid data follows it (not a torn tail).

    ``offset`` is the byte offset of the first bad record in ``path``.
    """

    def __init__(self, offset: int, path: str = "", reason: str = ""):
        self.offset = int(offset)
        self.path = str(path)
        self.reason = reason
        where = f" in {path}" if path else ""
        why = f": {reason}" if reason else ""
        super().__init__(f"corrupt log record at offset {self.offset}{where}{why}")


class SeedFormatError(FormatError):
    """A file in the original MMSB formats (MMSBLOG1 / MMSBSNAP) is malformed."""


class MissingExtraError(MMSBError, ImportError):
    """An optional dependency of one upper layer is not installed.

    The message names the extra to install, e.g. ``pip install "mmsb-jax[agents]"``.
    Attributes: ``extra`` (the extra's name) and ``name`` (the missing module, as ImportError).
    """

    def __init__(self, message: str, *, extra: str, name: str | None = None) -> None:
        super().__init__(message, name=name)
        self.extra = extra
