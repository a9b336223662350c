"""Budgets, decided: which budgets apply to a request, what CEL sees of them, and whether a cost fits.

A budget applies when the bundle declares it and the request carries a value for its scope
(`agent` → agent.id, `team` → agent.team, `workflow`, `session` → agent.session_id, `owner`).
Windows are fixed and aligned to the Unix epoch (1h, 1d, 30d); `total` never resets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from decider.bundle.compile import Bundle
from decider.engine.state import BudgetUsage, State, kill_scope_value
from decider.v1 import decider_pb2 as pb

__all__ = ["WINDOW_SECONDS", "EPSILON", "BudgetKey", "window_start", "applicable_budgets", "budget_views",
           "exceeded_text", "first_exceeded"]

WINDOW_SECONDS = {"1h": 3600, "1d": 86400, "30d": 30 * 86400, "total": 0}
# Float costs: tolerate rounding so that ten reservations of 0.1 fit a limit of 1.0.
EPSILON = 1e-9
_NO_TOOL = pb.ToolCall()


@dataclass(frozen=True, slots=True, order=True)
class BudgetKey:
    """One budget counter: a scope's value in one window (`key` is its primary key in the store)."""

    key: str
    scope: str
    scope_key: str
    window: str
    window_start: int
    limit: float


def window_start(window: str, now: datetime) -> int:
    size = WINDOW_SECONDS[window]
    if size == 0:
        return 0
    return int(math.floor(now.timestamp() / size)) * size


def applicable_budgets(bundle: Bundle, agent: pb.Agent, now: datetime) -> list[BudgetKey]:
    out = []
    for b in bundle.budgets:
        # Budget scopes are a subset of kill-switch scopes and read the same request fields.
        value = kill_scope_value(b.scope, agent, _NO_TOOL)
        if not value:
            continue
        start = window_start(b.window, now)
        out.append(BudgetKey(f"{b.scope}|{b.window}|{start}|{value}", b.scope, value, b.window, start, float(b.limit)))
    return out


def budget_views(bundle: Bundle, state: State) -> dict[str, dict[str, float]]:
    """`budget.<scope>.{limit, spent, reserved, remaining}` for every budget the bundle declares."""
    views: dict[str, dict[str, float]] = {}
    for b in bundle.budgets:
        use = state.budget_usage.get(b.scope) or BudgetUsage()
        views[b.scope] = {
            "limit": float(b.limit),
            "spent": float(use.spent),
            "reserved": float(use.reserved),
            "remaining": float(b.limit - use.spent - use.reserved),
        }
    return views


def first_exceeded(budgets: list[BudgetKey], usage: Mapping[str, BudgetUsage],
                   cost: float) -> tuple[BudgetKey, BudgetUsage] | None:
    """The first budget (in key order, as the store reserves) without room for `cost`, else None.
    A call with no cost still needs a budget that is not already spent (SPEC §11: a spent budget
    denies every call it applies to, estimate or not)."""
    get = usage.get
    for b in sorted(budgets):
        use = get(b.scope) or BudgetUsage()
        need = use.spent + use.reserved + cost
        if need > b.limit + EPSILON or (cost <= 0 and need >= b.limit - EPSILON):
            return b, use
    return None


def exceeded_text(b: BudgetKey, spent: float, reserved: float, cost: float) -> str:
    window = "total" if b.window == "total" else f"{b.window} window"
    return (f"budget exceeded: {b.scope} {b.scope_key!r} ({window}) limit {b.limit:g}, spent {spent:g}, "
            f"reserved {reserved:g}, this call {cost:g}")
