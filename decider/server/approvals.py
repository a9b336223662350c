"""Approvals: the approver checks, and the Decider RPCs that act on approvals
(ResolveApproval, ListApprovals, WatchDecision)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import grpc

from decider.api.names import APPROVAL_STATE_NAMES
from decider.record.record import record_to_proto
from decider.server.auth import ANONYMOUS, current_principal
from decider.server.reach import refuse_unreached
from decider.server.watch_hub import WatchHub
from decider.times import utc
from decider.v1 import decider_pb2 as pb

if TYPE_CHECKING:
    from decider.server.controls import Controls

__all__ = ["WatchHub", "fingerprint", "is_final", "self_approval", "approver_matches", "handlers",
           "APPROVAL_STATE_NAMES"]

MAX_LIST = 1000


def fingerprint(row: dict[str, Any]) -> tuple[Any, ...]:
    """The mutable part of a record (same columns as ApprovalStore.versions)."""
    return (row.get("approval_state"), utc(row.get("resolved_at")), row.get("outcome_status"), row.get("actual_cost"))


def is_final(row: dict[str, Any]) -> bool:
    """Nothing more will happen that a waiting enforcement point cares about."""
    state = row.get("approval_state")
    if state is not None:
        return state != "pending"
    return row["outcome"] != "ALLOW" or bool(row.get("outcome_status"))


def self_approval(row: dict[str, Any], who: str) -> bool:
    """The principal that asked, the agent that asked (under any principal prefix: `agent:x`,
    `user:x`, `x`), or its owner, resolving its own call (SPEC §9)."""
    agent = row["agent_id"]
    if who == agent or (":" in who and who.partition(":")[2] == agent):
        return True
    if row.get("caller") and who == row["caller"]:
        return True
    return bool(row.get("owner")) and who == row["owner"]


def approver_matches(allowed: list[str], who: str, groups: frozenset[str]) -> bool:
    if not allowed:
        return True  # the rule names nobody in particular: any approver may resolve
    for a in allowed:
        kind, _, name = a.partition(":")
        if kind == "user" and (a == who or name == who):
            return True
        if kind == "group" and name in groups:
            return True
    return False


async def resolve_approval(ctrl: Controls, req: pb.ResolveApprovalRequest,
                           context: grpc.aio.ServicerContext) -> pb.DecisionRecord:
    if not req.decision_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decision_id: is required")
    if req.resolution not in (pb.APPROVE, pb.REJECT):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "resolution: must be APPROVE or REJECT")
    if len(req.comment) > 4096:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "comment: longer than 4096 characters")
    caller = current_principal()
    authenticated = caller is not ANONYMOUS
    if authenticated and req.approver and req.approver != caller.name:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"approver: you are {caller.name}; you cannot resolve as {req.approver}")
    who = req.approver or (caller.name if authenticated else "")
    open_server = ctrl.tokens is None   # no token file: every caller is admin, approver and enforcer
    if not who:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            "approver: is required: this server has no token file, so name one of the "
                            "approval's approvers as written (e.g. --approver group:finance-oncall)"
                            if open_server else "approver: is required (e.g. user:ana)")
    row = await asyncio.to_thread(ctrl.decisions.get, req.decision_id)
    if row is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"decision_id: no decision {req.decision_id!r}")
    await refuse_unreached(row, req.decision_id, "/decider.v1.Decider/ResolveApproval", context, ctrl.auth_events)
    if not row.get("approval_state") or (row.get("approval_id") or row["decision_id"]) != row["decision_id"]:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"decision {req.decision_id} is not awaiting approval")
    if self_approval(row, who) or (authenticated and self_approval(row, caller.name)):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{who} asked for this call (or is the agent or owner that did) and cannot resolve it")
    # Whoever joined the pending call with an identical one asked for it too (issue 24 item 3).
    askers = await asyncio.to_thread(ctrl.approvals.askers, row["decision_id"])
    if who in askers or (authenticated and caller.name in askers):
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{who} asked for this call (an identical call joined it) and cannot resolve it")
    now = datetime.now(timezone.utc)
    if row["approval_state"] == "pending" and utc(row["approval_expires_at"]) <= now:
        await ctrl.expire(row["decision_id"], now)
        row = await asyncio.to_thread(ctrl.decisions.get, req.decision_id)
    if row["approval_state"] != "pending":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"decision {req.decision_id} is already {row['approval_state']}")
    allowed = json.loads(row.get("approvers") or "[]")
    groups = ctrl.groups_of(who)
    # Without a token file nobody's groups are known, so a `group:NAME` approver matches only when
    # named as written: the rule's approvers are still checked (SPEC), fail closed.
    if not (approver_matches(allowed, who, groups) or (open_server and who in allowed)):
        if open_server:
            why = ("this server has no token file, so group memberships are unknown: name one of them as "
                   "written, or serve with --tokens")
        else:
            why = f"{who} is in {', '.join(f'group:{g}' for g in sorted(groups)) or 'no group'}"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{who} is not among this approval's approvers ({', '.join(allowed)}): {why}")
    to_state = "approved" if req.resolution == pb.APPROVE else "rejected"
    won = await asyncio.to_thread(ctrl.approvals.transition, req.decision_id, "pending", to_state,
                                  resolved_by=who, resolved_at=now, comment=req.comment)
    if not won:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                            f"decision {req.decision_id} was resolved by someone else first")
    ctrl.hub.notify(req.decision_id)
    row = await asyncio.to_thread(ctrl.decisions.get, req.decision_id)
    return record_to_proto(row)


async def list_approvals(ctrl: Controls, req: pb.ListApprovalsRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListApprovalsResponse:
    state = APPROVAL_STATE_NAMES.get(req.state or pb.APPROVAL_PENDING)
    if state is None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "state: unknown approval state")
    if req.limit < 0:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit: must be >= 0")
    if state == "pending":
        await ctrl.expire_due()   # an expired approval is not waiting for anyone
    limit = min(req.limit or 100, MAX_LIST)
    caller = current_principal()
    if caller.bound:
        # A bound approver sees its own agents' approvals only: read a full page, keep theirs.
        rows = [r for r in await asyncio.to_thread(ctrl.approvals.list, state, MAX_LIST) if caller.reaches(r)][:limit]
    else:
        rows = await asyncio.to_thread(ctrl.approvals.list, state, limit)
    return pb.ListApprovalsResponse(approvals=[record_to_proto(r) for r in rows])


async def watch_decision(ctrl: Controls, req: pb.GetDecisionRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.DecisionRecord]:
    if not req.decision_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decision_id: is required")
    sub = ctrl.hub.subscribe(req.decision_id)
    try:
        row = await asyncio.to_thread(ctrl.decisions.get, req.decision_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"decision_id: no decision {req.decision_id!r}")
        await refuse_unreached(row, req.decision_id, "/decider.v1.Decider/WatchDecision", context, ctrl.auth_events)
        sub.version = fingerprint(row)
        yield record_to_proto(row)
        while not is_final(row):
            # Woken by a change in this process, or by the poller seeing another replica's change.
            await sub.event.wait()
            sub.event.clear()
            new = await asyncio.to_thread(ctrl.decisions.get, req.decision_id)
            if new is None:
                return
            if fingerprint(new) != sub.version:
                row = new
                sub.version = fingerprint(row)
                yield record_to_proto(row)
    finally:
        ctrl.hub.unsubscribe(req.decision_id, sub)


def handlers(ctrl: Controls) -> dict[str, grpc.RpcMethodHandler]:
    async def resolve(req: Any, ctx: grpc.aio.ServicerContext) -> pb.DecisionRecord:
        return await resolve_approval(ctrl, req, ctx)

    async def listing(req: Any, ctx: grpc.aio.ServicerContext) -> pb.ListApprovalsResponse:
        return await list_approvals(ctrl, req, ctx)

    async def watch(req: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[pb.DecisionRecord]:
        async for rec in watch_decision(ctrl, req, ctx):
            yield rec

    return {
        "ResolveApproval": grpc.unary_unary_rpc_method_handler(
            resolve, request_deserializer=pb.ResolveApprovalRequest.FromString,
            response_serializer=pb.DecisionRecord.SerializeToString),
        "ListApprovals": grpc.unary_unary_rpc_method_handler(
            listing, request_deserializer=pb.ListApprovalsRequest.FromString,
            response_serializer=pb.ListApprovalsResponse.SerializeToString),
        "WatchDecision": grpc.unary_stream_rpc_method_handler(
            watch, request_deserializer=pb.GetDecisionRequest.FromString,
            response_serializer=pb.DecisionRecord.SerializeToString),
    }
