"""Format C1: the OpenHands event stream, one run per JSONL line."""

from __future__ import annotations

from datetime import datetime, timezone

from decider.replay.traces import TraceCall, read_traces

from .conftest import FIXTURES

OPENHANDS = FIXTURES / "openhands"


def _read(name: str) -> list[TraceCall]:
    return list(read_traces([str(OPENHANDS / name)]))


def test_agent_actions_with_tool_call_metadata_are_the_calls() -> None:
    calls = _read("output.jsonl")
    assert [c.tool_name for c in calls] == [
        "execute_bash", "str_replace_editor", "execute_bash", "fetch", "finish"]
    assert {c.format for c in calls} == {"openhands"}
    assert {c.agent for c in calls} == {"CodeActAgent"}
    assert {c.session_id for c in calls} == {"org__repo-1"}
    assert [c.source.rsplit(".", 1)[1] for c in calls] == [
        "history[2]", "history[3]", "history[6]", "history[9]", "history[11]"]


def test_arguments_are_what_the_model_sent() -> None:
    ls, view = _read("output.jsonl")[:2]
    assert ls.arguments == {"command": "ls /workspace"} and ls.raw_arguments == '{"command": "ls /workspace"}'
    assert view.arguments == {"command": "view", "path": "/workspace/a.py"}
    assert ls.call_id == "toolu_01" and view.call_id == "toolu_02"


def test_unparseable_model_arguments_are_indeterminate() -> None:
    rm = _read("output.jsonl")[2]
    assert rm.arguments is None
    assert rm.raw_arguments == '{"command": "rm -rf /workspace/build"'
    assert rm.indeterminate is not None and rm.indeterminate.startswith("arguments are neither JSON")


def test_call_missing_from_the_model_response_falls_back_to_the_normalised_args() -> None:
    finish = _read("output.jsonl")[4]
    assert finish.arguments == {"final_thought": "done", "task_completed": "true", "outputs": {}}


def test_mcp_tools_give_the_server() -> None:
    fetch = _read("output.jsonl")[3]
    assert (fetch.tool_name, fetch.server, fetch.arguments) == ("fetch", "fetch", {"url": "https://example.com"})


def test_tokens_and_cost_of_one_response_are_counted_once() -> None:
    calls = _read("output.jsonl")
    assert [(c.tokens_in, c.tokens_out) for c in calls] == [
        (1000, 50), (0, 0), (2000, 20), (3000, 10), (3100, 5)]
    # Cost is the growth of the run's accumulated cost since the previous response.
    assert [c.cost for c in calls] == [0.01, 0.0, 0.025, 0.015, 0.01]
    assert calls[0].model == "anthropic/claude-3-7-sonnet"


def test_results_errors_times_and_approval_state() -> None:
    ls, view, rm, fetch, finish = _read("output.jsonl")
    assert (ls.result, ls.is_error) == ("a.py", False)
    assert (view.result, view.is_error) == ("print('hi')", False)
    assert (fetch.result, fetch.is_error) == ("timeout", True)
    assert (finish.result, finish.is_error) == (None, None)
    assert ls.started_at == datetime(2025, 4, 30, 16, 32, 57, 821635, tzinfo=timezone.utc)
    assert ls.ended_at == datetime(2025, 4, 30, 16, 32, 58, 441272, tzinfo=timezone.utc)
    assert ls.label == {"confirmation_state": "confirmed"}
    assert rm.label == {"confirmation_state": "rejected"}
    assert rm.result == "Action has been rejected by the user"


def test_a_bare_event_list_is_one_run() -> None:
    calls = _read("events.json")
    assert [(c.tool_name, c.result) for c in calls] == [
        ("execute_bash", "a.py"), ("str_replace_editor", "print('hi')")]
    assert calls[0].agent is None and calls[0].source == f"{OPENHANDS / 'events.json'}[2]"
