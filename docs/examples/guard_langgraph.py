"""docs/guards.md: a LangGraph agent whose tools are guarded; approvals pause the graph (interrupt).

A scripted chat model stands in for the LLM (no network): it asks for one refund, then repeats the
tool's answer. With a real model, use any chat model with bind_tools.
"""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command

from decider.guard import Guard
from decider.guard.langgraph import guard_tools

target, amount = sys.argv[1], float(sys.argv[2])


class OneRefundModel(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "one-refund"

    def bind_tools(self, tools: Any, **kw: Any) -> Any:
        return self

    def _generate(self, messages: Any, stop: Any = None, run_manager: Any = None, **kw: Any) -> ChatResult:
        if isinstance(messages[-1], ToolMessage):
            reply = AIMessage(content=f"tool result: {messages[-1].content}")
        else:
            reply = AIMessage(content="", tool_calls=[{"name": "refund", "id": "c1",
                                                       "args": {"order": "o-7", "amount": amount}}])
        return ChatResult(generations=[ChatGeneration(message=reply)])


@tool
def refund(order: str, amount: float) -> str:
    """Refund an order."""
    return f"refunded {amount} on {order}"


guard = Guard(target, agent={"id": "refund-bot", "team": "finance", "model": "gpt-5"},
              tool_server="mcp://billing", token="agent-token")
tools = guard_tools([refund], guard, names={"refund": "payments.refund"})   # the policies' name
model = OneRefundModel().bind_tools(tools)
g = StateGraph(MessagesState)
g.add_node("agent", lambda state: {"messages": [model.invoke(state["messages"])]})
g.add_node("tools", ToolNode(tools))
g.add_edge(START, "agent")
g.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
g.add_edge("tools", "agent")
graph = g.compile(checkpointer=InMemorySaver())
config: Any = {"configurable": {"thread_id": "t-1"}}

out = graph.invoke({"messages": [("user", "refund o-7")]}, config)
while "__interrupt__" in out:
    request = out["__interrupt__"][0].value
    print("paused:", request)
    input(f"approve it (decider approve {request['decision_id']}), then press Enter ")
    out = graph.invoke(Command(resume=request), config)
print(out["messages"][-1].content)
