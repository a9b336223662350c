"""A policy's `spec.default` (SPEC §10): its vote when its match covers the call and none of its rules
hold, combined like any rule (deny > require_approval > allow); the deciding id is `<policy>.default`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from decider.bundle.compile import Bundle, load_bundle
from decider.engine.decide import decide
from decider.errors import PolicyLoadError
from decider.v1 import decider_pb2 as pb

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: d, version: 1.0.0}
spec:
  default: deny
"""

PAYMENTS = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: payments}
spec:
  match: {tools: ["payments.*"]}
  default: require_approval
  rules:
    - id: small-refunds
      effect: allow
      when: tool.args.amount <= 100.0
    - id: no-refunds-to-self
      effect: deny
      when: tool.args.to == agent.id
"""

# A second policy over the same tools, with an allow default: it must not beat the approval vote.
AUDIT = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: audit}
spec:
  match: {tools: ["payments.refund"], teams: [finance]}
  default: allow
  rules:
    - id: audit-denies-weekend-flag
      effect: deny
      when: has(tool.args.weekend) && tool.args.weekend == true
"""


def load(tmp: Path, *policies: str) -> Bundle:
    (tmp / "bundle.yaml").write_text(BUNDLE)
    for i, text in enumerate(policies):
        (tmp / f"p{i}.yaml").write_text(textwrap.dedent(text))
    return load_bundle(tmp)


def ask(bundle: Bundle, tool: str, team: str = "", **args: object) -> tuple[str, str, tuple[str, ...], str]:
    req = pb.DecideRequest(agent=pb.Agent(id="bot", team=team), tool=pb.ToolCall(name=tool))
    req.tool.args.update(args)
    d = decide(bundle, req)
    return pb.Outcome.Name(d.outcome), d.deciding_rule, d.matched_rules, d.reasons[0].text


def test_policy_default_votes_when_no_rule_of_the_policy_holds(tmp_path: Path) -> None:
    bundle = load(tmp_path, PAYMENTS)
    outcome, rule, matched, text = ask(bundle, "payments.refund", amount=500, to="x")
    assert (outcome, rule, matched) == ("REQUIRE_APPROVAL", "payments.default", ("payments.default",))
    assert text == "no rule of policy payments held; policy default is require_approval"


def test_a_rule_that_holds_replaces_the_policy_default(tmp_path: Path) -> None:
    bundle = load(tmp_path, PAYMENTS)
    assert ask(bundle, "payments.refund", amount=50, to="x")[:3] == ("ALLOW", "small-refunds", ("small-refunds",))
    assert ask(bundle, "payments.refund", amount=50, to="bot")[:2] == ("DENY", "no-refunds-to-self")


def test_a_policy_whose_match_does_not_cover_the_call_casts_no_vote(tmp_path: Path) -> None:
    bundle = load(tmp_path, PAYMENTS)
    assert ask(bundle, "fs.read", path="/x")[:2] == ("DENY", "default")  # the bundle default


def test_policy_defaults_combine_like_rules(tmp_path: Path) -> None:
    bundle = load(tmp_path, PAYMENTS, AUDIT)
    # payments votes require_approval (its default), audit votes allow (its default): approval wins.
    outcome, rule, matched, _ = ask(bundle, "payments.refund", team="finance", amount=500, to="x")
    assert (outcome, rule, matched) == ("REQUIRE_APPROVAL", "payments.default", ("payments.default", "audit.default"))
    # audit's deny rule beats payments' default.
    assert ask(bundle, "payments.refund", team="finance", amount=500, to="x", weekend=True)[:2] == \
        ("DENY", "audit-denies-weekend-flag")
    # Outside audit's `teams`, only payments votes.
    assert ask(bundle, "payments.refund", team="ops", amount=50, to="x")[:3] == \
        ("ALLOW", "small-refunds", ("small-refunds",))


