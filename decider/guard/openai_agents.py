"""decider in front of the OpenAI Agents SDK's function tools.

```python
guard = AgentsGuard(Guard("127.0.0.1:50051", agent={"id": "support-bot", "team": "support"}))
agent = Agent(name="support", tools=guard.protect([refund, get_weather]))
result = await Runner.run(agent, "refund order o-2")
while result.interruptions:                       # decider said REQUIRE_APPROVAL
    state = await guard.resolve(result, wait=300)  # approved / rejected as decider says
    result = await Runner.run(agent, state)
```

Per call:
- `needs_approval` (per tool) asks decider (Decide, with the SDK's call id). REQUIRE_APPROVAL → the
  run is interrupted with the SDK's own approval item.
- the tool input guardrail turns the decision into the SDK's behaviour: ALLOW → the tool runs;
  DENY → `reject_content` with a message naming the reason and the decision id (the model reads it;
  the tool never runs); an approval the SDK resumed → decider is asked again: approved there → the
  identical call is allowed once (its own ALLOW record); anything else → rejected with the state.
- the tool's invoker reports the outcome (ReportOutcome `ok`, or `error` when it raised) and refuses
  to run a call that has no ALLOW (fail closed, e.g. when the guardrail was removed).
- `resolve(result)` waits on decider (WatchDecision) for every interruption it raised and approves or
  rejects it in the run's state; one still pending after `wait` is rejected naming "pending" (or
  left for later with `on_pending="keep"`).

A tool's own exception that the SDK turns into a message for the model (its default
`failure_error_function`) is reported as `ok`: the SDK does not let an invoker see it. Give
`failure_error_function=None` to have such failures reported as `error`.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from agents import FunctionTool, RunContextWrapper, ToolGuardrailFunctionOutput, ToolInputGuardrail
from agents.result import RunResult, RunResultStreaming
from agents.run_state import RunState
from agents.tool_context import ToolContext
from agents.tool_guardrails import ToolInputGuardrailData

from decider.guard.core import DeciderUnavailable, Guard, Verdict

__all__ = ["AgentsGuard"]

# Calls remembered between the SDK's hooks; bounded, since a hook may never come (a run abandoned
# at an interruption, or the pieces used without `protect`).
MAX_REMEMBERED = 10_000


class AgentsGuard:
    """Decisions for the Agents SDK, remembered per tool call id between the SDK's hooks."""

    def __init__(self, guard: Guard, *, names: Mapping[str, str] | None = None) -> None:
        """`names` maps an SDK tool name to the name decider's policies use (`{"refund": "payments.refund"}`);
        tools not listed keep their own name."""
        self.guard = guard
        self.names = dict(names or {})
        self._verdicts: OrderedDict[str, Verdict | DeciderUnavailable] = OrderedDict()  # call id → answer
        self._allowed: OrderedDict[str, str] = OrderedDict()                             # call id → ALLOW id
        self.input_guardrail: ToolInputGuardrail[Any] = ToolInputGuardrail(
            guardrail_function=self._check_input, name="decider")

    # ---- needs_approval ----------------------------------------------------------------------
    def needs_approval(self, tool_name: str) -> Any:
        """The `needs_approval` callable for one tool: True when decider says REQUIRE_APPROVAL."""
        async def needs(_ctx: RunContextWrapper[Any], params: dict[str, Any], call_id: str) -> bool:
            try:
                verdict = await self.guard.adecide(tool_name, params, call_id=call_id)
            except DeciderUnavailable as e:
                _remember(self._verdicts, call_id, e)   # the guardrail refuses it, naming why
                return False
            _remember(self._verdicts, call_id, verdict)
            return verdict.outcome == "REQUIRE_APPROVAL"
        return needs

    # ---- the tool input guardrail ------------------------------------------------------------
    async def _check_input(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        ctx = data.context
        call_id, name = ctx.tool_call_id, self.names.get(ctx.tool_name, ctx.tool_name)
        try:
            args = json.loads(ctx.tool_arguments or "{}")
        except json.JSONDecodeError as e:
            return ToolGuardrailFunctionOutput.reject_content(f"decider: arguments of {name} are not JSON: {e}")
        known = self._verdicts.pop(call_id, None)
        try:
            if isinstance(known, DeciderUnavailable):
                raise known
            verdict = known if known is not None else await self.guard.adecide(name, args, call_id=call_id)
            if verdict.outcome == "REQUIRE_APPROVAL":
                # Here after the SDK resumed the call (or without needs_approval): decider decides.
                verdict = await self.guard.aresume(verdict, args, call_id=call_id, wait=self.guard.approval_wait)
        except DeciderUnavailable as e:
            return ToolGuardrailFunctionOutput.reject_content(str(e), output_info={"decision_id": ""})
        info = {"decision_id": verdict.decision_id, "outcome": verdict.outcome}
        if not verdict.allowed:
            return ToolGuardrailFunctionOutput.reject_content(verdict.refusal(), output_info=info)
        _remember(self._allowed, call_id, verdict.decision_id)
        return ToolGuardrailFunctionOutput.allow(output_info=info)

    # ---- tools -------------------------------------------------------------------------------
    def protect(self, tools: Sequence[FunctionTool] | FunctionTool) -> Any:
        """Guarded copies of function tools (the originals are left as they were)."""
        if isinstance(tools, FunctionTool):
            return self._protect(tools)
        return [self._protect(t) for t in tools]

    def _protect(self, tool: FunctionTool) -> FunctionTool:
        guarded = copy.copy(tool)
        guarded.needs_approval = self.needs_approval(self.names.get(tool.name, tool.name))
        guarded.tool_input_guardrails = [*(tool.tool_input_guardrails or []), self.input_guardrail]
        inner = guarded.on_invoke_tool

        async def invoke(ctx: ToolContext[Any], input_json: str) -> Any:
            decision_id = self._allowed.pop(ctx.tool_call_id, None)
            if decision_id is None:
                return f"decider: {tool.name} has no ALLOW decision for call {ctx.tool_call_id}; not run"
            try:
                out = await inner(ctx, input_json)
            except BaseException:
                await self.guard.areport(decision_id, "error")
                raise
            await self.guard.areport(decision_id, "ok", result=out)
            return out
        guarded.on_invoke_tool = invoke
        return guarded

    # ---- interruptions -------------------------------------------------------------------------
    async def resolve(self, result: RunResult | RunResultStreaming, *, wait: float | None = None,
                      on_pending: Literal["reject", "keep"] = "reject") -> RunState[Any]:
        """The run's state with every interruption approved or rejected as decider says, waiting up
        to `wait` seconds (default: the Guard's approval_wait) for approvers."""
        state = result.to_state()
        limit = self.guard.approval_wait if wait is None else wait

        async def settle(item: Any) -> None:
            raw = item.raw_item
            call_id = raw.get("call_id") if isinstance(raw, dict) else getattr(raw, "call_id", "")
            known = self._verdicts.get(call_id)
            if not isinstance(known, Verdict):
                # Not asked in this process (e.g. a state loaded from disk): the identical call while
                # pending is the same decision, so asking again finds it.
                args_text = raw.get("arguments") if isinstance(raw, dict) else getattr(raw, "arguments", "{}")
                name = self.names.get(item.tool_name or "", item.tool_name or "")
                known = await self.guard.adecide(name, json.loads(args_text or "{}"),
                                                 call_id=call_id)
                _remember(self._verdicts, call_id, known)
            if known.outcome != "REQUIRE_APPROVAL":
                state.approve(item)   # the guardrail applies the decision when the run goes on
                return
            current = await asyncio.to_thread(self.guard.approval_state, known.decision_id, limit)
            if current.state in ("approved", "consumed"):
                state.approve(item)
            elif current.state != "pending" or on_pending == "reject":
                state.reject(item, rejection_message=known.with_approval(current).refusal())
                self._verdicts.pop(call_id, None)

        await asyncio.gather(*(settle(item) for item in result.interruptions))
        return state


def _remember(memory: OrderedDict[str, Any], call_id: str, value: Any) -> None:
    memory[call_id] = value
    memory.move_to_end(call_id)
    while len(memory) > MAX_REMEMBERED:
        memory.popitem(last=False)
