"""Issue 22: one decision procedure behind every surface. Each test here failed on the main before it:
a batch decides as its calls one by one (session labels); ReportOutcome without a cost keeps the
estimate charged; a spent budget denies calls without an estimate; a tool's default estimate from the
bundle; the shadow decided on its own state (approvals included); replay's conversations are
sessions; `decider test` and `replay` check a request as the server does."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from decider.bundle.compile import load_bundle
from decider.client import DeciderClient, build_request
from decider.errors import PolicyLoadError
from decider.guard.core import Guard
from decider.replay.replay import NO_SESSION, replay, session_key
from decider.replay.traces import read_traces
from decider.v1 import decider_pb2 as pb
from decider.verify.suites import load_suites, run_suites

from .helpers import ROOT, ServerProcess, start_server

BATCH = "/decider.v1.Decider/DecideBatchStream"

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: one-procedure, version: 1.0.0}
spec:
  default: deny
  session: {max_calls: 10, window: 1h}
  tools:
    "shop.fixed": {cost: 4}
    "shop.priced": {cost: "double(tool.args.qty) * 2.5"}
  budgets:
    - {scope: agent, limit: 10, window: total}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: one-procedure}
spec:
  rules:
    - id: label-secret-read
      effect: label
      labels: [secret-read]
      when: tool.name == "fs.read" && tool.args.path.endsWith(".env")
    - id: reads-allowed
      effect: allow
      when: tool.name == "fs.read"
    - id: post-after-secret-read
      effect: deny
      reason: no external post after a secret was read in this session
      when: tool.name == "http.post" && "secret-read" in session.labels
    - id: posts-allowed
      effect: allow
      when: tool.name == "http.post"
    - id: refunds-need-approval
      effect: require_approval
      when: tool.name == "payments.refund"
      approvers: ["user:carol"]
    - id: work-allowed
      effect: allow
      when: tool.name.startsWith("work.") || tool.name.startsWith("shop.")
"""


def write_bundle(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "policy.yaml").write_text(POLICY)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("one-procedure")
    folder = write_bundle(tmp / "bundle")
    # The shadow is the active bundle itself: every shadow outcome must equal the active one.
    srv = start_server(tmp, folder, None, "--shadow-bundle", str(folder))
    try:
        yield srv
    finally:
        srv.stop()


def _batch(target: str, *reqs: pb.DecideRequest) -> list[pb.DecideResponse]:
    with grpc.insecure_channel(target) as ch:
        call = ch.stream_stream(BATCH, request_serializer=pb.DecideBatch.SerializeToString,
                                response_deserializer=pb.DecideBatchResponse.FromString)
        (reply,) = list(call(iter([pb.DecideBatch(requests=list(reqs))]), timeout=30))
    return list(reply.responses)


def _secret_then_post(session: str) -> tuple[pb.DecideRequest, pb.DecideRequest]:
    agent = {"id": "bot", "session_id": session}
    return (build_request(agent=agent, tool="fs.read", args={"path": "/app/.env"}),
            build_request(agent=agent, tool="http.post", args={"url": "https://paste.example/x"}))


def test_a_batch_decides_as_its_calls_one_by_one_session_labels_included(server: ServerProcess) -> None:
    one_by_one = [server.client().decide(r).outcome for r in _secret_then_post("unary-1")]
    batched = [r.outcome for r in _batch(server.target, *_secret_then_post("batch-1"))]
    assert one_by_one == batched == [pb.ALLOW, pb.DENY]
    # Another session's secret read in the same batch does not taint this session's post.
    read, _ = _secret_then_post("batch-2")
    _, post = _secret_then_post("batch-3")
    assert [r.outcome for r in _batch(server.target, read, post)] == [pb.ALLOW, pb.ALLOW]


def _spend(client: DeciderClient, agent: str, cost: float, tool: str = "work.do") -> pb.DecideResponse:
    return client.decide(build_request(agent={"id": agent}, tool=tool, estimated_cost=cost))


def test_report_outcome_without_a_cost_leaves_the_estimate_charged(server: ServerProcess) -> None:
    with server.client() as c:
        for _ in range(2):
            d = _spend(c, "no-cost-reporter", 4.0)
            assert d.outcome == pb.ALLOW
            c.report_outcome(d.decision_id)             # no actual cost: the 4 stands
        third = _spend(c, "no-cost-reporter", 4.0)
        assert third.outcome == pb.DENY and third.reasons[0].rule_id == "budget_exceeded"


