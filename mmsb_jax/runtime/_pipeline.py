"""The commit pipeline shared by the Bus and the distributed Follower.

*validate -> affected derived pages -> apply (one jitted transaction) -> changed derived*.

Everything a commit works out from the *structure* of its deltas (which pages, kinds, ops,
shapes and dtypes) is computed once per structure and cached in a :class:`CommitPlan`: the
structural validation, the derived pages the transaction recomputes, the log layout and the
byte counts. A repeated same-shaped commit then costs a dictionary lookup, the row-range
check of its indices and one jitted dispatch on JAX's C++ fast path.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import jax
import numpy as np

from mmsb_jax.core.delta import PADDING, Delta, _rows_in_range, validate_deltas
from mmsb_jax.core.pages import PageMap, Schema, State
from mmsb_jax.core.transaction import (
    CompiledTransaction,
    apply_transaction,
    stack_transactions,
    touched_pages,
    txn_structure,
)
from mmsb_jax.errors import GraphError, MMSBError, SchemaMismatchError
from mmsb_jax.store.checkpoint import CheckpointStore
from mmsb_jax.store.format import TxnLayout

if TYPE_CHECKING:
    from mmsb_jax.core.graph import Graph

__all__ = ["CommitPlan", "Pipeline", "Run", "StateHolder", "as_transaction", "resolve_schema"]

_MAX_PLANS = 1024
#: Transactions of more value bytes than this are not stacked into a scan by commit_many.
STACK_MAX_TXN_BYTES = 64 << 10


def resolve_schema(schema: Schema | None, graph: Graph | None) -> Schema | None:
    """The bus schema for ``Bus.open(schema, graph)``: the graph's schema when there is one.

    Raises:
      SchemaMismatchError: ``schema`` is neither the graph's schema nor its base schema.
    """
    if graph is None:
        return schema
    full = graph.schema
    if schema is not None and schema != full and full.specs[:len(schema.specs)] != schema.specs:
        raise SchemaMismatchError(
            f"schema {schema} is neither the graph's schema nor its base schema")
    return full


@dataclasses.dataclass(frozen=True)
class CommitPlan:
    """What every transaction of one structure shares.

    Attributes:
      pages: base pages the deltas write, in first-touch order.
      affected: derived pages the transaction recomputes (descendants of ``pages``).
      row_checks: ``(position, rows)`` of each ``rows`` delta: its indices are range-checked
        on every commit.
      nbytes_applied: bytes of the deltas' values.
      layout: the log layout (None for a pipeline that does not log).
      compiled: the structure's jitted transaction (None for an empty transaction).
    """

    pages: tuple[str, ...]
    affected: tuple[str, ...]
    row_checks: tuple[tuple[int, int], ...]
    nbytes_applied: int
    layout: TxnLayout | None
    compiled: CompiledTransaction | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """Consecutive transactions ``[start, stop)`` of one structure (one plan).

    Attributes:
      start, stop: positions in the batch.
      plan: their shared :class:`CommitPlan`.
      stacked: their deltas stacked position by position (leaves ``[stop - start, ...]``),
        or None for a run of one transaction or of large transactions (applied one by one).
    """

    start: int
    stop: int
    plan: CommitPlan
    stacked: list[Delta] | None


class Pipeline:
    """Validates, plans and applies transactions for one schema and graph.

    Args:
      graph: the bus's ``mm.Graph`` or None.
      log_layouts: build a :class:`~mmsb_jax.store.format.TxnLayout` per plan (writers).
      donate: apply in place (the previous State's touched pages are deleted).
    """

    def __init__(self, graph: Graph | None, *, log_layouts: bool, donate: bool = False):
        self.graph = graph
        self.donate = donate
        self.log_layouts = log_layouts
        self._plans: dict[tuple, CommitPlan] = {}

    def prepare(self, state: State, deltas: Sequence[Delta]) -> CommitPlan:
        """Validate ``deltas`` against ``state`` and return their plan (nothing changes).

        Raises:
          TypeError: an element is not a Delta. UnknownPageError, DTypeError, ShapeError,
          MaskError, IndexOutOfRangeError, OpError: an invalid delta. GraphError: a delta
          writes a derived page. FormatError: a delta the log cannot hold.
        """
        try:
            key = txn_structure(deltas)
        except AttributeError:
            validate_deltas(state, deltas)  # raises the TypeError naming the bad element
            raise
        plan = self._plans.get(key)
        if plan is None:
            return self._new_plan(state, deltas, key)
        for pos, rows in plan.row_checks:
            if not _rows_in_range(deltas[pos].indices, rows):
                validate_deltas(state, [deltas[pos]])  # raises with the offending indices
        return plan

    def prepare_runs(self, state: State, txns: Sequence[Sequence[Delta]]) -> list[Run]:
        """Validate a batch of transactions, grouped into runs of one structure.

        Structure is validated once per run, row ranges on the run's stacked indices.

        Raises:
          The errors of :meth:`prepare`, with the failing transaction's position as
          ``exc.transaction_index`` and in a note; nothing changes.
        """
        runs: list[Run] = []
        i = 0
        try:
            keys = [txn_structure(t) for t in txns]
        except AttributeError:
            for i, t in enumerate(txns):  # find the element that is not a Delta
                _at(i, lambda t=t: validate_deltas(state, t))
            raise
        n = len(txns)
        while i < n:
            j = i + 1
            while j < n and keys[j] == keys[i]:
                j += 1
            plan = self.prepare_at(state, txns, i)
            stacked = None
            if j - i > 1 and txns[i] and plan.nbytes_applied > STACK_MAX_TXN_BYTES:
                # Large transactions gain nothing from a scan and lose a copy to stacking:
                # validated, logged and applied one by one.
                for k in range(i + 1, j):
                    self.prepare_at(state, txns, k)
            elif j - i > 1 and txns[i]:
                stacked = stack_transactions(txns[i:j])
                for pos, rows in plan.row_checks:
                    idx = stacked[pos].indices
                    if idx.size and not (idx.min() >= PADDING and idx.max() < rows):
                        bad = i + int(np.flatnonzero(((idx < PADDING) | (idx >= rows))
                                                     .any(axis=1))[0])
                        _at(bad, lambda bad=bad: validate_deltas(state, txns[bad]))
            runs.append(Run(i, j, plan, stacked))
            i = j
        return runs

    def prepare_at(self, state: State, txns: Sequence[Sequence[Delta]], i: int) -> CommitPlan:
        """:meth:`prepare` of ``txns[i]``, its errors marked with the position ``i``."""
        return cast(CommitPlan, _at(i, lambda: self.prepare(state, txns[i])))

    def _new_plan(self, state: State, deltas: Sequence[Delta], key: tuple) -> CommitPlan:
        validate_deltas(state, deltas)
        graph = self.graph
        if graph is not None:
            for d in deltas:
                if graph.is_derived(d.page):
                    raise GraphError(f"page {d.page!r} is derived (recomputed from "
                                     f"{', '.join(graph.inputs(d.page))}); commit deltas to "
                                     "its inputs")
        pages = touched_pages(deltas)
        affected = (tuple(n for n in graph.descendants(pages) if graph.is_derived(n))
                    if graph is not None and pages else ())
        plan = CommitPlan(
            pages=pages, affected=affected,
            row_checks=tuple((i, state.pages[d.page].shape[0]) for i, d in enumerate(deltas)
                             if d.kind == "rows"),
            nbytes_applied=sum(int(d.values.size) * d.values.dtype.itemsize for d in deltas),
            layout=TxnLayout(deltas, affected) if self.log_layouts and deltas else None,
            compiled=(CompiledTransaction(state, deltas, graph=graph, donate=self.donate)
                      if deltas else None))
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def apply(self, state: State, deltas: Sequence[Delta], plan: CommitPlan | None = None,
              *, donate: bool = False) -> State:
        """Dispatch the transaction (validated by :meth:`prepare`, whose ``plan`` it may pass
        to reuse the plan's compiled transaction): the new State.

        ``donate=True`` (with a ``plan``) donates the buffers of the pages the compiled
        transaction reads; the caller must know nothing else reads them
        (:func:`sole_owner`)."""
        compiled = None if plan is None else plan.compiled
        if compiled is not None and compiled.matches(state):
            return compiled(state, deltas, donate=donate)
        return apply_transaction(state, deltas, check=False, graph=self.graph,
                                 donate=self.donate)

    @staticmethod
    def changed(before: State, after: State, affected: Sequence[str]) -> tuple[str, ...]:
        """Derived pages whose value changed (their epoch moved); blocks on those epochs.

        Propagation recomputes every affected page exactly once; a page whose value did not
        change keeps its epoch (early cut-off) and is not reported.
        """
        if not affected:
            return ()
        return changed_pages(affected, [before.epochs[n] for n in affected],
                             [after.epochs[n] for n in affected])


def changed_pages(affected: Sequence[str], before: Sequence[Any], after: Sequence[Any]
                  ) -> tuple[str, ...]:
    """Those of ``affected`` whose epoch moved from ``before`` to ``after``.

    Args:
      affected: page names.
      before, after: their epochs (``int32[]`` arrays or ints), one per page; blocks on them.
    """
    old, new = jax.device_get((list(before), list(after)))
    return tuple(n for n, a, b in zip(affected, new, old, strict=True) if a != b)


#: Whether reference counts tell when a State's buffers are held by nothing else: CPython
#: with the GIL before 3.14 (3.14 borrows references on the evaluation stack, which
#: ``sys.getrefcount`` then does not see; free-threaded builds defer reference counts).
AUTO_DONATE = (sys.implementation.name == "cpython" and sys.version_info < (3, 14)
               and bool(getattr(sys, "_is_gil_enabled", lambda: True)()))


def _refcounts(state: State, names: Sequence[str]) -> list[int]:
    rc = sys.getrefcount
    pm = cast(PageMap, state.pages)
    em = cast(PageMap, state.epochs)
    pages, epochs = pm._data, em._data
    out = [rc(state), rc(pm), rc(em)]
    for n in names:
        out += (rc(pages[n]), rc(epochs[n]))
    return out


def _counts_of_held(holder: Any, names: Sequence[str]) -> list[int]:
    # The calling pattern of ``Bus._commit``: the State in an attribute and in a local, then
    # passed down two calls. Calibrating through the same code gives this interpreter's counts.
    state = holder._state
    return _counts_via(state, names)


def _counts_via(state: State, names: Sequence[str]) -> list[int]:
    return _refcounts(state, names)


def _calibrate() -> tuple[int, int, int]:
    probe = SimpleNamespace(_state=State._wrap({"p": object()}, {"p": object()}, ()))
    counts = _counts_of_held(probe, ("p",))
    if counts[3] != counts[4]:
        return (0, 0, 0)  # not understood: never donate
    return counts[0], counts[1], counts[3]


_SOLE_STATE, _SOLE_MAP, _SOLE_LEAF = _calibrate()


def sole_owner(state: State, names: Sequence[str]) -> bool:
    """Whether nothing but its holder references ``state``, its page maps and the arrays
    (and epochs) of ``names``, so donating those buffers cannot invalidate anything anyone
    can read. The caller holds ``state`` in one attribute and one local variable (as
    ``Bus._commit`` does) and must keep other threads from taking a new reference meanwhile
    (the Bus reads its state under its commit lock). Always False where :data:`AUTO_DONATE`
    is False.

    A numpy view of a page (``np.asarray(page)`` on CPU) holds the buffer without a Python
    reference to the array; XLA then refuses the donation and copies, so the view stays valid.
    """
    if not AUTO_DONATE:
        return False
    counts = _refcounts(state, names)
    if counts[0] > _SOLE_STATE or counts[1] > _SOLE_MAP or counts[2] > _SOLE_MAP:
        return False
    return max(counts[3:]) <= _SOLE_LEAF


class StateHolder:
    """What the Bus and the Follower share: a current State, its seq and a checkpoint store.

    Subclasses set ``_state``, ``_seq`` and ``_ckpts``.
    """

    _state: State
    _seq: int
    _ckpts: CheckpointStore

    @property
    def state(self) -> State:
        """The current State (immutable; later commits produce new States)."""
        return self._state

    @property
    def seq(self) -> int:
        """Seq of the last commit (0 before the first)."""
        return self._seq

    @property
    def checkpoints(self) -> CheckpointStore:
        """The checkpoint store (``DIR/checkpoints``)."""
        return self._ckpts


def _at(position: int, check: Callable[[], CommitPlan | None]) -> CommitPlan | None:
    """Run ``check``; an error it raises gets the transaction's position attached."""
    try:
        return check()
    except (MMSBError, TypeError) as e:
        e.transaction_index = position  # type: ignore[attr-defined]
        e.add_note(f"in transaction {position} of commit_many: nothing was committed")
        raise


def as_transaction(deltas: Delta | Sequence[Delta]) -> list[Delta]:
    """A Delta or a sequence of Deltas as a list (one transaction)."""
    return [deltas] if isinstance(deltas, Delta) else list(deltas)
