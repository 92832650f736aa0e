"""The MCP server over stdio, driven by a real MCP client session in a subprocess."""

from __future__ import annotations

import json
import sys

import anyio
import mcp_types as types
import numpy as np
from mcp import ClientSession, StdioServerParameters, stdio_client

import mmsb_jax as mm
from mmsb_jax.apps.mcp_server import build_server, error_result
from mmsb_jax.errors import ToolError, UnknownPageError
from mmsb_jax.runtime.bus import Bus

SCHEMA = mm.Schema([mm.PageSpec("pos", (3, 2), "float32"), mm.PageSpec("count", (), "int32")])


async def _session(directory, errlog, body):
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "mmsb_jax.apps.mcp_server", str(directory),
                                         "--sync", "never"])
    async with stdio_client(params, errlog=errlog) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await body(session)


def test_mcp_client_lists_reads_writes_time_travels_and_gets_refusals(tmp_path):
    directory = tmp_path / "bus"
    with Bus.open(directory, SCHEMA, sync="never") as bus:
        bus.commit([mm.Delta.full("count", np.int32(3))])

    async def body(session):
        tools = await session.list_tools()
        names = [t.name for t in tools.tools]
        schema = {t.name: t.input_schema for t in tools.tools}["apply_delta"]
        first = await session.call_tool("read_page", {"page": "count"})
        wrote = await session.call_tool("apply_delta", {"page": "pos", "kind": "rows",
                                                        "indices": [2], "values": [[1.5, -2.0]]})
        now = await session.call_tool("read_page", {"page": "pos"})
        past = await session.call_tool("time_travel", {"seq": 1, "page": "pos"})
        unknown = await session.call_tool("apply_delta", {"page": "vel", "kind": "full",
                                                          "values": 1.0})
        shape = await session.call_tool("apply_delta", {"page": "pos", "kind": "full",
                                                        "values": [1.0, 2.0]})
        after = await session.call_tool("list_pages", {})
        return names, schema, first, wrote, now, past, unknown, shape, after

    with open(tmp_path / "server.log", "w") as errlog:
        names, schema, first, wrote, now, past, unknown, shape, after = anyio.run(
            _session, directory, errlog, body)
    assert names == ["list_pages", "read_page", "apply_delta", "checkpoint", "history",
                     "time_travel"]
    assert schema["properties"]["page"]["enum"] == ["pos", "count"]
    assert not first.is_error and first.structured_content["values"] == 3
    assert wrote.structured_content["seq"] == 2
    assert json.loads(now.content[0].text)["values"][2] == [1.5, -2.0]
    assert past.structured_content["values"] == [[0.0, 0.0]] * 3
    assert unknown.is_error and unknown.content[0].text.startswith("UnknownPageError:")
    assert unknown.structured_content["error"]["type"] == "UnknownPageError"
    assert shape.is_error and shape.content[0].text.startswith("ShapeError:")
    assert after.structured_content["seq"] == 2  # the refused writes changed nothing
    with Bus.open(directory) as bus:  # the server closed the bus when the client left
        assert bus.seq == 2
        np.testing.assert_array_equal(bus.read("pos")[2], [1.5, -2.0])


def test_error_result_and_in_process_server(tmp_path):
    res = error_result(ToolError("apply_delta: invalid argument values", tool="apply_delta",
                                 path=("values", 0)))
    assert res.is_error and res.structured_content["error"]["path"] == ["values", 0]
    res = error_result(UnknownPageError("vel", ("pos",)))
    assert res.content[0].text == "UnknownPageError: unknown page 'vel'; known pages: pos"
    with Bus.open(tmp_path / "bus", SCHEMA, sync="never") as bus:
        server = build_server(bus)
        assert server.name == "mmsb"
        assert isinstance(res, types.CallToolResult)
