"""`decider approvals | approve ID | reject ID` — the approver's commands, against a running server."""

from __future__ import annotations

import argparse
import json

from google.protobuf import json_format

from decider.cli.remote import add_remote_args, client_for, fmt_time, remote

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ls = sub.add_parser("approvals", help="list approvals (pending unless --state)")
    add_remote_args(ls)
    ls.add_argument("--state", choices=["pending", "approved", "rejected", "expired", "consumed"], default="pending")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.set_defaults(func=remote(_list))

    for verb, approve in (("approve", True), ("reject", False)):
        p = sub.add_parser(verb, help=f"{verb} a pending call")
        add_remote_args(p)
        p.add_argument("decision_id")
        p.add_argument("--approver", default="",
                       help="user:NAME resolving (default: the principal of --token)")
        p.add_argument("--comment", default="")
        p.add_argument("--format", choices=["text", "json"], default="text")
        p.set_defaults(func=remote(lambda a, _approve=approve: _resolve(a, _approve)))


def _list(args: argparse.Namespace) -> int:
    from decider.v1 import decider_pb2 as pb

    state = {"pending": pb.APPROVAL_PENDING, "approved": pb.APPROVAL_APPROVED, "rejected": pb.APPROVAL_REJECTED,
             "expired": pb.APPROVAL_EXPIRED, "consumed": pb.APPROVAL_CONSUMED}[args.state]
    with client_for(args) as c:
        recs = c.list_approvals(state, args.limit)
    if args.format == "json":
        for r in recs:
            print(json.dumps(json_format.MessageToDict(r), separators=(",", ":")))
        return 0
    print(f"{'decision_id':26}  {'agent':14}  {'tool':18}  {'approvers':24}  {'expires (UTC)':19}  reason")
    for r in recs:
        reason = r.reasons[0].text if r.reasons else ""
        print(f"{r.decision_id:26}  {r.agent.id[:14]:14}  {r.tool_name[:18]:18}  "
              f"{','.join(r.approval.approvers)[:24]:24}  {fmt_time(r.approval.expires_at):19}  {reason}")
    return 0


def _resolve(args: argparse.Namespace, approve: bool) -> int:
    with client_for(args) as c:
        rec = c.resolve_approval(args.decision_id, approve, approver=args.approver, comment=args.comment)
    if args.format == "json":
        print(json.dumps(json_format.MessageToDict(rec), indent=2))
    else:
        from decider.v1 import decider_pb2 as pb

        state = pb.ApprovalState.Name(rec.approval.state).removeprefix("APPROVAL_").lower()
        print(f"{rec.decision_id} {state} by {rec.approval.resolved_by} at {fmt_time(rec.approval.resolved_at)}"
              + (f": {rec.approval.comment}" if rec.approval.comment else ""))
    return 0
