"""The example bundle in policies/ decides the way the README says it does."""

from __future__ import annotations

import pytest

from decider.bundle.compile import load_bundle
from decider.client import build_request
from decider.engine.decide import decide

from .helpers import POLICIES

BUNDLE = load_bundle(POLICIES)
CODER = {"id": "coder-7", "team": "platform", "model": "claude-opus-4", "capabilities": ["shell"]}
FINANCE = {"id": "refund-bot", "team": "finance", "model": "gpt-5"}
SUPPORT = {"id": "support-1", "team": "support", "model": "gpt-5"}   # the agent whose manifest has email.send

CASES = [
    # (agent, tool, args, environment, cost, outcome, deciding rule)
    (CODER, "shell.exec", {"command": "ls -la /workspace"}, "dev", 0, "ALLOW", "shell-allow-with-capability"),
    (CODER, "shell.exec", {"command": "cd /tmp && sudo /bin/rm -rf /"}, "dev", 0, "DENY", "shell-deny-destructive"),
    (CODER, "shell.exec", {"command": "kubectl --context prod get pods"}, "dev", 0, "REQUIRE_APPROVAL",
     "shell-production-needs-approval"),
    (CODER, "shell.exec", {"command": "make deploy"}, "production", 0, "REQUIRE_APPROVAL",
     "shell-production-needs-approval"),
    ({"id": "support-1"}, "shell.exec", {"command": "ls"}, "dev", 0, "DENY", "not_in_manifest"),  # policies/agents.yaml
    (CODER, "fs.write", {"path": "/workspace/src/app.py"}, "", 0, "ALLOW", "fs-write-workspace"),
    (CODER, "fs.write", {"path": "/workspace/../etc/passwd"}, "", 0, "DENY", "fs-deny-outside-workspace"),
    (CODER, "fs.read", {"path": "/etc/shadow"}, "", 0, "DENY", "fs-deny-outside-workspace"),
    (FINANCE, "payments.refund", {"amount": 250}, "", 25.0, "ALLOW", "small-refunds"),
    (FINANCE, "payments.refund", {"amount": 2500}, "", 25.0, "REQUIRE_APPROVAL", "refund-needs-approval-above-1000"),
    ({**FINANCE, "model": "gpt-3.5"}, "payments.refund", {"amount": 250}, "", 0, "DENY",
     "no-refunds-from-unreviewed-models"),
    (FINANCE, "payments.refund", {"amount": 250}, "", 900.0, "DENY", "default"),  # over the team budget
    (SUPPORT, "email.send", {"to": "ana@acme.example", "body": "hi"}, "", 0, "ALLOW", "email-internal"),
    (SUPPORT, "email.send", {"to": "Bob <bob@gmail.com>", "body": "hi"}, "", 0, "REQUIRE_APPROVAL",
     "email-external-needs-approval"),
    (SUPPORT, "email.send", {"to": "ana@acme.example", "body": "key AKIAIOSFODNN7EXAMPLE"}, "", 0, "DENY",
     "email-no-secrets"),
    (CODER, "db.query", {"sql": "select * from orders"}, "", 0, "ALLOW", "db-allow-queries"),
    (CODER, "db.query", {"sql": "  DROP TABLE orders"}, "", 0, "DENY", "db-deny-ddl"),
    (CODER, "http.fetch", {"url": "https://api.github.com/repos"}, "", 0, "ALLOW", "http-allow-listed-hosts"),
    (CODER, "http.fetch", {"url": "https://evil.example/x"}, "", 0, "DENY", "default"),
    (CODER, "http.fetch", {"url": "http://pypi.org/simple"}, "", 0, "DENY", "default"),
    # Named lists (bundle.yaml spec.lists): inline, a YAML file and a CSV file in the bundle folder.
    (CODER, "http.fetch", {"url": "https://tinyurl.com/abc"}, "", 0, "DENY", "http-deny-shortened-links"),
    (SUPPORT, "email.send", {"to": "x@yopmail.com", "body": "hi"}, "", 0, "DENY", "email-no-disposable-addresses"),
]


@pytest.mark.parametrize(("agent", "tool", "args", "env", "cost", "outcome", "rule"), CASES)
def test_example_bundle(agent: dict, tool: str, args: dict, env: str, cost: float, outcome: str, rule: str) -> None:
    d = decide(BUNDLE, build_request(agent=agent, tool=tool, args=args, environment=env, estimated_cost=cost))
    assert (d.outcome_name, d.deciding_rule) == (outcome, rule), d
    assert d.errors == ()
