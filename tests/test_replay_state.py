"""Replay simulates the stateful controls: budgets accumulate over a trace's costs and deny exactly
the calls the server denied; starting usage, assumed approvals and kill switches can be given."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from decider.v1 import decider_pb2 as pb

from .helpers import ROOT, ServerProcess, start_server

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: replay-budgets, version: 1.0.0}
spec:
  default: deny
  budgets:
    - {scope: agent, limit: 100, window: total}
    - {scope: team, limit: 150, window: 1d}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: spend}
spec:
  rules:
    - id: llm-calls
      effect: allow
      when: tool.name == "llm.call"
    - id: wire-needs-approval
      effect: require_approval
      when: tool.name == "bank.wire"
"""

# (agent, estimated cost, actual cost reported right after, or None)
CALLS = [
    ("a1", 30, 5), ("a1", 30, None), ("a1", 30, None), ("a1", 30, None), ("a1", 30, None),
    ("a2", 30, None), ("a2", 0, 40), ("a2", 30, None), ("a2", 10, None), ("a1", 1, None), ("a2", 5, None),
]


def decider(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[str]]]:
    tmp = tmp_path_factory.mktemp("replay-state")
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "spend.yaml").write_text(POLICY)
    srv: ServerProcess = start_server(tmp, bundle)
    try:
        outcomes = []
        with srv.client() as c:
            for n, (agent, cost, actual) in enumerate(CALLS):
                d = c.decide(agent={"id": agent, "team": "t"}, tool="llm.call", args={"n": n},
                             estimated_cost=float(cost))
                outcomes.append(pb.Outcome.Name(d.outcome))
                if actual is not None and d.outcome == pb.ALLOW:
                    c.report_outcome(d.decision_id, float(actual))
        out = decider("log", "--db", srv.db_url, "--format", "jsonl", "--reverse")   # oldest first
        assert out.returncode == 0, out.stderr
        log = tmp / "log.jsonl"
        log.write_text(out.stdout)
        yield bundle, log, outcomes
    finally:
        srv.stop()


def replayed(bundle: Path, log: Path, *extra: str) -> list[str]:
    out = decider("replay", str(bundle), str(log), "--format", "jsonl", "--no-progress", *extra)
    assert out.returncode == 0, out.stderr
    return [json.loads(line)["outcome"] for line in out.stdout.splitlines()]


def test_the_server_ran_out_of_budget(recorded: tuple[Path, Path, list[str]]) -> None:
    _, _, outcomes = recorded
    assert "DENY" in outcomes and outcomes.count("ALLOW") >= 5


def test_replaying_a_costed_trace_denies_exactly_the_calls_the_server_denied(
        recorded: tuple[Path, Path, list[str]]) -> None:
    bundle, log, outcomes = recorded
    got = replayed(bundle, log)
    assert [i for i, o in enumerate(got) if o == "DENY"] == [i for i, o in enumerate(outcomes) if o == "DENY"]
    assert got == outcomes


def test_budget_state_gives_the_usage_to_start_from(recorded: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    bundle, log, _ = recorded
    state = tmp_path / "budgets.yaml"
    state.write_text("agent: {a1: 100}\n")
    got = replayed(bundle, log, "--budget-state", str(state))
    a1_costed = [i for i, (agent, cost, _) in enumerate(CALLS) if agent == "a1" and cost > 0]
    assert all(got[i] == "DENY" for i in a1_costed)


def test_budget_state_errors_name_the_problem(recorded: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    bundle, log, _ = recorded
    state = tmp_path / "budgets.yaml"
    state.write_text("planet: {earth: 1}\n")
    out = decider("replay", str(bundle), str(log), "--budget-state", str(state))
    assert out.returncode == 2 and "unknown budget scope 'planet'" in out.stderr


def test_assume_approved_lets_the_identical_call_through_once(recorded: tuple[Path, Path, list[str]],
                                                               tmp_path: Path) -> None:
    bundle, _, _ = recorded
    line = {"decision_id": "", "tool_name": "bank.wire", "args": {"to": "x"}, "agent": {"id": "a1"},
            "outcome": "REQUIRE_APPROVAL"}
    trace = tmp_path / "wires.jsonl"
    trace.write_text("\n".join(json.dumps({**line, "decision_id": f"d{n}"}) for n in range(3)) + "\n")
    assert replayed(bundle, trace) == ["REQUIRE_APPROVAL"] * 3      # pending: the same approval answers
    assert replayed(bundle, trace, "--assume", "approved") == ["REQUIRE_APPROVAL", "ALLOW", "REQUIRE_APPROVAL"]
