"""`decider gateway mcp --config gateway.yaml`, `decider tools import --command … | --url …` and
`decider hook claude-code --decider HOST:PORT …` (the enforcement points and their helpers)."""

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
    register_hooks(sub)


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


def register_hooks(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    h = sub.add_parser("hook", help="coding-agent hooks: decide each tool call of Claude Code")
    hsub = h.add_subparsers(dest="hook_command", required=True, metavar="AGENT")
    c = hsub.add_parser("claude-code", help="a Claude Code command hook: event JSON on stdin, decision JSON on "
                        "stdout (PreToolUse → Decide, PostToolUse → ReportOutcome); exit 2 when decider is unreachable")
    c.add_argument("--decider", required=True, metavar="HOST:PORT", help="decider's gRPC address")
    c.add_argument("--token-env", metavar="VAR", help="environment variable holding the bearer token")
    c.add_argument("--agent-id", default="claude-code", help="agent.id decider sees (default: claude-code)")
    c.add_argument("--team", default="", help="agent.team")
    c.add_argument("--on-approval", choices=["ask", "wait"], default="ask",
                   help="REQUIRE_APPROVAL: ask the person at the terminal (default), or wait for an approver in decider")
    c.add_argument("--wait", default="30s", help="--on-approval wait: how long (e.g. 30s, 2m)")
    c.add_argument("--timeout", default="5s", help="per call to decider; no answer in time blocks the call")
    c.add_argument("--state-dir", help="where PreToolUse leaves decision ids for PostToolUse "
                   "(default: $XDG_STATE_HOME/decider/claude-code)")
    c.add_argument("--outcome-label", action="append", default=[], metavar="TOOL_GLOB=LABEL",
                   help="PostToolUse: add LABEL to the record of tools matching TOOL_GLOB "
                        "(e.g. WebFetch=untrusted-content); repeatable")
    c.set_defaults(func=_hook_claude_code)


def _hook_claude_code(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from decider.errors import DeciderError
    from decider.gateway.config import parse_duration
    from decider.hooks.claude_code import EXIT_BLOCK, HookConfig, default_state_dir, handle_event

    wait, timeout = parse_duration(args.wait), parse_duration(args.timeout)
    if wait is None or timeout is None or timeout <= 0:
        raise DeciderError(f"--wait / --timeout: not a duration ({args.wait!r}, {args.timeout!r})")
    labels = []
    for item in args.outcome_label:
        glob, sep, label = item.partition("=")
        if not (sep and glob and label):
            raise DeciderError(f"--outcome-label: expected TOOL_GLOB=LABEL, got {item!r}")
        labels.append((glob, label))
    token = os.environ.get(args.token_env) if args.token_env else None
    if args.token_env and not token:
        sys.stderr.write(f"decider hook: ${args.token_env} is not set; blocked\n")
        return EXIT_BLOCK
    agent = {"id": args.agent_id, **({"team": args.team} if args.team else {})}
    cfg = HookConfig(target=args.decider, agent=agent, token=token, timeout_s=timeout, on_approval=args.on_approval,
                     wait_s=wait, state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
                     outcome_labels=tuple(labels))
    try:
        event = json.loads(sys.stdin.read() or "null")
    except ValueError as e:
        sys.stderr.write(f"decider hook: the event on stdin is not JSON ({e}); blocked\n")
        return EXIT_BLOCK
    result = handle_event(event, cfg)
    if result.stdout:
        sys.stdout.write(result.stdout + "\n")
    if result.stderr:
        sys.stderr.write(result.stderr + "\n")
    return result.exit_code
