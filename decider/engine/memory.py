"""The server's state, simulated in memory: what `decider test` and `replay` apply effects to.

The same `engine.decide` runs; the effects it returns are applied here exactly as the server
applies them in its store — budget reservations (settled with an actual cost when one is known),
approvals opened, consumed, expired, rejected — so a sequence of calls decides here as it decided
on the server. Kill switches are given (each active from `since` until `until`), as are starting
budget usage and, for recorded traces, the resolutions approvers made (`resolve`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from decider.bundle.compile import Bundle
from decider.engine.budgets import applicable_budgets
from decider.engine.controls import needs_approvals, settle
from decider.engine.decision import NO_EFFECTS, Decision
from decider.engine.identity import identity_of
from decider.engine.procedure import admit, evaluate_call, intake
from decider.engine.state import ApprovalView, BudgetUsage, KillSwitch, SessionCall, State
from decider.v1 import decider_pb2 as pb
from decider.values.canonical import binding_hash, struct_to_dict
from decider.values.masking import mask_json, split_mask_paths

__all__ = ["TimedKillSwitch", "Resolution", "MemoryState", "ASSUME"]

ASSUME = ("pending", "approved")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class TimedKillSwitch:
    switch: KillSwitch
    since: datetime | None = None      # None: from the start
    until: datetime | None = None      # None: never cleared

    def active(self, now: datetime) -> bool:
        return (self.since is None or self.since <= now) and (self.until is None or now < self.until)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What an approver did to an approval, and when (from a recorded trace)."""

    state: str                         # approved | rejected
    at: datetime
    by: str = ""
    comment: str = ""


@dataclass(slots=True)
class _Approval:
    view: ApprovalView
    binding: str
    resolution: Resolution | None = None


