"""The Queries service against a real server: filtered pages by id, one session's timeline, a live
stream of newly committed decisions, budget usage against limit, and the role checks."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from decider.v1 import decider_pb2 as pb
from decider.v1 import decider_pb2_grpc as pb_grpc

from .helpers import ServerProcess, start_server
from .stateful import REFUND_BOT, client, write_bundle, write_tokens


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("queries")
    s = start_server(tmp, write_bundle(tmp), None, "--tokens", str(write_tokens(tmp)), "--poll-interval", "0.2")
    try:
        yield s
    finally:
        s.stop()


def queries(srv: ServerProcess, token: str) -> tuple[grpc.Channel, pb_grpc.QueriesStub, tuple]:
    ch = grpc.insecure_channel(srv.target)
    return ch, pb_grpc.QueriesStub(ch), (("authorization", f"Bearer {token}"),)


def ask(srv: ServerProcess, tool: str, args: dict, agent: dict = REFUND_BOT, cost: float = 0.0) -> pb.DecideResponse:
    with client(srv, "gw-token") as c:
        return c.decide(agent=agent, tool=tool, args=args, estimated_cost=cost)


def test_session_timeline_lists_every_decision_of_the_session_in_order(srv: ServerProcess) -> None:
    agent = {**REFUND_BOT, "session_id": "sess-timeline"}
    made = [ask(srv, "work.read", {"step": 1}, agent).decision_id,
            ask(srv, "payments.refund", {"amount": 10, "order": "t-1"}, agent).decision_id,
            ask(srv, "other.tool", {"step": 3}, agent).decision_id]
    ask(srv, "work.read", {"step": 1}, {**REFUND_BOT, "session_id": "another-session"})
    ch, stub, md = queries(srv, "ana-token")
    with ch:
        resp = stub.ListDecisions(pb.ListDecisionsRequest(filter=pb.DecisionFilter(session_id="sess-timeline")),
                                  metadata=md, timeout=10)
    assert [d.decision_id for d in resp.decisions] == made
    assert [d.outcome for d in resp.decisions] == [pb.ALLOW, pb.REQUIRE_APPROVAL, pb.DENY]
    assert resp.decisions[1].approval.state == pb.APPROVAL_PENDING
    assert resp.next_after_id == made[-1]


def test_list_decisions_filters_and_pages_by_id(srv: ServerProcess) -> None:
    agent = {**REFUND_BOT, "id": "pager-bot", "session_id": "pages"}
    made = [ask(srv, "work.write", {"i": i}, agent).decision_id for i in range(5)]
    ch, stub, md = queries(srv, "admin-token")
    with ch:
        f = pb.DecisionFilter(agent_id="pager-bot", outcome=pb.ALLOW, rule_id="work-allowed", tool_name="work.write")
        first = stub.ListDecisions(pb.ListDecisionsRequest(filter=f, limit=2), metadata=md, timeout=10)
        rest = stub.ListDecisions(pb.ListDecisionsRequest(filter=f, after_id=first.next_after_id, limit=10),
                                  metadata=md, timeout=10)
        newest = stub.ListDecisions(pb.ListDecisionsRequest(filter=f, newest_first=True, limit=2),
                                    metadata=md, timeout=10)
        denied = stub.ListDecisions(pb.ListDecisionsRequest(filter=pb.DecisionFilter(agent_id="pager-bot",
                                                                                      outcome=pb.DENY)),
                                    metadata=md, timeout=10)
    assert [d.decision_id for d in first.decisions] == made[:2]
    assert [d.decision_id for d in rest.decisions] == made[2:]
    assert [d.decision_id for d in newest.decisions] == made[:2:-1][:2] == [made[4], made[3]]
    assert list(denied.decisions) == []


def test_list_decisions_names_the_bad_field(srv: ServerProcess) -> None:
    ch, stub, md = queries(srv, "ana-token")
    with ch:
        for req, field in [(pb.ListDecisionsRequest(after_id="not an id"), "after_id"),
                           (pb.ListDecisionsRequest(limit=-1), "limit"),
                           (pb.ListDecisionsRequest(filter=pb.DecisionFilter(outcome=9)), "filter.outcome")]:
            with pytest.raises(grpc.RpcError) as err:
                stub.ListDecisions(req, metadata=md, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details().startswith(field + ":"), err.value.details()


def test_queries_need_the_approver_or_admin_role(srv: ServerProcess) -> None:
    ch, stub, md = queries(srv, "gw-token")   # an enforcer
    with ch:
        with pytest.raises(grpc.RpcError) as err:
            stub.ListDecisions(pb.ListDecisionsRequest(), metadata=md, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            stub.ListBudgets(pb.ListBudgetsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_watch_decisions_streams_new_decisions_that_match_and_resumes_after_an_id(srv: ServerProcess) -> None:
    agent = {**REFUND_BOT, "id": "watched-bot", "session_id": "watch"}
    before = ask(srv, "work.read", {"n": 0}, agent).decision_id
    got: queue.Queue[pb.DecisionRecord] = queue.Queue()
    ch, stub, md = queries(srv, "ana-token")
    call = stub.WatchDecisions(pb.WatchDecisionsRequest(filter=pb.DecisionFilter(agent_id="watched-bot")),
                               metadata=md, timeout=60)

    def pump() -> None:
        try:
            for batch in call:
                for rec in batch.decisions:
                    got.put(rec)
        except grpc.RpcError:
            pass   # cancelled at the end of the test

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        time.sleep(0.5)   # the stream is open (nothing to assert on time: the ids below decide)
        ask(srv, "work.read", {"n": 1}, {**REFUND_BOT, "id": "someone-else"})
        made = [ask(srv, "work.read", {"n": i}, agent).decision_id for i in (1, 2, 3)]
        seen = [got.get(timeout=20).decision_id for _ in made]
        assert seen == made    # only the matching ones, in order, not the one made before the stream
        assert before not in seen
    finally:
        call.cancel()
        t.join(10)
        ch.close()
    # Resuming after an id replays what came after it, then goes on live.
    ch, stub, md = queries(srv, "ana-token")
    with ch:
        call = stub.WatchDecisions(pb.WatchDecisionsRequest(after_id=before,
                                                            filter=pb.DecisionFilter(agent_id="watched-bot")),
                                   metadata=md, timeout=60)
        records = (rec for batch in call for rec in batch.decisions)
        replayed = [next(records).decision_id for _ in made]
        later = ask(srv, "work.read", {"n": 4}, agent).decision_id
        assert next(records).decision_id == later
        call.cancel()
    assert replayed == made


def test_budget_usage_against_limit_per_scope(srv: ServerProcess) -> None:
    agent = {**REFUND_BOT, "id": "spender", "team": "budget-team"}
    assert ask(srv, "work.buy", {"n": 1}, agent, cost=30.0).outcome == pb.ALLOW
    ch, stub, md = queries(srv, "admin-token")
    with ch:
        resp = stub.ListBudgets(pb.ListBudgetsRequest(), metadata=md, timeout=10)
        team_only = stub.ListBudgets(pb.ListBudgetsRequest(scope="team"), metadata=md, timeout=10)
    mine = {(b.scope, b.scope_key): b for b in resp.budgets if b.scope_key in ("spender", "budget-team")}
    agent_b, team_b = mine[("agent", "spender")], mine[("team", "budget-team")]
    assert (agent_b.limit, agent_b.reserved, agent_b.remaining, agent_b.window) == (100.0, 30.0, 70.0, "total")
    assert (team_b.limit, team_b.reserved, team_b.remaining, team_b.window) == (1000.0, 30.0, 970.0, "1d")
    assert team_b.window_start.seconds > 0 and not agent_b.HasField("window_start")
    assert {b.scope for b in team_only.budgets} == {"team"}


def test_shadow_diff_without_a_shadow_bundle_compares_nothing(srv: ServerProcess) -> None:
    ch, stub, md = queries(srv, "admin-token")
    with ch:
        resp = stub.ShadowDiff(pb.ShadowDiffRequest(), metadata=md, timeout=10)
    assert resp.active.name == "controls-test" and not resp.shadow.revision
    assert (resp.compared, resp.changed, list(resp.examples)) == (0, 0, [])


def test_whoami_names_the_caller_its_roles_and_groups(srv: ServerProcess) -> None:
    ch = grpc.insecure_channel(srv.target)
    with ch:
        stub = pb_grpc.QueriesStub(ch)
        ana = stub.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", "Bearer ana-token"),), timeout=10)
        gw = stub.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", "Bearer gw-token"),), timeout=10)
        olga = stub.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", "Bearer olga-token"),), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.WhoAmI(pb.WhoAmIRequest(), metadata=(("authorization", "Bearer nope"),), timeout=10)
    assert (ana.principal, list(ana.roles), list(ana.groups), ana.authenticated) == (
        "user:ana", ["approver"], ["finance-oncall"], True)
    assert (gw.principal, list(gw.roles)) == ("service:gateway", ["enforcer"])
    assert list(olga.groups) == ["finance-oncall"]      # from the token file's `groups` map
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_shadow_diff_counts_outcomes_that_the_shadow_bundle_would_change(tmp_path) -> None:  # noqa: ANN001
    active = write_bundle(tmp_path)
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "bundle.yaml").write_text((active / "bundle.yaml").read_text().replace("1.0.0", "2.0.0"))
    # The candidate also denies work.delete: those calls change from ALLOW to DENY.
    (shadow / "controls.yaml").write_text((active / "controls.yaml").read_text().replace(
        "    - id: work-allowed", "    - id: no-deletes\n      effect: deny\n      when: tool.name == \"work.delete\"\n"
        "    - id: work-allowed"))
    s = start_server(tmp_path, active, None, "--tokens", str(write_tokens(tmp_path)), "--shadow-bundle", str(shadow))
    try:
        changed = [ask(s, "work.delete", {"n": i}).decision_id for i in range(2)]
        ask(s, "work.read", {})
        ch, stub, md = queries(s, "admin-token")
        with ch:
            resp = stub.ShadowDiff(pb.ShadowDiffRequest(), metadata=md, timeout=10)
    finally:
        s.stop()
    assert resp.shadow.version == "2.0.0" and resp.active.version == "1.0.0"
    assert (resp.compared, resp.changed) == (3, 2)
    counts = {(c.outcome, c.shadow_outcome): c.count for c in resp.counts}
    assert counts == {(pb.ALLOW, pb.DENY): 2, (pb.ALLOW, pb.ALLOW): 1}
    assert [e.decision_id for e in resp.examples] == changed[::-1]
