"""decider as agentgateway's external MCP policy server (`decider serve --ext-mcp`), tested as a
contract: a gRPC client sends what agentgateway sends (CheckRequest before a method is forwarded,
CheckResponse with the upstream's result) to a real server on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from decider.agentgateway import ext_mcp_pb2 as xpb
from decider.agentgateway import ext_mcp_pb2_grpc as xpb_grpc
from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

from .guarded import AGENT, eventually, pending_approvals, record_count, write_bundle, write_tokens
from .helpers import ROOT, ServerProcess, start_server

GW = (("authorization", "Bearer gw-token"),)


@pytest.fixture(scope="module")
def waiting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """ExtMcp on, approvals waited for up to 60 s; with tokens, as in production."""
    tmp = tmp_path_factory.mktemp("extmcp")
    srv = start_server(tmp, write_bundle(tmp), None, "--ext-mcp", "--ext-mcp-approval-wait", "60",
                       "--tokens", str(write_tokens(tmp)))
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def stub(waiting: ServerProcess) -> Iterator[xpb_grpc.ExtMcpStub]:
    with grpc.insecure_channel(waiting.target) as channel:
        yield xpb_grpc.ExtMcpStub(channel)


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def tools_call(name: str, arguments: Any, service: str = "billing", agent: dict[str, Any] | None = None,
               **extra: Any) -> xpb.McpRequest:
    # What agentgateway sends: the backend's native name, the method, its config's metadata
    # (CEL-evaluated; here the agent identity), and the JSON-RPC params.
    return xpb.McpRequest(service_name=service, method="tools/call",
                          metadata_context=struct({"agent": agent if agent is not None else AGENT, **extra}),
                          mcp_request=struct({"name": name, "arguments": arguments}))


def record(srv: ServerProcess, decision_id: str, token: str = "gw-token") -> pb.DecisionRecord:
    with DeciderClient(srv.target, token=token) as c:
        return c.get_decision(decision_id)


def test_allowed_tools_call_passes_and_its_response_reports_the_outcome(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    res = stub.CheckRequest(tools_call("refund", {"amount": 40, "order": "o-1"}, ticket="T-9"), metadata=GW)
    assert res.WhichOneof("result") == "pass"
    decision_id = res.metadata["decision_id"]
    rec = record(waiting, decision_id)
    assert pb.Outcome.Name(rec.outcome) == "ALLOW"
    assert (rec.tool_name, rec.tool_server, rec.agent.id, rec.agent.team) == (
        "refund", "mcp://billing", "support-bot", "support")
    assert json_format.MessageToDict(rec.args) == {"amount": 40, "order": "o-1"}
    assert json_format.MessageToDict(rec.context) == {"ticket": "T-9"}   # other metadata → context
    assert rec.outcome_status == ""

    out = stub.CheckResponse(xpb.McpResponse(
        service_name="billing", method="tools/call", metadata_context=struct({"agent": AGENT}),
        mcp_response=struct({"content": [{"type": "text", "text": "refunded"}], "isError": False})), metadata=GW)
    assert out.WhichOneof("result") == "pass"
    assert record(waiting, decision_id).outcome_status == "ok"


def test_the_record_is_the_one_decide_writes(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    via_gateway = stub.CheckRequest(tools_call("read_file", {"path": "/srv/a.txt"}, service="files", ticket="T-1"),
                                    metadata=GW)
    with DeciderClient(waiting.target, token="gw-token") as c:
        direct = c.decide(agent=AGENT, tool="read_file", server="mcp://files", args={"path": "/srv/a.txt"},
                          context={"ticket": "T-1"})
    a = json_format.MessageToDict(record(waiting, via_gateway.metadata["decision_id"]))
    b = json_format.MessageToDict(record(waiting, direct.decision_id))
    for volatile in ("decisionId", "time", "evalUs"):
        a.pop(volatile), b.pop(volatile)
    assert a == b


@pytest.mark.parametrize("flat", [False, True])
def test_an_agent_with_labels_and_capabilities_is_the_one_decide_sees(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess, flat: bool) -> None:
    # The identity is read from metadata_context without json_format when its values have their
    # plain JSON shapes: the record must still be the one Decide writes for that agent.
    agent = {**AGENT, "labels": {"env": "prod", "cost-centre": "7"}, "capabilities": ["refund", "read"],
             "session_id": "s-labels"}
    meta = {f"agent.{k}": v for k, v in agent.items()} if flat else {"agent": agent}
    res = stub.CheckRequest(xpb.McpRequest(service_name="files", method="tools/call", metadata_context=struct(meta),
                                           mcp_request=struct({"name": "read_file", "arguments": {"path": "/srv/b"}})),
                            metadata=GW)
    assert res.WhichOneof("result") == "pass", res
    with DeciderClient(waiting.target, token="gw-token") as c:
        direct = c.decide(agent=agent, tool="read_file", server="mcp://files", args={"path": "/srv/b"})
    a = record(waiting, res.metadata["decision_id"])
    b = record(waiting, direct.decision_id)
    assert json_format.MessageToDict(a.agent) == json_format.MessageToDict(b.agent)
    assert dict(a.agent.labels) == {"env": "prod", "cost-centre": "7"}
    assert list(a.agent.capabilities) == ["refund", "read"]


def test_response_with_is_error_reports_error_on_the_named_decision(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    first = stub.CheckRequest(tools_call("get_weather", {"city": "Oslo"}, service="weather"), metadata=GW)
    second = stub.CheckRequest(tools_call("get_weather", {"city": "Rome"}, service="weather"), metadata=GW)
    ids = [first.metadata["decision_id"], second.metadata["decision_id"]]
    # The gateway hands the decision id back (its config: metadata decision_id = extmcp.decision_id),
    # so the second call's result settles the second decision even though the first is still open.
    stub.CheckResponse(xpb.McpResponse(
        service_name="weather", method="tools/call",
        metadata_context=struct({"agent": AGENT, "decision_id": ids[1]}),
        mcp_response=struct({"content": [{"type": "text", "text": "boom"}], "isError": True})), metadata=GW)
    assert record(waiting, ids[1]).outcome_status == "error"
    assert record(waiting, ids[0]).outcome_status == ""
    # Without an id, the oldest open call on that backend for that agent is the one settled.
    stub.CheckResponse(xpb.McpResponse(service_name="weather", method="tools/call",
                                       metadata_context=struct({"agent": AGENT}),
                                       mcp_response=struct({"content": []})), metadata=GW)
    assert record(waiting, ids[0]).outcome_status == "ok"


def test_a_result_with_a_nan_still_passes_and_reports_the_outcome(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    # The call already ran: a number JSON cannot hold in the upstream's result (a hostile or broken
    # upstream) must not fail CheckResponse (it was UNKNOWN) nor leave the outcome unreported.
    allowed = stub.CheckRequest(tools_call("get_weather", {"city": "Lima"}, service="weather"), metadata=GW)
    decision_id = allowed.metadata["decision_id"]
    res = stub.CheckResponse(xpb.McpResponse(
        service_name="weather", method="tools/call", metadata_context=struct({"agent": AGENT, "decision_id": decision_id}),
        mcp_response=struct({"content": [{"type": "text", "text": "odd"}], "isError": True,
                             "structuredContent": {"temp": float("nan"), "t": [float("inf")]}})), metadata=GW)
    assert res.WhichOneof("result") == "pass"
    assert record(waiting, decision_id).outcome_status == "error"


def test_denied_tools_call_is_an_error_naming_reason_and_decision(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    res = stub.CheckRequest(tools_call("delete_repo", {"repo": "core"}, service="git"), metadata=GW)
    assert res.WhichOneof("result") == "error"
    assert res.error.code == xpb.AuthorizationError.PERMISSION_DENIED
    data = json_format.MessageToDict(res.error.mcp_error)
    decision_id = data["decision_id"]
    assert "Agents never delete repositories" in res.error.reason
    assert decision_id in res.error.reason
    assert data["outcome"] == "DENY" and data["reasons"][0]["rule_id"] == "no-repo-deletes"
    rec = record(waiting, decision_id)
    assert pb.Outcome.Name(rec.outcome) == "DENY" and rec.tool_server == "mcp://git"


def test_approval_needing_call_waits_and_passes_after_decider_approve(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(stub.CheckRequest, tools_call("refund", {"amount": 500, "order": "o-2"}),
                          metadata=GW, timeout=90)
        with DeciderClient(waiting.target, token="carol-token") as carol:
            pending = eventually(lambda: pending_approvals(carol, "refund"), what="a pending approval")
        assert not fut.done()   # the gateway's call is held while nobody has approved
        approve = subprocess.run(
            [sys.executable, "-m", "decider", "approve", pending[0].decision_id, "--server", waiting.target,
             "--token", "carol-token", "--comment", "ok for o-2"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert approve.returncode == 0, approve.stderr
        res = fut.result(timeout=90)
    assert res.WhichOneof("result") == "pass"
    allowed = record(waiting, res.metadata["decision_id"])
    assert pb.Outcome.Name(allowed.outcome) == "ALLOW"
    assert allowed.approval.approval_id == pending[0].decision_id   # the approval it consumed
    assert record(waiting, pending[0].decision_id).approval.state == pb.APPROVAL_CONSUMED


def test_rejected_approval_is_an_error_naming_state_and_decision(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(stub.CheckRequest, tools_call("refund", {"amount": 700, "order": "o-3"}),
                          metadata=GW, timeout=90)
        with DeciderClient(waiting.target, token="carol-token") as carol:
            pending = eventually(lambda: pending_approvals(carol, "refund"), what="a pending approval")
            carol.resolve_approval(pending[0].decision_id, False, comment="not this one")
        res = fut.result(timeout=90)
    assert res.WhichOneof("result") == "error"
    assert res.error.code == xpb.AuthorizationError.PERMISSION_DENIED
    assert res.error.reason.startswith('decider: approval rejected by user:carol ("not this one") for refund '
                                       f"(decision {pending[0].decision_id})")
    assert json_format.MessageToDict(res.error.mcp_error)["approval_state"] == "rejected"


def test_budget_exceeded_is_resource_exhausted(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    # The gateway's metadata may carry the call's estimated cost; budgets reserve against it.
    spender = {"id": "budget-bot", "team": "support", "model": "gpt-5"}
    first = stub.CheckRequest(tools_call("get_weather", {"city": "Oslo"}, agent=spender, estimated_cost=60),
                              metadata=GW)
    second = stub.CheckRequest(tools_call("get_weather", {"city": "Rome"}, agent=spender, estimated_cost=60),
                               metadata=GW)
    assert first.WhichOneof("result") == "pass"
    assert record(waiting, first.metadata["decision_id"]).estimated_cost == 60
    assert second.error.code == xpb.AuthorizationError.RESOURCE_EXHAUSTED
    assert "budget_exceeded" in second.error.reason


def test_methods_without_effect_pass_without_a_decision(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    before = record_count(waiting.db_url)
    for method, params in (("tools/list", {}), ("resources/list", {}), ("prompts/list", {}), ("initialize", {}),
                           ("notifications/initialized", {}), ("ping", {})):
        res = stub.CheckRequest(xpb.McpRequest(service_name="billing", method=method,
                                               mcp_request=struct(params)), metadata=GW)
        assert res.WhichOneof("result") == "pass", method
    assert record_count(waiting.db_url) == before


def test_resources_prompts_and_completions_are_decided(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    def check(method: str, params: dict[str, Any]) -> xpb.McpRequestResult:
        return stub.CheckRequest(xpb.McpRequest(service_name="files", method=method,
                                                metadata_context=struct({"agent": AGENT}),
                                                mcp_request=struct(params)), metadata=GW)

    ok = check("resources/read", {"uri": "docs://handbook"})
    assert ok.WhichOneof("result") == "pass"
    rec = record(waiting, ok.metadata["decision_id"])
    assert (rec.tool_name, rec.tool_server, dict(rec.args)) == ("resources/read", "mcp://files",
                                                                {"uri": "docs://handbook"})
    stub.CheckResponse(xpb.McpResponse(service_name="files", method="resources/read",
                                       metadata_context=struct({"agent": AGENT}),
                                       mcp_response=struct({"contents": []})), metadata=GW)
    assert eventually(lambda: record(waiting, rec.decision_id).outcome_status, what="outcome") == "ok"

    for method, params in (("resources/read", {"uri": "file:///etc/passwd"}),
                           ("prompts/get", {"name": "p", "arguments": {"x": "1"}}),
                           ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"},
                                                    "argument": {"name": "x", "value": "1"}})):
        res = check(method, params)
        assert res.WhichOneof("result") == "error", method
        assert res.error.code == xpb.AuthorizationError.PERMISSION_DENIED
        denied = record(waiting, res.error.mcp_error["decision_id"])
        assert (denied.tool_name, denied.outcome) == (method, pb.DENY)
    assert dict(record(waiting, check("prompts/get", {"name": "p"}).error.mcp_error["decision_id"]).args) == \
        {"name": "p", "arguments": {}}

    bad = check("resources/read", {})
    assert bad.error.code == xpb.AuthorizationError.INVALID and "mcp_request.uri" in bad.error.reason


def test_unknown_methods_are_refused(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    before = record_count(waiting.db_url)
    for method in ("sampling/createMessage", "tools/cal", ""):
        res = stub.CheckRequest(xpb.McpRequest(service_name="billing", method=method, mcp_request=struct({})),
                                metadata=GW)
        assert res.WhichOneof("result") == "error", method
        assert res.error.code == xpb.AuthorizationError.PERMISSION_DENIED and "refused" in res.error.reason
    assert record_count(waiting.db_url) == before


@pytest.mark.parametrize(("params", "meta", "field"), [
    ({"name": "refund", "arguments": [1, 2]}, {"agent": AGENT}, "mcp_request.arguments: must be an object"),
    ({"arguments": {}}, {"agent": AGENT}, "mcp_request.name: is required"),
    ({"name": "refund", "arguments": {}}, {"agent": {"id": "a", "teem": "x"}}, "metadata_context.agent.teem"),
    ({"name": "refund", "arguments": {}}, {"agent.capabilities": "one"}, "metadata_context.agent"),
    ({"name": "refund", "arguments": {}}, {}, "agent.id"),
    ({"name": "refund", "arguments": {}}, {"agent": AGENT, "estimated_cost": "9"}, "metadata_context.estimated_cost"),
    # Hostile values: a NaN or infinite number (JSON has none), identity fields of the wrong type.
    ({"name": "refund", "arguments": {"amount": float("nan")}}, {"agent": AGENT}, "tool.args.amount: is nan"),
    ({"name": "refund", "arguments": {}}, {"agent": AGENT, "depth": {"x": [1, float("-inf")]}}, "context.depth.x[1]"),
    ({"name": "refund", "arguments": {}}, {"agent": AGENT, "estimated_cost": float("inf")}, "request.estimated_cost"),
    ({"name": "refund", "arguments": "all"}, {"agent": AGENT}, "mcp_request.arguments: must be an object, got str"),
    ({"name": "refund", "arguments": {}}, {"agent": {"id": "a", "labels": {"k": 1}}}, "metadata_context.agent"),
    ({"name": "refund", "arguments": {}}, {"agent": {"id": 7}}, "metadata_context.agent"),
    ({"name": "refund", "arguments": {}}, {"agent": {"id": "a", "capabilities": [float("nan")]}},
     "metadata_context.agent"),
])
def test_bad_input_is_invalid_naming_the_field_and_leaves_no_record(
        stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess, params: dict[str, Any], meta: dict[str, Any],
        field: str) -> None:
    before = record_count(waiting.db_url)
    res = stub.CheckRequest(xpb.McpRequest(service_name="billing", method="tools/call",
                                           metadata_context=struct(meta), mcp_request=struct(params)), metadata=GW)
    assert res.WhichOneof("result") == "error"
    assert res.error.code == xpb.AuthorizationError.INVALID
    assert field in res.error.reason
    assert record_count(waiting.db_url) == before


def test_only_enforcers_may_call_ext_mcp(stub: xpb_grpc.ExtMcpStub) -> None:
    with pytest.raises(grpc.RpcError) as anonymous:
        stub.CheckRequest(tools_call("read_file", {"path": "/a"}))
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as approver:
        stub.CheckRequest(tools_call("read_file", {"path": "/a"}), metadata=(("authorization", "Bearer carol-token"),))
    assert approver.value.code() == grpc.StatusCode.PERMISSION_DENIED


def _field(number: int, wire: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2), encoded by hand."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out
    return varint(number << 3 | 2) + varint(len(wire)) + wire


def test_wire_bytes_as_agentgateway_encodes_them(waiting: ServerProcess) -> None:
    # Independent of our .proto: McpRequest{service_name=1, method=2, metadata_context=3 (Struct),
    # mcp_request=4 (Struct)} as bytes, sent to the method path agentgateway calls; the answer's
    # oneof is read by field number (1 pass, 3 error; error.reason = 2).
    meta = struct({"agent": AGENT}).SerializeToString()
    def request(tool: str) -> bytes:
        params = struct({"name": tool, "arguments": {"repo": "x"}}).SerializeToString()
        return _field(1, b"git") + _field(2, b"tools/call") + _field(3, meta) + _field(4, params)
    with grpc.insecure_channel(waiting.target) as channel:
        call = channel.unary_unary("/agentgateway.dev.ext_mcp.ExtMcp/CheckRequest",
                                   request_serializer=None, response_deserializer=None)
        allowed: bytes = call(request("read_file"), metadata=GW, timeout=30)
        denied: bytes = call(request("delete_repo"), metadata=GW, timeout=30)
    assert allowed.startswith(b"\x0a\x00")              # field 1 (pass), empty message
    assert denied[:1] == b"\x1a"                         # field 3 (error)
    body = denied[2:] if denied[1] < 0x80 else denied[3:]   # AuthorizationError: code=1 varint, reason=2
    assert b"Agents never delete repositories" in body
    assert body[:2] == b"\x08\x01"                       # code = PERMISSION_DENIED (1)


def test_without_the_flag_ext_mcp_is_not_served(tmp_path: Path) -> None:
    srv = start_server(tmp_path, write_bundle(tmp_path))
    try:
        with grpc.insecure_channel(srv.target) as channel, pytest.raises(grpc.RpcError) as e:
            xpb_grpc.ExtMcpStub(channel).CheckRequest(tools_call("read_file", {"path": "/a"}), timeout=30)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        srv.stop()


def test_pending_after_the_wait_is_an_error_naming_pending(tmp_path: Path) -> None:
    srv = start_server(tmp_path, write_bundle(tmp_path), None, "--ext-mcp")   # wait 0: answer at once
    try:
        with grpc.insecure_channel(srv.target) as channel:
            stub = xpb_grpc.ExtMcpStub(channel)
            res = stub.CheckRequest(tools_call("refund", {"amount": 900, "order": "o-4"}), timeout=30)
            again = stub.CheckRequest(tools_call("refund", {"amount": 900, "order": "o-4"}), timeout=30)
        assert res.WhichOneof("result") == "error"
        decision_id = json_format.MessageToDict(res.error.mcp_error)["decision_id"]
        assert f"approval pending for refund (decision {decision_id})" in res.error.reason
        assert "Refunds above 100 need a finance approver" in res.error.reason
        # A retry while pending is the same decision (no second approval request).
        assert json_format.MessageToDict(again.error.mcp_error)["decision_id"] == decision_id
        with srv.client() as c:
            c.resolve_approval(decision_id, True, approver="user:carol")
            with grpc.insecure_channel(srv.target) as channel:
                retry = xpb_grpc.ExtMcpStub(channel).CheckRequest(
                    tools_call("refund", {"amount": 900, "order": "o-4"}), timeout=30)
            assert retry.WhichOneof("result") == "pass"   # approved: the identical call runs, once
            assert c.get_decision(decision_id).approval.state == pb.APPROVAL_CONSUMED
    finally:
        srv.stop()


def test_the_response_goes_to_the_outcome_rules_as_the_result(stub: xpb_grpc.ExtMcpStub, waiting: ServerProcess) -> None:
    # SPEC §10 round two: CheckResponse's upstream result is ReportOutcome's `result`; the bundle's
    # `on: outcome` rule labels a read whose text holds an SSN.
    res = stub.CheckRequest(tools_call("read_file", {"path": "/hr/bo"}, service="files"), metadata=GW)
    decision_id = res.metadata["decision_id"]
    stub.CheckResponse(xpb.McpResponse(
        service_name="files", method="tools/call", metadata_context=struct({"agent": AGENT, "decision_id": decision_id}),
        mcp_response=struct({"content": [{"type": "text", "text": "Bo, ssn 123-45-6789"}], "isError": False})),
        metadata=GW)
    rec = record(waiting, decision_id)
    assert (rec.outcome_status, list(rec.labels)) == ("ok", ["pii-seen"])


# ---- the map of allowed calls waiting for their CheckResponse (ExtMcpService, in process) ----------

def test_waiting_calls_are_bounded_oldest_first_and_expire_with_one_sweep_per_interval(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from decider.server import ext_mcp

    ext = ext_mcp.ExtMcpService(None, None)  # type: ignore[arg-type]  # the map needs neither
    backend = ("billing", "tools/call")
    monkeypatch.setattr(ext_mcp, "MAX_OUTSTANDING", 10)
    # 1,000 agents inside one sweep interval: the keys are swept once, not once per call.
    for i in range(1000):
        ext._remember(backend, f"agent-{i}", f"d-{i}")
    assert ext.sweeps == 1
    # Over the bound, the oldest calls went first: the 10 newest agents' calls are what is left.
    assert ext._count == 10 and list(ext._outstanding) == [(backend, f"agent-{i}") for i in range(990, 1000)]
    assert ext._take(backend, "agent-5", None) is None and ext._take(backend, "agent-995", None) == "d-995"
    # Past the TTL, at the next sweep: gone.
    monkeypatch.setattr(ext_mcp, "OUTSTANDING_TTL_S", 0.0)
    monkeypatch.setattr(ext_mcp, "SWEEP_EVERY_S", 0.0)
    ext._next_sweep = 0.0
    ext._remember(backend, "late-agent", "d-late")
    assert ext.sweeps == 2
    assert ext._count == 0 and not ext._outstanding
