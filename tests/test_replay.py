"""`decider replay` and `decider diff`: recorded traces through bundles, offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.replay.replay import IdentityMapping, ReplayReport, diff, replay
from decider.replay.traces import read_traces

from .helpers import POLICIES, ROOT
from .traces.conftest import SHARED

TRACES = SHARED  # ../shared/traces, or ../../shared/traces from a worktree checkout
TAU = TRACES / "tau-bench_airline_gpt-4o_trajectories.json"
OPENHANDS = TRACES / "openhands_codeact_multi-swe-bench_output.jsonl"
LANGFUSE = TRACES / "langfuse-exports"

# The tau-bench calls carry no agent id; the example bundle's manifest for them is airline-agent
# (an agent no manifest covers is denied unregistered_agent).
AIRLINE = IdentityMapping(agent={"id": "airline-agent"})
needs_traces = pytest.mark.skipif(not TAU.exists(), reason=f"LOUD SKIP: shared traces not found at {TRACES}")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          input=stdin, timeout=120)


def report_of(paths: list[Path], mapping: IdentityMapping | None = None) -> ReplayReport:
    rep = ReplayReport()
    for r in replay(load_bundle(POLICIES), read_traces([str(p) for p in paths]), mapping):
        rep.add(r)
    return rep


@needs_traces
def test_replay_of_the_real_traces_counts_every_call_exactly() -> None:
    tau = report_of([TAU], AIRLINE)
    assert tau.total == 1164
    assert dict(tau.by_outcome) == {"ALLOW": 1093, "REQUIRE_APPROVAL": 71}
    assert tau.by_rule["airline-cancel-needs-approval"] == 69
    assert tau.by_rule["airline-big-certificate-needs-approval"] == 2
    assert sum(tau.by_tool["get_reservation_details"].values()) == 377

    oh = report_of([OPENHANDS])
    assert oh.total == 105
    assert {t: sum(c.values()) for t, c in oh.by_tool.items()} == {
        "execute_bash": 49, "str_replace_editor": 52, "think": 2, "finish": 2}
    assert oh.by_outcome["REQUIRE_APPROVAL"] == 3  # the apt-get installs
    assert oh.by_rule["coding-edit-in-workspace"] == 52

    lf = report_of([LANGFUSE])
    assert lf.total == 13
    # These demo agents have no manifest: unregistered_agent; one, "Hello world", has an id the server
    # refuses (a space: INVALID_ARGUMENT), and replay refuses it as the server does (issues 22, 24).
    assert lf.by_outcome == {"DENY": 12, "INDETERMINATE": 1}
    assert sorted(lf.by_tool) == ["ByeTool", "HelloTool", "final_result", "getWeather", "get_custom_report",
                                  "get_dad_joke_suggestion", "get_one_liner_suggestion", "get_pun_suggestion",
                                  "get_weather", "say_hello"]


@needs_traces
def test_replay_extracts_tool_names_and_arguments() -> None:
    first = next(iter(replay(load_bundle(POLICIES), read_traces([str(TAU)]), AIRLINE)))
    assert first.call.tool_name == "get_user_details"
    assert first.call.arguments == {"user_id": "mia_li_3668"}
    assert (first.outcome, first.rule) == ("ALLOW", "airline-reads")
    bash = [r for r in replay(load_bundle(POLICIES), read_traces([str(OPENHANDS)]))
            if r.outcome == "REQUIRE_APPROVAL"]
    assert all("apt-get" in r.call.arguments["command"] for r in bash)


@needs_traces
def test_replay_cli_table_and_fail_on() -> None:
    run = cli("replay", str(POLICIES), str(TAU), "--no-progress", "--agent-id", "airline-agent")
    assert run.returncode == 0, run.stderr
    assert "replayed 1,164 tool calls through acme-agents" in run.stdout
    assert "REQUIRE_APPROVAL       71" in run.stdout
    gated = cli("replay", str(POLICIES), str(TAU), "--fail-on", "deny,require_approval", "--format", "json",
                "--agent-id", "airline-agent")
    assert gated.returncode == 1
    assert json.loads(gated.stdout)["by_outcome"] == {"ALLOW": 1093, "REQUIRE_APPROVAL": 71}
    assert cli("replay", str(POLICIES), str(TAU), "--fail-on", "deny", "--agent-id", "airline-agent").returncode == 0
    # Without the mapping every call is from an unregistered agent.
    assert cli("replay", str(POLICIES), str(TAU), "--fail-on", "deny").returncode == 1


def test_unparseable_arguments_are_indeterminate_never_allowed(tmp_path: Path) -> None:
    messages = [
        {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "fs.read", "arguments": "{\"path\": \"/workspace/a\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "fs.read", "arguments": "{not json"}},
        ]},
    ]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps({"messages": messages}))
    run = cli("replay", str(POLICIES), str(path), "--format", "jsonl", "--agent-id", "coder-7")
    lines = [json.loads(x) for x in run.stdout.splitlines()]
    assert [x["outcome"] for x in lines] == ["ALLOW", "INDETERMINATE"]
    assert lines[1]["reason"] and lines[1]["rule"] == ""
    assert cli("replay", str(POLICIES), str(path), "--fail-on", "indeterminate").returncode == 1


def test_mapping_fills_identity_the_trace_lacks(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(POLICIES, bundle)
    (bundle / "team_only.yaml").write_text(
        "apiVersion: decider/v1\nkind: Policy\nmetadata: {name: ops}\nspec:\n  match: {tools: [restart], teams: [ops]}\n"
        "  rules:\n    - {id: ops-restart, effect: allow, when: 'agent.id == \"bot-1\"'}\n"
        "---\napiVersion: decider/v1\nkind: Agent\nmetadata: {name: bot-1}\nspec: {team: ops, tools: [restart]}\n")
    calls = [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                   "function": {"name": "restart", "arguments": "{}"}}]}]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"messages": calls}))
    mapping = tmp_path / "map.yaml"
    mapping.write_text("agent: {id: bot-1, team: ops}\nenvironment: staging\n")
    without = cli("replay", str(bundle), str(trace), "--format", "json")
    assert json.loads(without.stdout)["by_outcome"] == {"DENY": 1}
    with_map = cli("replay", str(bundle), str(trace), "--format", "json", "--mapping", str(mapping))
    assert json.loads(with_map.stdout)["by_outcome"] == {"ALLOW": 1}
    flags = cli("replay", str(bundle), "-", "--format", "json", "--agent-id", "bot-1", "--team", "ops",
                stdin=trace.read_text())
    assert json.loads(flags.stdout)["by_outcome"] == {"ALLOW": 1}
    assert IdentityMapping.from_file(mapping).environment == "staging"


def test_junit_report_marks_fail_on_calls_as_failures(tmp_path: Path) -> None:
    calls = [{"role": "assistant", "tool_calls": [
        {"id": "1", "type": "function", "function": {"name": "db.query", "arguments": "{\"sql\": \"drop table x\"}"}},
        {"id": "2", "type": "function", "function": {"name": "db.query", "arguments": "{\"sql\": \"select 1\"}"}}]}]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"messages": calls}))
    run = cli("replay", str(POLICIES), str(trace), "--format", "junit", "--fail-on", "deny", "--agent-id", "coder-7")
    assert run.returncode == 1
    root = ET.fromstring(run.stdout)
    assert (root.get("tests"), root.get("failures")) == ("2", "1")


def test_a_trace_no_reader_knows_exits_2_naming_the_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.json"
    junk.write_text(json.dumps({"hello": "world"}))
    run = cli("replay", str(POLICIES), str(junk))
    assert run.returncode == 2 and str(junk) in run.stderr


@needs_traces
def test_diff_after_one_threshold_change_lists_exactly_the_changed_calls(tmp_path: Path) -> None:
    new = tmp_path / "new"
    shutil.copytree(POLICIES, new)
    airline = new / "airline.yaml"
    text = airline.read_text()
    assert text.count("tool.args.amount <= 100.0") == 1 and text.count("tool.args.amount > 100.0") == 1
    airline.write_text(text.replace("tool.args.amount <= 100.0", "tool.args.amount <= 150.0")
                       .replace("tool.args.amount > 100.0", "tool.args.amount > 150.0"))
    rep = diff(load_bundle(POLICIES), load_bundle(new), read_traces([str(TAU)]), AIRLINE)
    assert rep.total == 1164
    assert len(rep.changes) == 1  # the single certificate of exactly 150
    (change,) = rep.changes
    assert change.call.tool_name == "send_certificate" and change.call.arguments["amount"] == 150
    assert (change.old.outcome, change.new.outcome) == ("REQUIRE_APPROVAL", "ALLOW")
    assert (change.old.rule, change.new.rule) == ("airline-big-certificate-needs-approval", "airline-certificates")

    run = cli("diff", str(POLICIES), str(new), str(TAU), "--format", "json", "--agent-id", "airline-agent")
    assert run.returncode == 1
    out = json.loads(run.stdout)
    assert (out["total"], out["changed"]) == (1164, 1)
    assert out["groups"][0]["old"] == "REQUIRE_APPROVAL" and out["groups"][0]["new"] == "ALLOW"
    same = cli("diff", str(POLICIES), str(POLICIES), str(TAU))
    assert same.returncode == 0 and "0 changed" in same.stdout


def test_decisions_exported_by_log_replay_to_the_same_outcomes(server, tmp_path: Path) -> None:  # noqa: ANN001
    calls = [
        ({"id": "coder-7", "capabilities": ["shell"]}, "shell.exec", {"command": "rm -rf /"}),
        ({"id": "coder-7", "capabilities": ["shell"]}, "shell.exec", {"command": "ls"}),
        ({"id": "refund-bot", "team": "finance", "model": "gpt-5"}, "payments.refund", {"amount": 2500}),
        ({"id": "coder-7"}, "fs.write", {"path": "/workspace/../etc/passwd"}),
    ]
    with server.client() as c:
        ids = [c.decide(agent=a, tool=t, args=x).decision_id for a, t, x in calls]
    export = cli("log", "--db", server.db_url, "--format", "jsonl")
    lines = [json.loads(x) for x in export.stdout.splitlines()]
    mine = [x for x in lines if x["decision_id"] in ids]
    assert len(mine) == len(calls)
    log_file = tmp_path / "decisions.jsonl"
    log_file.write_text("".join(json.dumps(x) + "\n" for x in mine))
    replayed = cli("replay", str(POLICIES), str(log_file), "--format", "jsonl")
    got = [json.loads(x) for x in replayed.stdout.splitlines()]
    assert [(g["outcome"], g["rule"], g["matched_rules"]) for g in got] == [
        (m["outcome"], m["deciding_rule"], m["matched_rules"]) for m in mine]


@needs_traces
def test_replay_leaves_the_collector_unfrozen_even_when_stopped_early() -> None:
    import gc

    bundle = load_bundle(POLICIES)
    calls = list(read_traces([str(TRACES)]))
    full = list(replay(bundle, calls))
    assert len(full) == len(calls) and gc.get_freeze_count() == 0
    it = replay(bundle, calls)
    next(it)
    assert gc.get_freeze_count() > 0  # frozen while the loop runs
    it.close()
    assert gc.get_freeze_count() == 0 and gc.isenabled()
