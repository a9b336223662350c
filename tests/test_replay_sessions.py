"""Replay's per-session view (SPEC §10: a trajectory / trace / conversation is a session): how many
sessions had a DENY or a REQUIRE_APPROVAL, with counts, in the table and JSON reports; calls read
from an agent's final-answer text are marked `from_text`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.replay.replay import IdentityMapping, Replayed, ReplayReport, replay, session_key
from decider.replay.traces import read_traces

from .helpers import POLICIES, ROOT
from .traces.conftest import SHARED
from .traces.test_langchain_reader import TRAJECTORY

needs_traces = pytest.mark.skipif(not SHARED.is_dir(), reason=f"LOUD SKIP: shared traces not found at {SHARED}")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


# The tau-bench calls carry no agent id; the example bundle's manifests name their agent
# (as README's replay command does with --agent-id).
AIRLINE = IdentityMapping(agent={"id": "airline-agent"})


def replayed(paths: list[Path]) -> list[Replayed]:
    return list(replay(load_bundle(POLICIES), read_traces([str(p) for p in paths]), AIRLINE))


def report_of(results: list[Replayed]) -> ReplayReport:
    rep = ReplayReport()
    for r in results:
        rep.add(r)
    return rep


@needs_traces
def test_the_shared_traces_replay_with_sessions_reported() -> None:
    results = replayed([SHARED])
    rep = report_of(results)
    # 182 tau-bench runs with a call (18 of 200 made none), 3 OpenHands runs, 8 Langfuse traces.
    assert len(rep.sessions) == 182 + 3 + 8
    # The same counts, grouped here from the calls' own outcomes.
    outcomes: dict[str, set[str]] = defaultdict(set)
    for r in results:
        outcomes[session_key(r.call)].add(r.outcome)
    with_deny = {k for k, o in outcomes.items() if "DENY" in o}
    with_approval = {k for k, o in outcomes.items() if "REQUIRE_APPROVAL" in o}
    # 7 of the 8 Langfuse traces (default deny); the eighth's one call comes from agent "Hello world",
    # an id the server refuses (INVALID_ARGUMENT: a space), so replay refuses it too (INDETERMINATE).
    assert rep.sessions_with("DENY") == len(with_deny) == 7
    assert rep.sessions_with("REQUIRE_APPROVAL") == len(with_approval) == 49   # 48 tau-bench runs, 1 OpenHands
    assert {k for k, _ in rep.flagged_sessions()} == with_deny | with_approval
    assert len(rep.flagged_sessions()) == 56
    # The worst session first: the pydantic-ai trace, all three calls denied.
    key, worst = rep.flagged_sessions()[0]
    assert (key, worst.calls, worst.by_outcome["DENY"]) == ("7a38edd8123db47ad8dcb8aa4c5e3926", 3, 3)
    # Every call is in exactly one session.
    assert sum(s.calls for s in rep.sessions.values()) == rep.total == 1164 + 105 + 13


@needs_traces
def test_replay_reports_show_sessions_in_table_and_json() -> None:
    table = cli("replay", str(POLICIES), str(SHARED), "--agent-id", "airline-agent", "--no-progress", "--sessions", "3")
    assert table.returncode == 0, table.stderr
    assert "sessions: 193; with a DENY: 7; with a REQUIRE_APPROVAL: 49; with either: 56" in table.stdout
    assert "7a38edd8123db47ad8dcb8aa4c5e3926              3      0      3        0      0" in table.stdout
    assert "… 53 more (--sessions N, or --format json for all)" in table.stdout
    report = json.loads(cli("replay", str(POLICIES), str(SHARED), "--agent-id", "airline-agent", "--format", "json").stdout)
    sessions = report["sessions"]
    assert (sessions["total"], sessions["with_deny"], sessions["with_require_approval"]) == (193, 7, 49)
    assert len(sessions["flagged"]) == 56
    tau = [s for s in sessions["flagged"] if s["session"].startswith("task-")]
    assert len(tau) == 48 and all(s["by_outcome"]["REQUIRE_APPROVAL"] >= 1 for s in tau)
    assert sum(s["by_outcome"]["REQUIRE_APPROVAL"] for s in tau) == 71  # every tau-bench approval
    # The 49th: the OpenHands run with the three apt-get installs.
    (openhands,) = [s for s in sessions["flagged"] if not s["session"].startswith("task-") and s["by_outcome"].get(
        "REQUIRE_APPROVAL")]
    assert openhands["by_outcome"]["REQUIRE_APPROVAL"] == 3


BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: home, version: 1.0.0}
spec:
  default: allow
"""
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: home}
spec:
  match: {tools: ["GoogleHome*"]}
  rules:
    - id: no-breakers
      effect: deny
      when: has(tool.args.device_id) && tool.args.device_id.startsWith("br-")
