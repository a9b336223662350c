"""The CLI: decide (local and against a server), log listing and JSONL export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .helpers import POLICIES, ROOT, ServerProcess


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "decider", *args], capture_output=True, text=True,
                          cwd=ROOT, input=stdin, timeout=60)


def test_decide_locally_from_flags() -> None:
    run = cli("decide", "--bundle", str(POLICIES), "--agent", "refund-bot", "--team", "finance", "--model", "gpt-5",
              "--tool", "payments.refund", "--args", '{"amount": 2500}')
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["outcome"] == "REQUIRE_APPROVAL"
    assert out["decidingRule"] == "refund-needs-approval-above-1000"
    assert out["approvers"] == ["group:finance-oncall"]


def test_decide_locally_from_a_json_request_on_stdin() -> None:
    request = {"agent": {"id": "coder-7", "capabilities": ["shell"]}, "tool": {"name": "shell.exec",
               "args": {"command": "rm -rf /"}}}
    run = cli("decide", "--bundle", str(POLICIES), "--request", "-", stdin=json.dumps(request))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["decidingRule"] == "shell-deny-destructive"


def test_decide_rejects_a_bad_request_naming_the_field() -> None:
    run = cli("decide", "--bundle", str(POLICIES), "--request", "-", stdin='{"tool": {"name": 5}}')
    assert run.returncode == 2
    assert run.stderr.startswith("decider: request: ")
    run = cli("decide", "--bundle", str(POLICIES), "--agent", "a", "--tool", "fs.read", "--args", "[1]")
    assert (run.returncode, run.stderr.strip()) == (2, "decider: tool.args: must be a JSON object")


def test_decide_against_a_server_then_log_lists_and_exports_it(server: ServerProcess, tmp_path: Path) -> None:
    run = cli("decide", "--server", server.target, "--agent", "coder-7", "--tool", "db.query",
              "--args", '{"sql": "drop table users"}')
    assert run.returncode == 0, run.stderr
    decision = json.loads(run.stdout)
    assert decision["outcome"] == "DENY" and decision["decidingRule"] == "db-deny-ddl"

    table = cli("log", "--db", server.db_url, "--agent", "coder-7", "--tool", "db.query")
    assert table.returncode == 0, table.stderr
    assert decision["decisionId"] in table.stdout and "db-deny-ddl" in table.stdout

    export = cli("log", "--db", server.db_url, "--format", "jsonl", "--outcome", "deny", "--tool", "db.query")
    lines = [json.loads(line) for line in export.stdout.splitlines()]
    mine = [x for x in lines if x["decision_id"] == decision["decisionId"]]
    assert len(mine) == 1
    rec = mine[0]
    assert rec["args"] == {"sql": "drop table users"}
    assert rec["agent"]["id"] == "coder-7" and rec["outcome"] == "DENY"
    assert rec["reasons"][0]["rule_id"] == "db-deny-ddl"
    assert rec["time"].endswith("+00:00")
