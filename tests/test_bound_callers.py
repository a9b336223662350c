"""Bound callers against a real server (SPEC §9): a token bound to agents/teams cannot speak for
others (PERMISSION_DENIED, recorded in auth_events); every record names its caller (GetDecision,
`decider log`); the principal that asked, or the agent under any principal prefix, cannot resolve
the approval whatever roles it holds."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.store import connect
from decider.store.auth_events import AuthEventStore
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle

TOKENS = """\
tokens:
  - {token: gw-a, principal: "service:gw-a", roles: [enforcer], agents: ["coder-*"], teams: [platform]}
  - {token: gw-any, principal: "service:gateway", roles: [enforcer]}
  - {token: mallory, principal: "user:mallory", roles: [enforcer, approver], groups: [finance-oncall]}
  - {token: ana, principal: "user:ana", roles: [approver], groups: [finance-oncall]}
  - {token: as-user, principal: "user:refund-bot", roles: [approver], groups: [finance-oncall]}
  - {token: as-agent, principal: "agent:refund-bot", roles: [approver], groups: [finance-oncall]}
  - {token: as-bare, principal: "refund-bot", roles: [approver], groups: [finance-oncall]}
  - {token: as-service, principal: "service:refund-bot", roles: [approver], groups: [finance-oncall]}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("bound")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(TOKENS)
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens))
    try:
        yield s
    finally:
        s.stop()


def code_of(fn) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_a_bound_gateway_token_cannot_speak_for_another_teams_agent(srv: ServerProcess) -> None:
    with client(srv, "gw-a") as gw:
        ok = gw.decide(agent={"id": "coder-7", "team": "platform"}, tool="work.build")
        assert ok.outcome == pb.ALLOW
        assert gw.get_decision(ok.decision_id).caller == "service:gw-a"
        with pytest.raises(grpc.RpcError) as err:
            gw.decide(agent=REFUND_BOT, tool="work.build")
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "service:gw-a may not ask for agent 'refund-bot'" in (err.value.details() or "")
        # The right agent id in the wrong team, and a case variant of an allowed id.
        assert code_of(lambda: gw.decide(agent={"id": "coder-7", "team": "finance"}, tool="work.build")) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: gw.decide(agent={"id": "Coder-7", "team": "platform"}, tool="work.build")) == \
            grpc.StatusCode.PERMISSION_DENIED
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["principal"] == "service:gw-a"]
    assert [(e["method"], e["code"]) for e in events] == [("/decider.v1.Decider/Decide", "PERMISSION_DENIED")] * 3
    assert "bound to teams ['platform']" in events[1]["detail"]
    with client(srv, "gw-any") as gw:   # an unbound token may still ask for anyone
        assert gw.decide(agent=REFUND_BOT, tool="work.build").outcome == pb.ALLOW


def test_a_bound_token_on_decide_stream_gets_permission_denied_per_message(srv: ServerProcess) -> None:
    ok = pb.DecideRequest(agent=pb.Agent(id="coder-9", team="platform"), tool=pb.ToolCall(name="work.x"),
                          request=pb.Request(id="r-ok"))
    other = pb.DecideRequest(agent=pb.Agent(id="refund-bot", team="finance"), tool=pb.ToolCall(name="work.x"),
                             request=pb.Request(id="r-other"))
    with grpc.insecure_channel(srv.target) as ch:
        call = ch.stream_stream("/decider.v1.Decider/DecideStream", request_serializer=pb.DecideRequest.SerializeToString,
                                response_deserializer=pb.DecideResponse.FromString)
        replies = {r.request_id: r for r in call(iter([ok, other]), metadata=[("authorization", "Bearer gw-a")],
                                                  timeout=30)}
    assert replies["r-ok"].outcome == pb.ALLOW and not replies["r-ok"].HasField("error")
    assert replies["r-other"].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["method"].endswith("/DecideStream")]
    assert events and events[-1]["code"] == "PERMISSION_DENIED"


