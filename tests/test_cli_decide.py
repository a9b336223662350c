"""`decider decide` against a server: DECIDER_SERVER is honoured, `--fail-on` makes it a gate (issue 12,
item 15)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .helpers import POLICIES, ROOT, ServerProcess

SHELL = ("--agent", "coder-7", "--capability", "shell", "--tool", "shell.exec",
         "--args", '{"command": "cd /tmp && sudo /bin/rm -rf /"}')


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=60, env={**os.environ, **(env or {})})


def test_decide_asks_the_server_named_by_decider_server(server: ServerProcess) -> None:
    run = cli("decide", *SHELL, env={"DECIDER_SERVER": server.target})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["outcome"] == "DENY" and out["decisionId"]   # a decision id: the server recorded it
    with server.client() as c:
        assert c.get_decision(out["decisionId"]).deciding_rule == "shell-deny-destructive"


def test_decide_fail_on_exits_1_for_listed_outcomes_only(server: ServerProcess) -> None:
    deny = cli("decide", "--server", server.target, *SHELL, "--fail-on", "deny,require_approval")
    assert deny.returncode == 1 and json.loads(deny.stdout)["outcome"] == "DENY"
    approval = cli("decide", "--bundle", str(POLICIES), "--agent", "refund-bot", "--team", "finance", "--model",
                   "gpt-5", "--tool", "payments.refund", "--args", '{"amount": 2500}', "--fail-on", "require_approval")
    assert approval.returncode == 1 and json.loads(approval.stdout)["outcome"] == "REQUIRE_APPROVAL"
    allowed = cli("decide", "--bundle", str(POLICIES), "--agent", "coder-7", "--tool", "fs.read",
                  "--args", '{"path": "/workspace/a"}', "--fail-on", "deny,require_approval")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    bad = cli("decide", "--bundle", str(POLICIES), *SHELL, "--fail-on", "nope")
    assert bad.returncode == 2 and "--fail-on: unknown outcome(s) nope" in bad.stderr
