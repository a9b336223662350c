"""Roles against a real server: bearer tokens, UNAUTHENTICATED / PERMISSION_DENIED (both recorded),
and the loopback-only rule when there is no token file."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from decider.server.auth import required_roles
from decider.store import connect
from decider.store.auth_events import AuthEventStore
from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server
from .stateful import client, write_bundle, write_tokens


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    s = start_server(tmp, write_bundle(tmp), module_db_url, "--tokens", str(write_tokens(tmp)))
    try:
        yield s
    finally:
        s.stop()


def code_of(fn) -> grpc.StatusCode:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code()


def test_missing_or_wrong_token_is_unauthenticated_and_recorded(srv: ServerProcess) -> None:
    with client(srv, None) as c:
        assert code_of(lambda: c.decide(agent={"id": "a"}, tool="work.do")) == grpc.StatusCode.UNAUTHENTICATED
    with client(srv, "not-a-token") as c:
        assert code_of(lambda: c.get_decision("x")) == grpc.StatusCode.UNAUTHENTICATED
    events = AuthEventStore(connect(srv.db_url)).all()
    assert [(e["method"], e["code"]) for e in events][:2] == [
        ("/decider.v1.Decider/Decide", "UNAUTHENTICATED"), ("/decider.v1.Decider/GetDecision", "UNAUTHENTICATED")]
    assert "missing bearer token" in events[0]["detail"] and events[1]["detail"] == "unknown token"


def test_wrong_role_is_permission_denied_and_recorded(srv: ServerProcess) -> None:
    with client(srv, "ana-token") as approver:
        assert code_of(lambda: approver.decide(agent={"id": "a"}, tool="work.do")) == \
            grpc.StatusCode.PERMISSION_DENIED
    with client(srv, "admin-token") as admin:
        assert code_of(lambda: admin.resolve_approval("x", True)) == grpc.StatusCode.PERMISSION_DENIED
    with client(srv, "gw-token") as gw:
        assert code_of(gw.list_kill_switches) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(gw.list_approvals) == grpc.StatusCode.PERMISSION_DENIED
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["code"] == "PERMISSION_DENIED"]
    assert [(e["principal"], e["method"].rsplit("/", 1)[1]) for e in events] == [
        ("user:ana", "Decide"), ("user:root", "ResolveApproval"), ("service:gateway", "ListKillSwitches"),
        ("service:gateway", "ListApprovals")]
    assert "needs role enforcer" in events[0]["detail"]


def test_each_role_reaches_its_methods(srv: ServerProcess) -> None:
    with client(srv, "gw-token") as gw:
        d = gw.decide(agent={"id": "a"}, tool="work.do")
        assert gw.get_decision(d.decision_id).decision_id == d.decision_id
        assert gw.report_outcome(d.decision_id, 0).outcome_status == "ok"
    with client(srv, "ana-token") as ana:
        assert ana.get_decision(d.decision_id).decision_id == d.decision_id
        ana.list_approvals()
    with client(srv, "admin-token") as admin:
        admin.list_kill_switches()


def test_every_control_method_is_admin_only() -> None:
    for m in pb.DESCRIPTOR.services_by_name["Control"].methods:
        assert required_roles(f"/decider.v1.Control/{m.name}") == {"admin"}
    assert required_roles("/decider.v1.Decider/Decide") == {"enforcer"}
    assert required_roles("/decider.v1.Decider/SomethingNew") == {"admin"}   # unknown: fail closed
    assert required_roles("/grpc.health.v1.Health/Check") is None


def test_health_needs_no_token(srv: ServerProcess) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_without_a_token_file_the_server_warns_loudly_on_loopback(tmp_path: Path) -> None:
    s = start_server(tmp_path, write_bundle(tmp_path))
    try:
        with s.client() as c:
            assert c.decide(agent={"id": "a"}, tool="work.do").outcome == pb.ALLOW
    finally:
        s.stop()
    assert "NO AUTHENTICATION" in s.log() and '"level": "warning"' in s.log()


def test_without_a_token_file_a_non_loopback_listen_refuses_to_start(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "decider", "serve", "--bundle", str(write_bundle(tmp_path)),
                          "--db", f"sqlite:///{tmp_path / 'x.db'}", "--listen", "0.0.0.0:0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "refusing to listen on 0.0.0.0:0 without --tokens" in out.stderr


def test_a_broken_token_file_is_refused_with_the_reason(tmp_path: Path) -> None:
    bad = tmp_path / "tokens.yaml"
    bad.write_text("tokens:\n  - {token: t, principal: user:x, roles: [root]}\n")
    out = subprocess.run([sys.executable, "-m", "decider", "serve", "--bundle", str(write_bundle(tmp_path)),
                          "--db", f"sqlite:///{tmp_path / 'x.db'}", "--tokens", str(bad)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "tokens[0]: roles must be" in out.stderr


def test_two_authorization_headers_are_unauthenticated_even_if_one_is_valid(srv: ServerProcess) -> None:
    with grpc.insecure_channel(srv.target) as ch:
        get = ch.unary_unary("/decider.v1.Decider/GetDecision",
                             request_serializer=pb.GetDecisionRequest.SerializeToString,
                             response_deserializer=pb.DecisionRecord.FromString)
        for pair in (("Bearer not-a-token", "Bearer admin-token"), ("Bearer admin-token", "Bearer not-a-token"),
                     ("Bearer admin-token", "Bearer admin-token")):
            with pytest.raises(grpc.RpcError) as err:
                get(pb.GetDecisionRequest(decision_id="x"), timeout=10,
                    metadata=[("authorization", pair[0]), ("authorization", pair[1])])
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, pair
            assert "more than one 'authorization' header" in err.value.details()
    events = AuthEventStore(connect(srv.db_url)).all()
    assert sum("more than one" in e["detail"] for e in events) == 3