@dataclass(slots=True)
class MemoryState:
    kill_switches: tuple[TimedKillSwitch, ...] = ()
    # Usage at the start, by (scope, value): applied to the first window of each budget counter.
    start_usage: Mapping[tuple[str, str], BudgetUsage] = field(default_factory=dict)
    assume: str = "pending"            # pending: approvals wait; approved: each is approved when opened
    key: bytes = field(default_factory=lambda: os.urandom(32))
    usage: dict[str, list[float]] = field(default_factory=dict)            # budget key → [spent, reserved]
    reservations: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # decision id → held
    approvals: dict[str, list[_Approval]] = field(default_factory=dict)   # binding → oldest first
    by_id: dict[str, _Approval] = field(default_factory=dict)
    pending_resolutions: dict[str, Resolution] = field(default_factory=dict)
    last_id: str = ""                  # the id the last decision has here (its own, or the one it reused)
    # Session history (SPEC §10), by session key: each decided call, as the server's ledger holds it.
    sessions: dict[str, list[SessionCall]] = field(default_factory=dict)
    # The history key each caller's session key last decided under (the agent id under
    # `spec.session.key: agent`), for `report`.
    _reported_under: dict[str, str] = field(default_factory=dict)
    _n: int = 0

    # ---- reading -------------------------------------------------------------------------------
    def snapshot(self, bundle: Bundle, req: pb.DecideRequest, now: datetime, *, approvals: bool = True) -> State:
        """The state the server would read for this request (`approvals=False`: without the
        call's approvals, which only a REQUIRE_APPROVAL decision needs)."""
        kills = tuple(k.switch for k in self.kill_switches if k.active(now)) if self.kill_switches else ()
        if bundle.budgets:   # a spent budget denies calls without a cost too (engine/controls.py)
            usage: dict[str, BudgetUsage] = {}
            for b in applicable_budgets(bundle, identity_of(bundle, req), now):
                use = self._counter(b.key, b.scope, b.scope_key)
                usage[b.scope] = BudgetUsage(use[0], use[1])
            state = State(kill_switches=kills, budget_usage=usage, now=now)
        else:
            state = State(kill_switches=kills, now=now)
        return state.with_approvals(self.approvals_for(req, now)) if approvals else state

    def approvals_for(self, req: pb.DecideRequest, now: datetime, binding: str = "") -> tuple[ApprovalView, ...]:
        mine = self.approvals.get(binding or binding_hash(req, self.key))
        if not mine:
            return ()
        return tuple(self._resolved(a, now).view for a in mine if a.view.state != "consumed")

    def _counter(self, key: str, scope: str, value: str) -> list[float]:
        use = self.usage.get(key)
        if use is None:
            start = self.start_usage.get((scope, value)) or BudgetUsage()
            use = self.usage[key] = [start.spent, start.reserved]
        return use

    def _resolved(self, a: _Approval, now: datetime) -> _Approval:
        r = a.resolution
        if r is not None and a.view.state == "pending" and r.at <= now:
            a.view = replace(a.view, state=r.state, resolved_by=r.by, comment=r.comment)
            a.resolution = None
        return a

    # ---- deciding ------------------------------------------------------------------------------
    def decide(self, bundle: Bundle, req: pb.DecideRequest, now: datetime | None = None,
               decision_id: str = "", session: str | None = None) -> Decision:
        """The decision procedure (engine/procedure.py) on this state, with its effects applied:
        the request checked as the server checks it (InvalidRequest naming the field), admitted
        (the tool's default estimate), evaluated and settled. `session`: the session key the
        call's history is kept under (default: `agent.session_id`; replay passes the trace's; with
        `spec.session.key: agent` it is always the agent id, as on the server)."""
        intake(req)
        at = now or (req.request.time.ToDatetime(tzinfo=timezone.utc) if req.request.HasField("time") else _EPOCH)
        key = _history_key(bundle, req, session)
        self._reported_under[session if session is not None else req.agent.session_id] = key
        d = self._decide(bundle, req, at, decision_id, key)
        if key and bundle.reads_session and not req.dry_run and not d.effects.same_as:
            self._remember(bundle, req, d, at, key)
        return d

    def _remember(self, bundle: Bundle, req: pb.DecideRequest, d: Decision, at: datetime, key: str) -> None:
        """The call in its session's history, with its arguments masked as the record has them."""
        args = struct_to_dict(req.tool.args) if req.tool.args.fields else {}
        if args and bundle.mask:
            args = mask_json(args, split_mask_paths(bundle.mask)[0])
        calls = self.sessions.setdefault(key, [])
        calls.append(SessionCall(req.tool.name, req.tool.server, args, d.outcome_name, at, d.labels,
                                 decision_id=self.last_id))
        if len(calls) > 2 * bundle.session_max_calls:   # the engine sees at most max_calls: drop the rest
            del calls[:-bundle.session_max_calls]

    def report(self, session: str, status: str, labels: tuple[str, ...] = ()) -> None:
        """ReportOutcome for the session's last call: its status, and labels added. (Under
        `spec.session.key: agent` that call's history is its agent's.)"""
        calls = self.sessions.get(self._reported_under.get(session, session))
        if calls:
            c = calls[-1]
            calls[-1] = replace(c, status=status or c.status, labels=tuple(dict.fromkeys([*c.labels, *labels])))

    def history(self, bundle: Bundle, req: pb.DecideRequest, key: str | None = None) -> tuple[SessionCall, ...]:
        k = _history_key(bundle, req, key)
        if not k or not bundle.reads_session_for(req.tool.name):
            return ()
        return tuple(self.sessions.get(k, ()))

    def _decide(self, bundle: Bundle, req: pb.DecideRequest, at: datetime, decision_id: str, key: str) -> Decision:
        # The procedure in its two halves, as the server runs it: the approvals are looked up (a
        # keyed hash of the call) only for a decision that asks for approval.
        refused = admit(bundle, req)
        if self.kill_switches or bundle.budgets:
            state = self.snapshot(bundle, req, at, approvals=False)
        else:
            state = State(now=at)   # nothing else can be in it: the common replay
        if bundle.reads_session:
            state = state.with_history(self.history(bundle, req, key))
        evaluated = evaluate_call(bundle, req, state, refused)
        binding = ""
        if needs_approvals(req, evaluated):
            binding = binding_hash(req, self.key)
            state = state.with_approvals(self.approvals_for(req, at, binding))
        d = settle(bundle, req, evaluated, state)
        self.last_id = decision_id
        if d.effects is not NO_EFFECTS:
            self.last_id = self.apply(bundle, req, d, at, decision_id, binding)
        return d

    def apply(self, bundle: Bundle, req: pb.DecideRequest, d: Decision, now: datetime, decision_id: str = "",
              binding: str = "") -> str:
        """Apply `d.effects`; returns the id the decision has here (its own, or the pending one it reused)."""
        e = d.effects
        if e.same_as:
            return e.same_as
        self._n += 1
        decision_id = decision_id or f"memory-{self._n:08d}"
        for approval_id in e.expire:
            a = self.by_id.get(approval_id)
            if a is not None:
                a.view = replace(a.view, state="expired")
        if e.reserve:
            held = []
            for b in e.reserve:
                self._counter(b.key, b.scope, b.scope_key)[1] += e.amount
                held.append((b.key, e.amount))
            self.reservations[decision_id] = held
        if e.consume:
            a = self.by_id.get(e.consume)
            if a is not None:
                a.view = replace(a.view, state="consumed")
        if e.open_approval:
            binding = binding or binding_hash(req, self.key)
            view = ApprovalView(approval_id=decision_id, state="pending",
                                expires_at=now + timedelta(seconds=d.approval_ttl_s),
                                deciding_rule=d.deciding_rule, approvers=d.approvers)
            if self.assume == "approved":
                view = replace(view, state="approved", resolved_by="assumed (--assume approved)")
            a = _Approval(view, binding, self.pending_resolutions.pop(decision_id, None))
            self.approvals.setdefault(binding, []).append(a)
            self.by_id[decision_id] = a
        return decision_id

    def seed_approval(self, req: pb.DecideRequest, view: ApprovalView) -> None:
        """An approval that exists for this exact call before it is decided (a `decider test` step's
        `state.approval`); none is added when the call already has one here."""
        binding = binding_hash(req, self.key)
        if self.approvals.get(binding):
            return
        a = _Approval(view, binding)
        self.approvals[binding] = [a]
        self.by_id[view.approval_id] = a

    def resolve(self, approval_id: str, resolution: Resolution) -> None:
        """An approver's resolution of an approval (opened now or later by `approval_id`)."""
        a = self.by_id.get(approval_id)
        if a is None:
            self.pending_resolutions[approval_id] = resolution
        elif a.view.state == "pending":
            a.resolution = resolution

    def settle(self, decision_id: str, actual: float, bundle: Bundle | None = None,
               req: pb.DecideRequest | None = None, now: datetime | None = None) -> None:
        """The call's actual cost replaces what it reserved (as ReportOutcome does); a call that
        reserved nothing is charged on the budgets that applied to it."""
        held = self.reservations.pop(decision_id, None)
        if held is not None:
            for key, amount in held:
                use = self.usage[key]
                use[1] -= amount
                use[0] += actual
            return
        if bundle is not None and req is not None and now is not None:
            for b in applicable_budgets(bundle, identity_of(bundle, req), now):
                self._counter(b.key, b.scope, b.scope_key)[0] += actual

    def set_usage(self, items: Iterable[tuple[str, str, BudgetUsage]]) -> None:
        self.start_usage = {**self.start_usage, **{(s, v): u for s, v, u in items}}


def _history_key(bundle: Bundle, req: pb.DecideRequest, session: str | None) -> str:
    """The call's history key, as the server keys it (Bundle.history_key): the agent id under
    `spec.session.key: agent`, else the given session key or the call's `agent.session_id`."""
    if bundle.session_key == "agent" or session is None:
        return bundle.history_key(req.agent)
    return session
