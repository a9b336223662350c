"""docs/guards.md: the OpenAI Agents SDK with decider's needs_approval + tool input guardrail.

A scripted model stands in for the LLM (no network): it asks for one refund, then repeats what the
tool call returned. With a real model, pass `model="gpt-5"` (or any agents.Model) instead.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from agents import Agent, Model, ModelResponse, RunConfig, Runner, Usage, function_tool
from agents.testing import assistant_message, function_call

from decider.guard import Guard
from decider.guard.openai_agents import AgentsGuard

target, amount = sys.argv[1], float(sys.argv[2])


class OneRefundModel(Model):
    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kw: Any) -> ModelResponse:
        done = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        out = (assistant_message(f"tool result: {done[-1]['output']}") if done else
               function_call("refund", json.dumps({"order": "o-9", "amount": amount}), call_id="c1"))
        return ModelResponse(output=[out], usage=Usage(), response_id=None)

    def stream_response(self, *args: Any, **kw: Any) -> Any:
        raise NotImplementedError


@function_tool
def refund(order: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order}"


async def main() -> None:
    guard = AgentsGuard(Guard(target, agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"},
                              tool_server="mcp://billing", token="agent-token"),
                        names={"refund": "payments.refund"})   # the SDK's tool name → the policies' name
    agent = Agent(name="refunds", model=OneRefundModel(), tools=guard.protect([refund]))
    run = RunConfig(tracing_disabled=True)
    result = await Runner.run(agent, "refund order o-9", run_config=run)
    while result.interruptions:                          # decider said REQUIRE_APPROVAL
        for item in result.interruptions:
            print(f"paused: {item.tool_name} waits for an approver")
        state = await guard.resolve(result, wait=120)     # WatchDecision until approved / rejected
        result = await Runner.run(agent, state, run_config=run)
    print(result.final_output)


asyncio.run(main())
