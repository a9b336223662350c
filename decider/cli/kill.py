"""`decider kill | unkill` — set, list and clear kill switches on a running server (admin role)."""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format

from decider.cli.remote import add_remote_args, client_for, fmt_time, remote
from decider.engine.state import KILL_SCOPES

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("kill", help="set a kill switch (or --list them)")
    add_remote_args(k)
    k.add_argument("--scope", choices=KILL_SCOPES)
    k.add_argument("--value", default="", help="the scope's value, e.g. the team name (not for platform)")
    k.add_argument("--reason", default="")
    k.add_argument("--list", action="store_true", help="list active kill switches")
    k.add_argument("--all", action="store_true", help="with --list: include cleared ones")
    k.add_argument("--format", choices=["text", "json"], default="text")
    k.set_defaults(func=remote(_kill))

    u = sub.add_parser("unkill", help="clear a kill switch, by id or by --scope/--value")
    add_remote_args(u)
    u.add_argument("id", nargs="?", default="")
    u.add_argument("--scope", choices=KILL_SCOPES, default="")
    u.add_argument("--value", default="")
    u.add_argument("--format", choices=["text", "json"], default="text")
    u.set_defaults(func=remote(_unkill))


def _line(ks) -> str:  # noqa: ANN001 - pb.KillSwitch
    target = ks.scope if ks.scope == "platform" else f"{ks.scope}={ks.value}"
    out = f"{ks.id}  {target}  set by {ks.created_by or '-'} at {fmt_time(ks.created_at)}"
    if ks.cleared_at.seconds:
        out += f"  cleared by {ks.cleared_by or '-'} at {fmt_time(ks.cleared_at)}"
    return out + (f"  reason: {ks.reason}" if ks.reason else "")


def _kill(args: argparse.Namespace) -> int:
    with client_for(args) as c:
        if args.list:
            switches = c.list_kill_switches(include_cleared=args.all)
            for ks in switches:
                print(json.dumps(json_format.MessageToDict(ks)) if args.format == "json" else _line(ks))
            return 0
        if not args.scope:
            print("decider: kill: --scope is required (or --list)")
            return 2
        ks = c.set_kill_switch(args.scope, args.value, args.reason)
    print(json.dumps(json_format.MessageToDict(ks)) if args.format == "json" else "killed: " + _line(ks))
    return 0


def _unkill(args: argparse.Namespace) -> int:
    if not args.id and not args.scope:
        print("decider: unkill: give a switch id, or --scope and --value")
        return 2
    with client_for(args) as c:
        ks = c.clear_kill_switch(args.id, scope=args.scope, value=args.value)
    print(json.dumps(json_format.MessageToDict(ks)) if args.format == "json" else "cleared: " + _line(ks))
    return 0
