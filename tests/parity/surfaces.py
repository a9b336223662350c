"""How each surface runs a parity scenario and what it answered, row by row (tests/parity/test_matrix.py
holds the registry). A surface gets the scenario (already personalized: its own agent and session
ids) and gives back one `Row` per call: the outcome and deciding rule of the decision the surface
acted on, or the refusal (a gRPC status name and message) when it got no decision.

Server surfaces share one real `decider serve` per backend (`Served`); the in-memory ones (`decider
test` steps, `decider replay`) run the real commands on the scenario written as their input file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import yaml
from google.protobuf import struct_pb2

from decider.agentgateway import ext_mcp_pb2 as xpb
from decider.agentgateway import ext_mcp_pb2_grpc as xpb_grpc
from decider.client import DeciderClient, build_request
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from ..helpers import ROOT, ServerProcess
from .scenario import Action, Call, Row, Scenario

BUNDLE = Path(__file__).resolve().parent / "bundle"
TOKENS = Path(__file__).resolve().parent / "tokens.yaml"
MCP_TOOLS = Path(__file__).resolve().parent / "mcp_tools.py"
NO_DECISION = re.compile(r"\((?P<code>[A-Z_]+): (?P<message>.*)\)", re.S)


def meta(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def decided(resp: pb.DecideResponse) -> Row:
    return Row(outcome=pb.Outcome.Name(resp.outcome), rule=resp.deciding_rule)


def refused(code: int | grpc.StatusCode, message: str) -> Row:
    name = code.name if isinstance(code, grpc.StatusCode) else next(
        (c.name for c in grpc.StatusCode if c.value[0] == code), str(code))
    return Row(error=name, message=message)


def no_decision(text: str) -> Row:
    """A guard's or gateway's "no decision (CODE: message)" text → the refusal it names."""
    m = NO_DECISION.search(text)
    return Row(error=m["code"], message=m["message"]) if m else Row(error="UNKNOWN", message=text)


@dataclass
class Served:
    """The server every server surface of one backend shares, and the actions a scenario takes on it."""

    server: ServerProcess
    tmp: Path

    @property
    def target(self) -> str:
        return self.server.target

    def client(self, token: str) -> DeciderClient:
        return DeciderClient(self.target, token=token)

    def act(self, action: Action, decision_id: str = "") -> None:
        if action.kind == "kill":
            with self.client("admin-token") as admin:
                admin.set_kill_switch("agent", action.agent["id"], "parity: kill switch scenario")
            return
        with self.client("carol-token") as carol:
            if not decision_id:   # the surface did not say which: the agent's newest pending approval
                pending = [r for r in carol.list_approvals() if r.agent.id == action.agent["id"]]
                assert pending, f"no pending approval for {action.agent['id']}"
                decision_id = max(r.decision_id for r in pending)
            carol.resolve_approval(decision_id, True)

    def newest(self, agent_id: str) -> pb.DecisionRecord | None:
        with grpc.insecure_channel(self.target) as ch:
            resp = pb_grpc.QueriesStub(ch).ListDecisions(
                pb.ListDecisionsRequest(filter=pb.DecisionFilter(agent_id=agent_id), limit=1, newest_first=True),
                metadata=meta("admin-token"), timeout=10)
        return resp.decisions[0] if resp.decisions else None

    def decision_after(self, agent_id: str, before: str) -> Row:
        """The decision a surface acted on without naming it: the agent's first record after `before`
        (bounded wait: records are committed by the server's writer)."""
        for _ in range(200):
            rec = self.newest(agent_id)
            if rec is not None and rec.decision_id > before:
                return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule)
            time.sleep(0.05)
        raise AssertionError(f"no new decision for {agent_id} after {before!r}")

    def record(self, decision_id: str) -> pb.DecisionRecord:
        with self.client("admin-token") as admin:
            return admin.get_decision(decision_id)

    def clear_kill_switches(self, scenario: Scenario) -> None:
        with self.client("admin-token") as admin:
            for ks in admin.list_kill_switches():
                if ks.value == scenario.agent["id"]:
                    admin.clear_kill_switch(ks.id)


