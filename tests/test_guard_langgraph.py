"""decider.guard for LangChain / LangGraph: a real LangGraph agent loop (model node ⇄ ToolNode, with
a checkpointer) driven by a scripted chat model, against a real decider server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import json_format
from langchain_core.messages import AIMessage
from langchain_core.tools import BaseTool, tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition
from langgraph.types import Command

from decider.client import DeciderClient
from decider.guard import Guard
from decider.guard.langgraph import guard_tools
from decider.v1 import decider_pb2 as pb

from .guarded import AGENT, decision_ids, pending_approvals, write_bundle, write_tokens
from .helpers import ROOT, ServerProcess, start_server
from .scripted_models import ScriptedChatModel


@pytest.fixture(scope="module")
def decider_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("langgraph")
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)))
    try:
        yield srv
    finally:
        srv.stop()


class Agent:
    """model ⇄ tools, the ReAct loop, compiled with a checkpointer so it can pause and resume."""

    def __init__(self, srv: ServerProcess, tool_name: str, args: dict[str, Any], *, target: str | None = None,
                 approval_wait: float = 0.0) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []
        self.model = ScriptedChatModel(tool=tool_name, arguments=args)

        @tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            self.ran.append(("get_weather", {"city": city}))
            return f"sunny in {city}"

        @tool
        def delete_repo(repo: str) -> str:
            """Delete a repository."""
            self.ran.append(("delete_repo", {"repo": repo}))
            return f"deleted {repo}"

        @tool
        def refund(order: str, amount: float) -> str:
            """Refund an order."""
            self.ran.append(("refund", {"order": order, "amount": amount}))
            return f"refunded {amount} on {order}"

        guard = Guard(target or srv.target, agent=AGENT, server="python://support", token="gw-token",
                      approval_wait=approval_wait)
        tools: list[BaseTool] = guard_tools([get_weather, delete_repo, refund], guard)
        model = self.model.bind_tools(tools)

        def call_model(state: MessagesState) -> dict[str, list[AIMessage]]:
            return {"messages": [model.invoke(state["messages"])]}

        g = StateGraph(MessagesState)
        g.add_node("agent", call_model)
        g.add_node("tools", ToolNode(tools))
        g.add_edge(START, "agent")
        g.add_conditional_edges("agent", tools_condition, {"tools": "tools", END: END})
        g.add_edge("tools", "agent")
        self.graph = g.compile(checkpointer=InMemorySaver())
        self.config: Any = {"configurable": {"thread_id": str(uuid.uuid4())}}

    def run(self, text: str) -> dict[str, Any]:
        return self.graph.invoke({"messages": [("user", text)]}, self.config)

    def resume(self, value: Any) -> dict[str, Any]:
        return self.graph.invoke(Command(resume=value), self.config)


def record(srv: ServerProcess, decision_id: str) -> pb.DecisionRecord:
    with DeciderClient(srv.target, token="gw-token") as c:
        return c.get_decision(decision_id)


def approve(srv: ServerProcess, decision_id: str) -> None:
    subprocess.run([sys.executable, "-m", "decider", "approve", decision_id, "--server", srv.target,
                    "--token", "carol-token"], check=True, capture_output=True, timeout=60, cwd=ROOT)


def test_allowed_call_runs_and_is_reported(decider_server: ServerProcess) -> None:
    agent = Agent(decider_server, "get_weather", {"city": "Oslo"})
    out = agent.run("weather in Oslo?")
    assert agent.ran == [("get_weather", {"city": "Oslo"})]
    assert agent.model.seen == ["sunny in Oslo"]
    assert out["messages"][-1].content == "the tool said: sunny in Oslo"
    rec = record(decider_server, decision_ids(decider_server.db_url, "get_weather", "ALLOW")[-1])
    assert (rec.tool_server, rec.agent.id, rec.outcome_status) == ("python://support", "support-bot", "ok")
    assert json_format.MessageToDict(rec.args) == {"city": "Oslo"}


def test_async_graph_runs_an_allowed_call(decider_server: ServerProcess) -> None:
    agent = Agent(decider_server, "get_weather", {"city": "Rome"})
    asyncio.run(agent.graph.ainvoke({"messages": [("user", "weather in Rome?")]}, agent.config))
    assert agent.ran == [("get_weather", {"city": "Rome"})]
    assert agent.model.seen == ["sunny in Rome"]


def test_denied_call_never_runs_and_the_model_reads_the_refusal(decider_server: ServerProcess) -> None:
    agent = Agent(decider_server, "delete_repo", {"repo": "core"})
    agent.run("delete core")
    assert agent.ran == []
    decision_id = decision_ids(decider_server.db_url, "delete_repo", "DENY")[-1]
    assert agent.model.seen == [f"decider denied delete_repo: Agents never delete repositories [no-repo-deletes] "
                                f"(decision {decision_id})"]


def test_approval_interrupts_the_graph_and_resumes_after_decider_approve(decider_server: ServerProcess) -> None:
    agent = Agent(decider_server, "refund", {"order": "o-2", "amount": 500})
    out = agent.run("refund o-2")
    (intr,) = out["__interrupt__"]
    assert intr.value["type"] == "decider_approval" and intr.value["tool"] == "refund"
    assert intr.value["args"] == {"order": "o-2", "amount": 500.0}
    assert intr.value["approvers"] == ["user:carol"]
    decision_id = intr.value["decision_id"]
    assert agent.ran == []

    # Resumed before anyone approved: the graph pauses again on the same decision, and LangGraph's
    # re-run of the tool made no second approval request.
    again = agent.resume(intr.value)
    assert again["__interrupt__"][0].value["decision_id"] == decision_id
    with DeciderClient(decider_server.target, token="carol-token") as carol:
        assert [r.decision_id for r in pending_approvals(carol, "refund")
                if r.args["order"] == "o-2"] == [decision_id]
    assert agent.ran == []

    approve(decider_server, decision_id)
    done = agent.resume(again["__interrupt__"][0].value)
    assert "__interrupt__" not in done
    assert agent.ran == [("refund", {"order": "o-2", "amount": 500.0})]   # exactly once
    assert agent.model.seen == ["refunded 500.0 on o-2"]
    pending = record(decider_server, decision_id)
    assert pending.approval.state == pb.APPROVAL_CONSUMED and pending.approval.resolved_by == "user:carol"
    allowed = record(decider_server, decision_ids(decider_server.db_url, "refund", "ALLOW")[-1])
    assert allowed.approval.approval_id == decision_id and allowed.outcome_status == "ok"


def test_rejected_approval_is_a_refusal_the_model_reads(decider_server: ServerProcess) -> None:
    agent = Agent(decider_server, "refund", {"order": "o-3", "amount": 300})
    (intr,) = agent.run("refund o-3")["__interrupt__"]
    decision_id = intr.value["decision_id"]
    with DeciderClient(decider_server.target, token="carol-token") as carol:   # the ResolveApproval RPC
        carol.resolve_approval(decision_id, False, comment="no")
    done = agent.resume(intr.value)
    assert "__interrupt__" not in done
    assert agent.ran == []
    # On resume the guard asks again; a rejection is final for the identical call (DENY `rejected`,
    # naming the approver, the comment and the rejected decision) until its ttl.
    (seen,) = agent.model.seen
    assert seen.startswith(f"decider denied refund: rejected by user:carol in decision {decision_id}: no ")
    assert "[rejected]" in seen


def test_approval_given_while_the_tool_waits_runs_it_without_a_second_pause(decider_server: ServerProcess) -> None:
    # approval_wait: after a resume the tool waits (WatchDecision) for the approver instead of pausing again.
    agent = Agent(decider_server, "refund", {"order": "o-5", "amount": 250}, approval_wait=60)
    (intr,) = agent.run("refund o-5")["__interrupt__"]
    decision_id = intr.value["decision_id"]

    async def scenario() -> dict[str, Any]:
        resumed = asyncio.create_task(asyncio.to_thread(agent.resume, intr.value))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(approve, decider_server, decision_id)
        return await asyncio.wait_for(resumed, 90)

    done = asyncio.run(scenario())
    assert "__interrupt__" not in done
    assert agent.ran == [("refund", {"order": "o-5", "amount": 250.0})]


def test_unreachable_decider_fails_closed(decider_server: ServerProcess) -> None:
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    agent = Agent(decider_server, "get_weather", {"city": "Oslo"}, target=dead)
    agent.run("weather?")
    assert agent.ran == []
    assert len(agent.model.seen) == 1
    assert agent.model.seen[0].startswith("decider gave no decision for get_weather (UNAVAILABLE")


def test_policy_name_differs_from_the_tool_name(decider_server: ServerProcess) -> None:
    @tool
    def weather_now(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    guard = Guard(decider_server.target, agent=AGENT, token="gw-token")
    (mapped,) = guard_tools([weather_now], guard, names={"weather_now": "get_weather"})
    assert mapped.name == "weather_now"            # the model still sees the tool's own name
    assert mapped.invoke({"city": "Oslo"}) == "sunny in Oslo"
    (unmapped,) = guard_tools([weather_now], guard)   # "weather_now" matches no rule: default deny
    assert unmapped.invoke({"city": "Oslo"}).startswith("decider denied weather_now: no rule matched")


def test_outside_a_graph_an_approval_is_waited_for_not_paused(decider_server: ServerProcess) -> None:
    ran: list[float] = []

    @tool
    def refund(order: str, amount: float) -> str:
        """Refund an order."""
        ran.append(amount)
        return "refunded"

    (guarded,) = guard_tools([refund], Guard(decider_server.target, agent=AGENT, token="gw-token"))
    refusal = guarded.invoke({"order": "o-11", "amount": 400})
    assert ran == [] and "needs approval by one of user:carol; approval pending" in refusal
    decision_id = refusal.rsplit("(decision ", 1)[1].rstrip(")")
    with DeciderClient(decider_server.target, token="carol-token") as carol:
        carol.resolve_approval(decision_id, True)
    assert guarded.invoke({"order": "o-11", "amount": 400}) == "refunded"
    assert ran == [400]
