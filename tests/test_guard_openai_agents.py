"""decider.guard for the OpenAI Agents SDK: real `Runner.run` agent loops with a scripted model
(no network) against a real decider server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, Runner, function_tool
from google.protobuf import json_format

from decider.client import DeciderClient
from decider.guard import Guard
from decider.guard.openai_agents import AgentsGuard
from decider.v1 import decider_pb2 as pb

from .guarded import AGENT, decision_ids, eventually, pending_approvals, write_bundle, write_tokens
from .helpers import ROOT, ServerProcess, start_server
from .scripted_models import ScriptedAgentsModel

RUN = RunConfig(tracing_disabled=True)   # no trace export: nothing leaves the machine


@pytest.fixture(scope="module")
def decider_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("agents")
    srv = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)))
    try:
        yield srv
    finally:
        srv.stop()


class Tools:
    """The agent's tools; `ran` lists every call that actually executed."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

        @function_tool
        def get_weather(city: str) -> str:
            """The weather in a city."""
            self.ran.append(("get_weather", {"city": city}))
            return f"sunny in {city}"

        @function_tool
        def delete_repo(repo: str) -> str:
            """Delete a repository."""
            self.ran.append(("delete_repo", {"repo": repo}))
            return f"deleted {repo}"

        @function_tool
        def refund(order: str, amount: float) -> str:
            """Refund an order."""
            self.ran.append(("refund", {"order": order, "amount": amount}))
            return f"refunded {amount} on {order}"

        self.all = [get_weather, delete_repo, refund]


def setup(srv: ServerProcess, tool: str, args: dict[str, Any], *, target: str | None = None
          ) -> tuple[Tools, ScriptedAgentsModel, Agent[Any], AgentsGuard]:
    tools = Tools()
    model = ScriptedAgentsModel(tool, args)
    guard = AgentsGuard(Guard(target or srv.target, agent=AGENT, server="python://support", token="gw-token"))
    agent = Agent(name="support", instructions="help", model=model, tools=guard.protect(tools.all))
    return tools, model, agent, guard


def record(srv: ServerProcess, decision_id: str) -> pb.DecisionRecord:
    with DeciderClient(srv.target, token="gw-token") as c:
        return c.get_decision(decision_id)


def guardrail_decision(result: Any) -> str:
    return str(result.tool_input_guardrail_results[-1].output.output_info["decision_id"])


def test_allowed_call_runs_and_is_reported(decider_server: ServerProcess) -> None:
    tools, model, agent, _ = setup(decider_server, "get_weather", {"city": "Oslo"})
    result = asyncio.run(Runner.run(agent, "weather in Oslo?", run_config=RUN))
    assert tools.ran == [("get_weather", {"city": "Oslo"})]
    assert model.seen == ["sunny in Oslo"]
    assert result.final_output == "the tool said: sunny in Oslo"
    rec = record(decider_server, guardrail_decision(result))
    assert pb.Outcome.Name(rec.outcome) == "ALLOW"
    assert (rec.tool_name, rec.tool_server, rec.call_id, rec.agent.id) == (
        "get_weather", "python://support", "call-1", "support-bot")
    assert json_format.MessageToDict(rec.args) == {"city": "Oslo"}
    assert rec.outcome_status == "ok"


def test_denied_call_never_runs_and_the_model_reads_the_refusal(decider_server: ServerProcess) -> None:
    tools, model, agent, _ = setup(decider_server, "delete_repo", {"repo": "core"})
    result = asyncio.run(Runner.run(agent, "delete core", run_config=RUN))
    assert tools.ran == []
    decision_id = guardrail_decision(result)
    assert model.seen == [f"decider denied delete_repo: Agents never delete repositories [no-repo-deletes] "
                          f"(decision {decision_id})"]
    assert pb.Outcome.Name(record(decider_server, decision_id).outcome) == "DENY"


