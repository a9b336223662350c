"""Shared fixtures for the stateful-control tests: a small bundle with approvals and budgets, a
token file with one principal per role, and clients that carry a token."""

from __future__ import annotations

from pathlib import Path

from decider.client import DeciderClient

from .helpers import ServerProcess

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: controls-test, version: 1.0.0}
spec:
  default: deny
  tools:
    "work.*": {risk_tier: 1}
    "payments.*": {risk_tier: 4}
  budgets:
    - {scope: agent, limit: 100, window: total}
    - {scope: team, limit: 1000, window: 1d}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: controls}
spec:
  rules:
    - id: refunds-need-finance
      effect: require_approval
      when: tool.name == "payments.refund"
      reason: "Refunds need a finance approver"
      approvers: ["group:finance-oncall", "user:carol"]
      approval_ttl: 1h
    - id: quick-approval
      effect: require_approval
      when: tool.name == "payments.quick"
      approvers: ["user:carol"]
      approval_ttl: 1s
    - id: work-allowed
      effect: allow
      when: tool.name.startsWith("work.")
"""

TOKENS = """\
tokens:
  - {token: gw-token, principal: "service:gateway", roles: [enforcer]}
  - {token: ana-token, principal: "user:ana", roles: [approver], groups: [finance-oncall]}
  - {token: bo-token, principal: "user:bo", roles: [approver]}
  - {token: carol-token, principal: "user:carol", roles: [approver]}
  - {token: olga-token, principal: "user:olga", roles: [approver]}
  - {token: admin-token, principal: "user:root", roles: [admin]}
groups:
  finance-oncall: ["user:olga", "user:dan"]
"""

REFUND_BOT = {"id": "refund-bot", "team": "finance", "owner": "user:olga", "model": "gpt-5"}


def write_bundle(tmp: Path) -> Path:
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "controls.yaml").write_text(POLICY)
    return folder


def write_tokens(tmp: Path) -> Path:
    path = tmp / "tokens.yaml"
    path.write_text(TOKENS)
    return path


def client(srv: ServerProcess, token: str | None) -> DeciderClient:
    return DeciderClient(srv.target, token=token)
