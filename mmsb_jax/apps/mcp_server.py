"""An MCP server over stdio exposing a Bus to LLM clients (the ``mcp`` package).

Run it on a bus directory::

    python -m mmsb_jax.apps.mcp_server RUN_DIR                    # an existing bus
    python -m mmsb_jax.apps.mcp_server RUN_DIR --schema s.json    # create it from a schema

``s.json`` holds ``mm.Schema.to_json()`` output. The server lists the tools of
:func:`mmsb_jax.apps.tool_definitions` and runs calls with :func:`mmsb_jax.apps.call_tool`
(in a worker thread, so the event loop keeps serving). A refused call (any
:class:`~mmsb_jax.errors.MMSBError`) comes back as an MCP tool error (``isError: true``) whose
text is ``"<ErrorClass>: <message>"`` and whose structured content is
``{"error": {"type", "message", "path"?}}``; a successful call returns its result both as JSON
text and as structured content. The bus is closed when the client disconnects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from mmsb_jax._extras import require
from mmsb_jax.apps._llm_tools import call_tool, tool_definitions
from mmsb_jax.errors import MMSBError, ToolError

# The [mcp] extra: importing this module without it raises MissingExtraError naming the extra.
_FEATURE = "mmsb_jax.apps.mcp_server"
anyio = require("anyio", extra="mcp", feature=_FEATURE)
types = require("mcp_types", extra="mcp", feature=_FEATURE)
Server = require("mcp.server.lowlevel", extra="mcp", feature=_FEATURE).Server
stdio_server = require("mcp.server.stdio", extra="mcp", feature=_FEATURE).stdio_server

__all__ = ["build_server", "error_result", "main", "serve_mcp"]


def error_result(error: MMSBError) -> types.CallToolResult:
    """The MCP tool error for a refused call: ``isError`` with the error's type and message."""
    payload: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, ToolError) and error.path:
        payload["path"] = list(error.path)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"{payload['type']}: {payload['message']}")],
        structured_content={"error": payload}, is_error=True)


def build_server(bus: Any, *, name: str = "mmsb") -> Server:
    """A low-level MCP ``Server`` whose tools read and write ``bus``.

    Args:
      bus: an open :class:`~mmsb_jax.Bus` (the server does not close it).
      name: the server name reported to clients.

    Returns:
      ``mcp.server.lowlevel.Server`` with ``tools/list`` and ``tools/call`` handlers.
    """
    tools = [types.Tool(name=t["name"], description=t["description"],
                        input_schema=t["inputSchema"]) for t in tool_definitions(bus)]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        del ctx, params
        return types.ListToolsResult(tools=tools)

    async def run_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        del ctx
        arguments = dict(params.arguments or {})
        try:
            result = await anyio.to_thread.run_sync(call_tool, bus, params.name, arguments)
        except MMSBError as e:
            return error_result(e)
        return types.CallToolResult(content=[types.TextContent(type="text",
                                                               text=json.dumps(result))],
                                    structured_content=result)

    return Server(name, version=_version(), on_list_tools=list_tools, on_call_tool=run_tool,
                  instructions="Tools over an mmsb-jax state bus: pages are fixed-shape arrays; "
                               "every write is a delta committed to a durable log.")


def _version() -> str:
    from mmsb_jax import __version__

    return __version__


async def _serve(bus: Any) -> None:
    server = build_server(bus)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_mcp(directory: str | os.PathLike, *, schema: Any = None, sync: str = "batch") -> None:
    """Open the bus in ``directory`` and serve it over stdio until the client disconnects.

    Args:
      directory: the bus directory (created when ``schema`` is given and it is new).
      schema: a :class:`~mmsb_jax.Schema` for a new bus (optional for an existing one).
      sync: the bus sync policy.
    """
    from mmsb_jax.runtime.bus import Bus

    with Bus.open(directory, schema, sync=sync) as bus:
        anyio.run(_serve, bus)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m mmsb_jax.apps.mcp_server DIR [--schema FILE] [--sync S]``."""
    from mmsb_jax.core.pages import Schema

    parser = argparse.ArgumentParser(prog="python -m mmsb_jax.apps.mcp_server",
                                     description="Serve an mmsb-jax bus over MCP (stdio).")
    parser.add_argument("directory", help="bus directory")
    parser.add_argument("--schema", help="JSON file with a schema (Schema.to_json) for a new bus")
    parser.add_argument("--sync", default="batch", choices=("always", "batch", "never"))
    args = parser.parse_args(argv)
    schema = None
    if args.schema:
        with open(args.schema) as f:
            schema = Schema.from_json(json.load(f))
    try:
        serve_mcp(args.directory, schema=schema, sync=args.sync)
    except MMSBError as e:
        print(f"mmsb mcp server: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
