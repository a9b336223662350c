"""The Claude Code transcript reader: a real session file, and the shapes it must get right so a
replayed transcript is decided as `decider hook claude-code` decided the live calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from decider.bundle.compile import load_bundle
from decider.replay.replay import IdentityMapping, replay
from decider.replay.traces import detect_format, read_traces

from .conftest import FIXTURES

REAL = FIXTURES / "claude_code" / "4d5611e5-241a-462a-8d15-5122611a9569.head27.jsonl"
SESSION = "4d5611e5-241a-462a-8d15-5122611a9569"


def test_a_real_session_file_reads_every_call_with_its_result_and_the_hook_fields() -> None:
    calls = list(read_traces([str(REAL)]))
    assert [(c.tool_name, c.server, c.arguments["command"]) for c in calls] == [  # type: ignore[index]
        ("Bash", None, "bd show spotter-dov"), ("Bash", None, "bd ready"), ("Bash", None, "bd show spotter-dov.1")]
    assert [c.call_id for c in calls] == ["toolu_01UwLnYYWGBvukzh1QE6JpfM", "toolu_01EqSqHoE2fyTCuK5BJ3azkA",
                                          "toolu_019EkNmfE4exE11xktmWLjkX"]
    assert {c.session_id for c in calls} == {SESSION} and {c.format for c in calls} == {"claude-code"}
    assert {c.model for c in calls} == {"claude-opus-4-6"}
    # The first two calls come from one model response (msg_01Pd…): its tokens are counted once.
    assert [(c.tokens_in, c.tokens_out) for c in calls] == [(3 + 15005 + 11442, 9), (0, 0), (1 + 1598 + 26447, 81)]
    assert str(calls[0].result).startswith("○ spotter-dov [EPIC]") and calls[0].is_error is False
    assert str(calls[1].result).startswith("📋 Ready work") and calls[1].ended_at is not None
    assert calls[2].result is None and calls[2].is_error is None  # the excerpt ends before its result
    assert calls[0].context == {"cwd": "/home/USER/projects/spotter-worktrees/spotter-dov",
                                "permission_mode": "bypassPermissions",
                                "user_request": "Work on bead spotter-dov. Run bd show spotter-dov to see the "
                                                "issue details and bd ready to find available subtasks. Start "
                                                "with the first ready task."}
    assert calls[0].source.endswith(".head27.jsonl:10")


def _line(kind: str, n: int, message: dict[str, Any], **more: Any) -> str:
    return json.dumps({"parentUuid": None, "isSidechain": False, "cwd": "/w", "sessionId": "s-1", "type": kind,
                       "message": message, "uuid": f"u{n}", "timestamp": f"2026-03-01T10:00:{n:02d}Z", **more})


def _use(n: int, use_id: str, name: str, args: dict[str, Any], msg: str = "m") -> str:
    return _line("assistant", n, {"model": "claude-sonnet-4-5", "id": msg, "role": "assistant",
                                  "content": [{"type": "tool_use", "id": use_id, "name": name, "input": args}],
                                  "usage": {"input_tokens": 5, "output_tokens": 7}})


def _result(n: int, use_id: str, text: str, error: bool = False) -> str:
    return _line("user", n, {"role": "user", "content": [
        {"tool_use_id": use_id, "type": "tool_result", "content": text, "is_error": error}]},
        toolUseResult={"stdout": text})


def test_mcp_tools_errors_meta_lines_and_a_resumed_copy(tmp_path: Path) -> None:
    lines = [
        json.dumps({"type": "summary", "summary": "Fix the bug", "leafUuid": "u9"}),
        _line("user", 1, {"role": "user", "content": "<command-caveat>…</command-caveat>"}, isMeta=True),
        _line("user", 2, {"role": "user", "content": [{"type": "text", "text": "open an issue"}]},
              permissionMode="default"),
        _use(3, "t1", "mcp__github__create_issue", {"title": "bug"}),
        _result(4, "t1", "permission denied", error=True),
        _use(5, "t1", "mcp__github__create_issue", {"title": "bug"}),   # a resumed session's copy
        _use(6, "t2", "Edit", "not an object", msg="m2"),  # type: ignore[arg-type]
    ]
    path = tmp_path / "s-1.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert detect_format(json.loads(lines[0])) == "claude-code"
    calls = list(read_traces([str(path)]))
    assert [(c.tool_name, c.server, c.call_id) for c in calls] == [("create_issue", "github", "t1"),
                                                                    ("Edit", None, "t2")]
    assert calls[0].is_error is True and calls[0].result == "permission denied"
    assert calls[0].context == {"cwd": "/w", "permission_mode": "default", "user_request": "open an issue"}
    assert calls[1].arguments is None and calls[1].indeterminate  # never dropped, never allowed


def test_a_replayed_mcp_call_is_decided_on_the_server_name_the_hook_sends(tmp_path: Path) -> None:
    """The hook sends `mcp__github__create_issue` as tool `create_issue` on `mcp://github` (SPEC §8):
    a policy on `servers: ["mcp://github"]` must decide the replayed call as it decided the live one,
    from a Claude Code transcript and from an OpenAI conversation alike."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.yaml").write_text(
        "apiVersion: decider/v1\nkind: Bundle\nmetadata: {name: servers, version: 1.0.0}\nspec: {default: allow}\n")
    (bundle / "github.yaml").write_text(
        "apiVersion: decider/v1\nkind: Policy\nmetadata: {name: github}\n"
        "spec:\n  match: {servers: ['mcp://github']}\n  rules:\n"
        "    - {id: no-github-writes, effect: deny, when: 'tool.name == \"create_issue\"'}\n")
    transcript = tmp_path / "s-1.jsonl"
    transcript.write_text(_use(1, "t1", "mcp__github__create_issue", {"title": "bug"}) + "\n")
    conversation = tmp_path / "chat.json"
    conversation.write_text(json.dumps({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function",
         "function": {"name": "mcp__github__create_issue", "arguments": "{\"title\": \"bug\"}"}}]}]}))
    compiled = load_bundle(bundle)
    mapping = IdentityMapping(agent={"id": "dev-laptop"})
    for trace in (transcript, conversation):
        [result] = list(replay(compiled, read_traces([str(trace)]), mapping))
        assert (result.outcome, result.rule) == ("DENY", "no-github-writes"), trace.name