def run_steps(sc: Scenario, srv: Served, call: Callable[[Call], tuple[Row, str]]) -> list[Row]:
    """Call by call, the actions in between; `call` gives the row and the decision id ("" unknown)."""
    rows: list[Row] = []
    last_id = ""
    for step in sc.steps:
        if isinstance(step, Action):
            srv.act(step, last_id if step.kind == "approve" else "")
            continue
        row, last_id = call(step)
        rows.append(row)
    return rows


def request(c: Call) -> pb.DecideRequest:
    return build_request(agent=c.agent, tool=c.tool, args=c.args, request_id=f"row-{c.row}")


# ---- the Decider RPCs -----------------------------------------------------------------------------

def unary(sc: Scenario, srv: Served) -> list[Row]:
    def call(c: Call) -> tuple[Row, str]:
        with srv.client(c.token) as cl:
            try:
                resp = cl.decide(request(c))
            except grpc.RpcError as e:
                return refused(e.code(), e.details() or ""), ""
        return decided(resp), resp.decision_id
    return run_steps(sc, srv, call)


def _by_segment(sc: Scenario, srv: Served, send: Callable[[list[Call]], list[pb.DecideResponse]]) -> list[Row]:
    """Each segment (calls between actions, one caller) sent at once; the actions in between."""
    rows: list[Row] = []
    last_id = ""
    segments = iter(sc.segments())
    pending: list[Call] = []
    for step in sc.steps:
        if isinstance(step, Action):
            srv.act(step, last_id if step.kind == "approve" else "")
            continue
        if not pending:
            pending = list(next(segments))
            for resp in send(pending):
                rows.append(refused(resp.error.code, resp.error.message) if resp.HasField("error")
                            else decided(resp))
                last_id = resp.decision_id or last_id
        pending.pop(0)
    return rows


def stream(sc: Scenario, srv: Served) -> list[Row]:
    """One DecideStream per segment; each call sent once the reply to the one before it came (calls
    pipelined on one stream are decided concurrently, in no set order, as concurrent unary calls are)."""
    def send(calls: list[Call]) -> list[pb.DecideResponse]:
        outbox: queue.Queue[pb.DecideRequest | None] = queue.Queue()
        with grpc.insecure_channel(srv.target) as ch:
            replies = pb_grpc.DeciderStub(ch).DecideStream(iter(outbox.get, None), metadata=meta(calls[0].token),
                                                           timeout=30)
            out = []
            for c in calls:
                outbox.put(request(c))
                out.append(next(replies))
            outbox.put(None)
            assert list(replies) == []
        assert [r.request_id for r in out] == [f"row-{c.row}" for c in calls]
        return out
    return _by_segment(sc, srv, send)


def batch(sc: Scenario, srv: Served) -> list[Row]:
    def send(calls: list[Call]) -> list[pb.DecideResponse]:
        with grpc.insecure_channel(srv.target) as ch:
            (reply,) = list(pb_grpc.DeciderStub(ch).DecideBatchStream(
                iter([pb.DecideBatch(requests=[request(c) for c in calls])]), metadata=meta(calls[0].token),
                timeout=30))
        return list(reply.responses)
    return _by_segment(sc, srv, send)


def shadow(sc: Scenario, srv: Served) -> list[Row]:
    """The shadow bundle (the active one again) on the records of a unary run: its outcome is the row;
    a shadow outcome that differs from the active one is reported as a row that matches nothing."""
    rows: list[Row] = []

    def call(c: Call) -> tuple[Row, str]:
        with srv.client(c.token) as cl:
            try:
                resp = cl.decide(request(c))
            except grpc.RpcError as e:
                rows.append(refused(e.code(), e.details() or ""))
                return rows[-1], ""
        rec = srv.record(resp.decision_id)
        shadow_outcome = pb.Outcome.Name(rec.shadow_outcome)
        if rec.shadow_outcome != rec.outcome:
            rows.append(Row(outcome=f"{shadow_outcome} (shadow) != {pb.Outcome.Name(rec.outcome)} (active)",
                            rule=",".join(rec.shadow_rules)))
        else:
            rows.append(Row(outcome=shadow_outcome, rule=resp.deciding_rule))
        return rows[-1], resp.decision_id

    run_steps(sc, srv, call)
    return rows


