"""The stateful controls around the pure engine: kill switches, budgets and approvals.

`DeciderService.decide` calls two hooks: `state_for` (before the engine: kill switches from the
in-memory cache, budget usage only when a budget can matter) and `apply` (after it: reserve
budget for an allow, open/reuse/consume an approval for a require_approval). A request that
touches no budget and no approval costs no database round trip here.

A background task ticks every poll interval: reloads kill switches (other replicas' changes),
expires pending approvals past their ttl, releases reservations never settled, and wakes
WatchDecision streams whose record another replica changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import grpc
from sqlalchemy import Engine

from decider.bundle.compile import Bundle
from decider.engine.decide import Decision, Reason
from decider.engine.state import KillSwitch, State
from decider.record.record import canonical_args_hash, record_to_proto, response_from_row, struct_to_dict
from decider.server import approvals as approvals_rpc
from decider.server import kill_switches as kill_rpc
from decider.server.approvals import WatchHub, utc
from decider.server.auth import TokenConfig
from decider.server.budgets import applicable_budgets, exceeded_text, mentions_budget, usage_by_scope
from decider.store.approvals import ApprovalStore
from decider.store.auth_events import AuthEventStore
from decider.store.budgets import AlreadySettled, BudgetStore
from decider.store.decisions import DecisionStore
from decider.store.kill_switches import KillSwitchStore
from decider.v1 import decider_pb2 as pb

__all__ = ["Controls", "Applied", "DEFAULT_POLL_INTERVAL_S", "DEFAULT_RESERVATION_TTL_S"]

log = logging.getLogger("decider.server.controls")

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_RESERVATION_TTL_S = 3600.0


@dataclass(slots=True)
class Applied:
    """What the controls made of the engine's decision."""

    decision: Decision
    row: dict[str, Any] = field(default_factory=dict)         # extra columns for the record
    existing: pb.DecideResponse | None = None                 # answer with this earlier decision instead
    _on_done: list[Callable[[bool], None]] = field(default_factory=list)

    def done(self, written: bool) -> None:
        """Call once the record is written (True) or could not be (False)."""
        for fn in self._on_done:
            fn(written)
        self._on_done.clear()


