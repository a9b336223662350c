"""Kill switches on the server: the in-memory cache every Decide reads, and the Control RPCs.

The cache is what keeps Decide free of a database read for kill switches: it is replaced after
every local change (immediate effect in this process) and reloaded from the database on every poll
tick (effect on the other replicas within one poll interval).
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import grpc

from decider.engine.state import KILL_SCOPES
from decider.record.ids import new_id
from decider.server.auth import current_principal
from decider.times import utc
from decider.v1 import decider_pb2 as pb

if TYPE_CHECKING:
    from decider.server.controls import Controls

__all__ = ["to_proto", "handlers"]

MAX_VALUE = 256


def to_proto(row: dict[str, Any]) -> pb.KillSwitch:
    ks = pb.KillSwitch(id=row["id"], scope=row["scope"], value=row["value"], reason=row["reason"],
                       created_by=row["created_by"] or "", cleared_by=row.get("cleared_by") or "")
    ks.created_at.FromDatetime(utc(row["created_at"]))
    if row.get("cleared_at"):
        ks.cleared_at.FromDatetime(utc(row["cleared_at"]))
    return ks


async def _check_scope(scope: str, value: str, context: grpc.aio.ServicerContext) -> None:
    if scope not in KILL_SCOPES:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"scope: must be one of {', '.join(KILL_SCOPES)}")
    if scope != "platform" and not value:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"value: is required for scope {scope}")
    if len(value) > MAX_VALUE:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"value: longer than {MAX_VALUE} characters")


async def set_kill_switch(ctrl: Controls, req: pb.SetKillSwitchRequest,
                          context: grpc.aio.ServicerContext) -> pb.KillSwitch:
    await _check_scope(req.scope, req.value, context)
    if len(req.reason) > 4096:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "reason: longer than 4096 characters")
    row = {"id": new_id(), "scope": req.scope, "value": "" if req.scope == "platform" else req.value,
           "reason": req.reason, "created_by": current_principal().name, "created_at": datetime.now(timezone.utc),
           "cleared_at": None, "cleared_by": None}
    await asyncio.to_thread(ctrl.kill_store.set, row)
    await ctrl.refresh_kill_switches()   # effective here before the RPC returns
    await ctrl.reject_pending_under(row)
    return to_proto(row)


async def clear_kill_switch(ctrl: Controls, req: pb.ClearKillSwitchRequest,
                            context: grpc.aio.ServicerContext) -> pb.KillSwitch:
    if not req.id:
        if not req.scope:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "id: give the switch id, or scope and value")
        await _check_scope(req.scope, req.value, context)
    rows = await asyncio.to_thread(ctrl.kill_store.clear, switch_id=req.id, scope=req.scope,
                                   value="" if req.scope == "platform" else req.value,
                                   by=current_principal().name)
    if not rows:
        what = req.id or f"{req.scope}={req.value}"
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no active kill switch {what}")
    await ctrl.refresh_kill_switches()
    return to_proto(rows[-1])


async def list_kill_switches(ctrl: Controls, req: pb.ListKillSwitchesRequest,
                             context: grpc.aio.ServicerContext) -> pb.ListKillSwitchesResponse:
    rows = await asyncio.to_thread(ctrl.kill_store.list, req.include_cleared)
    return pb.ListKillSwitchesResponse(kill_switches=[to_proto(r) for r in rows])


def handlers(ctrl: Controls) -> dict[str, grpc.RpcMethodHandler]:
    def bind(fn: Any) -> Any:
        async def call(req: Any, ctx: grpc.aio.ServicerContext) -> Any:
            return await fn(ctrl, req, ctx)
        return call

    return {
        "SetKillSwitch": grpc.unary_unary_rpc_method_handler(
            bind(set_kill_switch), request_deserializer=pb.SetKillSwitchRequest.FromString,
            response_serializer=pb.KillSwitch.SerializeToString),
        "ClearKillSwitch": grpc.unary_unary_rpc_method_handler(
            bind(clear_kill_switch), request_deserializer=pb.ClearKillSwitchRequest.FromString,
            response_serializer=pb.KillSwitch.SerializeToString),
        "ListKillSwitches": grpc.unary_unary_rpc_method_handler(
            bind(list_kill_switches), request_deserializer=pb.ListKillSwitchesRequest.FromString,
            response_serializer=pb.ListKillSwitchesResponse.SerializeToString),
    }
