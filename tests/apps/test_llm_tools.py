"""LLM tools: generated JSON schemas, the validating dispatcher and refused writes."""

from __future__ import annotations

import json

import hypothesis.strategies as st
import jax.numpy as jnp
import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings

import mmsb_jax as mm
import mmsb_jax.apps as apps
from mmsb_jax.core.graph import Graph
from mmsb_jax.errors import (
    DomainError,
    GraphError,
    IndexOutOfRangeError,
    MaskError,
    MMSBError,
    OpError,
    ShapeError,
    ToolError,
    UnknownPageError,
    UnknownSeqError,
)
from mmsb_jax.runtime.bus import Bus

SCHEMA = mm.Schema([mm.PageSpec("pos", (4, 2), "float32"), mm.PageSpec("flags", (4,), "bool"),
                    mm.PageSpec("raw", (6,), "uint8"), mm.PageSpec("count", (), "int32")])


@pytest.fixture
def bus(tmp_path):
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as b:
        yield b


def test_tool_definitions_are_valid_schemas_generated_from_the_bus(bus):
    tools = apps.tool_definitions(bus)
    assert [t["name"] for t in tools] == list(apps.TOOL_NAMES)
    for t in tools:
        jsonschema.Draft202012Validator.check_schema(t["inputSchema"])
        assert t["description"]
        json.dumps(t)  # JSON-serialisable as is
    by = {t["name"]: t["inputSchema"] for t in tools}
    assert by["read_page"]["properties"]["page"]["enum"] == list(SCHEMA.names)
    assert "float32[4, 2]" in by["read_page"]["properties"]["page"]["description"]
    apply = by["apply_delta"]
    assert apply["properties"]["op"]["enum"] == list(mm.OPS)
    check = jsonschema.Draft202012Validator(apply)
    assert check.is_valid({"page": "flags", "kind": "full", "values": [True, False, True, True]})
    assert not check.is_valid({"page": "flags", "kind": "full", "values": [1, 0, 1, 1]})
    assert not check.is_valid({"page": "raw", "kind": "full", "values": [1.5] * 6})
    assert not check.is_valid({"page": "pos", "kind": "rows", "values": [[1.0, 2.0]]})


def test_graph_bus_lists_derived_pages_as_read_only(tmp_path):
    g = Graph(mm.Schema([mm.PageSpec("x", (3,), "float32")])).derive("total", ("x",), jnp.sum)
    with Bus.open(tmp_path / "g", graph=g, sync="never") as b:
        by = {t["name"]: t["inputSchema"] for t in apps.tool_definitions(b)}
        assert by["apply_delta"]["properties"]["page"]["enum"] == ["x"]
        assert by["read_page"]["properties"]["page"]["enum"] == ["x", "total"]
        with pytest.raises(GraphError):
            apps.call_tool(b, "apply_delta", {"page": "total", "kind": "full", "values": 1.0})
        listed = apps.call_tool(b, "list_pages")
        assert [p["writable"] for p in listed["pages"]] == [True, False]


def test_tools_read_write_time_travel_history_and_checkpoint(bus):
    out = apps.call_tool(bus, "apply_delta", {"page": "pos", "kind": "rows", "indices": [1, 3],
                                              "values": [[1.5, 2.5], [3.0, 4.0]]})
    assert out["seq"] == 1 and out["epoch"] == 1
    apps.call_tool(bus, "apply_delta", {"page": "pos", "kind": "full", "op": "add",
                                        "values": [[1, 1]] * 4})
    apps.call_tool(bus, "apply_delta", {"page": "flags", "kind": "masked",
                                        "mask": [True, False, False, True],
                                        "values": [True, True, True, True]})
    apps.call_tool(bus, "apply_delta", {"page": "count", "kind": "full", "values": 7})
    read = apps.call_tool(bus, "read_page", {"page": "pos"})
    assert read["values"] == [[1.0, 1.0], [2.5, 3.5], [1.0, 1.0], [4.0, 5.0]]
    assert read["shape"] == [4, 2] and read["dtype"] == "float32" and read["seq"] == 4
    assert apps.call_tool(bus, "read_page", {"page": "pos", "rows": [3, 1]})["values"] == [
        [4.0, 5.0], [2.5, 3.5]]
    sliced = apps.call_tool(bus, "read_page", {"page": "pos", "start": 1, "stop": 2})
    assert sliced["values"] == [[2.5, 3.5]] and sliced["slice"] == [1, 2]
    assert apps.call_tool(bus, "read_page", {"page": "flags"})["values"] == [True, False, False,
                                                                               True]
    assert apps.call_tool(bus, "read_page", {"page": "count"})["values"] == 7
    past = apps.call_tool(bus, "time_travel", {"seq": 1, "page": "pos"})
    assert past["values"] == [[0.0, 0.0], [1.5, 2.5], [0.0, 0.0], [3.0, 4.0]]
    assert past["seq"] == 1 and past["epoch"] == 1
    hist = apps.call_tool(bus, "history", {})
    assert [t["seq"] for t in hist["transactions"]] == [1, 2, 3, 4]
    assert hist["transactions"][0]["deltas"] == [{"page": "pos", "kind": "rows", "op": "set",
                                                  "count": 1, "rows": 2}]
    only = apps.call_tool(bus, "history", {"page": "pos", "limit": 1})
    assert [t["seq"] for t in only["transactions"]] == [2]
    assert apps.call_tool(bus, "checkpoint", {}) == {"seq": 4}
    pages = apps.call_tool(bus, "list_pages")
    assert pages["seq"] == 4
    assert {p["name"]: p["epoch"] for p in pages["pages"]} == {"pos": 2, "flags": 1, "raw": 0,
                                                               "count": 1}
    json.dumps([read, past, hist, pages])