class Controls:
    def __init__(self, engine: Engine, *, tokens: TokenConfig | None = None,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        self.decisions = DecisionStore(engine)
        self.approvals = ApprovalStore(engine)
        self.budgets = BudgetStore(engine)
        self.kill_store = KillSwitchStore(engine)
        self.auth_events = AuthEventStore(engine)
        self.tokens = tokens
        self.poll_interval_s = poll_interval_s
        self.reservation_ttl_s = reservation_ttl_s
        self.hub = WatchHub()
        self.kill_switches: tuple[KillSwitch, ...] = ()
        self._plain_state = State()   # kill switches only: shared by every request that reads no budget
        self._call_locks: dict[tuple[str, ...], asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None

    # ---- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        await self.refresh_kill_switches()
        self._task = asyncio.create_task(self._run(), name="decider-controls")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.tick()
            except Exception as exc:  # noqa: BLE001 - keep ticking; the next tick may succeed
                log.error("controls tick failed", extra={"error": str(exc)})

    async def tick(self) -> None:
        await self.refresh_kill_switches()
        await self.expire_due()
        now = datetime.now(timezone.utc)
        released = await asyncio.to_thread(self.budgets.release_expired, now)
        if released:
            log.info("released unsettled budget reservations", extra={"count": released})
        watched = self.hub.watched()
        if watched:
            self.hub.changed(await asyncio.to_thread(self.approvals.versions, watched))

    # ---- kill switches -------------------------------------------------------------------------
    async def refresh_kill_switches(self) -> None:
        rows = await asyncio.to_thread(self.kill_store.active)
        kills = tuple(kill_rpc.to_state(r) for r in rows)
        if kills != self.kill_switches:
            self.kill_switches = kills
            self._plain_state = State(kill_switches=kills)

    async def reject_pending_under(self, switch: dict[str, Any]) -> None:
        ids = await asyncio.to_thread(self.approvals.pending_in_scope, switch["scope"], switch["value"])
        now = datetime.now(timezone.utc)
        for decision_id in ids:
            won = await asyncio.to_thread(
                self.approvals.transition, decision_id, "pending", "rejected",
                resolved_by=f"kill-switch:{switch['id']}", resolved_at=now,
                comment=f"killed: {switch['reason']}" if switch["reason"] else "killed")
            if won:
                self.hub.notify(decision_id)

    # ---- approvals -----------------------------------------------------------------------------
    async def expire(self, decision_id: str, now: datetime) -> bool:
        won = await asyncio.to_thread(self.approvals.transition, decision_id, "pending", "expired",
                                      resolved_by="", resolved_at=now, comment="approval_ttl elapsed")
        if won:
            self.hub.notify(decision_id)
        return won

    async def expire_due(self) -> None:
        now = datetime.now(timezone.utc)
        for decision_id in await asyncio.to_thread(self.approvals.due_for_expiry, now):
            await self.expire(decision_id, now)

    def groups_of(self, principal: str) -> frozenset[str]:
        return self.tokens.groups_of(principal) if self.tokens is not None else frozenset()

    # ---- the Decide hooks ----------------------------------------------------------------------
    async def state_for(self, req: pb.DecideRequest, bundle: Bundle, now: datetime) -> State:
        plain = self._plain_state
        if not bundle.budgets or not (req.request.estimated_cost > 0 or mentions_budget(bundle, req.tool.name)):
            return plain
        budgets = applicable_budgets(bundle, req.agent, now)
        if not budgets:
            return plain
        usage = await asyncio.to_thread(self.budgets.usage, [b.key for b in budgets])
        return State(kill_switches=plain.kill_switches, budget_usage=usage_by_scope(budgets, usage))

    async def apply(self, req: pb.DecideRequest, decision: Decision, bundle: Bundle, decision_id: str,
                    now: datetime) -> Applied:
        if req.dry_run:
            return Applied(decision)   # evaluate and record, change no state
        if decision.outcome == pb.ALLOW:
            return await self._reserve(Applied(decision), req, bundle, decision_id, now)
        if decision.outcome == pb.REQUIRE_APPROVAL:
            return await self._approval(req, decision, bundle, decision_id, now)
        return Applied(decision)

    async def _reserve(self, applied: Applied, req: pb.DecideRequest, bundle: Bundle, decision_id: str,
                       now: datetime) -> Applied:
        cost = req.request.estimated_cost
        if cost <= 0 or not bundle.budgets:
            return applied
        budgets = applicable_budgets(bundle, req.agent, now)
        if not budgets:
            return applied
        expires = now + timedelta(seconds=self.reservation_ttl_s)
        try:
            exceeded = await asyncio.to_thread(self.budgets.reserve, decision_id, budgets, cost, now, expires)
        except Exception as exc:  # noqa: BLE001 - fail closed: no reservation, no allow
            log.error("budget reservation failed", extra={"decision_id": decision_id, "error": str(exc)})
            applied.decision = _deny(applied.decision, "error", f"budget could not be reserved: {exc}")
            return applied
        if exceeded is not None:
            applied.decision = _deny(applied.decision, "budget_exceeded", exceeded_text(exceeded, cost))
            return applied

        def release_if_unwritten(written: bool) -> None:
            if not written:
                # No record, no allow: give the reservation back now rather than at its expiry.
                asyncio.get_running_loop().create_task(asyncio.to_thread(self.budgets.release, decision_id))
        applied._on_done.append(release_if_unwritten)
        return applied

    async def _approval(self, req: pb.DecideRequest, decision: Decision, bundle: Bundle, decision_id: str,
                        now: datetime) -> Applied:
        args_hash = canonical_args_hash(struct_to_dict(req.tool.args))
        key = (req.agent.id, req.tool.name, req.tool.server, args_hash)
        lock = self._call_locks.setdefault(key, asyncio.Lock())
        await lock.acquire()
        # Held until this decision's record is written, so an identical call arriving meanwhile in
        # this process finds it (across replicas, the unique pending index is the guard).
        applied = Applied(decision)
        applied._on_done.append(lambda _w: self._unlock(key, lock))
        try:
            # One indexed read on the loop (SQLite file); from a thread on PostgreSQL, or when
            # another connection holds the database locked for longer than the loop may wait.
            rows = self.approvals.open_for_call_inline(*key) if self.approvals.inline else None
            if rows is None:
                rows = await asyncio.to_thread(self.approvals.open_for_call, *key)
            for row in rows:
                if row["approval_state"] == "pending":
                    if utc(row["approval_expires_at"]) > now:
                        applied.existing = response_from_row(row, req)
                        applied.done(True)
                        return applied
                    await self.expire(row["decision_id"], now)
                    continue
                # Approved: this identical call may run, once.
                allowed = replace(
                    decision, outcome=pb.ALLOW, deciding_rule=row["deciding_rule"], approvers=(), approval_ttl_s=0,
                    reasons=(Reason("approved", f"approved by {row['resolved_by']} in decision {row['decision_id']}"
                                    + (f": {row['comment']}" if row.get("comment") else ""),
                                    "", "allow"),))
                trial = await self._reserve(Applied(allowed), req, bundle, decision_id, now)
                if trial.decision.outcome != pb.ALLOW:
                    applied.decision = trial.decision   # the approval stays for a call that fits the budget
                    return applied
                consumed = await asyncio.to_thread(
                    self.approvals.transition, row["decision_id"], "approved", "consumed")
                if not consumed:
                    trial.done(False)   # someone else used it first: give the reservation back
                    continue
                self.hub.notify(row["decision_id"])
                applied.decision = allowed
                applied._on_done.extend(trial._on_done)
                applied.row = {"approval_id": row["decision_id"], "approval_state": "consumed",
                               "approvers": row["approvers"], "approval_expires_at": row["approval_expires_at"],
                               "resolved_by": row["resolved_by"], "resolved_at": row["resolved_at"],
                               "comment": row["comment"]}
                return applied
            applied.row = {"approval_id": decision_id}
            return applied
        except BaseException:
            applied.done(False)
            raise

    def _unlock(self, key: tuple[str, ...], lock: asyncio.Lock) -> None:
        lock.release()
        if not lock.locked() and not lock._waiters:  # type: ignore[attr-defined]
            self._call_locks.pop(key, None)

    # ---- ReportOutcome -------------------------------------------------------------------------
    async def report_outcome(self, req: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext) -> pb.DecisionRecord:
        if not req.decision_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "decision_id: is required")
        if not math.isfinite(req.actual_cost) or req.actual_cost < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"actual_cost: is {req.actual_cost}; must be a finite number >= 0")
        if len(req.status) > 64:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "status: longer than 64 characters")
        row = await asyncio.to_thread(self.decisions.get, req.decision_id)
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"decision_id: no decision {req.decision_id!r}")
        if row.get("outcome_status"):
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"decision {req.decision_id}: outcome already reported ({row['outcome_status']})")
        try:
            await asyncio.to_thread(self.budgets.settle, req.decision_id, req.actual_cost)
        except AlreadySettled:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"decision {req.decision_id}: outcome already reported")
        await asyncio.to_thread(self.approvals.set_outcome, req.decision_id, req.actual_cost, req.status or "ok")
        self.hub.notify(req.decision_id)
        row = await asyncio.to_thread(self.decisions.get, req.decision_id)
        return record_to_proto(row)

    # ---- handlers ------------------------------------------------------------------------------
    def decider_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """Decider RPCs implemented here (merged with DeciderService's own)."""
        out = approvals_rpc.handlers(self)
        out["ReportOutcome"] = grpc.unary_unary_rpc_method_handler(
            self.report_outcome, request_deserializer=pb.ReportOutcomeRequest.FromString,
            response_serializer=pb.DecisionRecord.SerializeToString)
        return out

    def control_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return kill_rpc.handlers(self)


def _deny(decision: Decision, rule_id: str, text: str) -> Decision:
    return replace(decision, outcome=pb.DENY, reasons=(Reason(rule_id, text, "", "deny"),), deciding_rule=rule_id,
                   approvers=(), approval_ttl_s=0)
