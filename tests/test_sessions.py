"""Session-aware policies (SPEC §10, issue 14 items 1, 2, 6): `session.calls` / `session.labels`,
rule `labels:` and `effect: label`, ReportOutcome labels, `decider test` steps — the same scripted
sequence on a real server, through replay and through `decider test`."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import pytest

from decider.bundle.compile import load_bundle
from decider.client import DeciderClient, build_request
from decider.replay.replay import IdentityMapping, replay
from decider.replay.traces import TraceCall
from decider.v1 import decider_pb2 as pb
from decider.verify.suites import coverage, load_suites, run_suites
from tests.helpers import start_server

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: sessions, version: 1.0.0}
spec:
  default: deny
  session: {max_calls: 3, window: 2s}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: exfiltration}
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
      when: >
        tool.name == "http.post" && "secret-read" in session.labels
        && !tool.args.url.startsWith("https://internal.")
    - id: posts-allowed
      effect: allow
      labels: [egress]
      when: tool.name == "http.post"
    - id: pings-allowed
      effect: allow
      when: tool.name == "ping"
"""

SUITE = """\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: sessions}
cases:
  - name: a post after a secret read is denied
    agent: {id: bot, session_id: s1}
    steps:
      - {tool: fs.read, args: {path: /app/.env}, expect: {outcome: allow}}
      - tool: http.post
        args: {url: "https://paste.example/x"}
        expect: {outcome: deny, rule: post-after-secret-read}
  - name: the same post in another session is allowed
    agent: {id: bot, session_id: s2}
    steps:
      - {tool: http.post, args: {url: "https://paste.example/x"}, expect: {outcome: allow, rule: posts-allowed}}
  - name: history beyond max_calls is not seen
    agent: {id: bot, session_id: s3}
    steps:
      - {tool: fs.read, args: {path: /app/.env}, expect: {outcome: allow}}
      - {tool: ping, expect: {outcome: allow}}
      - {tool: ping, expect: {outcome: allow}}
      - {tool: ping, expect: {outcome: allow}}
      - {tool: http.post, args: {url: "https://paste.example/x"}, expect: {outcome: allow}}
  - name: history beyond the window is not seen
    agent: {id: bot, session_id: s4}
    steps:
      - tool: fs.read
        args: {path: /app/.env}
        request: {time: "2026-01-01T00:00:00Z"}
        expect: {outcome: allow}
      - tool: http.post
        args: {url: "https://paste.example/x"}
        request: {time: "2026-01-01T00:00:03Z"}
        expect: {outcome: allow}
"""


def _bundle(tmp: Path, window: str = "2s") -> Path:
    folder = tmp / "bundle"
    folder.mkdir()
    (folder / "bundle.yaml").write_text(BUNDLE.replace("window: 2s", f"window: {window}"))
    (folder / "exfiltration.yaml").write_text(POLICY)
    return folder


def _call(c: DeciderClient, session: str, tool: str, args: dict) -> pb.DecideResponse:
    return c.decide(build_request(agent={"id": "bot", "session_id": session}, tool=tool, args=args))


def test_server_sees_the_session_history(tmp_path: Path) -> None:
    srv = start_server(tmp_path, _bundle(tmp_path))
    try:
        c = srv.client()
        read = _call(c, "s1", "fs.read", {"path": "/app/.env"})
        assert read.outcome == pb.ALLOW
        assert list(c.get_decision(read.decision_id).labels) == ["secret-read"]
        post = _call(c, "s1", "http.post", {"url": "https://paste.example/x"})
        assert post.outcome == pb.DENY and post.deciding_rule == "post-after-secret-read"
        # the same post in another session
        other = _call(c, "s2", "http.post", {"url": "https://paste.example/x"})
        assert other.outcome == pb.ALLOW
        assert list(c.get_decision(other.decision_id).labels) == ["egress"]
        # beyond max_calls (3): the secret read is the 4th call back
        _call(c, "s3", "fs.read", {"path": "/app/.env"})
        for _ in range(3):
            assert _call(c, "s3", "ping", {}).outcome == pb.ALLOW
        assert _call(c, "s3", "http.post", {"url": "https://paste.example/x"}).outcome == pb.ALLOW
        # beyond the window (2s)
        _call(c, "s4", "fs.read", {"path": "/app/.env"})
        assert _call(c, "s4", "http.post", {"url": "https://paste.example/x"}).outcome == pb.DENY
        time.sleep(2.2)
        assert _call(c, "s4", "http.post", {"url": "https://paste.example/x"}).outcome == pb.ALLOW
    finally:
        srv.stop()


def test_session_history_survives_a_restart_and_report_outcome_adds_labels(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, window="1h")   # a restart takes longer than the 2s window
    srv = start_server(tmp_path, bundle)
    try:
        c = srv.client()
        fetch = _call(c, "s5", "ping", {})
        with pytest.raises(grpc.RpcError) as err:
            c.report_outcome(fetch.decision_id, 0, labels=["bad label!"])
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "labels[0]" in err.value.details()
        rec = c.report_outcome(fetch.decision_id, 0, labels=["secret-read"])   # e.g. the fetch returned a key
        assert list(rec.labels) == ["secret-read"] and rec.outcome_status == "ok"
        assert list(c.get_decision(fetch.decision_id).labels) == ["secret-read"]
    finally:
        srv.stop()
    srv = start_server(tmp_path, bundle, srv.db_url, name="again")
    try:
        c = srv.client()
        # the new process reads the session from the ledger (indexed query on first use)
        post = _call(c, "s5", "http.post", {"url": "https://paste.example/x"})
        assert post.outcome == pb.DENY and post.deciding_rule == "post-after-secret-read"
    finally:
        srv.stop()


