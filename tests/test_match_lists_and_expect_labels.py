"""Lists named in `match.servers` / `teams` / `agents` / `workflows` (as in `match.tools`), and
`expect.labels` in `decider test` cases and steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from decider.bundle.compile import load_bundle
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.v1 import decider_pb2 as pb
from decider.verify.suites import load_suites, run_suites

from .helpers import ROOT

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: match-lists, version: 1.0.0}
spec:
  default: allow
  lists:
    money_servers: ["mcp://billing", "mcp://pay-*"]
    finance_teams: {kind: patterns, items: ['fin(ance)?-[a-z]+']}
    night_workflows: []
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: money}
spec:
  match: {servers: [lists.money_servers, "mcp://ledger"], teams: [lists.finance_teams]}
  rules:
    - {id: money-needs-approval, effect: require_approval, when: "true", labels: [money]}
---
apiVersion: decider/v1
kind: Policy
metadata: {name: never}
spec:
  match: {workflows: [lists.night_workflows]}
  rules:
    - {id: never-matches, effect: deny, when: "true"}
"""


def _bundle(tmp: Path, policy: str = POLICY) -> Path:
    folder = tmp / "b"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "money.yaml").write_text(policy)
    return folder


def _outcome(bundle_dir: Path, server: str, team: str, workflow: str = "") -> tuple[str, str]:
    req = pb.DecideRequest(agent=pb.Agent(id="a", team=team, workflow=workflow),
                           tool=pb.ToolCall(name="pay", server=server))
    d = decide(load_bundle(bundle_dir), req)
    return pb.Outcome.Name(d.outcome), d.deciding_rule


@pytest.mark.parametrize(("server", "team", "expected"), [
    ("mcp://billing", "finance-eu", "REQUIRE_APPROVAL"),     # a plain list's name
    ("mcp://pay-stripe", "fin-us", "REQUIRE_APPROVAL"),      # a plain list's glob, a pattern
    ("mcp://ledger", "finance-eu", "REQUIRE_APPROVAL"),      # a literal beside the list
    ("mcp://mail", "finance-eu", "ALLOW"),                   # server not listed
    ("mcp://billing", "marketing", "ALLOW"),                 # team not matching the pattern
    ("mcp://billing", "xfinance-eu", "ALLOW"),               # a pattern matches the whole value only
])
def test_match_fields_name_lists(tmp_path: Path, server: str, team: str, expected: str) -> None:
    assert _outcome(_bundle(tmp_path), server, team)[0] == expected


def test_an_empty_list_in_match_matches_no_value(tmp_path: Path) -> None:
    assert _outcome(_bundle(tmp_path), "mcp://mail", "ops", workflow="nightly") == ("ALLOW", "default")


@pytest.mark.parametrize(("policy", "message"), [
    (POLICY.replace("lists.finance_teams", "lists.nope"), "match.teams: unknown list 'nope'"),
    (POLICY.replace("[lists.money_servers,", "[lists.ids,"), "match.servers: list 'ids' is a map"),
])
def test_bad_list_names_in_match_are_located_errors(tmp_path: Path, policy: str, message: str) -> None:
    folder = _bundle(tmp_path, policy)
    (folder / "bundle.yaml").write_text(BUNDLE + "    ids: {kind: map, items: {a: b}}\n")
    with pytest.raises(PolicyLoadError) as err:
        load_bundle(folder)
    assert message in str(err.value) and "money.yaml:5:" in str(err.value)


SUITE = """\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: labels}
cases:
  - name: the money label
    agent: {id: a, team: finance-eu}
    tool: {name: pay, server: "mcp://billing"}
    expect: {outcome: require_approval, labels: [money]}
  - name: no labels
    agent: {id: a, team: ops}
    tool: {name: pay, server: "mcp://billing"}
    expect: {outcome: allow, labels: []}
  - name: a step's reported labels count
    agent: {id: a, team: ops, session_id: s}
    steps:
      - tool: {name: pay, server: "mcp://billing"}
        report: {status: ok, labels: [pii-seen]}
        expect: {outcome: allow, labels: [pii-seen]}
"""


def test_expect_labels_pass_and_fail_with_the_actual_labels_shown(tmp_path: Path) -> None:
    folder = _bundle(tmp_path)
    (folder / "labels_test.yaml").write_text(SUITE)
    results = run_suites(load_bundle(folder), load_suites([folder / "labels_test.yaml"]))
    assert [(c.passed, c.actual_labels) for s in results for c in s.cases] == [
        (True, ("money",)), (True, ()), (True, ("pii-seen",))]
    (folder / "labels_test.yaml").write_text(SUITE.replace("labels: [money]", "labels: [money, extra]"))
    out = subprocess.run([sys.executable, "-m", "decider", "test", str(folder)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "expected: require_approval with labels [money, extra]" in out.stdout
    assert "actual:   require_approval by money-needs-approval" in out.stdout and "with labels [money]" in out.stdout
    js = subprocess.run([sys.executable, "-m", "decider", "test", str(folder), "--format", "json"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    first = json.loads(js.stdout)["suites"][0]["cases"][0]
    assert (first["passed"], first["expected"]["labels"], first["actual"]["labels"]) == (
        False, ["money", "extra"], ["money"])
