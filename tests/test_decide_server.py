"""Decide and GetDecision against a real server on an ephemeral loopback port."""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from decider.bundle.compile import load_bundle
from decider.client import build_request
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import POLICIES, ServerProcess

CODER = {"id": "coder-7", "team": "platform", "model": "claude-opus-4", "capabilities": ["shell"]}
FINANCE = {"id": "refund-bot", "team": "finance", "model": "gpt-5", "owner": "user:ana"}


def count_records(srv: ServerProcess) -> int:
    with sqlite3.connect(srv.db_url.removeprefix("sqlite:///")) as db:
        return db.execute("select count(*) from decisions").fetchone()[0]


def test_allow_deny_and_require_approval_come_back_with_rule_ids(server: ServerProcess) -> None:
    with server.client() as c:
        allow = c.decide(agent=CODER, tool="fs.write", args={"path": "/workspace/a.txt"})
        deny = c.decide(agent=CODER, tool="shell.exec", args={"command": "rm -rf /"})
        approve = c.decide(agent=FINANCE, tool="payments.refund", args={"amount": 2500}, estimated_cost=5.0)
    assert allow.outcome == pb.ALLOW and allow.deciding_rule == "fs-write-workspace"
    assert [r.rule_id for r in allow.reasons] == ["fs-write-workspace"]
    assert deny.outcome == pb.DENY and deny.reasons[0].rule_id == "shell-deny-destructive"
    assert deny.reasons[0].text == "Destructive shell commands are never run by agents"
    assert approve.outcome == pb.REQUIRE_APPROVAL
    assert approve.reasons[0].rule_id == "refund-needs-approval-above-1000"
    assert list(approve.approval.approvers) == ["group:finance-oncall"]
    assert approve.approval.state == pb.APPROVAL_PENDING
    assert approve.approval.expires_at.seconds > 0
    revision = load_bundle(POLICIES).revision
    for resp in (allow, deny, approve):
        assert resp.bundle.name == "acme-agents" and resp.bundle.revision == revision
        assert len(resp.decision_id) == 26
    assert allow.decision_id < deny.decision_id < approve.decision_id  # time-sortable


def test_get_decision_returns_the_stored_record(server: ServerProcess) -> None:
    with server.client() as c:
        resp = c.decide(agent=FINANCE, tool="payments.refund", args={"amount": 2500, "order": "o-1"},
                        estimated_cost=5.0, environment="production", request_id="req-1", server="mcp://billing",
                        call_id="call-9", context={"ticket": "T-1"})
        rec = c.get_decision(resp.decision_id)
    assert rec.decision_id == resp.decision_id
    assert rec.outcome == pb.REQUIRE_APPROVAL
    assert rec.bundle.revision == load_bundle(POLICIES).revision and rec.bundle.version == "1.0.0"
    assert (rec.agent.id, rec.agent.team, rec.agent.owner) == ("refund-bot", "finance", "user:ana")
    assert (rec.tool_name, rec.tool_server, rec.call_id) == ("payments.refund", "mcp://billing", "call-9")
    assert dict(rec.args) == {"amount": 2500.0, "order": "o-1"}
    assert dict(rec.context) == {"ticket": "T-1"}
    assert rec.risk_tier == 4  # from the catalogue ("payments.*")
    assert rec.deciding_rule == "refund-needs-approval-above-1000"
    assert list(rec.matched_rules) == ["refund-needs-approval-above-1000"]
    assert (rec.request_id, rec.environment, rec.estimated_cost) == ("req-1", "production", 5.0)
    assert rec.approval.state == pb.APPROVAL_PENDING
    assert list(rec.approval.approvers) == ["group:finance-oncall"]
    assert rec.args_hash == ""  # the keyed binding hash is never returned (issue 12.6)
    assert rec.time.seconds > 0


def test_unknown_decision_is_not_found(server: ServerProcess) -> None:
    with server.client() as c, pytest.raises(grpc.RpcError) as err:
        c.get_decision("01ARZ3NDEKTSV4RRFFQ69G5FAV")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def nested(depth: int) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.fields["leaf"].string_value = "x"
    for _ in range(depth):
        outer = struct_pb2.Struct()
        outer.fields["n"].struct_value.CopyFrom(s)
        s = outer
    return s


