"""The stateful half of a decision: approvals and budgets, settled against the state snapshot.

`settle(bundle, request, decision, state)` takes the rules' decision (engine/rules.py) and returns
the final one with the effects to apply. Pure: the server applies the effects in its store, `decider
test` and `replay` in memory, the shadow evaluation not at all. The rules, in order:

- DENY (a rule, a kill switch, a condition error) stays DENY; no effects.
- `dry_run`: the rules' decision, no effects (evaluate and record, change no state).
- ALLOW with `estimated_cost` > 0: the cost must fit every applicable budget (spent + reserved +
  cost <= limit), else DENY `budget_exceeded` naming the budget; if it fits, reserve it on all.
  ALLOW without a cost: DENY `budget_exceeded` when an applicable budget is already spent
  (spent + reserved >= limit); nothing is reserved.
- REQUIRE_APPROVAL, looking at the approvals bound to this exact call (agent id, owner, team,
  workflow, environment, tool, server, arguments), oldest first:
  - pending and not yet expired: the answer is that decision (`same_as`), nothing is recorded;
  - pending but past its ttl: expire it and look on;
  - approved: ALLOW `approved` (the asking rule stays the deciding rule), once: consume it, and
    reserve the cost like any allow (a call that does not fit is denied and the approval stays);
  - rejected, until the approval's ttl has passed: DENY `rejected` with the approver's comment;
  - otherwise open a new pending approval (the rule's approvers and ttl).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from decider.bundle.compile import Bundle, Reason
from decider.engine.budgets import BudgetKey, applicable_budgets, exceeded_text, first_exceeded
from decider.engine.decision import NO_EFFECTS, Decision, Effects
from decider.engine.state import ApprovalView, State
from decider.v1 import decider_pb2 as pb

__all__ = ["settle", "needs_approvals", "deny", "budget_denial", "approved_text",
           "rejected_text"]

_OPEN = Effects(open_approval=True)


def needs_approvals(request: pb.DecideRequest, decision: Decision) -> bool:
    """Does settling this decision read the call's approvals? (The server reads them only then.)"""
    return decision.outcome == pb.REQUIRE_APPROVAL and not request.dry_run


def deny(decision: Decision, rule_id: str, text: str, **changes: object) -> Decision:
    """The decision turned into a built-in DENY (`budget_exceeded`, `rejected`, `error`)."""
    return replace(decision, outcome=pb.DENY, reasons=(Reason(rule_id, text, "", "deny"),), deciding_rule=rule_id,
                   approvers=(), approval_ttl_s=0, effects=NO_EFFECTS, **changes)  # type: ignore[arg-type]


def budget_denial(decision: Decision, budget: BudgetKey, spent: float, reserved: float, cost: float) -> Decision:
    return deny(decision, "budget_exceeded", exceeded_text(budget, spent, reserved, cost))


def approved_text(ap: ApprovalView) -> str:
    return f"approved by {ap.resolved_by} in decision {ap.approval_id}" + (f": {ap.comment}" if ap.comment else "")


def rejected_text(ap: ApprovalView) -> str:
    who = ap.resolved_by or "an approver"
    return (f"rejected by {who} in decision {ap.approval_id}" + (f": {ap.comment}" if ap.comment else "")
            + f" (binding until {ap.expires_at.isoformat()})")


def _with_budget(bundle: Bundle, request: pb.DecideRequest, decision: Decision, state: State,
                 now: datetime, effects: Effects = NO_EFFECTS) -> Decision:
    cost = request.request.estimated_cost
    if not bundle.budgets:
        return decision.with_effects(effects) if effects is not NO_EFFECTS else decision
    budgets = applicable_budgets(bundle, decision.agent or request.agent, now)   # the merged identity
    if not budgets:
        return decision.with_effects(effects) if effects is not NO_EFFECTS else decision
    hit = first_exceeded(budgets, state.budget_usage, cost)
    if hit is not None:
        b, use = hit
        return budget_denial(decision, b, use.spent, use.reserved, cost)
    if cost <= 0:   # nothing to hold: a call without cost only needs a budget not yet spent
        return decision.with_effects(effects) if effects is not NO_EFFECTS else decision
    return decision.with_effects(replace(effects, reserve=tuple(sorted(budgets)), amount=cost))


def settle(bundle: Bundle, request: pb.DecideRequest, decision: Decision, state: State) -> Decision:
    if decision.outcome == pb.DENY or request.dry_run:
        return decision
    now = state.at(request)
    if decision.outcome == pb.ALLOW:
        return _with_budget(bundle, request, decision, state, now)
    expired: list[str] = []
    for ap in state.approvals or ():
        if ap.state == "pending":
            if ap.expires_at > now:
                return replace(decision, approval=ap, approvers=ap.approvers,
                               effects=Effects(same_as=ap.approval_id, expire=tuple(expired)))
            expired.append(ap.approval_id)   # past its ttl: it can no longer be approved
            continue
        if ap.state == "approved":
            allowed = replace(decision, outcome=pb.ALLOW, deciding_rule=ap.deciding_rule or decision.deciding_rule,
                              approvers=(), approval_ttl_s=0, approval=ap,
                              reasons=(Reason("approved", approved_text(ap), "", "allow"),))
            out = _with_budget(bundle, request, allowed, state, now,
                               Effects(consume=ap.approval_id, expire=tuple(expired)))
            return out   # a budget denial keeps the approval for a call that fits
        if ap.state == "rejected" and ap.expires_at > now:
            return deny(decision, "rejected", rejected_text(ap), approval=ap)
    return decision.with_effects(Effects(open_approval=True, expire=tuple(expired)) if expired else _OPEN)