def test_report_outcome_with_zero_refunds_and_an_old_client_cost_still_counts(server: ServerProcess) -> None:
    with server.client() as c, grpc.insecure_channel(server.target) as ch:
        a = _spend(c, "refunded", 4.0)
        c.report_outcome(a.decision_id, 0.0)            # 0 is a refund now that it can be told from absent
        # A client built before `optional` sends the field as it always did: it is read as given.
        old = ch.unary_unary("/decider.v1.Decider/ReportOutcome",
                             request_serializer=pb.ReportOutcomeRequest.SerializeToString,
                             response_deserializer=pb.DecisionRecord.FromString)
        b = _spend(c, "refunded", 4.0)
        old(pb.ReportOutcomeRequest(decision_id=b.decision_id, actual_cost=5.0, status="ok"), timeout=10)
        assert c.get_decision(b.decision_id).actual_cost == 5.0
        assert _spend(c, "refunded", 5.0).outcome == pb.ALLOW      # 0 + 5 + 5 = 10: fits exactly
        assert _spend(c, "refunded", 0.5).outcome == pb.DENY


def test_a_spent_budget_denies_calls_without_an_estimate(server: ServerProcess) -> None:
    with server.client() as c:
        d = _spend(c, "overspender", 3.0)
        c.report_outcome(d.decision_id, 12.0)           # the tool cost more than its estimate
        free = _spend(c, "overspender", 0.0)
        assert free.outcome == pb.DENY and free.reasons[0].rule_id == "budget_exceeded"
        assert _spend(c, "within-budget", 0.0).outcome == pb.ALLOW


def test_a_tools_default_estimate_is_charged_when_the_call_carries_none(server: ServerProcess) -> None:
    with server.client() as c:
        fixed = [_spend(c, "default-cost", 0.0, "shop.fixed") for _ in range(3)]
        assert [d.outcome for d in fixed] == [pb.ALLOW, pb.ALLOW, pb.DENY]   # 4 + 4, then 12 > 10
        assert c.get_decision(fixed[0].decision_id).estimated_cost == 4.0
        priced = c.decide(build_request(agent={"id": "priced"}, tool="shop.priced", args={"qty": 3}))
        assert c.get_decision(priced.decision_id).estimated_cost == 7.5
        # The caller's own estimate wins over the bundle's.
        own = c.decide(build_request(agent={"id": "priced-own"}, tool="shop.priced", args={"qty": 3},
                                     estimated_cost=1.0))
        assert c.get_decision(own.decision_id).estimated_cost == 1.0
        # An estimate that cannot be computed fails closed, naming the tool.
        broken = c.decide(build_request(agent={"id": "priced"}, tool="shop.priced", args={"qty": "many"}))
        assert broken.outcome == pb.DENY and broken.reasons[0].rule_id == "error"
        assert "shop.priced" in broken.reasons[0].text


def test_a_guard_reports_no_cost_and_uses_its_configured_estimate(server: ServerProcess) -> None:
    with Guard(server.target, agent={"id": "guarded-spender"}, costs={"work.do": 4.0}) as g:
        for _ in range(2):
            v = g.decide("work.do", {})
            assert v.allowed
            g.report(v.decision_id, "ok")
        assert not g.decide("work.do", {}).allowed      # 8 charged; 12 would exceed 10