def raw_call(server: ServerProcess, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary("/decider.v1.Decider/Decide")
        with pytest.raises(grpc.RpcError) as err:
            call(payload, timeout=10)
    return err.value


def bad_requests() -> list[tuple[str, bytes, str]]:
    ok = build_request(agent=CODER, tool="fs.read", args={"path": "/workspace/x"})
    no_name = pb.DecideRequest()
    no_name.CopyFrom(ok)
    no_name.tool.name = ""
    deep = pb.DecideRequest()
    deep.CopyFrom(ok)
    deep.tool.args.CopyFrom(nested(200))
    huge = pb.DecideRequest()
    huge.CopyFrom(ok)
    huge.tool.args.update({"blob": "x" * (10 * 1024 * 1024)})
    tier = pb.DecideRequest()
    tier.CopyFrom(ok)
    tier.tool.risk_tier = 9
    cost = pb.DecideRequest()
    cost.CopyFrom(ok)
    cost.request.estimated_cost = float("nan")
    no_agent = pb.DecideRequest(tool=pb.ToolCall(name="fs.read"))
    # Field 2 (tool) sent as a varint instead of a message: the wire types disagree.
    wrong_wire = ok.SerializeToString() + bytes([0x10, 0x05])
    # tool.args (field 3 of field 2) holding bytes that are not a Struct.
    garbage_args = bytes([0x12, 0x05, 0x0A, 0x01, 0x78, 0x1A, 0x00]) + bytes([0x12, 0x04, 0x1A, 0x02, 0xFF, 0xFF])
    return [
        ("missing tool name", no_name.SerializeToString(), "tool.name: is required"),
        ("arguments nested 200 deep", deep.SerializeToString(), "tool.args: cannot be decoded"),
        ("a 10 MB argument", huge.SerializeToString(), "tool.args.blob: tool.args is 10485805 bytes; the limit is 1048576 bytes"),
        ("risk tier out of range", tier.SerializeToString(), "tool.risk_tier: is 9; must be 0..4"),
        ("cost not a number", cost.SerializeToString(), "request.estimated_cost: is nan"),
        ("no agent", no_agent.SerializeToString(), "agent: is required"),
        ("wrong wire type for tool", wrong_wire, "tool: has the wrong type: sent as a varint"),
        ("args that are not a Struct", garbage_args, "tool.args"),
    ]


@pytest.mark.parametrize(("label", "payload", "message"), bad_requests(), ids=[b[0] for b in bad_requests()])
def test_malformed_requests_get_invalid_argument_naming_the_field_and_leave_no_record(
    server: ServerProcess, label: str, payload: bytes, message: str
) -> None:
    before = count_records(server)
    err = raw_call(server, payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (label, err.details())
    assert err.details().startswith(message), err.details()
    assert count_records(server) == before
    with server.client() as c:  # still serving
        assert c.decide(agent=CODER, tool="fs.read", args={"path": "/workspace/x"}).outcome == pb.ALLOW


def test_masked_arguments_never_reach_the_database_file(server: ServerProcess) -> None:
    secret = "hunter2-very-secret-password-0f9a"
    with server.client() as c:
        resp = c.decide(agent=FINANCE, tool="payments.refund",
                        args={"amount": 10, "password": secret, "api_key": secret + "-key"}, estimated_cost=1.0)
        rec = c.get_decision(resp.decision_id)
    assert rec.args["password"] == "[masked]" and rec.args["api_key"] == "[masked]"
    assert rec.args["amount"] == 10
    db_path = server.db_url.removeprefix("sqlite:///")
    blob = b""
    for suffix in ("", "-wal", "-shm"):
        try:
            with open(db_path + suffix, "rb") as f:
                blob += f.read()
        except FileNotFoundError:
            pass
    assert blob and secret.encode() not in blob
    assert secret.encode() not in server.log_path.read_bytes()


def test_health_and_reflection(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(iter(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                   timeout=5)))
    names = {s.name for s in resp.list_services_response.service}
    assert {"decider.v1.Decider", "grpc.health.v1.Health"} <= names


def test_dry_run_is_recorded_and_marked(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.target) as ch:
        stub = pb_grpc.DeciderStub(ch)
        resp = stub.Decide(build_request(agent=CODER, tool="fs.read", args={"path": "/workspace/x"}, dry_run=True))
        rec = stub.GetDecision(pb.GetDecisionRequest(decision_id=resp.decision_id))
    assert resp.dry_run and rec.dry_run and rec.outcome == pb.ALLOW
