"""`decider gateway mcp --config gateway.yaml` and `decider tools import --command … | --url …`."""

from __future__ import annotations

import argparse
import shlex
import sys

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("gateway", help="enforcement points: an MCP gateway in front of MCP servers")
    gsub = g.add_subparsers(dest="gateway_command", required=True, metavar="KIND")
    m = gsub.add_parser("mcp", help="an MCP proxy that asks decider before every tools/call")
    m.add_argument("--config", required=True, help="gateway.yaml (decider, agent, listen, upstreams, …)")
    m.add_argument("--port-file", help="HTTP: write the bound port here once serving")
    m.add_argument("--log-level", default="info")
    m.set_defaults(func=_gateway)

    t = sub.add_parser("tools", help="tool catalogue helpers")
    tsub = t.add_subparsers(dest="tools_command", required=True, metavar="VERB")
    i = tsub.add_parser("import", help="print bundle.yaml catalogue entries from an MCP server's tools/list")
    where = i.add_mutually_exclusive_group(required=True)
    where.add_argument("--command", help="start the server as a stdio subprocess, e.g. 'python -m mcp_server_time'")
    where.add_argument("--url", help="a streamable-HTTP MCP endpoint, e.g. http://127.0.0.1:9000/mcp")
    i.add_argument("--token", help="--url: bearer token to send")
    i.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the server")
    i.add_argument("--without-args", action="store_true",
                   help="omit the inputSchema (args:), for a bundle loader that does not read schemas yet")
    i.set_defaults(func=_import)


def _gateway(args: argparse.Namespace) -> int:
    import anyio

    from decider.gateway.config import load_config
    from decider.gateway.serve import run_gateway
    from decider.logs import setup_logging

    setup_logging(args.log_level)   # stderr only: on stdio, stdout is the MCP channel
    cfg = load_config(args.config)
    anyio.run(lambda: run_gateway(cfg, port_file=args.port_file))
    return 0


def _import(args: argparse.Namespace) -> int:
    import anyio

    from decider.errors import DeciderError
    from decider.gateway.catalogue import catalogue_yaml, fetch_tools

    command = shlex.split(args.command) if args.command else None
    if command is not None and not command:
        raise DeciderError("--command: empty")
    try:
        info, tools = anyio.run(lambda: fetch_tools(command=command, url=args.url, token=args.token,
                                                    timeout=args.timeout))
    except TimeoutError:
        raise DeciderError(f"the MCP server did not answer tools/list within {args.timeout:g}s") from None
    except Exception as e:  # noqa: BLE001 - spawn / connection failures, often wrapped in an ExceptionGroup
        raise DeciderError(f"cannot read tools/list from {args.command or args.url}: {_root_cause(e)}") from None
    sys.stdout.write(catalogue_yaml(info, tools, source=args.command or args.url,
                                    with_args=not args.without_args))
    return 0


def _root_cause(e: BaseException) -> str:
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return f"{type(e).__name__}: {e}"