# ---- ExtMcp (agentgateway's policy hook) ----------------------------------------------------------

_EXT_CODES = {xpb.AuthorizationError.INVALID: "INVALID_ARGUMENT",
              xpb.AuthorizationError.PERMISSION_DENIED: "PERMISSION_DENIED"}


def ext_mcp(sc: Scenario, srv: Served) -> list[Row]:
    def struct(value: dict[str, Any]) -> struct_pb2.Struct:
        s = struct_pb2.Struct()
        s.update(value)
        return s

    def call(c: Call) -> tuple[Row, str]:
        with grpc.insecure_channel(srv.target) as ch:
            stub = xpb_grpc.ExtMcpStub(ch)
            res = stub.CheckRequest(xpb.McpRequest(
                service_name="parity", method="tools/call", metadata_context=struct({"agent": c.agent}),
                mcp_request=struct({"name": c.tool, "arguments": c.args})), metadata=meta(c.token), timeout=30)
            if res.WhichOneof("result") == "pass":
                decision_id = res.metadata["decision_id"]
                rec = srv.record(decision_id)
                # The tool ran: the response goes back (ReportOutcome without an actual cost).
                stub.CheckResponse(xpb.McpResponse(
                    service_name="parity", method="tools/call",
                    metadata_context=struct({"agent": c.agent, "decision_id": decision_id}),
                    mcp_response=struct({"content": [{"type": "text", "text": "done"}], "isError": False})),
                    metadata=meta(c.token), timeout=30)
                return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), decision_id
        err = res.error
        data = dict(err.mcp_error)
        decision_id = str(data.get("decision_id") or "")
        if not decision_id:
            return Row(error=_EXT_CODES.get(err.code, xpb.AuthorizationError.Code.Name(err.code)),
                       message=err.reason), ""
        rec = srv.record(decision_id)
        return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), decision_id
    return run_steps(sc, srv, call)


# ---- runtime guards (decider/guard/) --------------------------------------------------------------

class _Guards:
    """One guard per agent and caller (a guard speaks for one agent), made on first use, closed at the end.
    `transport`: the Guard's ("stream", the default every SDK integration uses, or "unary")."""

    def __init__(self, srv: Served, transport: str = "stream") -> None:
        self.srv = srv
        self.transport = transport
        self.made: dict[str, Any] = {}

    def __call__(self, c: Call) -> Any:
        from decider.guard import Guard

        key = json.dumps(c.agent, sort_keys=True) + c.caller
        if key not in self.made:
            self.made[key] = Guard(self.srv.target, agent=c.agent, token=c.token, transport=self.transport)
        return self.made[key]

    def __enter__(self) -> _Guards:
        return self

    def __exit__(self, *exc: object) -> None:
        for g in self.made.values():
            g.close()


def guard_core(sc: Scenario, srv: Served, transport: str = "unary") -> list[Row]:
    """`Guard.check` + `report`, over the unary RPCs (guard.core) or one DecideBatchStream (guard.stream)."""

    def call(c: Call) -> tuple[Row, str]:
        from decider.guard import DeciderUnavailable
        g = get(c)
        try:
            v = g.check(c.tool, c.args)
        except DeciderUnavailable as e:
            return no_decision(str(e)), ""
        if v.allowed:
            g.report(v.decision_id, "ok")   # the tool ran; no actual cost known
        assert v.response is not None
        return Row(outcome=v.outcome, rule=v.response.deciding_rule), v.decision_id
    with _Guards(srv, transport) as get:
        return run_steps(sc, srv, call)


def guard_stream(sc: Scenario, srv: Served) -> list[Row]:
    return guard_core(sc, srv, transport="stream")


def guard_decorator(sc: Scenario, srv: Served) -> list[Row]:
    from decider.guard import ApprovalPending, DeciderUnavailable, ToolDenied, guard


    def call(c: Call) -> tuple[Row, str]:
        ran: list[dict[str, Any]] = []

        @guard(tool=c.tool, client=get(c))
        def tool(**kwargs: Any) -> str:
            ran.append(kwargs)
            return "done"

        before = _newest_id(srv, c)
        try:
            tool(**c.args)
        except (ToolDenied, ApprovalPending) as e:
            rec = srv.record(e.decision_id)
            return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), e.decision_id
        except DeciderUnavailable as e:
            return no_decision(str(e)), ""
        assert ran == [c.args]
        return srv.decision_after(c.agent["id"], before), ""
    with _Guards(srv) as get:
        return run_steps(sc, srv, call)


