"""Issue 24 item 2: a token bound to agent A reaches only A's decisions, on every RPC. Before the
fix, a token bound to `coder-*` could GetDecision, WatchDecision and ReportOutcome (actual_cost=1e9,
label `secret-read`) a decision of `refund-bot`, and a bound approver listed and resolved anyone's
approvals. Real server, real SQLite file, real tokens."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from decider.store import connect
from decider.store.auth_events import AuthEventStore
from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle

TOKENS = """\
tokens:
  - {token: gw-a, principal: "service:gw-a", roles: [enforcer], agents: ["coder-*"]}
  - {token: gw-any, principal: "service:gateway", roles: [enforcer]}
  - {token: appr-a, principal: "user:lead-a", roles: [approver], agents: ["coder-*"], groups: [finance-oncall]}
  - {token: team-a, principal: "user:team-a", roles: [approver], teams: [platform]}
"""

CODER = {"id": "coder-7", "team": "platform"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("bound-reads")
    tokens = tmp / "tokens.yaml"
    tokens.write_text(TOKENS)
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(tokens))
    try:
        yield s
    finally:
        s.stop()


def _refused(fn) -> str:  # noqa: ANN001
    with pytest.raises(grpc.RpcError) as err:
        fn()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    return err.value.details() or ""


def _md(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def test_a_bound_enforcer_cannot_read_watch_or_report_on_another_agents_decision(srv: ServerProcess) -> None:
    with client(srv, "gw-any") as gw:
        theirs = gw.decide(agent=REFUND_BOT, tool="work.build").decision_id
    with client(srv, "gw-a") as gw:
        mine = gw.decide(agent=CODER, tool="work.build").decision_id
        assert gw.get_decision(mine).agent.id == "coder-7"
        detail = _refused(lambda: gw.get_decision(theirs))
        assert "refund-bot" not in detail and "finance" not in detail   # names neither the agent nor its team
        _refused(lambda: gw.report_outcome(theirs, 1e9, labels=["secret-read"]))
        assert gw.report_outcome(mine, 1.0).actual_cost == 1.0
    with grpc.insecure_channel(srv.target) as ch:
        watch = ch.unary_stream("/decider.v1.Decider/WatchDecision",
                                request_serializer=pb.GetDecisionRequest.SerializeToString,
                                response_deserializer=pb.DecisionRecord.FromString)
        _refused(lambda: list(watch(pb.GetDecisionRequest(decision_id=theirs), metadata=_md("gw-a"), timeout=10)))
        first = next(iter(watch(pb.GetDecisionRequest(decision_id=mine), metadata=_md("gw-a"), timeout=10)))
        assert first.decision_id == mine
    with client(srv, "gw-any") as gw:   # nothing was charged or labelled on the other agent's decision
        rec = gw.get_decision(theirs)
        assert rec.actual_cost == 0 and not rec.outcome_status and "secret-read" not in rec.labels
    events = [e for e in AuthEventStore(connect(srv.db_url)).all() if e["principal"] == "service:gw-a"]
    assert {e["method"].rsplit("/", 1)[1] for e in events} >= {"GetDecision", "ReportOutcome", "WatchDecision"}
    assert all(e["code"] == "PERMISSION_DENIED" for e in events)


def test_a_bound_approver_lists_and_resolves_only_its_own_agents_approvals(srv: ServerProcess) -> None:
    with client(srv, "gw-any") as gw:
        theirs = gw.decide(agent=REFUND_BOT, tool="payments.refund", args={"amount": 5}).decision_id
        mine = gw.decide(agent=CODER, tool="payments.refund", args={"amount": 6}).decision_id
    with client(srv, "appr-a") as lead:
        listed = {r.decision_id for r in lead._stub.ListApprovals(pb.ListApprovalsRequest(), metadata=_md("appr-a"),
                                                                   timeout=10).approvals}
        assert mine in listed and theirs not in listed
        _refused(lambda: lead.resolve_approval(theirs, True))
        assert lead.resolve_approval(mine, True).approval.state == pb.APPROVAL_APPROVED
    with client(srv, "gw-any") as gw:
        assert gw.get_decision(theirs).approval.state == pb.APPROVAL_PENDING


@pytest.mark.parametrize("token", ["appr-a", "team-a"])
def test_bound_readers_list_and_watch_only_their_own_agents_decisions(srv: ServerProcess, token: str) -> None:
    with client(srv, "gw-any") as gw:
        gw.decide(agent=REFUND_BOT, tool="work.read")
        gw.decide(agent={"id": "coder-8", "team": "platform"}, tool="work.read")
    with grpc.insecure_channel(srv.target) as ch:
        q = pb_grpc.QueriesStub(ch)
        listed = q.ListDecisions(pb.ListDecisionsRequest(limit=500), metadata=_md(token), timeout=10)
        assert listed.decisions and {d.agent.id for d in listed.decisions} <= {"coder-7", "coder-8"}
        assert listed.next_after_id   # paging goes on past the page read
        stream = q.WatchDecisions(pb.WatchDecisionsRequest(after_id="0"), metadata=_md(token), timeout=10)
        batch = next(iter(stream))
        stream.cancel()
        assert batch.decisions and {d.agent.id for d in batch.decisions} <= {"coder-7", "coder-8"}
        _refused(lambda: q.ListBudgets(pb.ListBudgetsRequest(), metadata=_md(token), timeout=10))
        _refused(lambda: q.ShadowDiff(pb.ShadowDiffRequest(), metadata=_md(token), timeout=10))
