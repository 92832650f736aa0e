"""LLM tools over a Bus: JSON-schema tool definitions and a validating dispatcher.

:func:`tool_definitions` describes six tools in the Model Context Protocol's tool format
(``name``, ``description``, ``inputSchema``: a JSON Schema, draft 2020-12). The schemas are
generated from the bus schema: page names are enums (only base pages are writable), each
page's shape and dtype are listed, and the element type of ``values``/``mask`` is tied to the
page's dtype (``number``, ``integer`` or ``boolean``) with ``if``/``then`` clauses.

==============  ==============================================================================
tool            does
==============  ==============================================================================
list_pages      pages with shape, dtype, epoch, and whether they are writable; the current seq
read_page       a page's values (all, ``rows``, or ``start``/``stop`` on axis 0)
apply_delta     commit one delta (``rows``/``masked``/``full``, any op) as one transaction
checkpoint      save a durable checkpoint
history         the last transactions (seq, time, pages, kinds, ops, row counts)
time_travel     a page as of an earlier commit (``bus.at(seq)``)
==============  ==============================================================================

:func:`call_tool` checks the tool name, the page and the op first (raising the matching typed
error: :class:`~mmsb_jax.errors.UnknownPageError`, :class:`~mmsb_jax.errors.OpError`), then
validates the arguments against the tool's schema with ``jsonschema``
(:class:`~mmsb_jax.errors.ToolError` naming the offending argument), then runs the tool; the
bus's own validation refuses wrong shapes, dtypes and row indices
(:class:`~mmsb_jax.errors.ShapeError`, ...). A refused call changes nothing. The MCP server
(:mod:`mmsb_jax.apps.mcp_server`) turns these errors into MCP tool errors.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Mapping
from typing import Any

import numpy as np

from mmsb_jax._extras import require
from mmsb_jax.core.delta import KINDS, OPS, Delta
from mmsb_jax.errors import (
    DomainError,
    GraphError,
    OpError,
    ShapeError,
    ToolError,
    UnknownPageError,
)

__all__ = ["MAX_READ_ELEMENTS", "TOOL_NAMES", "call_tool", "tool_definitions"]

TOOL_NAMES: tuple[str, ...] = ("list_pages", "read_page", "apply_delta", "checkpoint",
                               "history", "time_travel")
MAX_READ_ELEMENTS = 65536
"""The most elements one ``read_page``/``time_travel`` call returns (select rows for more)."""

_JSON_TYPE = {"b": "boolean", "i": "integer", "u": "integer", "f": "number"}


def _json_type(dtype: str) -> str:
    return _JSON_TYPE.get(np.dtype(dtype).kind, "number")


def _tensor(item_type: str) -> dict[str, Any]:
    """A scalar of ``item_type`` or arbitrarily nested arrays of them."""
    return {"anyOf": [{"type": item_type},
                      {"type": "array", "items": {"$ref": f"#/$defs/{item_type}_tensor"}}]}


_DEFS = {f"{t}_tensor": _tensor(t) for t in ("number", "integer", "boolean")}


def _writable(bus: Any) -> tuple[str, ...]:
    graph = getattr(bus, "graph", None)
    if graph is None:
        return bus.schema.names
    return tuple(n for n in bus.schema.names if not graph.is_derived(n))


def _page_list(bus: Any, names: tuple[str, ...]) -> str:
    return "; ".join(f"{n}: {bus.schema[n].dtype}{list(bus.schema[n].shape)}" for n in names)


def _selection_props() -> dict[str, Any]:
    return {
        "rows": {"type": "array", "items": {"type": "integer", "minimum": 0},
                 "description": "row indices (axis 0) to return; default all rows"},
        "start": {"type": "integer", "minimum": 0,
                  "description": "first row (axis 0) of a slice"},
        "stop": {"type": "integer", "minimum": 0,
                 "description": "end of the slice (exclusive)"},
    }


def tool_definitions(bus: Any) -> list[dict[str, Any]]:
    """JSON-schema tool definitions (MCP format) for the pages of ``bus``.

    Args:
      bus: an open :class:`~mmsb_jax.Bus`.

    Returns:
      A list of ``{"name", "description", "inputSchema"}`` dicts, one per tool in
      :data:`TOOL_NAMES`; each ``inputSchema`` is a draft 2020-12 JSON Schema object.
    """
    names = bus.schema.names
    writable = _writable(bus)
    read_page = {"type": "string", "enum": list(names),
                 "description": "page name; pages: " + _page_list(bus, names)}
    write_page = {"type": "string", "enum": list(writable),
                  "description": "base page to write; pages: " + _page_list(bus, writable)}
    typed = [{"if": {"properties": {"page": {"const": n}}, "required": ["page"]},
              "then": {"properties": {"values": {"$ref": "#/$defs/"
                                                 f"{_json_type(bus.schema[n].dtype)}_tensor"}}}}
             for n in writable]
    empty = {"type": "object", "properties": {}, "additionalProperties": False}
    return [
        {"name": "list_pages",
         "description": "List the bus's pages (name, shape, dtype, epoch = number of changes, "
                        "writable) and the current commit sequence number.",
         "inputSchema": empty},
        {"name": "read_page",
         "description": "Read the current values of one page as nested JSON arrays. Select "
                        "rows with 'rows' or 'start'/'stop' for large pages (at most "
                        f"{MAX_READ_ELEMENTS} elements per call).",
         "inputSchema": {"type": "object",
                         "properties": {"page": read_page, **_selection_props()},
                         "required": ["page"], "additionalProperties": False}},
        {"name": "apply_delta",
         "description": "Commit one delta to a base page as one transaction. kind 'rows': "
                        "'indices' (axis-0 rows, -1 = padding) and 'values' [k, *row]; "
                        "'masked': boolean 'mask' and 'values', both page-shaped; 'full': "
                        "page-shaped 'values'. op combines old and new values: "
                        f"{', '.join(OPS)} (set: the last duplicate index wins).",
         "inputSchema": {
             "type": "object",
             "properties": {
                 "page": write_page,
                 "kind": {"type": "string", "enum": list(KINDS)},
                 "op": {"type": "string", "enum": list(OPS), "default": "set"},
                 "indices": {"type": "array", "items": {"type": "integer", "minimum": -1}},
                 "mask": {"$ref": "#/$defs/boolean_tensor"},
                 "values": {"anyOf": [{"$ref": "#/$defs/number_tensor"},
                                      {"$ref": "#/$defs/boolean_tensor"}],
                            "description": "nested arrays of numbers (booleans for bool "
                                           "pages), shaped as the delta kind requires"},
             },
             "required": ["page", "kind", "values"],
             "additionalProperties": False,
             "allOf": [*typed,
                       {"if": {"properties": {"kind": {"const": "rows"}}},
                        "then": {"required": ["indices"]}},
                       {"if": {"properties": {"kind": {"const": "masked"}}},
                        "then": {"required": ["mask"]}}],
             "$defs": _DEFS}},
        {"name": "checkpoint",
         "description": "Save a durable checkpoint of the current state; returns its seq.",
         "inputSchema": empty},
        {"name": "history",
         "description": "The most recent transactions (oldest first): seq, UTC time, and for "
                        "each delta its page, kind, op and number of rows.",
         "inputSchema": {"type": "object",
                         "properties": {"page": {**read_page,
                                                 "description": "only transactions touching "
                                                                "this page"},
                                        "limit": {"type": "integer", "minimum": 1,
                                                  "maximum": 1000, "default": 20}},
                         "additionalProperties": False}},
        {"name": "time_travel",
         "description": "Read a page as it was right after commit 'seq' (0 = the initial "
                        "state). Same selection arguments as read_page.",
         "inputSchema": {"type": "object",
                         "properties": {"seq": {"type": "integer", "minimum": 0},
                                        "page": read_page, **_selection_props()},
                         "required": ["seq", "page"], "additionalProperties": False}},
    ]


def _check_names(bus: Any, name: str, args: Mapping[str, Any]) -> None:
    """Typed errors for the things a model most often gets wrong: page, kind and op."""
    page = args.get("page")
    if isinstance(page, str) and page not in bus.schema:
        raise UnknownPageError(page, bus.schema.names)
    if name == "apply_delta":
        if isinstance(page, str) and page not in _writable(bus):
            raise GraphError(f"page {page!r} is derived (recomputed by propagation) and cannot "
                             f"be written; writable pages: {', '.join(_writable(bus))}")
        op = args.get("op", "set")
        if isinstance(op, str) and op not in OPS:
            raise OpError(f"unknown op {op!r}; expected one of {OPS}")
        kind = args.get("kind")
        if isinstance(kind, str) and kind not in KINDS:
            raise OpError(f"unknown delta kind {kind!r}; expected one of {KINDS}")


def _validate(bus: Any, schema: dict[str, Any], name: str, args: Mapping[str, Any]) -> None:
    jsonschema = require("jsonschema", extra="mcp", feature="mmsb_jax.apps.call_tool")
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(args))
    if error is not None:
        path = tuple(error.absolute_path)
        where = "/".join(str(p) for p in path) or "(arguments)"
        hint = ""
        page = args.get("page")
        if path[:1] in (("values",), ("mask",)) and isinstance(page, str) and page in bus.schema:
            spec = bus.schema[page]
            want = "booleans" if path[0] == "mask" else f"{_json_type(spec.dtype)}s"
            hint = f" (page {page!r} is {spec.dtype}{list(spec.shape)}: {path[0]} takes {want})"
        raise ToolError(f"{name}: invalid argument {where}: {error.message}{hint}", tool=name,
                        path=path)


def _as_array(value: Any, dtype: str, what: str) -> np.ndarray:
    dt = np.dtype(dtype)
    try:
        raw = np.asarray(value)
    except ValueError as e:
        raise ShapeError(f"{what} is a ragged nested list: {e}") from e
    if raw.dtype == object:
        raise ShapeError(f"{what} is a ragged nested list")
    if dt.kind in "iu":
        if raw.size and (np.any(raw < np.iinfo(dt).min) or np.any(raw > np.iinfo(dt).max)):
            raise DomainError(f"{what} has values outside the range of {dt.name}")
    return raw.astype(dt)


def _select(array: np.ndarray, args: Mapping[str, Any], page: str) -> tuple[np.ndarray, Any]:
    rows, start, stop = args.get("rows"), args.get("start"), args.get("stop")
    if rows is not None and (start is not None or stop is not None):
        raise ToolError("give either 'rows' or 'start'/'stop', not both", tool="read_page")
    if (rows is not None or start is not None or stop is not None) and array.ndim == 0:
        raise ShapeError(f"page {page!r} is a scalar; it has no rows to select")
    selected: Any = None
    if rows is not None:
        idx = np.asarray(rows, np.int64)
        if idx.size and idx.max() >= array.shape[0]:
            from mmsb_jax.errors import IndexOutOfRangeError

            raise IndexOutOfRangeError(f"rows {idx[idx >= array.shape[0]][:8].tolist()} "
                                       f"outside [0, {array.shape[0]}) of page {page!r}")
        array, selected = array[idx], idx.tolist()
    elif start is not None or stop is not None:
        lo = 0 if start is None else int(start)
        hi = array.shape[0] if stop is None else min(int(stop), array.shape[0])
        array, selected = array[lo:hi], [lo, max(lo, hi)]
    if array.size > MAX_READ_ELEMENTS:
        raise ToolError(f"page {page!r}: {array.size} elements selected, more than "
                        f"{MAX_READ_ELEMENTS}; select fewer rows with 'rows' or 'start'/'stop'",
                        tool="read_page")
    return array, selected


def _page_payload(state: Any, page: str, args: Mapping[str, Any], seq: int) -> dict[str, Any]:
    full = np.asarray(state.pages[page])
    values, selected = _select(full, args, page)
    out = {"page": page, "dtype": full.dtype.name, "shape": list(full.shape),
           "epoch": int(state.epochs[page]), "seq": seq, "values": values.tolist()}
    if selected is not None:
        out["rows" if args.get("rows") is not None else "slice"] = selected
    return out


def _apply_delta(bus: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    page, kind, op = args["page"], args["kind"], args.get("op", "set")
    spec = bus.schema[page]
    values = _as_array(args["values"], spec.dtype, "values")
    if kind == "rows":
        idx = np.asarray(args["indices"], np.int64)
        limit = spec.shape[0] if spec.shape else 0
        if idx.size and idx.max() > max(limit, 1) * 2:  # keep the int32 cast exact
            from mmsb_jax.errors import IndexOutOfRangeError

            raise IndexOutOfRangeError(f"rows delta on {page!r}: indices "
                                       f"{idx[idx >= limit][:8].tolist()} outside [-1, {limit})")
        delta = Delta.rows(page, idx.astype(np.int32), values, op)
    elif kind == "masked":
        delta = Delta.masked(page, _as_array(args["mask"], "bool", "mask"), values, op)
    else:
        delta = Delta.full(page, values, op)
    info = bus.commit([delta])
    return {"seq": info.seq, "page": page, "kind": kind, "op": op,
            "epoch": int(bus.state.epochs[page]), "derived": list(info.derived)}


def _history(bus: Any, args: Mapping[str, Any]) -> dict[str, Any]:
    page, limit = args.get("page"), int(args.get("limit", 20))
    recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=limit)
    log = bus.log
    for t in log.transactions(max(0, log.first_seq - 1)):
        if page is not None and all(d.page != page for d in t.deltas):
            continue
        when = datetime.datetime.fromtimestamp(t.timestamp_ns / 1e9, datetime.UTC)
        recent.append({
            "seq": t.seq, "time": when.isoformat(),
            "deltas": [{"page": d.page, "kind": d.kind, "op": d.op, "count": d.count,
                        "rows": int(d.indices.shape[0]) if d.kind == "rows" else None}
                       for d in t.deltas]})
    return {"seq": bus.seq, "transactions": list(recent)}


def call_tool(bus: Any, name: str, arguments: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """Validate and run one tool call on ``bus``.

    Args:
      bus: an open :class:`~mmsb_jax.Bus`.
      name: one of :data:`TOOL_NAMES`.
      arguments: the tool's JSON arguments (``None`` = ``{}``).

    Returns:
      A JSON-serialisable dict: for ``read_page``/``time_travel`` ``{page, dtype, shape,
      epoch, seq, values[, rows | slice]}``; ``apply_delta`` ``{seq, page, kind, op, epoch,
      derived}``; ``list_pages`` ``{seq, pages: [{name, shape, dtype, epoch, writable}]}``;
      ``checkpoint`` ``{seq}``; ``history`` ``{seq, transactions}``.

    Raises:
      ToolError: unknown tool, or arguments that fail the tool's JSON schema.
      UnknownPageError: a page not in the bus schema. GraphError: a write to a derived page.
      OpError: unknown op or kind, or an op invalid for the page's dtype.
      ShapeError, DTypeError, MaskError, IndexOutOfRangeError, DomainError: values that do not
      fit the page. UnknownSeqError: ``time_travel`` to a seq the bus does not hold.
      Nothing changes when an error is raised.
    """
    if name not in TOOL_NAMES:
        raise ToolError(f"unknown tool {name!r}; tools: {', '.join(TOOL_NAMES)}", tool=name)
    args = {} if arguments is None else arguments
    if not isinstance(args, Mapping):
        raise ToolError(f"{name}: arguments must be a JSON object", tool=name)
    _check_names(bus, name, args)
    schema = next(t["inputSchema"] for t in tool_definitions(bus) if t["name"] == name)
    _validate(bus, schema, name, args)
    if name == "list_pages":
        writable = set(_writable(bus))
        state = bus.state
        return {"seq": bus.seq, "pages": [
            {"name": s.name, "shape": list(s.shape), "dtype": s.dtype,
             "epoch": int(state.epochs[s.name]), "writable": s.name in writable}
            for s in bus.schema]}
    if name == "read_page":
        return _page_payload(bus.state, args["page"], args, bus.seq)
    if name == "time_travel":
        seq = int(args["seq"])
        return _page_payload(bus.at(seq), args["page"], args, seq)
    if name == "apply_delta":
        return _apply_delta(bus, args)
    if name == "checkpoint":
        return {"seq": bus.checkpoint()}
    return _history(bus, args)