def _newest_id(srv: Served, c: Call) -> str:
    rec = srv.newest(c.agent["id"])
    return rec.decision_id if rec is not None else ""


def guard_langgraph(sc: Scenario, srv: Served) -> list[Row]:
    from langchain_core.tools import StructuredTool

    from decider.guard.langgraph import guard_tool


    def call(c: Call) -> tuple[Row, str]:
        ran: list[dict[str, Any]] = []

        def run(**kwargs: Any) -> str:
            ran.append(kwargs)
            return "done"

        inner = StructuredTool.from_function(func=run, name=c.tool.replace(".", "_"), description="a parity tool",
                                             args_schema={"type": "object", "properties": {
                                                 k: {} for k in c.args}}, infer_schema=False)
        before = _newest_id(srv, c)
        out = str(guard_tool(inner, get(c), name=c.tool).invoke(c.args))
        if ran:
            return srv.decision_after(c.agent["id"], before), ""
        m = re.search(r"\(decision (\w+)\)", out)
        if m is None:
            return no_decision(out), ""
        rec = srv.record(m[1])
        return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), m[1]
    with _Guards(srv) as get:
        return run_steps(sc, srv, call)


def guard_openai_agents(sc: Scenario, srv: Served) -> list[Row]:
    from agents import Agent, FunctionTool, RunConfig, Runner

    from decider.guard.openai_agents import AgentsGuard

    from ..scripted_models import ScriptedAgentsModel


    def call(c: Call) -> tuple[Row, str]:
        ran: list[str] = []
        sdk_name = c.tool.replace(".", "_")

        async def invoke(_ctx: Any, args_json: str) -> str:
            ran.append(args_json)
            return "done"

        tool = FunctionTool(name=sdk_name, description="a parity tool", on_invoke_tool=invoke,
                            params_json_schema={"type": "object", "properties": {k: {} for k in c.args},
                                                "additionalProperties": True}, strict_json_schema=False)
        guard = AgentsGuard(get(c), names={sdk_name: c.tool})
        model = ScriptedAgentsModel(sdk_name, c.args, call_id=f"call-{c.row}")
        agent = Agent(name="parity", instructions="do it", model=model, tools=guard.protect([tool]))
        before = _newest_id(srv, c)
        result = asyncio.run(Runner.run(agent, "go", run_config=RunConfig(tracing_disabled=True)))
        if ran or result.interruptions:
            return srv.decision_after(c.agent["id"], before), ""
        text = model.seen[-1] if model.seen else ""
        m = re.search(r"\(decision (\w+)\)", text)
        if m is None:
            return no_decision(text), ""
        rec = srv.record(m[1])
        return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), m[1]
    with _Guards(srv) as get:
        return run_steps(sc, srv, call)


# ---- the MCP gateway over stdio -------------------------------------------------------------------

def gateway_stdio(sc: Scenario, srv: Served) -> list[Row]:
    """`decider gateway mcp` over stdio in front of a real MCP server holding the scenario's tools; one
    gateway per agent (its config names the agent), kept open across the scenario."""
    from ..gateway_support import decision_ids, stdio_gateway, text_of

    async def run() -> list[Row]:
        rows: list[Row] = []
        last_id = ""
        async with contextlib.AsyncExitStack() as stack:
            sessions: dict[str, Any] = {}
            for step in sc.steps:
                if isinstance(step, Action):
                    await asyncio.to_thread(srv.act, step, last_id if step.kind == "approve" else "")
                    continue
                key = json.dumps(step.agent, sort_keys=True)
                if key not in sessions:
                    cfg = srv.tmp / f"gw-{sc.name}-{len(sessions)}.yaml"
                    cfg.write_text(yaml.safe_dump({
                        "decider": {"target": srv.target, "token": step.token, "deadline": "10s"},
                        "agent": step.agent, "listen": "stdio", "approval_wait": "0s",
                        "upstreams": [{"name": "parity", "command": [sys.executable, str(MCP_TOOLS)]}]}))
                    sessions[key] = await stack.enter_async_context(stdio_gateway(cfg))
                result = await sessions[key].call_tool(f"parity__{step.tool}", step.args)
                ids = decision_ids(result)
                if not ids:
                    rows.append(no_decision(text_of(result)))
                    continue
                last_id = ids[-1]
                rec = await asyncio.to_thread(srv.record, last_id)
                rows.append(Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule))
        return rows
    return asyncio.run(run())