REFUSED = [
    ("nope", {}, ToolError),
    ("read_page", {"page": "velocity"}, UnknownPageError),
    ("apply_delta", {"page": "velocity", "kind": "full", "values": 1}, UnknownPageError),
    ("apply_delta", {"page": "pos", "kind": "full", "op": "xor", "values": 1}, OpError),
    ("apply_delta", {"page": "pos", "kind": "sparse", "values": 1}, OpError),
    ("apply_delta", {"page": "pos", "kind": "full", "values": [1.0, 2.0]}, ShapeError),
    ("apply_delta", {"page": "pos", "kind": "full", "values": [[1.0], [1.0, 2.0]]}, ShapeError),
    ("apply_delta", {"page": "pos", "kind": "rows", "indices": [4], "values": [[1, 2]]},
     IndexOutOfRangeError),
    ("apply_delta", {"page": "pos", "kind": "rows", "values": [[1, 2]]}, ToolError),
    ("apply_delta", {"page": "flags", "kind": "full", "op": "add", "values": [True] * 4},
     OpError),
    ("apply_delta", {"page": "flags", "kind": "full", "values": [1, 0, 1, 0]}, ToolError),
    ("apply_delta", {"page": "flags", "kind": "masked", "mask": [True], "values": [True]},
     MaskError),
    ("apply_delta", {"page": "raw", "kind": "full", "values": [300, 0, 0, 0, 0, 0]},
     DomainError),
    ("apply_delta", {"page": "count", "kind": "full", "values": 1, "colour": 2}, ToolError),
    ("read_page", {"page": "pos", "rows": [9]}, IndexOutOfRangeError),
    ("read_page", {"page": "count", "rows": [0]}, ShapeError),
    ("read_page", {"page": "pos", "rows": [0], "start": 1}, ToolError),
    ("time_travel", {"seq": 99, "page": "pos"}, UnknownSeqError),
    ("time_travel", {"seq": -1, "page": "pos"}, ToolError),
    ("history", {"limit": 0}, ToolError),
]


@pytest.mark.parametrize(("name", "args", "error"), REFUSED,
                         ids=[f"{n}-{e.__name__}" for n, _, e in REFUSED])
def test_refused_calls_raise_typed_errors_and_change_nothing(bus, name, args, error):
    before = {n: np.asarray(bus.state.pages[n]).copy() for n in SCHEMA.names}
    with pytest.raises(error) as info:
        apps.call_tool(bus, name, args)
    assert isinstance(info.value, MMSBError)
    assert bus.seq == 0
    for n in SCHEMA.names:
        np.testing.assert_array_equal(np.asarray(bus.state.pages[n]), before[n])


def test_value_type_errors_name_the_page_dtype(bus):
    with pytest.raises(ToolError, match=r"'flags' is bool\[4\]: values takes booleans"):
        apps.call_tool(bus, "apply_delta", {"page": "flags", "kind": "full", "values": [1] * 4})
    with pytest.raises(ToolError):
        apps.call_tool(bus, "read_page", ["pos"])
    big = mm.Schema([mm.PageSpec("big", (300, 300), "float32")])
    with Bus.open(bus.directory.parent / "big", big, sync="never") as b:
        with pytest.raises(ToolError, match="select fewer rows"):
            apps.call_tool(b, "read_page", {"page": "big"})
        assert len(apps.call_tool(b, "read_page", {"page": "big", "stop": 2})["values"]) == 2


@settings(max_examples=25, deadline=None)
@given(writes=st.lists(st.tuples(st.integers(-1, 5), st.integers(0, 255)), min_size=1,
                       max_size=6))
def test_row_writes_through_tools_match_a_numpy_model(tmp_path_factory, writes):
    d = tmp_path_factory.mktemp("h")
    model = np.zeros(6, np.uint8)
    with Bus.open(d / "bus", SCHEMA, sync="never") as b:
        idx = [i for i, _ in writes]
        vals = [v for _, v in writes]
        apps.call_tool(b, "apply_delta", {"page": "raw", "kind": "rows", "indices": idx,
                                          "values": vals, "op": "max"})
        for i, v in writes:
            if i >= 0:
                model[i] = max(model[i], v)
        assert apps.call_tool(b, "read_page", {"page": "raw"})["values"] == model.tolist()
