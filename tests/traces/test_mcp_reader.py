"""Format D: MCP JSON-RPC logs, bare or wrapped by a capture tool."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone

import pytest

from decider.replay.traces import TraceCall, read_mcp, read_traces
from decider.replay.traces import mcp as mcp_reader

from .conftest import FIXTURES

MCP = FIXTURES / "mcp"


def _read(name: str) -> list[TraceCall]:
    return list(read_traces([str(MCP / name)]))


def test_tools_call_requests_are_the_calls_in_request_order() -> None:
    calls = _read("capture_two_sessions.jsonl")
    assert [(c.session_id, c.call_id, c.tool_name) for c in calls] == [
        ("A", "1", "create_issue"), ("A", "2", "delete_repo"), ("B", "7", "read_file"),
        ("B", "8", "write_file"), ("A", "3", "list_issues")]
    assert {c.format for c in calls} == {"mcp"}


def test_identity_comes_from_each_sessions_initialize() -> None:
    create, delete, read, write, _ = _read("capture_two_sessions.jsonl")
    assert (create.agent, create.server) == ("claude-code", "github")
    assert create.agent_fields is None  # clientInfo names the agent, nothing more
    assert (read.agent, read.server) == ("cursor", "filesystem")  # that initialize was JSON text


def test_responses_pair_by_session_and_id_even_out_of_order() -> None:
    create, delete, read, write, issues = _read("capture_two_sessions.jsonl")
    assert create.result == {
        "content": [{"type": "text", "text": "#17"}], "structuredContent": {"number": 17}, "isError": False}
    assert create.is_error is False
    assert delete.is_error is True and delete.result["content"][0]["text"] == "permission denied"  # type: ignore[index]
    assert read.is_error is True and read.result == {"code": -32602, "message": "missing path"}
    assert (write.result, write.is_error, write.ended_at) == (None, None, None)  # never answered


def test_arguments_and_times() -> None:
    create, delete, read, write, issues = _read("capture_two_sessions.jsonl")
    assert create.arguments == {"repo": "acme/api", "title": "Crash on login"}
    assert create.started_at == datetime(2025, 5, 1, 12, 0, 1, tzinfo=timezone.utc)
    assert create.ended_at == datetime(2025, 5, 1, 12, 0, 1, 500000, tzinfo=timezone.utc)
    assert read.arguments == {} and read.indeterminate is None  # `arguments` is optional in MCP
    assert read.raw_arguments is None
    assert write.arguments == {"path": "/tmp/x", "content": "y"}  # sent as JSON text
    assert issues.arguments is None and issues.raw_arguments == "state=open"
    assert issues.indeterminate == "arguments are not valid JSON (Expecting value: line 1 column 1 (char 0))"
    assert create.source == f"{MCP / 'capture_two_sessions.jsonl'}:4"


def test_bare_messages_and_batches() -> None:
    calls = _read("bare_messages.json")
    assert [(c.call_id, c.arguments, c.agent, c.server) for c in calls] == [
        ("a", {"cmd": "ls"}, "my-agent", "shell"), ("b", {"cmd": "whoami"}, "my-agent", "shell")]
    assert calls[0].result == {"content": [{"type": "text", "text": "a b"}], "isError": False}
    assert calls[1].result == {"content": [{"type": "text", "text": "root"}]} and calls[1].is_error is False
    assert calls[0].source == f"{MCP / 'bare_messages.json'}[2][0]"


def test_a_response_from_the_same_direction_does_not_answer_a_request() -> None:
    lines = [
        '{"direction": "out", "message": {"jsonrpc": "2.0", "id": 1, "method": "tools/call", '
        '"params": {"name": "t", "arguments": {}}}}',
        '{"direction": "out", "message": {"jsonrpc": "2.0", "id": 1, "result": {"isError": true}}}',
        '{"direction": "in", "message": {"jsonrpc": "2.0", "id": 1, "result": {"isError": false}}}',
    ]
    (call,) = read_mcp(lines, "dir.jsonl")
    assert call.is_error is False


def test_an_unanswered_request_does_not_hold_back_the_log_forever(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mcp_reader, "_MAX_IN_FLIGHT", 2)
    request = '{{"jsonrpc": "2.0", "id": {n}, "method": "tools/call", "params": {{"name": "t{n}"}}}}'
    answer = '{{"jsonrpc": "2.0", "id": {n}, "result": {{"content": []}}}}'

    def lines() -> Iterator[str]:
        yield request.format(n=1)  # never answered
        for n in (2, 3, 4):
            yield request.format(n=n)
            yield answer.format(n=n)
        raise AssertionError("the reader read further than it needed")

    calls = read_mcp(lines(), "stuck.jsonl")
    first, second = next(calls), next(calls)
    assert (first.tool_name, first.result) == ("t1", None)
    assert (second.tool_name, second.result) == ("t2", {"content": []})


def test_calls_stream_as_soon_as_they_are_answered() -> None:
    def lines() -> Iterator[str]:  # fails if the reader reads past the answer
        yield '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {}}}'
        yield '{"jsonrpc": "2.0", "id": 1, "result": {"content": []}}'
        raise AssertionError("the reader read further than it needed")

    first = next(iter(read_mcp(lines(), "stream.jsonl")))
    assert first.tool_name == "t"