# ---- in memory: `decider test` steps and `decider replay` ----------------------------------------

def _cli(*argv: str) -> tuple[int, str, str]:
    """A decider command in this process (the same code as the console script), its exit and output."""
    from decider.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_steps(sc: Scenario, tmp: Path) -> list[Row]:
    """The scenario as one `decider test` case with steps, each step expecting its table row; a step
    that cannot be built is a refusal with the problem as its message."""
    from decider.bundle.compile import load_bundle
    from decider.verify.suites import load_suites, run_suites

    steps = []
    for c in sc.calls:
        exp = sc.expected[c.row]
        steps.append({"tool": c.tool, "args": c.args, "agent": c.agent, "request": {"time": c.at.isoformat()},
                      "expect": {"outcome": (exp.outcome or ("invalid_argument" if exp.error == "INVALID_ARGUMENT"
                                                             else "deny")).lower()}})
    suite = {"apiVersion": "decider/v1", "kind": "TestSuite", "metadata": {"name": sc.name},
             "cases": [{"name": sc.name, "agent": sc.agent, "steps": steps}]}
    path = tmp / f"{sc.name}_test.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    (result,) = run_suites(load_bundle(BUNDLE), load_suites([path]))
    rows = []
    for case in result.cases:
        if case.actual_outcome == "invalid_argument":   # refused as the server refuses it
            rows.append(Row(error="INVALID_ARGUMENT", message=" ".join(r.text for r in case.actual_reasons)))
        elif case.problem or not case.actual_outcome:
            rows.append(Row(error="INVALID_ARGUMENT" if "invalid" in case.problem.lower() else "UNKNOWN",
                            message=case.problem))
        else:
            rows.append(Row(outcome=case.actual_outcome.upper(), rule=case.actual_rule))
    return rows


