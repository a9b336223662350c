"""Budgets on the request path: which budgets apply to a request, what CEL sees, and reservations.

A budget applies when the bundle declares it and the request carries a value for its scope
(`agent` → agent.id, `team` → agent.team, `workflow`, `session` → agent.session_id, `owner`).
Windows are fixed and aligned to the Unix epoch (1h, 1d, 30d); `total` never resets.
"""

from __future__ import annotations

import math
from datetime import datetime

from decider.bundle.compile import Bundle
from decider.engine.state import BudgetUsage, kill_scope_value
from decider.store.budgets import BudgetKey, Exceeded
from decider.v1 import decider_pb2 as pb

__all__ = ["WINDOW_SECONDS", "window_start", "applicable_budgets", "usage_by_scope", "exceeded_text",
           "mentions_budget"]

WINDOW_SECONDS = {"1h": 3600, "1d": 86400, "30d": 30 * 86400, "total": 0}


def window_start(window: str, now: datetime) -> int:
    size = WINDOW_SECONDS[window]
    if size == 0:
        return 0
    return int(math.floor(now.timestamp() / size)) * size


def applicable_budgets(bundle: Bundle, agent: pb.Agent, now: datetime) -> list[BudgetKey]:
    out = []
    for b in bundle.budgets:
        # Budget scopes are a subset of kill-switch scopes and read the same request fields.
        value = kill_scope_value(b.scope, agent, pb.ToolCall())
        if not value:
            continue
        start = window_start(b.window, now)
        out.append(BudgetKey(f"{b.scope}|{b.window}|{start}|{value}", b.scope, value, b.window, start, float(b.limit)))
    return out


def usage_by_scope(budgets: list[BudgetKey], usage: dict[str, tuple[float, float]]) -> dict[str, BudgetUsage]:
    return {b.scope: BudgetUsage(*usage.get(b.key, (0.0, 0.0))) for b in budgets}


def exceeded_text(ex: Exceeded, cost: float) -> str:
    b = ex.budget
    window = "total" if b.window == "total" else f"{b.window} window"
    return (f"budget exceeded: {b.scope} {b.scope_key!r} ({window}) limit {b.limit:g}, spent {ex.spent:g}, "
            f"reserved {ex.reserved:g}, this call {cost:g}")


_MENTIONS: dict[tuple[str, str], bool] = {}


def mentions_budget(bundle: Bundle, tool_name: str) -> bool:
    """Does any rule that can apply to this tool read `budget`? Memoised per bundle revision."""
    key = (bundle.revision, tool_name)
    hit = _MENTIONS.get(key)
    if hit is None:
        hit = any("budget" in r.when for p in bundle.candidates(tool_name) for r in p.rules)
        if len(_MENTIONS) < 8192:
            _MENTIONS[key] = hit
    return hit
