"""`decider test` steps inherit the case's `context` and `state`; a step may override either
(SPEC §10 round two, issue 26 item 5)."""

from __future__ import annotations

from pathlib import Path

from decider.bundle.compile import load_bundle
from decider.verify.suites import load_suites, run_suites

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: steps, version: 1.0.0}
spec:
  default: deny
  budgets: [{scope: team, limit: 100.0, window: total}]
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: tickets}
spec:
  rules:
    - id: needs-a-ticket
      effect: deny
      when: '!has(context.ticket)'
    - id: spend-within-budget
      effect: allow
      when: tool.name == "work" && budget.team.remaining >= 20.0
    - id: deploys-need-approval
      effect: require_approval
      when: tool.name == "deploy"
"""

SUITE = """\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: inherit}
cases:
  - name: the case's context reaches every step
    agent: {id: bot, team: t1, session_id: c1}
    context: {ticket: T-1}
    steps:
      - {tool: work, expect: {outcome: allow}}
      - {tool: work, expect: {outcome: allow}}
  - name: a step's own context replaces the case's
    agent: {id: bot, team: t1, session_id: c2}
    context: {ticket: T-1}
    steps:
      - {tool: work, context: {note: none}, expect: {outcome: deny, rule: needs-a-ticket}}
  - name: the case's budget usage is where the steps start
    agent: {id: bot, team: t1, session_id: c3}
    context: {ticket: T-1}
    state: {budgets: {team: {spent: 85.0}}}
    steps:
      - {tool: work, expect: {outcome: deny, rule: default}}
  - name: a step's own budget usage applies from that step
    agent: {id: bot, team: t1, session_id: c4}
    context: {ticket: T-1}
    state: {budgets: {team: {spent: 85.0}}}
    steps:
      - {tool: work, expect: {outcome: deny}}
      - {tool: work, state: {budgets: {team: {spent: 10.0}}}, expect: {outcome: allow}}
  - name: the case's kill switch is in force for every step unless a step says otherwise
    agent: {id: bot, team: t1, session_id: c5}
    context: {ticket: T-1}
    state: {kill_switches: [{scope: team, value: t1}]}
    steps:
      - {tool: work, expect: {outcome: deny, rule: killed}}
      - {tool: work, state: {}, expect: {outcome: allow}}
  - name: an approved approval in the case's state applies to the step's call, once
    agent: {id: bot, team: t1, session_id: c6}
    context: {ticket: T-1}
    state: {approval: approved}
    steps:
      - {tool: deploy, expect: {outcome: allow, rule: deploys-need-approval}}
      - {tool: deploy, expect: {outcome: require_approval, rule: deploys-need-approval}}
"""


def test_steps_inherit_context_and_state_and_may_override_them(tmp_path: Path) -> None:
    (tmp_path / "bundle.yaml").write_text(BUNDLE)
    (tmp_path / "tickets.yaml").write_text(POLICY)
    (tmp_path / "inherit_test.yaml").write_text(SUITE)
    results = run_suites(load_bundle(tmp_path), load_suites([tmp_path / "inherit_test.yaml"]))
    got = [(c.name, c.actual_outcome, c.actual_rule, c.problem) for s in results for c in s.cases if not c.passed]
    assert got == []
    assert sum(len(s.cases) for s in results) == 10