def _replay_rows(sc: Scenario, lines: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for line in lines:
        if line.get("outcome") in ("ALLOW", "DENY", "REQUIRE_APPROVAL"):
            rows.append(Row(outcome=line["outcome"], rule=line.get("rule") or ""))
        else:   # not decided: what replay says instead
            text = str(line.get("error") or line.get("reason") or "")
            code = "INVALID_ARGUMENT" if line.get("outcome") == "INVALID" or "invalid" in text.lower() else \
                str(line.get("outcome"))
            rows.append(Row(error=code, message=text))
    return rows


def _replay(sc: Scenario, tmp: Path, trace: Path, *extra: str) -> list[Row]:
    kills = [s for s in sc.steps if isinstance(s, Action) and s.kind == "kill"]
    args = ["replay", str(BUNDLE), str(trace), "--format", "jsonl", "--no-progress", "--workers", "1", *extra]
    if kills:
        path = tmp / f"{sc.name}-kill-switches.jsonl"
        path.write_text("".join(json.dumps({"id": f"ks-{i}", "scope": "agent", "value": k.agent["id"],
                                            "reason": "parity", "createdAt": k.at.isoformat()}) + "\n"
                                for i, k in enumerate(kills)))
        args += ["--kill-switches", str(path)]
    code, out, err = _cli(*args)
    assert code in (0, 1), f"decider replay exited {code}: {err}"
    return _replay_rows(sc, [json.loads(x) for x in out.splitlines() if x.strip()])


def replay_trace(sc: Scenario, tmp: Path) -> list[Row]:
    """The scenario as decider's own log format (`decider log --format jsonl`): each call with its
    agent and time; an approval given between two calls is recorded on the call that asked for it,
    as the log records it (approval_state, resolved_by, resolved_at)."""
    records: list[dict[str, Any]] = []
    for step in sc.steps:
        if isinstance(step, Action):
            if step.kind == "approve":
                asked = records[-1]
                asked.update(outcome="REQUIRE_APPROVAL", approval_state="approved", resolved_by="user:carol",
                             resolved_at=step.at.isoformat())
            continue
        records.append({"decision_id": f"{sc.name}-{step.row:04d}", "tool_name": step.tool, "args": step.args,
                        "agent": step.agent, "time": step.at.isoformat(), "outcome": "OUTCOME_UNSPECIFIED"})
    trace = tmp / f"{sc.name}.decider.jsonl"
    trace.write_text("".join(json.dumps(r) + "\n" for r in records))
    return _replay(sc, tmp, trace, "--trace-format", "decider")


def replay_openai(sc: Scenario, tmp: Path) -> list[Row]:
    """The scenario as one OpenAI chat conversation (no session id: the conversation is the session);
    the agent from `--mapping`. An approval between calls: `--assume approved` (the conversation
    went on, so the approver said yes)."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"run {sc.name}"}]
    for c in sc.calls:
        call_id = f"call_{c.row}"
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": c.tool, "arguments": json.dumps(c.args)}}]})
        messages.append({"role": "tool", "tool_call_id": call_id, "content": "done"})
    trace = tmp / f"{sc.name}.openai.json"
    trace.write_text(json.dumps({"messages": messages}))
    return _replay_mapped(sc, tmp, trace, "openai")


def replay_claude_code(sc: Scenario, tmp: Path) -> list[Row]:
    """The scenario as a Claude Code session transcript (decider/replay/traces/claude_code.py): a
    user prompt, then per call an assistant `tool_use` line and a user `tool_result` line, each with
    the call's session id and time, as Claude Code writes them; the agent from `--mapping` (the hook
    takes it from its flags). An approval between calls: `--assume approved`."""
    lines: list[dict[str, Any]] = []

    def line(kind: str, c: Call, at: datetime, message: dict[str, Any]) -> None:
        n = len(lines)
        lines.append({"parentUuid": f"u{n - 1}" if n else None, "isSidechain": False, "userType": "external",
                      "cwd": "/home/dev/parity", "sessionId": str(c.agent.get("session_id") or ""),
                      "version": "2.1.39", "type": kind, "message": message, "uuid": f"u{n}",
                      "timestamp": at.isoformat().replace("+00:00", "Z")})

    first = sc.calls[0]
    line("user", first, first.at - timedelta(seconds=1), {"role": "user", "content": f"run {sc.name}"})
    for c in sc.calls:
        use_id = f"toolu_{sc.name}_{c.row}"
        line("assistant", c, c.at, {"model": "claude-opus-4-6", "id": f"msg_{c.row}", "type": "message",
                                    "role": "assistant", "content": [
                                        {"type": "tool_use", "id": use_id, "name": c.tool, "input": c.args}]})
        line("user", c, c.at + timedelta(milliseconds=500), {"role": "user", "content": [
            {"tool_use_id": use_id, "type": "tool_result", "content": "done", "is_error": False}]})
    trace = tmp / f"{sc.name}.claude.jsonl"
    trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return _replay_mapped(sc, tmp, trace, "claude-code")


def _replay_mapped(sc: Scenario, tmp: Path, trace: Path, trace_format: str) -> list[Row]:
    """Replay a trace that names no agent: the scenario's agent (its session from the trace) from
    `--mapping`; an approval between calls: `--assume approved`."""
    agent = {k: v for k, v in sc.agent.items() if k != "session_id"}
    mapping = tmp / f"{sc.name}.mapping.yaml"
    mapping.write_text(yaml.safe_dump({"agent": agent}))
    extra = ["--trace-format", trace_format, "--mapping", str(mapping)]
    if any(isinstance(s, Action) and s.kind == "approve" for s in sc.steps):
        extra += ["--assume", "approved"]
    return _replay(sc, tmp, trace, *extra)


# ---- Claude Code hooks (decider/hooks/) and the gateway's HTTP listener ---------------------------

_DECISION_ID = re.compile(r"\(decision (\w+)\)")


def _hook_event(c: Call, sc: Scenario, name: str, **more: Any) -> dict[str, Any]:
    """A Claude Code hook event for the call, shaped as Claude Code sends it: the scenario's session
    is the event's `session_id` (the hook takes agent.session_id from there, not from its flags)."""
    session = str(c.agent.get("session_id") or "")
    return {"session_id": session, "transcript_path": f"/home/dev/.claude/projects/parity/{session[:40]}.jsonl",
            "cwd": "/home/dev/parity", "permission_mode": "default", "hook_event_name": name,
            "tool_name": c.tool, "tool_input": c.args, "tool_use_id": f"toolu_{sc.name}_{c.row}", **more}


