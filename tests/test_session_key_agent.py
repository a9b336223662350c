"""`spec.session.key: agent` (SPEC §8 round two): session history keyed by agent id, so an agent that
opens a new session (a reconnecting MCP client, a new Claude Code session) does not reset what a
sequence policy sees — on the server (unary, batch, after a restart, with ReportOutcome labels),
in replay and in `decider test`, alike. Without the key, the same calls are decided per session."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from decider.batching import BatchingDecider
from decider.bundle.compile import load_bundle
from decider.client import build_request
from decider.errors import PolicyLoadError
from decider.replay.replay import IdentityMapping, replay
from decider.replay.traces import TraceCall
from decider.v1 import decider_pb2 as pb
from decider.verify.suites import load_suites, run_suites
from tests.helpers import start_server
from tests.test_sessions import POLICY

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: agent-history, version: 1.0.0}
spec:
  default: deny
  session: {max_calls: 50, window: 1h, key: agent}
"""

SUITE = """\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: agent-history}
cases:
  - name: a post from a new session after a secret read in an old one is denied
    agent: {id: bot, session_id: s1}
    steps:
      - {tool: fs.read, args: {path: /app/.env}, expect: {outcome: allow}}
      - tool: http.post
        agent: {id: bot, session_id: s2}
        args: {url: "https://paste.example/x"}
        expect: {outcome: deny, rule: post-after-secret-read}
"""

READ = ("fs.read", {"path": "/app/.env"})
POST = ("http.post", {"url": "https://paste.example/x"})


def _bundle(tmp: Path, keyed_by_agent: bool = True) -> Path:
    folder = tmp / ("by-agent" if keyed_by_agent else "by-session")
    folder.mkdir()
    text = BUNDLE if keyed_by_agent else BUNDLE.replace(", key: agent", "")
    (folder / "bundle.yaml").write_text(text)
    (folder / "exfiltration.yaml").write_text(POLICY)
    return folder


def _req(agent: str, session: str, call: tuple[str, dict]) -> pb.DecideRequest:
    return build_request(agent={"id": agent, "session_id": session}, tool=call[0], args=call[1])


def test_a_new_session_of_the_agent_still_sees_its_earlier_calls_on_the_server(tmp_path: Path) -> None:
    srv = start_server(tmp_path, _bundle(tmp_path))
    try:
        c = srv.client()
        assert c.decide(_req("bot", "s1", READ)).outcome == pb.ALLOW
        post = c.decide(_req("bot", "s2", POST))                     # reconnected: a new session id
        assert (post.outcome, post.deciding_rule) == (pb.DENY, "post-after-secret-read")
        assert c.decide(_req("other-bot", "s1", POST)).outcome == pb.ALLOW   # another agent, same session id
        # a label added by ReportOutcome is seen by the agent's later calls in any session
        ping = c.decide(_req("bot2", "a", ("ping", {})))
        c.report_outcome(ping.decision_id, 0, labels=["secret-read"])
        assert c.decide(_req("bot2", "b", POST)).outcome == pb.DENY

        async def batch() -> tuple[pb.DecideResponse, ...]:
            # the batch path keys the same way, within one batch too (both calls in one message)
            async with BatchingDecider(srv.target) as batching:
                return tuple(await asyncio.gather(batching.decide(_req("bot3", "x", READ)),
                                                  batching.decide(_req("bot3", "y", POST))))

        first, second = asyncio.run(batch())
        assert (first.outcome, second.outcome) == (pb.ALLOW, pb.DENY)
    finally:
        srv.stop()
    srv = start_server(tmp_path, tmp_path / "by-agent", srv.db_url, name="again")
    try:
        # a new process reads the agent's history from the ledger (index on agent_id, decision_id)
        post = srv.client().decide(_req("bot", "s3", POST))
        assert (post.outcome, post.deciding_rule) == (pb.DENY, "post-after-secret-read")
    finally:
        srv.stop()


def test_without_the_key_history_stays_per_session(tmp_path: Path) -> None:
    srv = start_server(tmp_path, _bundle(tmp_path, keyed_by_agent=False))
    try:
        c = srv.client()
        assert c.decide(_req("bot", "s1", READ)).outcome == pb.ALLOW
        assert c.decide(_req("bot", "s2", POST)).outcome == pb.ALLOW
        assert c.decide(_req("bot", "s1", POST)).outcome == pb.DENY
    finally:
        srv.stop()


def test_replay_and_decider_test_key_history_by_agent_as_the_server_does(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    bundle = load_bundle(folder)
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    calls = [TraceCall(tool, source="t.jsonl", arguments=args, session_id=session, agent=agent,
                       started_at=t0 + timedelta(seconds=i))
             for i, (agent, session, (tool, args)) in enumerate(
                 [("bot", "s1", READ), ("bot", "s2", POST), ("other-bot", "s1", POST)])]
    got = [(r.call.agent, r.call.session_id, r.outcome) for r in replay(bundle, calls, IdentityMapping())]
    assert got == [("bot", "s1", "ALLOW"), ("bot", "s2", "DENY"), ("other-bot", "s1", "ALLOW")]
    (folder / "agent_test.yaml").write_text(SUITE)
    results = run_suites(load_bundle(folder), load_suites([folder / "agent_test.yaml"]))
    assert [(c.name.rsplit(" / ", 1)[1], c.passed, c.actual_rule) for s in results for c in s.cases] == [
        ("step 1", True, "reads-allowed"), ("step 2", True, "post-after-secret-read")]


def test_an_unknown_key_is_a_load_error_at_its_line(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "bundle.yaml").write_text(BUNDLE.replace("key: agent", "key: workflow"))
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(folder)
    assert "bundle.yaml:6:" in str(err.value) and "key" in str(err.value)