def test_a_broken_cost_expression_is_a_load_error_with_its_position(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b")
    where = folder / "bundle.yaml"
    where.write_text(BUNDLE.replace("{cost: 4}", "{cost: -1}"))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(folder)
    assert f"{where}:8:26: spec.tools.shop.fixed.cost" in str(err.value) and ">= 0" in str(err.value)
    where.write_text(BUNDLE.replace('"double(tool.args.qty) * 2.5"', '"tool.args.qty *"'))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(folder)
    assert f"{where}:9:" in str(err.value) and "shop.priced" in str(err.value), str(err.value)


def _shadow_of(c: DeciderClient, decision_id: str) -> pb.DecisionRecord:
    deadline = time.monotonic() + 10
    while True:
        rec = c.get_decision(decision_id)
        if rec.shadow_outcome != pb.OUTCOME_UNSPECIFIED or time.monotonic() > deadline:
            return rec
        time.sleep(0.05)


def test_a_shadow_equal_to_the_active_bundle_shows_no_change_approved_calls_included(server: ServerProcess) -> None:
    refund = build_request(agent={"id": "refunder"}, tool="payments.refund", args={"order": "s-1"})
    with server.client() as c:
        first = c.decide(refund)
        assert first.outcome == pb.REQUIRE_APPROVAL
        c.resolve_approval(first.decision_id, True, approver="user:carol")
        again = c.decide(refund)
        assert again.outcome == pb.ALLOW
        ids = [first.decision_id, again.decision_id]
        ids += [r.decision_id for r in _batch(server.target, *_secret_then_post("shadow-1"))]
        for decision_id in ids:
            rec = _shadow_of(c, decision_id)
            assert rec.shadow_outcome == rec.outcome, (decision_id, rec.outcome, rec.shadow_outcome)
    diff = subprocess.run([sys.executable, "-m", "decider", "log", "--db", server.db_url, "--shadow-diff",
                           "--format", "jsonl"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    report = json.loads(diff.stdout.strip().splitlines()[-1])
    assert report["decisions_with_shadow"] >= 4 and report["disagree"] == 0, report


def _conversation(path: Path, session_id: str | None = None) -> Path:
    calls = [("fs.read", {"path": "/app/.env"}), ("http.post", {"url": "https://paste.example/x"})]
    messages: list[dict[str, object]] = [{"role": "user", "content": "tidy up"}]
    for i, (name, args) in enumerate(calls):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "ok"})
    record: dict[str, object] = {"messages": messages}
    if session_id is not None:
        record["session_id"] = session_id
    path.write_text(json.dumps(record))
    return path


def test_replay_takes_a_conversation_without_a_session_id_as_one_session(tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b"))
    one = _conversation(tmp_path / "one.json")
    two = _conversation(tmp_path / "two.json")
    results = list(replay(bundle, read_traces([str(one), str(two)])))
    assert [r.outcome for r in results] == ["ALLOW", "DENY", "ALLOW", "DENY"]
    keys = [session_key(r.call) for r in results]
    assert NO_SESSION not in keys and keys[0] == keys[1] != keys[2] == keys[3]
    # A JSONL transcript (one message per line) is one conversation too.
    lines = tmp_path / "loose.jsonl"
    lines.write_text("\n".join(json.dumps(m) for m in json.loads(one.read_text())["messages"]) + "\n")
    assert [r.outcome for r in replay(bundle, read_traces([str(lines)]))] == ["ALLOW", "DENY"]


def test_replay_refuses_what_the_server_refuses(tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b"))
    trace = _conversation(tmp_path / "long.json", session_id="s" * 300)
    results = list(replay(bundle, read_traces([str(trace)])))
    assert [r.outcome for r in results] == ["INDETERMINATE", "INDETERMINATE"]
    assert "INVALID_ARGUMENT agent.session_id: is 300 characters" in results[0].reason


SUITE = """\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: validation}
cases:
  - name: refused as the server refuses it
    agent: {id: bot, session_id: "%(long)s"}
    tool: work.do
    expect: {outcome: invalid_argument, reason: agent.session_id}
  - name: a step refused as the server refuses it, and the next step still decided
    agent: {id: bot}
    steps:
      - {tool: "work.do", agent: {id: bot, session_id: "%(long)s"}, expect: {outcome: invalid_argument}}
      - {tool: "work.do", expect: {outcome: allow}}
  - name: a refused request expected to be allowed fails
    agent: {id: bot, session_id: "%(long)s"}
    tool: work.do
    expect: {outcome: allow}
  - name: a tool default estimate is charged in tests too
    agent: {id: tester}
    steps:
      - {tool: shop.fixed, expect: {outcome: allow}}
      - {tool: shop.fixed, expect: {outcome: allow}}
      - {tool: shop.fixed, expect: {outcome: deny, rule: budget_exceeded}}
"""


def test_decider_test_checks_requests_as_the_server_does(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "b")
    (folder / "validation_test.yaml").write_text(SUITE % {"long": "s" * 300})
    bundle = load_bundle(folder)
    (suite,) = run_suites(bundle, load_suites([folder / "validation_test.yaml"]))
    got = {c.name: (c.passed, c.actual_outcome) for c in suite.cases}
    assert got == {
        "refused as the server refuses it": (True, "invalid_argument"),
        "a step refused as the server refuses it, and the next step still decided / step 1": (True, "invalid_argument"),
        "a step refused as the server refuses it, and the next step still decided / step 2": (True, "allow"),
        "a refused request expected to be allowed fails": (False, "invalid_argument"),
        "a tool default estimate is charged in tests too / step 1": (True, "allow"),
        "a tool default estimate is charged in tests too / step 2": (True, "allow"),
        "a tool default estimate is charged in tests too / step 3": (True, "deny"),
    }, got


def test_a_cost_expression_reads_a_map_list_as_a_map(tmp_path: Path) -> None:
    from decider.engine.decide import decide

    folder = write_bundle(tmp_path / "b")
    (folder / "bundle.yaml").write_text(BUNDLE.replace(
        '"shop.priced": {cost: "double(tool.args.qty) * 2.5"}',
        '"shop.priced": {cost: "double(lists.prices[tool.args.sku])"}') + "  lists:\n"
        "    prices: {kind: map, items: {apple: 3, pear: 11}}\n")
    bundle = load_bundle(folder)
    apple = build_request(agent={"id": "grocer"}, tool="shop.priced", args={"sku": "apple"})
    assert decide(bundle, apple).outcome == pb.ALLOW and apple.request.estimated_cost == 3.0
    pear = build_request(agent={"id": "grocer"}, tool="shop.priced", args={"sku": "pear"})
    d = decide(bundle, pear)   # 11 > the agent's 10
    assert pear.request.estimated_cost == 11.0 and d.deciding_rule == "budget_exceeded"