def _hook_row(srv: Served, c: Call, spec: dict[str, Any]) -> tuple[Row, str]:
    """The row of a PreToolUse answer that names its decision (allow, deny, ask): the record's, which
    must be the scenario's agent and session as the hook mapped them."""
    m = _DECISION_ID.search(str(spec.get("permissionDecisionReason") or ""))
    if m is None:
        return no_decision(str(spec.get("permissionDecisionReason") or "")), ""
    rec = srv.record(m[1])
    assert (rec.agent.id, rec.agent.session_id) == (c.agent["id"], c.agent.get("session_id", "")), rec.agent
    return Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule), m[1]


_TOOL_RAN = {"stdout": "done", "stderr": "", "interrupted": False, "isImage": False}


def _assert_reported(srv: Served, decision_id: str) -> None:
    """PostToolUse reached ReportOutcome on the decision PreToolUse got (a hook that found no
    decision for the call answers the same empty exit 0, so the record is the proof)."""
    assert srv.record(decision_id).outcome_status == "ok", f"PostToolUse did not report decision {decision_id}"


def hook_claude_code(sc: Scenario, srv: Served) -> list[Row]:
    """`decider hook claude-code` run as Claude Code runs a command hook: a new process per event, the
    event on stdin. The agent from `--agent-id` (and `--team`), the caller's token from `--token-env`,
    the session from the event; PreToolUse, then PostToolUse for a call that was allowed (the tool
    ran; the hook reports no actual cost). REQUIRE_APPROVAL is answered `ask`; its row is the record's."""
    state = srv.tmp / f"hook-state-{sc.name}"

    def run_hook(c: Call, event: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        unknown = set(c.agent) - {"id", "team", "session_id"}
        assert not unknown, f"the hook's flags cannot say agent {sorted(unknown)}"
        team = ["--team", str(c.agent["team"])] if c.agent.get("team") else []
        return subprocess.run(
            [sys.executable, "-m", "decider", "hook", "claude-code", "--decider", srv.target,
             "--token-env", "PARITY_HOOK_TOKEN", "--agent-id", str(c.agent["id"]), *team,
             "--state-dir", str(state), "--timeout", "10s"],
            input=json.dumps(event), capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "PARITY_HOOK_TOKEN": c.token})

    def call(c: Call) -> tuple[Row, str]:
        out = run_hook(c, _hook_event(c, sc, "PreToolUse"))
        if out.returncode != 0:   # exit 2: blocked with no decision; stderr says why
            assert out.returncode == 2 and not out.stdout, (out.returncode, out.stdout, out.stderr)
            return no_decision(out.stderr), ""
        spec = json.loads(out.stdout)["hookSpecificOutput"]
        row, decision_id = _hook_row(srv, c, spec)
        if spec["permissionDecision"] == "allow":
            done = run_hook(c, _hook_event(c, sc, "PostToolUse", tool_response=_TOOL_RAN))
            assert (done.returncode, done.stdout) == (0, ""), done.stderr
            _assert_reported(srv, decision_id)
        return row, decision_id
    return run_steps(sc, srv, call)


