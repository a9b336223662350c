"""`decider hook claude-code` (SPEC §8 Coding-agent hooks), run as Claude Code runs a command hook: a
new process per event, the event JSON on stdin, the decision JSON on stdout, against a real
`decider serve`. The events are shaped like Claude Code's documented hook input (session_id,
transcript_path, cwd, permission_mode, hook_event_name, tool_name, tool_input, tool_use_id, and
tool_response after the tool ran). The HTTP form is posted to a real `decider gateway mcp` listener."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from decider.client import DeciderClient
from decider.hooks.claude_code import tool_of
from decider.v1 import decider_pb2 as pb

from .gateway_support import HTTP_AGENT, HTTP_CLIENT_TOKEN, Setup, make_setup, start_http_gateway
from .helpers import ROOT, ServerProcess, start_server

BUNDLE = """\
apiVersion: decider/v1
kind: Bundle
metadata: {name: hooks-test, version: 1.0.0}
spec:
  default: deny
"""

POLICY = """\
apiVersion: decider/v1
kind: Policy
metadata: {name: coding-agent}
spec:
  rules:
    - id: bash-read-only
      effect: allow
      when: tool.name == "Bash" && (tool.args.command.startsWith("ls ") || tool.args.command == "git status")
    - id: no-recursive-delete
      effect: deny
      when: tool.name == "Bash" && tool.args.command.contains("rm -rf")
      reason: "No recursive deletes"
    - id: push-needs-approval
      effect: require_approval
      when: tool.name == "Bash" && tool.args.command.startsWith("git push")
      reason: "Pushing needs a reviewer"
      approvers: ["user:carol"]
      approval_ttl: 1h
    - id: edits-in-the-repo
      effect: allow
      when: tool.name in ["Edit", "Write"] && tool.args.file_path.startsWith("/home/dev/repo/")
    - id: github-reads
      effect: allow
      when: tool.server == "mcp://github" && tool.name == "list_issues"
"""

TOKENS = """\
tokens:
  - {token: hook-token, principal: "service:claude-code-hook", roles: [enforcer]}
  - {token: carol-token, principal: "user:carol", roles: [approver]}
  - {token: admin-token, principal: "user:root", roles: [admin]}
