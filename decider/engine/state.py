"""The server-side state a decision reads: kill switches and budget usage.

The engine takes a `State` value; the store builds it (issue: approvals, budgets, kill switches).
Replay and tests pass one built by hand. Keeping it a plain value keeps `decide` pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from decider.v1 import decider_pb2 as pb

__all__ = ["KILL_SCOPES", "KillSwitch", "BudgetUsage", "State", "EMPTY_STATE", "kill_scope_value"]

KILL_SCOPES = (
    "instance", "session", "workflow", "agent", "owner", "team", "tool", "model", "server", "platform",
)


def kill_scope_value(scope: str, agent: pb.Agent, tool: pb.ToolCall) -> str:
    """The request's value for a kill-switch scope ("" when the request has none)."""
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
        if self.scope == "platform":
            return True
        actual = kill_scope_value(self.scope, agent, tool)
        return actual != "" and actual == self.value


@dataclass(frozen=True, slots=True)
class BudgetUsage:
    spent: float = 0.0
    reserved: float = 0.0


@dataclass(frozen=True, slots=True)
class State:
    kill_switches: tuple[KillSwitch, ...] = ()
    # Usage of each budget scope *for this request's scope key* (e.g. this agent's team).
    budget_usage: Mapping[str, BudgetUsage] = field(default_factory=lambda: MappingProxyType({}))


EMPTY_STATE = State()