class _HttpGateways:
    """`decider gateway mcp` on a loopback HTTP listener in front of the parity MCP server: one per
    caller (the caller's token is the gateway's decider token), each agent of that caller a client
    with its own bearer token. `with_session`: the client's agent names the scenario's session (the
    MCP gateway's clients), or not (the HTTP hook takes the session from the event)."""

    def __init__(self, sc: Scenario, srv: Served, with_session: bool) -> None:
        self.gateways: dict[str, Any] = {}
        self.tokens: dict[str, str] = {}   # agent+caller → client token
        from ..gateway_support import start_http_gateway

        by_caller: dict[str, list[dict[str, Any]]] = {}
        for c in sc.calls:
            agent = c.agent if with_session else {k: v for k, v in c.agent.items() if k != "session_id"}
            key = self._key(c)
            if key not in self.tokens:
                self.tokens[key] = f"client-{len(self.tokens)}-{c.caller}"
                by_caller.setdefault(c.caller, []).append({"token": self.tokens[key], "agent": agent})
        tag = "mcp" if with_session else "hook"
        try:
            for caller, clients in by_caller.items():
                cfg = srv.tmp / f"gw-http-{tag}-{sc.name}-{caller}.yaml"
                cfg.write_text(yaml.safe_dump({
                    "decider": {"target": srv.target, "token": f"{caller}-token", "deadline": "10s"},
                    "listen": "http://127.0.0.1:0/mcp", "clients": clients, "approval_wait": "0s",
                    "upstreams": [{"name": "parity", "command": [sys.executable, str(MCP_TOOLS)]}]}))
                self.gateways[caller] = start_http_gateway(cfg, name=cfg.stem)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _key(c: Call) -> str:
        return json.dumps(c.agent, sort_keys=True) + c.caller

    def url(self, c: Call) -> str:
        return str(self.gateways[c.caller].url)

    def token(self, c: Call) -> str:
        return self.tokens[self._key(c)]

    def close(self) -> None:
        for gw in self.gateways.values():
            gw.stop()


def gateway_http(sc: Scenario, srv: Served) -> list[Row]:
    """The MCP gateway over streamable HTTP, driven by the mcp SDK client with a bearer token: one MCP
    session per client, kept open across the scenario."""
    from ..gateway_support import decision_ids, http_session, text_of

    gws = _HttpGateways(sc, srv, with_session=True)

    async def run() -> list[Row]:
        rows: list[Row] = []
        last_id = ""
        async with contextlib.AsyncExitStack() as stack:
            sessions: dict[str, Any] = {}
            for step in sc.steps:
                if isinstance(step, Action):
                    await asyncio.to_thread(srv.act, step, last_id if step.kind == "approve" else "")
                    continue
                token = gws.token(step)
                if token not in sessions:
                    sessions[token] = await stack.enter_async_context(http_session(gws.url(step), token))
                result = await sessions[token].call_tool(f"parity__{step.tool}", step.args)
                ids = decision_ids(result)
                if not ids:
                    rows.append(no_decision(text_of(result)))
                    continue
                last_id = ids[-1]
                rec = await asyncio.to_thread(srv.record, last_id)
                rows.append(Row(outcome=pb.Outcome.Name(rec.outcome), rule=rec.deciding_rule))
        return rows
    try:
        return asyncio.run(run())
    finally:
        gws.close()


def hook_claude_code_http(sc: Scenario, srv: Served) -> list[Row]:
    """`POST /hooks/claude-code` on the gateway's HTTP listener (Claude Code's `"type": "http"` hooks):
    the agent is the one the client's bearer token maps to, the session from the event. A refusal is
    a 200 `deny` without a decision id; its reason names the status decider gave."""
    import httpx2

    gws = _HttpGateways(sc, srv, with_session=False)

    def post(c: Call, event: dict[str, Any]) -> dict[str, Any]:
        resp = httpx2.post(gws.url(c).removesuffix("/mcp") + "/hooks/claude-code", content=json.dumps(event),
                           headers={"Authorization": f"Bearer {gws.token(c)}", "Content-Type": "application/json"},
                           timeout=60)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return dict(resp.json())

    def call(c: Call) -> tuple[Row, str]:
        spec = post(c, _hook_event(c, sc, "PreToolUse"))["hookSpecificOutput"]
        row, decision_id = _hook_row(srv, c, spec)
        if spec["permissionDecision"] == "allow":
            assert post(c, _hook_event(c, sc, "PostToolUse", tool_response=_TOOL_RAN)) == {}
            _assert_reported(srv, decision_id)
        return row, decision_id
    try:
        return run_steps(sc, srv, call)
    finally:
        gws.close()