"""


def test_text_only_actions_are_replayed_and_marked_in_the_reports(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "home.yaml").write_text(POLICY)
    other = dict(TRAJECTORY, case_idx=18, intermediate_steps=TRAJECTORY["intermediate_steps"][:1])
    trace = tmp_path / "toolemu_gpt-4o-mini_built.jsonl"
    trace.write_text(json.dumps(TRAJECTORY) + "\n" + json.dumps(other) + "\n")

    rep = report_of(list(replay(load_bundle(bundle), read_traces([str(trace)]))))
    assert rep.total == 4 and rep.from_text == 2
    # The breaker was only switched off in the final answer's text: still a DENY, in session 17.
    (denied,) = rep.flagged
    assert (denied.call.tool_name, denied.call.from_text, denied.rule) == ("GoogleHomeControlDevice", True,
                                                                          "no-breakers")
    assert [(k, s.calls, s.from_text) for k, s in rep.flagged_sessions()] == [("17", 3, 2)]
    assert set(rep.sessions) == {"17", "18"}

    table = cli("replay", str(bundle), str(trace), "--no-progress")
    assert "sessions: 2; with a DENY: 1; with a REQUIRE_APPROVAL: 0; with either: 1" in table.stdout
    assert "calls written only as text in a final answer (from_text): 2" in table.stdout
    assert "DENY             GoogleHomeControlDevi (text) no-breakers" in table.stdout
    report = json.loads(cli("replay", str(bundle), str(trace), "--format", "json").stdout)
    assert report["from_text"] == 2
    assert report["sessions"]["flagged"] == [{
        "session": "17", "calls": 3, "by_outcome": {"ALLOW": 2, "DENY": 1}, "from_text": 2,
        "first_source": f"{trace}:1.intermediate_steps[0]", "labels": []}]
    assert report["flagged"][0]["from_text"] is True and report["flagged"][0]["session"] == "17"


def test_a_condition_sees_the_users_request_in_replay(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "mail.yaml").write_text("""\
apiVersion: decider/v1
kind: Policy
metadata: {name: mail}
spec:
  match: {tools: ["Gmail*"]}
  rules:
    - id: mail-only-when-asked
      effect: require_approval
      when: '!context.user_request.lowerAscii().contains("mail")'
""")
    trace = tmp_path / "toolemu_gpt-4o-mini_built.jsonl"
    trace.write_text(json.dumps(TRAJECTORY) + "\n")
    results = list(replay(load_bundle(bundle), read_traces([str(trace)])))
    # "Turn off the lights in the living room." asked for no mail: the mail written in the final
    # answer needs approval; asked for, it would not.
    assert [(r.call.tool_name, r.outcome) for r in results] == [
        ("GoogleHomeSearchDevices", "ALLOW"), ("GoogleHomeControlDevice", "ALLOW"),
        ("GmailSendEmail", "REQUIRE_APPROVAL")]
    asked = dict(TRAJECTORY, input="Turn off the power and e-mail my landlord.")
    trace.write_text(json.dumps(asked) + "\n")
    assert [r.outcome for r in replay(load_bundle(bundle), read_traces([str(trace)]))][-1] == "ALLOW"
