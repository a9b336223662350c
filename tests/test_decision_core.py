"""engine.decide as one pure function: the request comes back unchanged, and the stateful controls
(budgets, approvals) are decided from the state snapshot into a Decision plus the Effects to apply."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from decider.bundle.compile import Bundle
from decider.engine.decide import decide
from decider.engine.memory import MemoryState, Resolution
from decider.engine.state import ApprovalView, BudgetUsage, State
from decider.v1 import decider_pb2 as pb

from .test_engine import make_bundle, req

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: pay}
spec:
  rules:
    - {id: allow-small, effect: allow, when: "tool.args.amount <= 1000.0"}
    - {id: approve-big, effect: require_approval, when: "tool.args.amount > 1000.0", approvers: ["user:carol"],
       approval_ttl: 1h}
    - {id: tier-read, effect: deny, when: "tool.risk_tier == 4 && tool.args.amount == 13.0"}
"""
SPEC = """\
default: deny
tools: {"pay.*": {risk_tier: 4}}
budgets: [{scope: team, limit: 100, window: total}]
"""


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    return make_bundle(tmp_path, POLICY, SPEC)


def test_decide_leaves_the_request_as_it_came(bundle: Bundle) -> None:
    r = req(args={"amount": 13})
    before = r.SerializeToString(deterministic=True)
    d = decide(bundle, r, State(now=NOW))
    assert d.outcome == pb.DENY and d.deciding_rule == "tier-read" and d.risk_tier == 4   # conditions saw tier 4
    assert not r.tool.HasField("risk_tier") and r.SerializeToString(deterministic=True) == before


def test_an_allow_with_a_cost_reserves_on_every_applicable_budget(bundle: Bundle) -> None:
    d = decide(bundle, req(args={"amount": 5}, estimated_cost=30.0), State(now=NOW))
    assert d.outcome == pb.ALLOW
    assert [b.scope for b in d.effects.reserve] == ["team"] and d.effects.amount == 30.0


def test_a_cost_beyond_the_budget_is_denied_and_reserves_nothing(bundle: Bundle) -> None:
    state = State(now=NOW, budget_usage={"team": BudgetUsage(spent=60.0, reserved=20.0)})
    d = decide(bundle, req(args={"amount": 5}, estimated_cost=30.0), state)
    assert d.outcome == pb.DENY and d.deciding_rule == "budget_exceeded" and not d.effects
    assert "limit 100, spent 60, reserved 20, this call 30" in d.reasons[0].text


def _approval(state: str, expires: datetime, **kw: str) -> ApprovalView:
    return ApprovalView("ap-1", state, expires, deciding_rule="approve-big", approvers=("user:carol",), **kw)


def test_approval_states_settle_as_the_server_settles_them(bundle: Bundle) -> None:
    big = req(args={"amount": 5000})
    later, earlier = NOW + timedelta(minutes=5), NOW - timedelta(seconds=1)
    opened = decide(bundle, big, State(now=NOW, approvals=()))
    assert opened.outcome == pb.REQUIRE_APPROVAL and opened.effects.open_approval

    pending = decide(bundle, big, State(now=NOW, approvals=(_approval("pending", later),)))
    assert pending.outcome == pb.REQUIRE_APPROVAL and pending.effects.same_as == "ap-1"

    approved = decide(bundle, big, State(now=NOW, approvals=(_approval("approved", later, resolved_by="user:carol"),)))
    assert (approved.outcome, approved.deciding_rule, approved.reasons[0].rule_id) == (pb.ALLOW, "approve-big",
                                                                                       "approved")
    assert approved.effects.consume == "ap-1"

    rejected = decide(bundle, big, State(now=NOW, approvals=(_approval("rejected", later, comment="no"),)))
    assert (rejected.outcome, rejected.deciding_rule) == (pb.DENY, "rejected") and "no" in rejected.reasons[0].text

    lapsed = decide(bundle, big, State(now=NOW, approvals=(_approval("rejected", earlier),)))
    assert lapsed.outcome == pb.REQUIRE_APPROVAL and lapsed.effects.open_approval

    expired = decide(bundle, big, State(now=NOW, approvals=(_approval("pending", earlier),)))
    assert expired.effects.expire == ("ap-1",) and expired.effects.open_approval


def test_an_approved_call_that_does_not_fit_the_budget_keeps_its_approval(bundle: Bundle) -> None:
    state = State(now=NOW, budget_usage={"team": BudgetUsage(spent=95.0)},
                  approvals=(_approval("approved", NOW + timedelta(hours=1)),))
    d = decide(bundle, req(args={"amount": 5000}, estimated_cost=10.0), state)
    assert d.deciding_rule == "budget_exceeded" and not d.effects.consume


def test_dry_run_changes_no_state(bundle: Bundle) -> None:
    d = decide(bundle, req(args={"amount": 5}, estimated_cost=30.0, dry_run=True), State(now=NOW))
    assert d.outcome == pb.ALLOW and not d.effects


def test_memory_state_applies_effects_like_the_store(bundle: Bundle) -> None:
    sim = MemoryState()
    costly = req(args={"amount": 5}, estimated_cost=40.0)
    assert [sim.decide(bundle, costly, NOW).outcome for _ in range(3)] == [pb.ALLOW, pb.ALLOW, pb.DENY]
    big = req(args={"amount": 5000})
    first = sim.decide(bundle, big, NOW, "d-1")
    assert first.effects.open_approval
    assert sim.decide(bundle, big, NOW + timedelta(seconds=1)).effects.same_as == "d-1"
    sim.resolve("d-1", Resolution("approved", NOW + timedelta(seconds=2), "user:carol"))
    assert sim.decide(bundle, big, NOW + timedelta(seconds=3)).outcome == pb.ALLOW
    assert sim.decide(bundle, big, NOW + timedelta(seconds=4)).outcome == pb.REQUIRE_APPROVAL   # consumed


def test_a_cel_runtime_error_follows_on_error(tmp_path: Path) -> None:
    heavy = """\
    apiVersion: decider/v1
    kind: Policy
    metadata: {name: heavy}
    spec:
      rules:
        - {id: heavy, effect: deny, when: 'tool.args.xs.all(a, tool.args.xs.all(b, tool.args.xs.exists(c, c == "zz") || true))'}
        - {id: fallback, effect: allow, when: "true"}
    """
    xs = [str(i) for i in range(40)]
    deny = decide(make_bundle(tmp_path, heavy, "default: deny\non_error: deny"), req(args={"xs": xs}))
    assert deny.outcome == pb.DENY and deny.deciding_rule == "heavy" and "budget" in deny.reasons[0].text.lower()
    skip = decide(make_bundle(tmp_path, heavy, "default: deny\non_error: skip"), req(args={"xs": xs}))
    assert skip.outcome == pb.ALLOW and skip.deciding_rule == "fallback" and skip.errors
