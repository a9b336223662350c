"""`decider tools import`: an MCP server's tools/list as catalogue entries for bundle.yaml (SPEC §9).

The risk tier is a guess from the MCP tool annotations (hints, which a server may get wrong, so
review them): readOnlyHint → 0 (1 when it also reaches the open world); destructiveHint → 3;
neither → 2. Without annotations MCP's defaults apply (not read-only, destructive) → 3.
The tool's inputSchema goes under `args:` unchanged.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp_types as types
import yaml
from mcp import ClientSession, StdioServerParameters, stdio_client

from decider.gateway.upstreams import http_transport

__all__ = ["catalogue_yaml", "fetch_tools", "guess_risk_tier"]


def guess_risk_tier(tool: types.Tool) -> int:
    a = tool.annotations
    read_only = bool(a and a.read_only_hint)
    destructive = True if a is None or a.destructive_hint is None else bool(a.destructive_hint)
    open_world = True if a is None or a.open_world_hint is None else bool(a.open_world_hint)
    if read_only:
        return 1 if open_world else 0
    return 3 if destructive else 2


async def fetch_tools(*, command: list[str] | None = None, url: str | None = None, token: str | None = None,
                      timeout: float = 30.0) -> tuple[types.Implementation | None, list[types.Tool]]:
    with anyio.fail_after(timeout):
        if command:
            transport: Any = stdio_client(StdioServerParameters(command=command[0], args=command[1:]))
        else:
            transport = http_transport(str(url), token)
        async with transport as (read, write), ClientSession(read, write) as session:
            init = await session.initialize()
            tools: list[types.Tool] = []
            cursor: str | None = None
            for _ in range(1000):
                res = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
                tools += res.tools
                cursor = res.next_cursor
                if not cursor:
                    break
            return init.server_info, tools


def catalogue_yaml(info: types.Implementation | None, tools: list[types.Tool], source: str = "",
                   with_args: bool = True) -> str:
    entries: dict[str, Any] = {}
    for t in tools:
        entries[t.name] = {"risk_tier": guess_risk_tier(t)}
        if with_args:
            entries[t.name]["args"] = t.input_schema
    who = f"{info.name} {info.version}".strip() if info else "the server"
    head = (f"# {len(tools)} tool(s) from {who} ({source}), via tools/list.\n"
            "# risk_tier is guessed from the MCP annotations (readOnlyHint → 0/1, destructiveHint → 3, else 2):\n"
            "# review it. Paste under spec.tools in bundle.yaml.\n")
    return head + yaml.safe_dump({"tools": entries}, sort_keys=False, allow_unicode=True, width=100)
