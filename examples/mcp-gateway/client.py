"""An agent's side: tools/call through the gateway with the mcp SDK client (streamable HTTP).

    python examples/mcp-gateway/client.py            # allowed, denied, allowed, approval-needing call
    python examples/mcp-gateway/client.py convert    # only the approval-needing call (retry after approve)
"""

from __future__ import annotations

import os
import sys

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

URL = os.environ.get("GATEWAY_URL", "http://127.0.0.1:8800/mcp")
CALLS = [
    ("time__get_current_time", {"timezone": "Europe/Paris"}),
    ("fs__write_file", {"path": "/tmp/not-the-workspace.txt", "content": "hello"}),
    ("fs__write_file", {"path": "/tmp/agent-workspace/notes.txt", "content": "hello"}),
    ("time__convert_time", {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
]


async def main() -> None:
    calls = CALLS[-1:] if sys.argv[1:] == ["convert"] else CALLS
    headers = {"Authorization": f"Bearer {os.environ['AGENT_TOKEN']}"}
    async with httpx2.AsyncClient(headers=headers, timeout=60) as http, \
            streamable_http_client(URL, http_client=http) as (read, write), ClientSession(read, write) as s:
        await s.initialize()
        for name, args in calls:
            result = await s.call_tool(name, args)
            text = " ".join(getattr(c, "text", "") for c in result.content).replace("\n", " ")
            print(f"{name:24} {'isError' if result.is_error else 'ok':8} {text[:150]}")


anyio.run(main)
