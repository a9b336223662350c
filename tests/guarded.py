"""Shared by the enforcement-point tests (runtime guards, ExtMcp): a bundle whose tools allow,
deny or need approval, a token file with an enforcer and an approver, and small waits."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from decider.client import DeciderClient
from decider.v1 import decider_pb2 as pb

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: guards-test, version: 1.0.0}
spec:
  default: deny
  tools:
    "*": {risk_tier: 1}
  budgets:
    - {scope: agent, limit: 100, window: total}
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: guards}
spec:
  rules:
    - id: big-refunds-need-approval
      effect: require_approval
      when: tool.name == "refund" && tool.args.amount > 100.0
      reason: "Refunds above 100 need a finance approver"
      approvers: ["user:carol"]
      approval_ttl: 1h
    - id: small-refunds
      effect: allow
      when: tool.name == "refund" && tool.args.amount <= 100.0
    - id: no-repo-deletes
      effect: deny
      when: tool.name == "delete_repo"
      reason: "Agents never delete repositories"
    - id: reads
      effect: allow
      when: tool.name in ["get_weather", "read_file", "flaky"]
    - id: docs-resources
      effect: allow
      when: tool.name == "resources/read" && tool.args.uri.startsWith("docs://")
    # An outcome rule (SPEC §10 round two): the guards send the tool's return value as the result.
    - id: ssn-in-result
      on: outcome
      effect: label
      labels: [pii-seen]
      when: result.text.matches("[0-9]{3}-[0-9]{2}-[0-9]{4}")
"""

TOKENS = """\
tokens:
  - {token: gw-token, principal: "service:gateway", roles: [enforcer]}
  - {token: carol-token, principal: "user:carol", roles: [approver]}
"""

AGENT = {"id": "support-bot", "team": "support", "model": "gpt-5"}

T = TypeVar("T")


def write_bundle(tmp: Path) -> Path:
    folder = tmp / "bundle"
    folder.mkdir(exist_ok=True)
    (folder / "bundle.yaml").write_text(BUNDLE)
    (folder / "guards.yaml").write_text(POLICY)
    return folder


def write_tokens(tmp: Path) -> Path:
    path = tmp / "tokens.yaml"
    path.write_text(TOKENS)
    return path


def eventually(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `fn` until it returns something truthy: bounded in time, and in count (every 50 ms)."""
    for _ in range(int(timeout / 0.05)):
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def pending_approvals(client: DeciderClient, tool: str) -> list[pb.DecisionRecord]:
    return [r for r in client.list_approvals(pb.APPROVAL_PENDING) if r.tool_name == tool]


def record_count(db_url: str) -> int:
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        return int(conn.execute("select count(*) from decisions").fetchone()[0])


def decision_ids(db_url: str, tool: str, outcome: str) -> list[str]:
    """Every recorded decision for `tool` with `outcome`, oldest first (read from the SQLite file)."""
    with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("select decision_id from decisions where tool_name = ? and outcome = ? "
                            "order by decision_id", (tool, outcome)).fetchall()
    return [r[0] for r in rows]
