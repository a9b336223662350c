"""The state snapshot a decision reads: kill switches, budget usage, the approvals of this exact
call, and the time. A plain immutable value, so `decide` stays pure.

The server builds it from its store (kill switches from memory, budget usage only when a budget can
matter, approvals only for a decision that needs them); `decider test` from a case's `state:`;
`replay` from its in-memory simulation (engine/memory.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import MappingProxyType

from decider.v1 import decider_pb2 as pb
from decider.values.agent_ids import match_key

__all__ = ["KILL_SCOPES", "KillSwitch", "BudgetUsage", "ApprovalView", "State", "EMPTY_STATE",
           "kill_scope_value", "APPROVAL_STATES", "SessionCall"]

# The one list of kill-switch scopes (CLI choices, Control RPC validation, test suites, replay).
KILL_SCOPES = (
    "instance", "session", "workflow", "agent", "owner", "team", "tool", "model", "server", "platform",
)
APPROVAL_STATES = ("pending", "approved", "rejected", "expired", "consumed")


def kill_scope_value(scope: str, agent: pb.Agent, tool: pb.ToolCall) -> str:
    """The request's value for a kill-switch (or budget) scope ("" when the request has none)."""
    if scope == "instance":
        return agent.instance_id
    if scope == "session":
        return agent.session_id
    if scope == "workflow":
        return agent.workflow
    if scope == "agent":
        return agent.id
    if scope == "owner":
        return agent.owner
    if scope == "team":
        return agent.team
    if scope == "tool":
        return tool.name
    if scope == "model":
        return agent.model
    if scope == "server":
        return tool.server
    return "*"  # platform: every request


@dataclass(frozen=True, slots=True)
class KillSwitch:
    id: str
    scope: str
    value: str
    reason: str = ""

    def hits(self, agent: pb.Agent, tool: pb.ToolCall) -> bool:
        """Whether the switch covers this call. Values compare in `match_key` form (case-folded,
        NFKC, trimmed): a switch on `killme` stops `KILLME`, `" killme"` and full-width `ｋｉｌｌｍｅ`
        too (issue 24 item 13). Wider is the safe direction for a kill switch."""
        if self.scope == "platform":
            return True
        actual = kill_scope_value(self.scope, agent, tool)
        if actual == "":
            return False
        return actual == self.value or match_key(actual) == match_key(self.value)


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    spent: float = 0.0
    reserved: float = 0.0


@dataclass(frozen=True, slots=True)
class ApprovalView:
    """An approval bound to exactly this call (same binding hash), as the store holds it."""

    approval_id: str                   # the decision id of the REQUIRE_APPROVAL decision that opened it
    state: str                         # pending | approved | rejected | expired | consumed
    expires_at: datetime               # opened + approval_ttl: a pending one expires, a rejection stops binding
    deciding_rule: str = ""            # the rule that asked for approval
    approvers: tuple[str, ...] = ()
    resolved_by: str = ""
    comment: str = ""


@dataclass(frozen=True, slots=True)
class SessionCall:
    """One earlier call of the session, as conditions see it in `session.calls` (SPEC §10)."""

    tool: str
    server: str
    args: Mapping[str, object]          # as recorded: masked per the bundle
    outcome: str                        # ALLOW | DENY | REQUIRE_APPROVAL
    at: datetime
    labels: tuple[str, ...] = ()
    status: str = ""                    # from ReportOutcome ("" until reported)
    decision_id: str = ""


@dataclass(frozen=True, slots=True)
class State:
    kill_switches: tuple[KillSwitch, ...] = ()
    # Usage of each budget scope *for this request's scope key* (e.g. this agent's team), in the
    # window `now` falls in.
    budget_usage: Mapping[str, BudgetUsage] = field(default_factory=lambda: MappingProxyType({}))
    # Approvals bound to this exact call, oldest first. None: not read (the server reads them only
    # for a decision that needs them; see engine/controls.py `needs_approvals`).
    approvals: tuple[ApprovalView, ...] | None = None
    now: datetime | None = None        # None: the request's time (else the epoch)
    # Session history: the calls this session made before, oldest first (read only when a policy
    # reads `session`; the engine bounds it by the bundle's `spec.session`).
    history: tuple[SessionCall, ...] = ()

    def with_approvals(self, approvals: tuple[ApprovalView, ...]) -> State:
        return State(self.kill_switches, self.budget_usage, approvals, self.now, self.history)

    def with_history(self, history: tuple[SessionCall, ...]) -> State:
        return State(self.kill_switches, self.budget_usage, self.approvals, self.now, history)

    def at(self, req: pb.DecideRequest) -> datetime:
        """The decision's 'now': the snapshot's, else the request's time."""
        if self.now is not None:
            return self.now
        return req.request.time.ToDatetime(tzinfo=timezone.utc)


EMPTY_STATE = State()
