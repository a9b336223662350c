"""Shared bits for CLI commands that talk to a running server: --decider, --token, error exits.

decider's own address is `--decider` / `$DECIDER_ADDR` everywhere (issue 28: `--server` also meant the
tool's MCP server, as `server=` does in the Python API). `--server` and `$DECIDER_SERVER` still work,
with a warning on stderr."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone

import grpc
from google.protobuf import timestamp_pb2

__all__ = ["add_remote_args", "add_decider_arg", "decider_address", "client_for", "remote", "fmt_time",
           "DEFAULT_ADDR"]

DEFAULT_ADDR = "127.0.0.1:50051"


def deprecated(old: str, new: str) -> None:
    print(f"decider: warning: {old} is deprecated; use {new}", file=sys.stderr)


class _DeprecatedServer(argparse.Action):
    """`--server`: kept for scripts written before `--decider`; says so."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        deprecated("--server", "--decider (decider's address; --tool-server is the tool's)")
        setattr(namespace, self.dest, values)


def add_decider_arg(p: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup, help: str = "") -> None:
    """--decider HOST:PORT (dest `server`), and --server as its deprecated alias."""
    p.add_argument("--decider", dest="server", metavar="HOST:PORT", default=None,
                   help=help or f"decider's address (default: $DECIDER_ADDR, else {DEFAULT_ADDR})")
    p.add_argument("--server", dest="server", metavar="HOST:PORT", action=_DeprecatedServer,
                   help="deprecated alias of --decider")


def decider_address(args: argparse.Namespace) -> str:
    """--decider, else $DECIDER_ADDR, else the deprecated $DECIDER_SERVER, else 127.0.0.1:50051."""
    if args.server:
        return str(args.server)
    if addr := os.environ.get("DECIDER_ADDR"):
        return addr
    if addr := os.environ.get("DECIDER_SERVER"):
        deprecated("$DECIDER_SERVER", "$DECIDER_ADDR")
        return addr
    return DEFAULT_ADDR


def add_remote_args(p: argparse.ArgumentParser) -> None:
    add_decider_arg(p)
    p.add_argument("--token", default=os.environ.get("DECIDER_TOKEN"),
                   help="bearer token (env DECIDER_TOKEN)")


def client_for(args: argparse.Namespace):  # noqa: ANN201 - DeciderClient, imported lazily
    from decider.client import DeciderClient

    return DeciderClient(decider_address(args), token=args.token)


def remote(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a gRPC error into one line on stderr and a CI-friendly exit code (2 bad input, 1 refused)."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            details = e.details() if hasattr(e, "details") else str(e)
            print(f"decider: {code.name}: {details}", file=sys.stderr)
            return 2 if code == grpc.StatusCode.INVALID_ARGUMENT else 1

    return run


def fmt_time(ts: timestamp_pb2.Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
