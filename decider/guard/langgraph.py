"""decider in front of LangChain tools, with approvals through LangGraph's `interrupt`.

```python
guard = Guard("127.0.0.1:50051", agent={"id": "support-bot", "team": "support"})
tools = guard_tools([refund, get_weather], guard)
graph = create_react_agent(model, tools, checkpointer=InMemorySaver())
out = graph.invoke({"messages": [("user", "refund o-2")]}, config)
for intr in out.get("__interrupt__", ()):         # decider said REQUIRE_APPROVAL
    ...                                            # an approver runs `decider approve <decision_id>`
out = graph.invoke(Command(resume=intr.value), config)
```

Per call of a guarded tool:
- ALLOW → the tool runs, then ReportOutcome (`ok`, or `error` when it raised).
- DENY → the tool does not run; the tool's result is a refusal naming the reason and the decision id
  (or `ToolDenied` is raised with `on_refusal="raise"`).
- REQUIRE_APPROVAL → `interrupt({"type": "decider_approval", "decision_id": ..., "tool": ..., "args": ...,
  "reason": ..., "approvers": [...]})`: the graph pauses (a checkpointer is required). On resume
  LangGraph runs the tool again from the start; asking decider again for the identical call gives
  the same pending decision (no second approval request), or, once approved, an ALLOW that consumes
  the approval: the call runs exactly once. Still pending after up to the Guard's `approval_wait` →
  the graph pauses again; rejected or expired → a refusal naming the state and the decision id.
  Resume with the interrupt's own value (or any mapping holding its `decision_id`), so a resume
  after a rejection reports that rejection rather than a fresh request for the same call.
- decider unreachable → a refusal (the tool never runs): fail closed.
- invoked outside a LangGraph run (`tool.invoke(...)`), REQUIRE_APPROVAL cannot pause anything: the
  tool waits up to the Guard's `approval_wait`, then runs (approved) or refuses naming the state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.tools import BaseTool, StructuredTool
from langgraph.types import interrupt

from decider.client import renamed_server
from decider.guard.core import ApprovalStatus, DeciderUnavailable, Guard, GuardError, Verdict, jsonable

__all__ = ["guard_tool", "guard_tools", "approval_request"]

Refusal = Literal["return", "raise"]
_OUTSIDE = object()   # `interrupt` called outside a LangGraph run: there is nothing to pause


def _pause(verdict: Verdict, args: Mapping[str, Any]) -> Any:
    """LangGraph's `interrupt` for this approval: pauses the run (raises), or on resume returns the
    resume value. A tool invoked outside a graph has no run to pause (LangGraph raises KeyError for
    its missing scratchpad): the approval is then only waited for, up to the Guard's approval_wait."""
    try:
        return interrupt(approval_request(verdict, args))
    except KeyError:
        return _OUTSIDE


def approval_request(verdict: Verdict, args: Mapping[str, Any]) -> dict[str, Any]:
    """The value of the interrupt raised for a REQUIRE_APPROVAL decision."""
    return {"type": "decider_approval", "decision_id": verdict.decision_id, "tool": verdict.tool,
            "args": jsonable(dict(args)), "reason": verdict.reason, "approvers": list(verdict.approvers)}


def _asked_about(answer: Any, current: Verdict) -> Verdict:
    """The decision a resume value refers to: its `decision_id`, else the current one."""
    if isinstance(answer, Mapping) and isinstance(answer.get("decision_id"), str) and answer["decision_id"]:
        if answer["decision_id"] != current.decision_id:
            return current.with_approval(ApprovalStatus("pending"), answer["decision_id"])
    return current


def guard_tool(tool: BaseTool, guard: Guard, *, on_refusal: Refusal = "return", tool_server: str | None = None,
               name: str | None = None, server: str | None = None) -> BaseTool:
    """A tool with the same name, description and arguments that runs `tool` only on ALLOW. `name` is
    the tool's name for decider's policies (default: the tool's own name)."""
    tool_server = renamed_server(tool_server, server, "guard_tool")
    name = name or tool.name

    def refuse(text: str, decision_id: str) -> str:
        if on_refusal == "raise":
            raise GuardError(text, decision_id)
        return text

    def run(**kwargs: Any) -> Any:
        try:
            verdict = guard.decide(name, kwargs, tool_server=tool_server)
            while verdict.outcome == "REQUIRE_APPROVAL":
                answer = _pause(verdict, kwargs)
                verdict = guard.resume(_asked_about(answer, verdict), kwargs, wait=guard.approval_wait,
                                       tool_server=tool_server)
                if verdict.outcome == "REQUIRE_APPROVAL" and (verdict.approval_state != "pending"
                                                             or answer is _OUTSIDE):
                    return refuse(verdict.refusal(), verdict.decision_id)
        except DeciderUnavailable as e:
            return refuse(str(e), e.decision_id)
        if not verdict.allowed:
            return refuse(verdict.refusal(), verdict.decision_id)
        try:
            out = tool.invoke(kwargs)
        except BaseException:
            guard.report(verdict.decision_id, "error")
            raise
        guard.report(verdict.decision_id, "ok", result=out)
        return out

    async def arun(**kwargs: Any) -> Any:
        try:
            verdict = await guard.adecide(name, kwargs, tool_server=tool_server)
            while verdict.outcome == "REQUIRE_APPROVAL":
                answer = _pause(verdict, kwargs)
                verdict = await guard.aresume(_asked_about(answer, verdict), kwargs, wait=guard.approval_wait,
                                              tool_server=tool_server)
                if verdict.outcome == "REQUIRE_APPROVAL" and (verdict.approval_state != "pending"
                                                             or answer is _OUTSIDE):
                    return refuse(verdict.refusal(), verdict.decision_id)
        except DeciderUnavailable as e:
            return refuse(str(e), e.decision_id)
        if not verdict.allowed:
            return refuse(verdict.refusal(), verdict.decision_id)
        try:
            out = await tool.ainvoke(kwargs)
        except BaseException:
            await guard.areport(verdict.decision_id, "error")
            raise
        await guard.areport(verdict.decision_id, "ok", result=out)
        return out

    return StructuredTool.from_function(func=run, coroutine=arun, name=tool.name, description=tool.description,
                                        args_schema=tool.args_schema, return_direct=tool.return_direct,
                                        infer_schema=False)


def guard_tools(tools: Sequence[BaseTool], guard: Guard, *, on_refusal: Refusal = "return",
                tool_server: str | None = None, names: Mapping[str, str] | None = None,
                server: str | None = None) -> list[BaseTool]:
    """`guard_tool` for each; `names` maps a tool's own name to its name for decider's policies."""
    names = names or {}
    tool_server = renamed_server(tool_server, server, "guard_tools")
    return [guard_tool(t, guard, on_refusal=on_refusal, tool_server=tool_server, name=names.get(t.name))
            for t in tools]
