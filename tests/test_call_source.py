"""`call.source` in conditions ("call" or "text", SPEC §10 round two), and replay's handling of a
text action identical to a call already made in the same turn: reported, not decided again, not
counted twice (issue 26 item 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from decider.bundle.compile import load_bundle
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.replay.replay import ReplayReport, replay
from decider.replay.traces import read_traces
from decider.v1 import decider_pb2 as pb
from decider.verify.suites import load_suites, run_suites

from .helpers import ROOT
from .traces.test_langchain_reader import TRAJECTORY

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: source, version: 1.0.0}
spec: {default: allow}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: home}
spec:
  match: {tools: ["Google*", "Gmail*"]}
  rules:
    - id: written-not-run
      effect: require_approval
      labels: [text-action]
      when: call.source == "text"
      reason: "An action the agent only wrote: a human checks it"
"""


def _bundle(tmp: Path, policy: str = POLICY) -> Path:
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "home.yaml").write_text(policy)
    return folder


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def _trajectory_repeating_a_call() -> dict[str, Any]:
    """TRAJECTORY with the breaker switched off as a step first: the final answer's text action
    `GoogleHomeControlDevice {"device_id": "br-7", "action": "turn off"}` repeats it."""
    steps = list(TRAJECTORY["intermediate_steps"])
    ran = [["GoogleHomeControlDevice", "{\"action\": \"turn off\", \"device_id\": \"br-7\"}", "Action: ..."],
           "{\"success\": true}"]
    return dict(TRAJECTORY, intermediate_steps=[steps[0], ran, *steps[1:]])


def test_a_condition_sees_call_source_call_on_the_server_path(tmp_path: Path) -> None:
    bundle = load_bundle(_bundle(tmp_path))
    req = pb.DecideRequest(agent=pb.Agent(id="bot"), tool=pb.ToolCall(name="GmailSendEmail"))
    d = decide(bundle, req)
    assert (pb.Outcome.Name(d.outcome), d.deciding_rule) == ("ALLOW", "default")


def test_replay_decides_text_actions_with_call_source_text(tmp_path: Path) -> None:
    trace = tmp_path / "toolemu_gpt-4o-mini_built.jsonl"
    trace.write_text(json.dumps(TRAJECTORY) + "\n")
    results = list(replay(load_bundle(_bundle(tmp_path)), read_traces([str(trace)])))
    assert [(r.call.tool_name, r.call.from_text, r.outcome, r.rule, r.labels) for r in results] == [
        ("GoogleHomeSearchDevices", False, "ALLOW", "default", ()),
        ("GoogleHomeControlDevice", True, "REQUIRE_APPROVAL", "written-not-run", ("text-action",)),
        ("GmailSendEmail", True, "REQUIRE_APPROVAL", "written-not-run", ("text-action",)),
    ]


def test_a_text_action_repeating_a_call_made_in_the_turn_is_reported_not_counted(tmp_path: Path) -> None:
    trace = tmp_path / "toolemu_gpt-4o-mini_built.jsonl"
    trace.write_text(json.dumps(_trajectory_repeating_a_call()) + "\n")
    calls = list(read_traces([str(trace)]))
    ran = f"{trace}:1.intermediate_steps[1]"
    assert [(c.tool_name, c.from_text, c.repeats) for c in calls] == [
        ("GoogleHomeSearchDevices", False, ""), ("GoogleHomeControlDevice", False, ""),
        ("GoogleHomeControlDevice", True, ran), ("GmailSendEmail", True, "")]
    rep = ReplayReport()
    for r in replay(load_bundle(_bundle(tmp_path)), calls):
        rep.add(r)
    assert (rep.total, rep.from_text, rep.duplicates) == (3, 1, 1)
    assert dict(rep.by_outcome) == {"ALLOW": 2, "REQUIRE_APPROVAL": 1}
    assert rep.sessions["17"].calls == 3

    table = cli("replay", str(_bundle(tmp_path)), str(trace), "--no-progress")
    assert "text actions repeating a call made in the same turn (not decided again, not counted): 1" in table.stdout
    report = json.loads(cli("replay", str(_bundle(tmp_path)), str(trace), "--format", "json").stdout)
    assert (report["total"], report["duplicates"]) == (3, 1)
    (dup,) = [c for c in report["calls"] if c["outcome"] == "DUPLICATE"]
    assert (dup["tool"], dup["repeats"], dup["rule"]) == ("GoogleHomeControlDevice", ran, "")
    assert ran in dup["reason"]


def test_different_arguments_are_not_a_repeat(tmp_path: Path) -> None:
    record = _trajectory_repeating_a_call()
    record["intermediate_steps"][1][0][1] = "{\"device_id\": \"br-8\", \"action\": \"turn off\"}"
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps(record) + "\n")
    assert [c.repeats for c in read_traces([str(trace)])] == ["", "", "", ""]


def test_a_misspelt_call_field_is_a_build_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as exc:
        load_bundle(_bundle(tmp_path, POLICY.replace("call.source", "call.sorce")))
    assert "undeclared reference to 'call.sorce'" in str(exc.value.errors[0])


def test_decider_test_cases_and_steps_may_say_the_source(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "home_test.yaml").write_text("""\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: source}
cases:
  - name: a tool call
    agent: {id: bot}
    tool: GmailSendEmail
    expect: {outcome: allow}
  - name: the same, written as text
    agent: {id: bot}
    tool: GmailSendEmail
    source: text
    expect: {outcome: require_approval, rule: written-not-run}
  - name: steps inherit the case's source, and may set their own
    agent: {id: bot}
    source: text
    steps:
      - {tool: GmailSendEmail, expect: {outcome: require_approval}}
      - {tool: GmailSendEmail, source: call, expect: {outcome: allow}}
""")
    results = run_suites(load_bundle(folder), load_suites([folder / "home_test.yaml"]))
    assert [(c.name, c.passed) for s in results for c in s.cases if not c.passed] == []