def approve_when_pending(srv: ServerProcess, tool: str) -> threading.Thread:
    """`decider approve` (the real CLI, approver token) as soon as the approval shows up."""
    def run() -> None:
        with DeciderClient(srv.target, token="carol-token") as carol:
            pending = eventually(lambda: pending_approvals(carol, tool), what="a pending approval")
        subprocess.run([sys.executable, "-m", "decider", "approve", pending[0].decision_id, "--server", srv.target,
                        "--token", "carol-token"], check=True, capture_output=True, timeout=60, cwd=ROOT)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_approval_pauses_the_run_and_resumes_after_decider_approve(decider_server: ServerProcess) -> None:
    tools, model, agent, guard = setup(decider_server, "refund", {"order": "o-2", "amount": 500})

    async def scenario() -> tuple[Any, Any]:
        first = await Runner.run(agent, "refund o-2", run_config=RUN)
        assert [i.tool_name for i in first.interruptions] == ["refund"]   # paused, tool not run
        assert tools.ran == []
        approver = approve_when_pending(decider_server, "refund")
        state = await guard.resolve(first, wait=60)   # waits on WatchDecision until approved
        await asyncio.to_thread(approver.join, 60)
        return first, await Runner.run(agent, state, run_config=RUN)

    first, result = asyncio.run(scenario())
    assert tools.ran == [("refund", {"order": "o-2", "amount": 500})]   # exactly once
    assert model.seen == ["refunded 500.0 on o-2"]
    allowed = record(decider_server, decision_ids(decider_server.db_url, "refund", "ALLOW")[-1])
    assert pb.Outcome.Name(allowed.outcome) == "ALLOW" and allowed.outcome_status == "ok"
    assert json_format.MessageToDict(allowed.args) == {"order": "o-2", "amount": 500}
    approval = record(decider_server, allowed.approval.approval_id)
    assert pb.Outcome.Name(approval.outcome) == "REQUIRE_APPROVAL"
    assert approval.approval.state == pb.APPROVAL_CONSUMED and approval.approval.resolved_by == "user:carol"
    assert approval.call_id == "call-1"


def test_rejected_approval_is_a_refusal_the_model_reads(decider_server: ServerProcess) -> None:
    tools, model, agent, guard = setup(decider_server, "refund", {"order": "o-3", "amount": 300})

    async def scenario() -> Any:
        first = await Runner.run(agent, "refund o-3", run_config=RUN)
        with DeciderClient(decider_server.target, token="carol-token") as carol:   # the ResolveApproval RPC
            pending = pending_approvals(carol, "refund")
            carol.resolve_approval(pending[0].decision_id, False, comment="no")
        state = await guard.resolve(first, wait=30)
        return pending[0].decision_id, await Runner.run(agent, state, run_config=RUN)

    decision_id, _ = asyncio.run(scenario())
    assert tools.ran == []
    assert model.seen == [f"decider: approval rejected by user:carol (\"no\") for refund: Refunds above 100 need a finance approver "
                          f"[big-refunds-need-approval] (decision {decision_id})"]


def test_nobody_approving_within_the_wait_is_refused_as_pending(decider_server: ServerProcess) -> None:
    tools, model, agent, guard = setup(decider_server, "refund", {"order": "o-4", "amount": 900})

    async def scenario() -> Any:
        first = await Runner.run(agent, "refund o-4", run_config=RUN)
        state = await guard.resolve(first, wait=0.5)
        return await Runner.run(agent, state, run_config=RUN)

    asyncio.run(scenario())
    assert tools.ran == []
    assert len(model.seen) == 1 and "approval pending" in model.seen[0] and "by one of user:carol" in model.seen[0]


def test_unreachable_decider_fails_closed(decider_server: ServerProcess) -> None:
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    tools, model, agent, _ = setup(decider_server, "get_weather", {"city": "Oslo"}, target=dead)
    asyncio.run(Runner.run(agent, "weather?", run_config=RUN))
    assert tools.ran == []
    assert len(model.seen) == 1 and model.seen[0].startswith("decider gave no decision for get_weather (UNAVAILABLE")


def test_needs_approval_and_guardrail_also_work_on_their_own(decider_server: ServerProcess) -> None:
    # Without `protect`: the two SDK hooks, attached by hand to a function tool.
    guard = AgentsGuard(Guard(decider_server.target, agent=AGENT, token="gw-token"))
    ran: list[str] = []

    @function_tool(needs_approval=guard.needs_approval("delete_repo"), tool_input_guardrails=[guard.input_guardrail])
    def delete_repo(repo: str) -> str:
        """Delete a repository."""
        ran.append(repo)
        return "deleted"

    model = ScriptedAgentsModel("delete_repo", {"repo": "core"})
    agent = Agent(name="support", model=model, tools=[delete_repo])
    asyncio.run(Runner.run(agent, "delete core", run_config=RUN))
    assert ran == []
    assert model.seen[0].startswith("decider denied delete_repo: Agents never delete repositories")


def test_policy_name_differs_from_the_sdk_tool_name(decider_server: ServerProcess) -> None:
    ran: list[str] = []

    @function_tool
    def weather_now(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    guard = AgentsGuard(Guard(decider_server.target, agent=AGENT, token="gw-token"),
                        names={"weather_now": "get_weather"})
    model = ScriptedAgentsModel("weather_now", {"city": "Oslo"})
    agent = Agent(name="support", model=model, tools=guard.protect([weather_now]))
    asyncio.run(Runner.run(agent, "weather?", run_config=RUN))
    assert ran == ["Oslo"] and model.seen == ["sunny in Oslo"]
    assert record(decider_server, decision_ids(decider_server.db_url, "get_weather", "ALLOW")[-1]).call_id == "call-1"
