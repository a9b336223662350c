"""The server's side of the stateful controls: it reads the state a decision needs from its store,
and applies the decision's effects there. What the controls *decide* lives in the pure engine
(engine/controls.py), which `decider test` and `replay` run too.

`DeciderService` calls `state_for` (before the engine: kill switches from the in-memory cache,
budget usage only when a budget can matter) and `settle` (after the rules: the approvals of this
exact call are read only for a REQUIRE_APPROVAL decision, then `engine.settle` decides, and its
effects are applied — budget reservations atomically, approvals by conditional transitions). A
request that touches no budget and no approval costs no database round trip here.

A background task ticks every poll interval: reloads kill switches (other replicas' changes),
expires pending approvals past their ttl, releases reservations never settled, and wakes
WatchDecision streams whose record another replica changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine

from decider.bundle.compile import Bundle
from decider.engine.budgets import applicable_budgets, window_start
from decider.engine.controls import budget_denial, deny, needs_approvals
from decider.engine.controls import settle as engine_settle
from decider.engine.decision import Decision, Effects
from decider.engine.identity import identity_of
from decider.engine.state import ApprovalView, BudgetUsage, KillSwitch, State
from decider.record.record import Approval, DecisionRecord, response_from_row
from decider.server.auth import ANONYMOUS, TokenConfig, current_principal
from decider.server.keyed_locks import KeyedLocks
from decider.server.sessions import SessionHistory
from decider.server.watch_hub import WatchHub
from decider.store.approvals import ApprovalStore
from decider.store.auth_events import AuthEventStore
from decider.store.budgets import BudgetStore
from decider.store.decisions import DecisionStore
from decider.store.kill_switches import KillSwitchStore
from decider.store.outcomes import OutcomeOp
from decider.store.secrets import binding_key as stored_binding_key
from decider.store.secrets import forget_binding_key
from decider.store.sqlite_raw import sqlite_file
from decider.store.writer import GroupCommitWriter
from decider.times import utc
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import binding_hash

__all__ = ["Controls", "Applied", "DEFAULT_POLL_INTERVAL_S", "DEFAULT_RESERVATION_TTL_S"]

log = logging.getLogger("decider.server.controls")

DEFAULT_POLL_INTERVAL_S = 1.0
DEFAULT_RESERVATION_TTL_S = 3600.0


@dataclass(slots=True)
class Applied:
    """What the controls made of the engine's decision."""

    decision: Decision
    approval: Approval | None = None                          # the approval an ALLOW consumed, for its record
    args_hash: str = ""                                       # the binding hash, when the approvals needed it
    existing: pb.DecideResponse | None = None                 # answer with this earlier decision instead
    # The budget had room when the state was read and none at the atomic reservation: concurrent
    # calls took it. Nothing of this call is in the store, so a fresh read sees what the check saw.
    raced: bool = False
    _on_done: list[Callable[[bool], None]] = field(default_factory=list)

    def done(self, written: bool) -> None:
        """Call once the record is written (True) or could not be (False)."""
        for fn in self._on_done:
            fn(written)
        self._on_done.clear()


