"""Shared bits for CLI commands that talk to a running server: --server, --token, error exits."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime, timezone

import grpc
from google.protobuf import timestamp_pb2

__all__ = ["add_remote_args", "client_for", "remote", "fmt_time"]


def add_remote_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default=os.environ.get("DECIDER_SERVER", "127.0.0.1:50051"),
                   help="host:port of the server (env DECIDER_SERVER)")
    p.add_argument("--token", default=os.environ.get("DECIDER_TOKEN"),
                   help="bearer token (env DECIDER_TOKEN)")


def client_for(args: argparse.Namespace):  # noqa: ANN201 - DeciderClient, imported lazily
    from decider.client import DeciderClient

    return DeciderClient(args.server, token=args.token)


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