def test_a_bound_token_on_decide_batch_stream_gets_permission_denied_per_call(srv: ServerProcess) -> None:
    ok = pb.DecideRequest(agent=pb.Agent(id="coder-9", team="platform"), tool=pb.ToolCall(name="work.x"),
                          request=pb.Request(id="b-ok"))
    other = pb.DecideRequest(agent=pb.Agent(id="refund-bot", team="finance"), tool=pb.ToolCall(name="work.x"),
                             request=pb.Request(id="b-other"))
    with grpc.insecure_channel(srv.target) as ch:
        call = ch.stream_stream("/decider.v1.Decider/DecideBatchStream",
                                request_serializer=pb.DecideBatch.SerializeToString,
                                response_deserializer=pb.DecideBatchResponse.FromString)
        (reply,) = list(call(iter([pb.DecideBatch(requests=[other, ok])]),
                             metadata=[("authorization", "Bearer gw-a")], timeout=30))
    refused, allowed = reply.responses
    assert refused.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not refused.decision_id
    assert allowed.outcome == pb.ALLOW and allowed.request_id == "b-ok"
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["method"].endswith("/DecideBatchStream")]
    assert events and events[-1]["code"] == "PERMISSION_DENIED"


def test_the_caller_is_recorded_and_shown_by_get_decision_and_decider_log(srv: ServerProcess) -> None:
    with client(srv, "gw-any") as gw:
        resp = gw.decide(agent={"id": "log-bot", "team": "ops"}, tool="work.logme")
        assert gw.get_decision(resp.decision_id).caller == "service:gateway"
    out = subprocess.run([sys.executable, "-m", "decider", "log", "--db", srv.db_url, "--agent", "log-bot"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].endswith("caller")
    assert out.stdout.splitlines()[1].split()[-1] == "service:gateway"
    out = subprocess.run([sys.executable, "-m", "decider", "log", "--db", srv.db_url, "--agent", "log-bot",
                          "--format", "jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert json.loads(out.stdout.splitlines()[0])["caller"] == "service:gateway"


def test_the_principal_that_asked_cannot_approve_through_role_overlap(srv: ServerProcess) -> None:
    with client(srv, "mallory") as m:
        # Mallory asks as some other agent (unbound enforcer), then tries to approve it herself.
        asked = m.decide(agent={"id": "other-bot", "team": "finance"}, tool="payments.refund",
                         args={"amount": 9000})
        assert asked.outcome == pb.REQUIRE_APPROVAL
        assert m.get_decision(asked.decision_id).caller == "user:mallory"
        with pytest.raises(grpc.RpcError) as err:
            m.resolve_approval(asked.decision_id, True)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "user:mallory asked for this call" in (err.value.details() or "")
    with client(srv, "ana") as ana:   # someone else in the group may
        assert ana.resolve_approval(asked.decision_id, True).approval.state == pb.APPROVAL_APPROVED


@pytest.mark.parametrize("token", ["as-user", "as-agent", "as-bare", "as-service"])
def test_the_asking_agent_cannot_approve_under_any_principal_prefix(srv: ServerProcess, token: str) -> None:
    with client(srv, "gw-any") as gw:
        asked = gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 100, "token": token})
        assert asked.outcome == pb.REQUIRE_APPROVAL
    with client(srv, token) as bot:
        assert code_of(lambda: bot.resolve_approval(asked.decision_id, True)) == grpc.StatusCode.PERMISSION_DENIED
    with client(srv, "ana") as ana:
        assert ana.resolve_approval(asked.decision_id, False).approval.state == pb.APPROVAL_REJECTED


def test_a_bound_token_entry_with_a_bad_binding_is_refused(tmp_path: Path) -> None:
    from decider.server.auth import TokenFileError, load_token_file

    bad = tmp_path / "t.yaml"
    bad.write_text('tokens:\n  - {token: x, principal: "service:gw", roles: [enforcer], agents: "coder-*"}\n')
    with pytest.raises(TokenFileError, match=r"tokens\[0\]: 'agents' must be a list of non-empty globs"):
        load_token_file(bad)