class Controls:
    def __init__(self, engine: Engine, *, tokens: TokenConfig | None = None,
                 poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
                 reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S, binding_key: bytes | None = None) -> None:
        self.decisions = DecisionStore(engine)
        self.sessions = SessionHistory(self.decisions, refresh_s=poll_interval_s)
        self.approvals = ApprovalStore(engine)
        self.budgets = BudgetStore(engine)
        self.kill_store = KillSwitchStore(engine)
        self.auth_events = AuthEventStore(engine)
        self.tokens = tokens
        self.engine = engine
        # The group-commit writer (set by the server): ReportOutcome's transaction rides its batches.
        self.writer: GroupCommitWriter | None = None
        self.outcome_op = OutcomeOp(engine) if sqlite_file(engine) else None
        # Is nothing else in flight? (set by the server from DeciderService._alone's counters)
        self.alone: Callable[[], bool] = lambda: False
        # The HMAC key of the approval binding hash: given from outside the database (a file or the
        # environment; the database's old one is then deleted), or under `serve --dev` the database's own.
        if binding_key is not None:
            forget_binding_key(engine)
            self.binding_key = binding_key
        else:
            self.binding_key = stored_binding_key(engine)
        # The active bundle (set by the server): ReportOutcome charges the budgets it declares.
        self.active_bundle: Callable[[], Bundle | None] = lambda: None
        self.poll_interval_s = poll_interval_s
        self.reservation_ttl_s = reservation_ttl_s
        self.hub = WatchHub()
        self.kill_switches: tuple[KillSwitch, ...] = ()
        self._call_locks = KeyedLocks()
        # A stored approval as the engine reads it, and as an identical call is answered with, built
        # once per version of the row (`_version`) instead of once per identical call (issue 17).
        # The rows themselves are read from the store on every such call: it stays the truth.
        # An entry: [the view, the answer (built on the first identical call)].
        self._approval_views: dict[tuple[Any, ...], list[Any]] = {}
        # (approval id, principal) already in approval_askers: a retried identical call writes once.
        self._askers_seen: set[tuple[str, str]] = set()
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
        kills = tuple(KillSwitch(r["id"], r["scope"], r["value"], r["reason"]) for r in rows)
        if kills != self.kill_switches:
            self.kill_switches = kills

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
    def state_at_hand(self, req: pb.DecideRequest, bundle: Bundle, now: datetime) -> State | None:
        """The state when no budget can matter to this call (no store read), else None. A budget the
        bundle declares can matter to every call: one already spent denies calls without a cost too."""
        if not bundle.budgets:
            return State(kill_switches=self.kill_switches, now=now)
        return None

    async def state_for(self, req: pb.DecideRequest, bundle: Bundle, now: datetime) -> State:
        kills = self.kill_switches
        state = self.state_at_hand(req, bundle, now)
        if state is not None:
            return state
        budgets = applicable_budgets(bundle, identity_of(bundle, req), now)   # as the decision will see it
        if not budgets:
            return State(kill_switches=kills, now=now)
        keys = [b.key for b in budgets]
        usage = self.budgets.usage_inline(keys)
        if usage is None:
            usage = await asyncio.to_thread(self.budgets.usage, keys)
        return State(kill_switches=kills, now=now, budget_usage={
            b.scope: BudgetUsage(*usage.get(b.key, (0.0, 0.0))) for b in budgets})

    def settle_at_hand(self, req: pb.DecideRequest, evaluated: Decision, bundle: Bundle,
                       state: State) -> Applied | None:
        """The final decision when it needs nothing from the store (no approval to read, nothing
        to reserve): `settle` would give the same; else None."""
        if needs_approvals(req, evaluated):
            return None
        decision = engine_settle(bundle, req, evaluated, state)
        return None if decision.effects.reserve else Applied(decision)

    async def settle(self, req: pb.DecideRequest, evaluated: Decision, bundle: Bundle, state: State,
                     decision_id: str, now: datetime,
                     before_wait: Callable[[], Awaitable[None]] | None = None) -> Applied:
        """The final decision (engine.settle) with its effects applied in the store.

        `before_wait`: awaited first when this call's lock is taken (or promised to a waiter), so a
        caller that holds other calls' locks until their records are written (a batch, whose
        records are staged) writes them before it waits: the holder may be one of its own."""
        if not needs_approvals(req, evaluated):
            decision = engine_settle(bundle, req, evaluated, state)
            return await self._reserve(Applied(decision), decision.effects, decision_id, now)
        key = binding_hash(req, self.binding_key)
        if before_wait is not None and self._call_locks.busy(key):
            await before_wait()
        await self._call_locks.acquire(key)
        # Held until this decision's record is written, so an identical call arriving meanwhile in
        # this process finds it (across replicas, the unique pending index is the guard).
        applied = Applied(evaluated, args_hash=key)
        applied._on_done.append(lambda _w: self._call_locks.release(key))
        try:
            for _attempt in range(3):
                if await self._settle_approval(applied, req, evaluated, bundle, state, key, decision_id, now):
                    return applied
            raise RuntimeError("the call's approval kept changing under this decision")
        except BaseException:
            applied.done(False)
            raise

    async def approvals_of(self, req: pb.DecideRequest) -> tuple[ApprovalView, ...]:
        """The approvals bound to exactly this call, as the engine reads them (for the shadow)."""
        rows = await self._open_rows(req, binding_hash(req, self.binding_key))
        return tuple(self._view(r) for r in rows)

    async def _open_rows(self, req: pb.DecideRequest, key: str) -> list[dict[str, Any]]:
        """The stored approvals that bind this call (binding hash `key`), oldest first. One indexed
        read on the loop (SQLite file); from a thread on PostgreSQL, or when another connection
        holds the database locked for longer than the loop may wait."""
        ask = (req.agent.id, req.tool.name, req.tool.server, key)
        rows = self.approvals.open_for_call_inline(*ask) if self.approvals.inline else None
        if rows is None:
            rows = await asyncio.to_thread(self.approvals.open_for_call, *ask)
        return rows

    async def _settle_approval(self, applied: Applied, req: pb.DecideRequest, evaluated: Decision, bundle: Bundle,
                               state: State, key: str, decision_id: str, now: datetime) -> bool:
        """One try; False when another replica consumed the approval first (read again)."""
        rows = await self._open_rows(req, key)
        by_id = {r["decision_id"]: r for r in rows}
        decision = engine_settle(bundle, req, evaluated, state.with_approvals(tuple(self._view(r) for r in rows)))
        effects = decision.effects
        for approval_id in effects.expire:
            await self.expire(approval_id, now)
        applied.decision = decision
        if effects.same_as:
            pending = by_id[effects.same_as]
            await self._joined(pending, now)
            applied.existing = self._same_as(pending, req)
            applied.done(True)
            return True
        if effects.consume:
            trial = await self._reserve(Applied(decision), effects, decision_id, now)
            if trial.decision.outcome != pb.ALLOW:
                applied.decision = trial.decision   # the approval stays for a call that fits the budget
                applied.raced = trial.raced
                return True
            consumed = await asyncio.to_thread(self.approvals.transition, effects.consume, "approved", "consumed")
            if not consumed:
                trial.done(False)   # someone else used it first: give the reservation back, look again
                return False
            self.hub.notify(effects.consume)
            applied._on_done.extend(trial._on_done)
            used = DecisionRecord.from_row(by_id[effects.consume]).approval
            if used is not None:
                used.state = "consumed"
            applied.approval = used
            return True
        return True

    async def _reserve(self, applied: Applied, effects: Effects, decision_id: str, now: datetime) -> Applied:
        if not effects.reserve:
            return applied
        cost = effects.amount
        expires = now + timedelta(seconds=self.reservation_ttl_s)
        try:
            exceeded = await asyncio.to_thread(self.budgets.reserve, decision_id, effects.reserve, cost, now, expires)
        except Exception as exc:  # noqa: BLE001 - fail closed: no reservation, no allow
            log.error("budget reservation failed", extra={"decision_id": decision_id, "error": str(exc)})
            applied.decision = _error(applied.decision, f"budget could not be reserved: {exc}")
            return applied
        if exceeded is not None:
            # Another decision took the room between our read and this atomic reservation.
            applied.decision = budget_denial(applied.decision, exceeded.budget, exceeded.spent, exceeded.reserved,
                                             cost)
            applied.raced = True
            return applied

        def release_if_unwritten(written: bool) -> None:
            if not written:
                # No record, no allow: give the reservation back now rather than at its expiry.
                asyncio.get_running_loop().create_task(asyncio.to_thread(self.budgets.release, decision_id))
        applied._on_done.append(release_if_unwritten)
        return applied

    def _approval_entry(self, row: dict[str, Any]) -> list[Any]:
        key = _version(row)
        entry = self._approval_views.get(key)
        if entry is None:
            if len(self._approval_views) >= _VIEWS_MAX:
                self._approval_views.clear()
            entry = self._approval_views[key] = [_view(row), None]
        return entry

    def _view(self, row: dict[str, Any]) -> ApprovalView:
        return self._approval_entry(row)[0]

    async def _joined(self, pending: dict[str, Any], now: datetime) -> None:
        """An authenticated principal other than the one whose call opened `pending` asked for the
        identical call: keep it (durably, before it gets the answer) among the principals that may
        not resolve that approval (issue 24 item 3)."""
        caller = current_principal()
        if caller is ANONYMOUS or not caller.name or caller.name == pending.get("caller"):
            return
        key = (pending["decision_id"], caller.name)
        if key in self._askers_seen:
            return
        await asyncio.to_thread(self.approvals.add_asker, pending["decision_id"], caller.name, now)
        if len(self._askers_seen) >= _VIEWS_MAX:
            self._askers_seen.clear()
        self._askers_seen.add(key)

    def _same_as(self, row: dict[str, Any], req: pb.DecideRequest) -> pb.DecideResponse:
        """The answer to an identical call: the stored decision's response, with this call's request id."""
        entry = self._approval_entry(row)
        if entry[1] is None:
            template = response_from_row(row, req)
            template.request_id = ""
            entry[1] = template
        resp = pb.DecideResponse()
        resp.CopyFrom(entry[1])
        resp.request_id = req.request.id
        return resp

    def budget_status(self, bundle: Bundle) -> list[pb.BudgetStatus]:
        """The bundle's budget counters in their current window, overspent first (for Status)."""
        if not bundle.budgets:
            return []
        now = datetime.now(timezone.utc)
        current = {b.scope: (b.window, window_start(b.window, now), float(b.limit)) for b in bundle.budgets}
        out = []
        for row in self.budgets.all_usage():
            want = current.get(row["scope"])
            if want is None or (row["window"], row["window_start"]) != want[:2]:
                continue
            limit = want[2]
            out.append(pb.BudgetStatus(scope=row["scope"], scope_key=row["scope_key"], window=row["window"],
                                       window_start=row["window_start"], limit=limit, spent=row["spent"],
                                       reserved=row["reserved"], remaining=limit - row["spent"] - row["reserved"]))
        out.sort(key=lambda b: (b.remaining >= 0, b.scope, b.scope_key))
        return out[:1000]


def _error(decision: Decision, text: str) -> Decision:
    return deny(decision, "error", text)


_VIEWS_MAX = 4096


def _version(row: dict[str, Any]) -> tuple[Any, ...]:
    """Identifies a stored approval's content: its id and every column a transition changes."""
    return (row["decision_id"], row["approval_state"], row.get("resolved_by"), row.get("resolved_at"),
            row.get("comment"))


def _view(row: dict[str, Any]) -> ApprovalView:
    """A stored approval as the engine reads it."""
    return ApprovalView(
        approval_id=row["decision_id"], state=row["approval_state"], expires_at=utc(row["approval_expires_at"]),
        deciding_rule=row["deciding_rule"], approvers=tuple(json.loads(row.get("approvers") or "[]")),
        resolved_by=row.get("resolved_by") or "", comment=row.get("comment") or "")