def _trace(session: str, tool: str, args: dict, at: datetime) -> TraceCall:
    return TraceCall(tool, source="t.jsonl", arguments=args, session_id=session, started_at=at)


def test_replay_agrees_with_the_server(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    calls = [
        _trace("s1", "fs.read", {"path": "/app/.env"}, t0),
        _trace("s1", "http.post", {"url": "https://paste.example/x"}, t0 + timedelta(seconds=1)),
        _trace("s2", "http.post", {"url": "https://paste.example/x"}, t0 + timedelta(seconds=1)),
        _trace("s3", "fs.read", {"path": "/app/.env"}, t0),
        *[_trace("s3", "ping", {}, t0) for _ in range(3)],
        _trace("s3", "http.post", {"url": "https://paste.example/x"}, t0),
        _trace("s4", "fs.read", {"path": "/app/.env"}, t0),
        _trace("s4", "http.post", {"url": "https://paste.example/x"}, t0 + timedelta(seconds=3)),
    ]
    got = [(r.call.session_id, r.call.tool_name, r.outcome) for r in replay(bundle, calls, IdentityMapping())]
    assert got == [
        ("s1", "fs.read", "ALLOW"), ("s1", "http.post", "DENY"), ("s2", "http.post", "ALLOW"),
        ("s3", "fs.read", "ALLOW"), ("s3", "ping", "ALLOW"), ("s3", "ping", "ALLOW"), ("s3", "ping", "ALLOW"),
        ("s3", "http.post", "ALLOW"), ("s4", "fs.read", "ALLOW"), ("s4", "http.post", "ALLOW"),
    ]


def test_decider_test_steps(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "sessions_test.yaml").write_text(SUITE)
    bundle = load_bundle(folder)
    results = run_suites(bundle, load_suites([folder / "sessions_test.yaml"]))
    failed = [(c.name, c.actual_outcome, c.actual_rule, c.problem) for s in results for c in s.cases if not c.passed]
    assert failed == []
    assert sum(len(s.cases) for s in results) == 10
    cov = coverage(bundle, results)
    assert cov.percent == 100.0, cov


def test_a_failing_step_fails(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "bad_test.yaml").write_text(SUITE.replace("expect: {outcome: deny, rule: post-after-secret-read}",
                                                        "expect: {outcome: allow}"))
    results = run_suites(load_bundle(folder), load_suites([folder / "bad_test.yaml"]))
    failed = [c.name for s in results for c in s.cases if not c.passed]
    assert failed == ["a post after a secret read is denied / step 2"]


def test_label_rule_needs_labels_and_session_is_type_checked(tmp_path: Path) -> None:
    from decider.errors import PolicyLoadError

    folder = _bundle(tmp_path)
    (folder / "exfiltration.yaml").write_text(POLICY.replace("      labels: [secret-read]\n", "", 1))
    with pytest.raises(PolicyLoadError, match="effect label needs labels"):
        load_bundle(folder)


def test_log_jsonl_has_labels(tmp_path: Path) -> None:
    from decider.record.record import DecisionRecord

    rec = DecisionRecord.from_row({**_row(), "labels": json.dumps(["secret-read"])})
    assert rec.to_json()["labels"] == ["secret-read"]
    assert list(rec.to_proto().labels) == ["secret-read"]


def _row() -> dict:
    return {"decision_id": "01", "time": datetime(2026, 1, 1), "agent_id": "a", "instance_id": "", "owner": "",
            "team": "", "workflow": "", "model": "", "session_id": "", "agent_labels": "{}",
            "agent_capabilities": "[]", "tool_name": "t", "tool_server": "", "call_id": "", "args": "{}",
            "risk_tier": 0, "outcome": "ALLOW", "deciding_rule": "r", "reasons": "[]", "matched_rules": "[]",
            "bundle_name": "b", "bundle_version": "1", "bundle_revision": "x", "eval_us": 1,
            "estimated_cost": 0.0, "request_id": "", "environment": "", "context": "{}", "dry_run": False}


def test_no_session_query_when_no_policy_reads_session(tmp_path: Path) -> None:
    """An in-process server: count the indexed session queries (SessionHistory.loads) — none for a
    tool no session policy matches, one per session (not per decision) for one that does."""
    import asyncio

    from decider.server.app import ServerConfig
    from decider.server.app import start_server as start_in_process

    folder = _bundle(tmp_path, window="1h")
    (folder / "other.yaml").write_text(
        "apiVersion: decider/v1\nkind: Policy\nmetadata: {name: other}\n"
        "spec:\n  match: {tools: [db.query]}\n  rules:\n    - {id: db-ok, effect: allow}\n")
    (folder / "exfiltration.yaml").write_text(POLICY.replace("  rules:\n", "  match: {tools: [fs.read, http.post, ping]}\n"
                                                             "  rules:\n", 1))

    async def run() -> tuple[int, int]:
        srv = await start_in_process(ServerConfig(bundle=str(folder), db=f"sqlite:///{tmp_path / 'ip.db'}",
                                                  listen="127.0.0.1:0", poll_interval_s=3600))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
                decide = ch.unary_unary("/decider.v1.Decider/Decide", request_serializer=pb.DecideRequest.SerializeToString,
                                        response_deserializer=pb.DecideResponse.FromString)
                for _ in range(5):
                    await decide(build_request(agent={"id": "bot", "session_id": "s"}, tool="db.query"))
                without = srv.controls.sessions.loads
                for _ in range(5):
                    resp = await decide(build_request(agent={"id": "bot", "session_id": "s"}, tool="ping"))
                    assert resp.outcome == pb.ALLOW
                return without, srv.controls.sessions.loads
        finally:
            await srv.stop(1.0)

    without, with_session = asyncio.run(run())
    assert without == 0
    assert with_session == 1
