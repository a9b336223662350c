"""The pure engine: combining, defaults, fail-closed errors, the match index, JSON numbers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from decider.bundle.compile import Bundle, load_bundle
from decider.client import build_request
from decider.engine.decide import decide
from decider.engine.state import BudgetUsage, KillSwitch, State
from decider.v1 import decider_pb2 as pb


def make_bundle(tmp: Path, policies: str, spec: str = "default: deny") -> Bundle:
    (tmp / "bundle.yaml").write_text(
        "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: t, version: '1'}\nspec:\n"
        + textwrap.indent(textwrap.dedent(spec), "  ")
    )
    (tmp / "p.yaml").write_text(textwrap.dedent(policies))
    return load_bundle(tmp)


def req(tool: str = "pay.refund", **kw: object) -> pb.DecideRequest:
    agent = kw.pop("agent", {"id": "a1", "team": "fin", "model": "gpt-5"})
    return build_request(agent=agent, tool=tool, **kw)  # type: ignore[arg-type]


POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: pay}
spec:
  match: {tools: ["pay.*"]}
  rules:
    - {id: allow-small, effect: allow, when: "tool.args.amount <= 1000.0"}
    - {id: approve-big, effect: require_approval, when: "tool.args.amount > 1000.0", approvers: ["group:fin"],
       approval_ttl: 4h}
    - {id: deny-negative, effect: deny, when: "tool.args.amount < 0", reason: "negative refunds"}
    - {id: allow-any, effect: allow, when: "true"}
"""


def test_json_int_compares_with_double_literal(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, POLICY)
    d = decide(b, req(args={"amount": 2500}))  # a JSON integer, compared with 1000.0
    assert d.outcome == pb.REQUIRE_APPROVAL
    assert d.deciding_rule == "approve-big"
    assert d.approvers == ("group:fin",) and d.approval_ttl_s == 4 * 3600


def test_deny_beats_approval_beats_allow_and_every_match_is_listed(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, POLICY)
    d = decide(b, req(args={"amount": -5}))
    assert d.outcome == pb.DENY
    assert d.matched_rules == ("allow-small", "deny-negative", "allow-any")
    assert [r.rule_id for r in d.reasons] == ["deny-negative"]
    assert d.reasons[0].text == "negative refunds"
    d = decide(b, req(args={"amount": 10}))
    assert d.outcome == pb.ALLOW
    assert d.deciding_rule == "allow-small"
    assert [r.rule_id for r in d.reasons] == ["allow-small", "allow-any"]


def test_no_matching_rule_gives_the_bundle_default(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, POLICY)
    d = decide(b, req(tool="shell.exec"))
    assert (d.outcome, d.deciding_rule, d.matched_rules) == (pb.DENY, "default", ())
    b2 = make_bundle(tmp_path, POLICY, spec="default: require_approval")
    assert decide(b2, req(tool="shell.exec")).outcome == pb.REQUIRE_APPROVAL


def test_condition_error_fails_closed_with_the_error_in_the_reasons(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, POLICY)
    d = decide(b, req(args={"note": "no amount"}))  # tool.args.amount is missing: the rules error
    assert d.outcome == pb.DENY
    assert d.deciding_rule == "allow-small"
    assert "condition error (fail closed)" in d.reasons[0].text and "amount" in d.reasons[0].text
    assert len(d.errors) == 3


def test_on_error_skip_ignores_erroring_rules(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, POLICY, spec="default: deny\non_error: skip")
    d = decide(b, req(args={"note": "no amount"}))
    assert d.outcome == pb.ALLOW and d.deciding_rule == "allow-any"
    assert len(d.errors) == 3


def test_only_policies_matching_the_tool_are_evaluated(tmp_path: Path) -> None:
    # The shell policy's condition errors on any request; if it were evaluated for a payments
    # call, fail-closed would turn the allow into a deny.
    b = make_bundle(tmp_path, POLICY + """\
---
apiVersion: decider/v1
kind: Policy
metadata: {name: shell}
spec:
  match: {tools: ["shell.exec"]}
  rules:
    - {id: shell-errors, effect: allow, when: "tool.args.missing == 1"}
---
apiVersion: decider/v1
kind: Policy
metadata: {name: finance-team-only}
spec:
  match: {tools: ["pay.refund"], teams: ["fin*"]}
  rules:
    - {id: fin-team, effect: allow}
""")
    assert [p.name for p in b.candidates("pay.refund")] == ["pay", "finance-team-only"]
    assert [p.name for p in b.candidates("pay.charge")] == ["pay"]
    assert [p.name for p in b.candidates("shell.exec")] == ["shell"]
    assert b.candidates("other") == ()
    d = decide(b, req(args={"amount": 5}))
    assert d.outcome == pb.ALLOW and d.errors == ()
    assert d.matched_rules == ("allow-small", "allow-any", "fin-team")
    d = decide(b, req(args={"amount": 5}, agent={"id": "a2", "team": "ops", "model": "gpt-5"}))
    assert "fin-team" not in d.matched_rules  # `teams` filter did not match


def test_risk_tier_comes_from_request_else_catalogue_else_critical(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, """\
apiVersion: decider/v1
kind: Policy
metadata: {name: tiers}
spec:
  rules:
    - {id: high-risk, effect: require_approval, when: "tool.risk_tier >= 3"}
    - {id: low-risk, effect: allow, when: "tool.risk_tier < 3"}
""", spec='default: deny\ntools:\n  "fs.read": {risk_tier: 0}\n  "shell.*": {risk_tier: 3}\n  "shell.echo*": {risk_tier: 1}')
    assert decide(b, req(tool="fs.read")).risk_tier == 0
    assert decide(b, req(tool="shell.exec")).outcome == pb.REQUIRE_APPROVAL
    assert decide(b, req(tool="shell.echo")).risk_tier == 1  # the more specific glob wins
    assert decide(b, req(tool="fs.read", risk_tier=4)).outcome == pb.REQUIRE_APPROVAL
    assert decide(b, req(tool="never.heard.of")).risk_tier == 4


def test_budget_views_are_visible_to_conditions(tmp_path: Path) -> None:
    b = make_bundle(tmp_path, """\
apiVersion: decider/v1
kind: Policy
metadata: {name: b}
spec:
  rules:
    - {id: within-budget, effect: allow, when: "budget.team.remaining >= request.estimated_cost"}
""", spec="default: deny\nbudgets:\n  - {scope: team, limit: 100.0, window: 1d}")
    assert decide(b, req(estimated_cost=60.0)).outcome == pb.ALLOW
    used = State(budget_usage={"team": BudgetUsage(spent=30.0, reserved=20.0)})
    assert decide(b, req(estimated_cost=60.0), used).outcome == pb.DENY


@pytest.mark.parametrize(
    ("scope", "value", "hit"),
    [("team", "fin", True), ("team", "ops", False), ("tool", "pay.refund", True), ("model", "gpt-5", True),
     ("platform", "", True), ("session", "s1", False)],
)
def test_kill_switch_wins_before_any_policy(tmp_path: Path, scope: str, value: str, hit: bool) -> None:
    b = make_bundle(tmp_path, POLICY)
    state = State(kill_switches=(KillSwitch("ks1", scope, value, "incident 42"),))
    d = decide(b, req(args={"amount": 5}), state)
    if hit:
        assert (d.outcome, d.deciding_rule, d.kill_switch_id) == (pb.DENY, "killed", "ks1")
        assert "incident 42" in d.reasons[0].text
    else:
        assert d.outcome == pb.ALLOW
