"""A bare pass-through MCP proxy (fastmcp `create_proxy`) in front of mcp-server-time: the yardstick
gateway_bench.py measures decider's gateway against (issue 27). No policy, no decision, no record.

    .venv/bin/python tools/bench/bare_proxy.py stdio
    .venv/bin/python tools/bench/bare_proxy.py http --port 8801      # http://127.0.0.1:8801/mcp

fastmcp is a bench requirement (tools/bench/requirements.txt), not a dependency of decider.
"""

from __future__ import annotations

import argparse
import sys

from fastmcp.server import create_proxy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("transport", choices=["stdio", "http"])
    ap.add_argument("--port", type=int, default=8801)
    args = ap.parse_args()
    # One server in the config: its tools keep their own names (no prefix), as a plain proxy does.
    proxy = create_proxy({"mcpServers": {"time": {"command": sys.executable, "args": ["-m", "mcp_server_time"]}}},
                         name="bare-proxy")
    if args.transport == "stdio":
        proxy.run(transport="stdio", show_banner=False)
    else:
        proxy.run(transport="http", host="127.0.0.1", port=args.port, path="/mcp", show_banner=False,
                  log_level="warning")


if __name__ == "__main__":
    main()