"""

SESSION = "0b6a3c52-8e1f-4a8e-9a55-2f1e3c4d5e6f"


@pytest.fixture(scope="module")
def decider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("hooks")
    bundle = tmp / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(BUNDLE)
    (bundle / "coding.yaml").write_text(POLICY)
    (tmp / "tokens.yaml").write_text(TOKENS)
    srv = start_server(tmp, bundle, None, "--tokens", str(tmp / "tokens.yaml"))
    try:
        yield srv
    finally:
        srv.stop()


def event(name: str, tool: str, tool_input: dict[str, Any], use_id: str, **more: Any) -> dict[str, Any]:
    return {"session_id": SESSION, "transcript_path": f"/home/dev/.claude/projects/-home-dev-repo/{SESSION}.jsonl",
            "cwd": "/home/dev/repo", "permission_mode": "default", "hook_event_name": name,
            "tool_name": tool, "tool_input": tool_input, "tool_use_id": use_id, **more}


def hook(target: str, ev: Any, state: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    stdin = ev if isinstance(ev, str) else json.dumps(ev)
    return subprocess.run([sys.executable, "-m", "decider", "hook", "claude-code", "--decider", target,
                           "--token-env", "DECIDER_HOOK_TOKEN", "--agent-id", "coder-7", "--team", "platform",
                           "--state-dir", str(state), *extra],
                          input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "DECIDER_HOOK_TOKEN": "hook-token"})


def decision(out: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout)["hookSpecificOutput"]
    assert spec["hookEventName"] == "PreToolUse"
    return spec


def record_of(target: str, reason: str) -> pb.DecisionRecord:
    decision_id = reason.rsplit("(decision ", 1)[1].rstrip(")")
    with DeciderClient(target, token="admin-token") as c:
        return c.get_decision(decision_id)


def test_mcp_tool_names_map_to_tool_and_server() -> None:
    assert tool_of("mcp__github__list_issues") == ("list_issues", "mcp://github")
    assert tool_of("mcp__my-server__get__thing") == ("get__thing", "mcp://my-server")
    assert tool_of("Bash") == ("Bash", "") and tool_of("mcp__broken") == ("mcp__broken", "")


def test_bash_allowed_then_its_outcome_reported(decider: ServerProcess, tmp_path: Path) -> None:
    out = hook(decider.target, event("PreToolUse", "Bash", {"command": "ls -la", "description": "List"},
                                     "toolu_01A"), tmp_path)
    spec = decision(out)
    assert spec["permissionDecision"] == "allow" and "bash-read-only" in spec["permissionDecisionReason"]
    rec = record_of(decider.target, spec["permissionDecisionReason"])
    assert (rec.tool_name, rec.tool_server, rec.call_id) == ("Bash", "", "toolu_01A")
    assert (rec.agent.id, rec.agent.team, rec.agent.session_id) == ("coder-7", "platform", SESSION)
    assert rec.context["cwd"] == "/home/dev/repo"

    done = hook(decider.target, event("PostToolUse", "Bash", {"command": "ls -la"}, "toolu_01A",
                                      tool_response={"stdout": "total 0", "stderr": "", "interrupted": False,
                                                     "isImage": False}), tmp_path)
    assert done.returncode == 0 and done.stdout == "", done.stderr
    with DeciderClient(decider.target, token="admin-token") as c:
        assert c.get_decision(rec.decision_id).outcome_status == "ok"


def test_bash_denied_names_the_reason(decider: ServerProcess, tmp_path: Path) -> None:
    spec = decision(hook(decider.target, event("PreToolUse", "Bash", {"command": "rm -rf build"}, "toolu_01B"),
                         tmp_path))
    assert spec["permissionDecision"] == "deny"
    assert "No recursive deletes [no-recursive-delete]" in spec["permissionDecisionReason"]
    assert record_of(decider.target, spec["permissionDecisionReason"]).outcome == pb.DENY


def test_edit_and_an_mcp_tool(decider: ServerProcess, tmp_path: Path) -> None:
    edit = {"file_path": "/home/dev/repo/app.py", "old_string": "a = 1", "new_string": "a = 2"}
    assert decision(hook(decider.target, event("PreToolUse", "Edit", edit, "toolu_01C"), tmp_path))[
        "permissionDecision"] == "allow"
    outside = {"file_path": "/etc/hosts", "content": "x"}
    assert decision(hook(decider.target, event("PreToolUse", "Write", outside, "toolu_01D"), tmp_path))[
        "permissionDecision"] == "deny"

    spec = decision(hook(decider.target, event("PreToolUse", "mcp__github__list_issues",
                                               {"owner": "acme", "repo": "app"}, "toolu_01E"), tmp_path))
    assert spec["permissionDecision"] == "allow"
    rec = record_of(decider.target, spec["permissionDecisionReason"])
    assert (rec.tool_name, rec.tool_server) == ("list_issues", "mcp://github")

    failed = hook(decider.target, event("PostToolUseFailure", "mcp__github__list_issues", {"owner": "acme"},
                                        "toolu_01E", error="rate limited"), tmp_path, "--outcome-label",
                  "mcp__github__*=external")
    assert failed.returncode == 0, failed.stderr
    with DeciderClient(decider.target, token="admin-token") as c:
        after = c.get_decision(rec.decision_id)
    assert after.outcome_status == "error" and "external" in after.labels


def test_require_approval_asks_by_default(decider: ServerProcess, tmp_path: Path) -> None:
    spec = decision(hook(decider.target, event("PreToolUse", "Bash", {"command": "git push origin main"},
                                               "toolu_01F"), tmp_path))
    assert spec["permissionDecision"] == "ask"
    assert "Pushing needs a reviewer" in spec["permissionDecisionReason"]
    assert "user:carol" in spec["permissionDecisionReason"]
    assert record_of(decider.target, spec["permissionDecisionReason"]).outcome == pb.REQUIRE_APPROVAL


def _resolve_when_pending(target: str, command: str, approve: bool, comment: str = "") -> None:
    with DeciderClient(target, token="carol-token") as c:
        for _ in range(400):                                  # bounded: ~20 s
            pending = [r for r in c.list_approvals() if r.tool_name == "Bash"
                       and r.args["command"] == command]
            if pending:
                c.resolve_approval(pending[0].decision_id, approve, comment=comment)
                return
            time.sleep(0.05)


@pytest.mark.parametrize("approve", [True, False])
def test_require_approval_can_wait_for_an_approver(decider: ServerProcess, tmp_path: Path, approve: bool) -> None:
    command = f"git push origin {'main' if approve else 'release'}"
    approver = threading.Thread(target=_resolve_when_pending,
                                args=(decider.target, command, approve, "" if approve else "release is frozen"))
    approver.start()
    try:
        out = hook(decider.target, event("PreToolUse", "Bash", {"command": command}, f"toolu_02{approve}"),
                   tmp_path, "--on-approval", "wait", "--wait", "60s")
    finally:
        approver.join(30)
    spec = decision(out)
    if approve:
        assert spec["permissionDecision"] == "allow" and "approved" in spec["permissionDecisionReason"]
        assert record_of(decider.target, spec["permissionDecisionReason"]).outcome == pb.ALLOW
    else:
        assert spec["permissionDecision"] == "deny"
        assert 'approval rejected by user:carol ("release is frozen")' in spec["permissionDecisionReason"]


def test_decider_unreachable_exits_2_with_the_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:                     # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = hook(f"127.0.0.1:{port}", event("PreToolUse", "Bash", {"command": "ls -la"}, "toolu_03"), tmp_path,
               "--timeout", "2s")
    assert out.returncode == 2 and out.stdout == ""
    assert "decider gave no decision for Bash" in out.stderr and "fails closed" in out.stderr


def test_bad_stdin_blocks_and_other_events_pass(decider: ServerProcess, tmp_path: Path) -> None:
    bad = hook(decider.target, "{not json", tmp_path)
    assert bad.returncode == 2 and "not JSON" in bad.stderr
    missing = hook(decider.target, {"hook_event_name": "PreToolUse", "session_id": SESSION}, tmp_path)
    assert missing.returncode == 2 and "without tool_name" in missing.stderr
    other = hook(decider.target, {"hook_event_name": "UserPromptSubmit", "session_id": SESSION, "prompt": "hi"},
                 tmp_path)
    assert (other.returncode, other.stdout) == (0, "")


# ---- the same over HTTP: POST /hooks/claude-code on the MCP gateway's listener ----

@pytest.fixture(scope="module")
def gw_setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = make_setup(tmp_path_factory.mktemp("hooks-http"))
    try:
        yield s
    finally:
        s.decider.stop()


def post_hook(url: str, ev: Any, token: str | None = HTTP_CLIENT_TOKEN, query: str = "") -> httpx2.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = ev if isinstance(ev, str) else json.dumps(ev)
    return httpx2.post(url.removesuffix("/mcp") + "/hooks/claude-code" + query, content=body,
                       headers={**headers, "Content-Type": "application/json"}, timeout=60)


def test_http_hook_decides_with_the_tokens_identity(gw_setup: Setup) -> None:
    gw = start_http_gateway(gw_setup.config("time", listen="http://127.0.0.1:0/mcp", file="gw-hooks.yaml"),
                            name="gw-hooks")
    try:
        ok = post_hook(gw.url, event("PreToolUse", "mcp__time__get_current_time", {"timezone": "UTC"}, "toolu_h1"))
        assert ok.status_code == 200
        spec = ok.json()["hookSpecificOutput"]
        assert spec["permissionDecision"] == "allow"
        rec = record_of(gw_setup.decider.target, spec["permissionDecisionReason"])
        assert (rec.tool_name, rec.tool_server, rec.call_id) == ("get_current_time", "mcp://time", "toolu_h1")
        assert (rec.agent.id, rec.agent.session_id) == (HTTP_AGENT["id"], SESSION)   # the token's agent

        done = post_hook(gw.url, event("PostToolUse", "mcp__time__get_current_time", {"timezone": "UTC"},
                                       "toolu_h1", tool_response={"content": [], "isError": True}))
        assert (done.status_code, done.json()) == (200, {})
        with DeciderClient(gw_setup.decider.target, token="admin-token") as c:
            assert c.get_decision(rec.decision_id).outcome_status == "error"

        denied = post_hook(gw.url, event("PreToolUse", "Bash", {"command": "ls"}, "toolu_h2"))
        assert denied.json()["hookSpecificOutput"]["permissionDecision"] == "deny"
        args = {"source_timezone": "UTC", "time": "08:00", "target_timezone": "Asia/Tokyo"}
        asked = post_hook(gw.url, event("PreToolUse", "mcp__time__convert_time", args, "toolu_h3"))
        assert asked.json()["hookSpecificOutput"]["permissionDecision"] == "ask"

        assert post_hook(gw.url, event("PreToolUse", "Bash", {"command": "ls"}, "toolu_h4"), token="wrong") \
            .status_code == 401
        bad = post_hook(gw.url, "{not json")
        assert bad.status_code == 200 and bad.json()["hookSpecificOutput"]["permissionDecision"] == "deny"
    finally:
        gw.stop()


def test_http_hook_fails_closed_with_a_deny_when_decider_is_down(gw_setup: Setup) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gw = start_http_gateway(gw_setup.config("time", listen="http://127.0.0.1:0/mcp", file="gw-hooks-down.yaml",
                                            target=f"127.0.0.1:{port}", deadline="1s"), name="gw-hooks-down")
    try:
        # Claude Code lets the tool run on a non-2xx hook answer: the refusal is a 200 deny
        resp = post_hook(gw.url, event("PreToolUse", "mcp__time__get_current_time", {}, "toolu_h5"))
        assert resp.status_code == 200
        spec = resp.json()["hookSpecificOutput"]
        assert spec["permissionDecision"] == "deny" and "fails closed" in spec["permissionDecisionReason"]
    finally:
        gw.stop()