def test_a_policy_default_id_that_collides_with_a_rule_id_is_a_build_error(tmp_path: Path) -> None:
    clash = AUDIT.replace("audit-denies-weekend-flag", "payments.default")
    with pytest.raises(PolicyLoadError) as exc:
        load(tmp_path, PAYMENTS, clash)
    assert [str(e) for e in exc.value.errors] == [
        f"{tmp_path}/p1.yaml:8:11: duplicate rule id 'payments.default' (first at {tmp_path}/p0.yaml:6:12)"]


def test_an_invalid_policy_default_is_a_located_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyLoadError) as exc:
        load(tmp_path, PAYMENTS.replace("default: require_approval", "default: approve"))
    (err,) = exc.value.errors
    assert str(err).endswith("p0.yaml:6:12: spec.default: Input should be 'allow', 'deny' or 'require_approval'")


def test_decider_test_cases_can_expect_a_policy_default(tmp_path: Path) -> None:
    import subprocess
    import sys

    load(tmp_path, PAYMENTS)
    (tmp_path / "payments_test.yaml").write_text("""\
apiVersion: decider/v1
kind: TestSuite
metadata: {name: defaults}
cases:
  - name: a mid-size refund falls to the policy default
    agent: {id: bot}
    tool: payments.refund
    args: {amount: 500, to: x}
    expect: {outcome: require_approval, rule: payments.default, reason: "policy default is require_approval"}
  - name: a small refund is allowed by its rule
    agent: {id: bot}
    tool: payments.refund
    args: {amount: 5, to: x}
    expect: {outcome: allow, rule: small-refunds}
""")
    run = subprocess.run([sys.executable, "-m", "decider", "test", str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("2 passed, 0 failed")


# Written before PAYMENTS in the bundle (file p0), with an approval rule of its own, and an
# `outbound.default` that denies: the reason a specific rule gives is the useful one.
OUTBOUND = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: outbound}
spec:
  match: {tools: ["payments.*"]}
  default: deny
  rules:
    - id: allowed-currency
      effect: allow
      when: has(tool.args.currency) && tool.args.currency == "EUR"
"""

SELF = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: self-dealing}
spec:
  match: {tools: ["payments.*"]}
  rules:
    - id: approve-large
      effect: require_approval
      when: tool.args.amount > 1000.0
      reason: "Large payments need finance"
      approvers: ["group:finance"]
"""


def test_an_explicit_rule_decides_when_a_policy_default_agrees_with_it(tmp_path: Path) -> None:
    # SPEC §10 round two: outbound's default denies, and so does payments' no-refunds-to-self;
    # outbound comes first, yet the explicit rule decides, with its reason first.
    bundle = load(tmp_path, OUTBOUND, PAYMENTS)
    outcome, rule, matched, text = ask(bundle, "payments.refund", amount=50, to="bot")
    assert (outcome, rule) == ("DENY", "no-refunds-to-self")
    assert matched == ("outbound.default", "small-refunds", "no-refunds-to-self")
    req = pb.DecideRequest(agent=pb.Agent(id="bot"), tool=pb.ToolCall(name="payments.refund"))
    req.tool.args.update({"amount": 50, "to": "bot"})
    assert [r.rule_id for r in decide(bundle, req).reasons] == ["no-refunds-to-self", "outbound.default"]
    # No explicit rule votes deny: outbound's default decides.
    assert ask(bundle, "payments.refund", amount=50, to="x")[:2] == ("DENY", "outbound.default")


def test_an_explicit_approval_rule_decides_over_an_agreeing_default_and_brings_its_approvers(tmp_path: Path) -> None:
    # payments (p0) votes require_approval by its default; self-dealing (p1) by its rule.
    bundle = load(tmp_path, PAYMENTS, SELF)
    req = pb.DecideRequest(agent=pb.Agent(id="bot"), tool=pb.ToolCall(name="payments.refund"))
    req.tool.args.update({"amount": 5000, "to": "x"})
    d = decide(bundle, req)
    assert (pb.Outcome.Name(d.outcome), d.deciding_rule, d.approvers) == (
        "REQUIRE_APPROVAL", "approve-large", ("group:finance",))
    assert d.reasons[0].text == "Large payments need finance"
