"""docs/guards.md: @guard on a plain function, against `decider serve --bundle policies` (see there)."""

from __future__ import annotations

import sys

from decider.guard import ApprovalPending, Guard, ToolDenied, guard

target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
bot = Guard(target, agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"},
            tool_server="mcp://billing", token="agent-token")


@guard(tool="payments.refund", client=bot, cost=5.0)
def refund(order: str, amount: float) -> str:
    return f"refunded {amount} on {order}"


print(refund("o-1", 120))                 # ALLOW: runs, then ReportOutcome(ok)
try:
    refund("o-2", 2500)                   # REQUIRE_APPROVAL: not run
except ApprovalPending as e:
    print(f"{type(e).__name__}: {e}")

old = Guard(target, agent={"id": "refund-bot", "team": "finance", "model": "gpt-3.5"}, token="agent-token")
try:
    guard(tool="payments.refund", client=old)(lambda order, amount: "never runs")("o-3", 50)
except ToolDenied as e:                   # DENY: not run
    print(f"{type(e).__name__}: {e}")
