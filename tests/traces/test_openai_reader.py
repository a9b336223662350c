"""Format A: OpenAI chat messages, tau-bench and LiveMCPBench containers, Responses items,
Anthropic blocks, chat completions and SWE-agent histories."""

from __future__ import annotations

import json
from pathlib import Path

from decider.replay.traces import TraceCall, read_openai, read_traces

from .conftest import FIXTURES

OPENAI = FIXTURES / "openai"


def _read(name: str) -> list[TraceCall]:
    return list(read_traces([str(OPENAI / name)]))


def test_every_tool_call_of_a_transcript_is_read_in_order() -> None:
    calls = _read("chat_transcript.json")
    assert [c.tool_name for c in calls] == [
        "list_dir", "read_file", "delete_file", "touch", "get_weather", "list_dir"]
    assert {c.format for c in calls} == {"openai"}
    assert {c.model for c in calls} == {"gpt-4o-mini"}
    assert {c.session_id for c in calls} == {"sess-42"}


def test_json_string_and_object_and_python_repr_arguments() -> None:
    calls = _read("chat_transcript.json")
    assert calls[0].arguments == {"path": "/tmp", "recursive": False}
    assert calls[0].raw_arguments == '{"path": "/tmp", "recursive": false}'
    assert calls[1].arguments == {"path": "/tmp/a.txt", "binary": False}
    assert calls[5].arguments == {"path": "/var"}
    assert calls[5].raw_arguments == {"path": "/var"}


def test_unparseable_and_non_object_arguments_are_kept_and_marked_indeterminate() -> None:
    calls = _read("chat_transcript.json")
    broken, array = calls[2], calls[3]
    assert broken.tool_name == "delete_file" and broken.arguments is None
    assert broken.raw_arguments == '{"path": "/tmp/a.txt"'
    assert broken.indeterminate is not None and broken.indeterminate.startswith("arguments are neither JSON")
    assert array.arguments is None and array.indeterminate == "arguments are a JSON array, not an object"
    assert all(c.indeterminate is None for c in calls if c not in (broken, array))


def test_results_pair_by_id_first_unanswered_call_first() -> None:
    calls = _read("chat_transcript.json")
    assert [c.result for c in calls] == [
        "a.txt\nb.txt", "hello", "bad arguments", None, "Oslo: 4°C, rain", "log"]
    assert calls[0].call_id == calls[5].call_id == "call_1"


def test_mcp_style_names_give_the_server() -> None:
    weather = _read("chat_transcript.json")[4]
    assert (weather.tool_name, weather.server) == ("get_weather", "weather")
    assert weather.arguments == {"city": "Oslo"}


def test_position_of_each_call_is_in_its_source() -> None:
    calls = _read("chat_transcript.json")
    assert calls[0].source == f"{OPENAI / 'chat_transcript.json'}.messages[2].tool_calls[0]"
    assert calls[5].source.endswith(".messages[8].tool_calls[0]")


def test_tau_bench_runs_give_session_user_reward_and_the_model_from_the_file_name() -> None:
    calls = _read("tau_bench_gpt-4o_runs.json")
    assert [c.tool_name for c in calls] == ["get_reservation_details", "cancel_reservation"]
    first, second = calls
    assert first.model == "gpt-4o"
    assert first.session_id == "task-7-trial-1"
    # The user's first message is the request (SPEC §10).
    assert first.context == {"user_id": "mia_li_3668", "user_request": "Cancel NO6JO3 please."}
    assert first.label == {"reward": 1.0}
    assert first.arguments == {"reservation_id": "NO6JO3"}
    # tau-bench reuses call ids inside a run; each result goes to the call it answers.
    assert first.result == '{"reservation_id": "NO6JO3"}' and first.is_error is False
    assert second.result == "Error: reservation cannot be cancelled" and second.is_error is True


def test_livemcpbench_execute_tool_is_read_as_the_mcp_call_it_stands_for() -> None:
    calls = _read("claude-sonnet-4-20250514_livemcpbench.json")
    assert [(c.tool_name, c.server) for c in calls] == [
        ("route", None), ("fetch", "fetch"), ("write_file", "desktop-commander"), ("execute-tool", None)]
    route, fetch, write, broken = calls
    assert route.arguments == {"query": "fetch a web page"}
    assert fetch.arguments == {"url": "https://example.com", "max_length": 5000}
    assert json.loads(fetch.raw_arguments)["server_name"] == "fetch"  # type: ignore[arg-type]
    assert write.arguments == {"path": "/root/out.html", "content": "<html>Example</html>"}
    assert {c.model for c in calls} == {"claude-sonnet-4-20250514"}
    assert route.session_id == "0e3287cb-c0ff-4d2a-8c3d-d8833014a7b0"
    assert route.context == {"task_id": "0e3287cb-c0ff-4d2a-8c3d-d8833014a7b0", "category": "work",
                             "user_request": "Fetch example.com and save it to /root/out.html"}


def test_livemcpbench_is_error_comes_from_the_call_tool_result_repr() -> None:
    route, fetch, write, broken = _read("claude-sonnet-4-20250514_livemcpbench.json")
    assert route.is_error is False and fetch.is_error is False
    assert write.is_error is True  # the gateway said isError=False, the server it called said true
    assert broken.is_error is True


def test_livemcpbench_call_without_tool_name_is_indeterminate() -> None:
    broken = _read("claude-sonnet-4-20250514_livemcpbench.json")[3]
    assert broken.indeterminate == "execute-tool call names no tool_name"
    assert broken.arguments == {"server_name": "desktop-commander", "params": {"path": "/root/out.html"}}


def test_responses_items_as_jsonl_are_one_conversation() -> None:
    calls = _read("responses_items.jsonl")
    assert [(c.tool_name, c.server, c.call_id) for c in calls] == [
        ("get_weather", None, "call_Kud0"), ("get_issue", "github", "mcp_1")]
    weather, issue = calls
    assert weather.arguments == {"city": "Tokyo"}
    assert weather.result == "The weather in Tokyo is sunny."
    assert weather.source == f"{OPENAI / 'responses_items.jsonl'}:2"
    assert issue.arguments == {"number": 3} and issue.result == '{"title": "Bug"}' and issue.is_error is False


def test_anthropic_tool_use_and_tool_result_blocks() -> None:
    bash, weather = _read("anthropic_messages.json")
    assert (bash.tool_name, bash.arguments, bash.call_id) == ("bash", {"command": "pytest -q"}, "toolu_01A")
    assert bash.result == "1 failed" and bash.is_error is True
    assert (weather.tool_name, weather.server) == ("get_weather", "weather")
    assert weather.arguments == {"city": "Berlin"}
    assert weather.result == [{"type": "text", "text": "Cloudy"}] and weather.is_error is False
    assert bash.model == "claude-sonnet-4-5-20250929"


def test_chat_completion_tokens_are_counted_once_per_response() -> None:
    first, second = _read("chat_completion.json")
    assert first.arguments == {"to": "a@example.com", "subject": "hi"}
    assert second.arguments == {"to": "b@example.com", "subject": "hi"}
    assert (first.tokens_in, first.tokens_out) == (120, 40)
    assert (second.tokens_in, second.tokens_out) == (0, 0)
    assert first.model == "gpt-4o-2024-08-06"


def test_swe_agent_history_in_function_calling_mode() -> None:
    (call,) = _read("swe_agent.traj")
    assert call.tool_name == "str_replace_editor"
    assert call.arguments == {"command": "view", "path": "/repo/a.py"}
    assert call.result == "1 print('hi')"
    assert call.model == "claude-3-5-sonnet-20241022"


def test_swe_agent_action_strings_without_tool_calls_are_indeterminate() -> None:
    traj = {"history": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "edit"}],
            "trajectory": [{"action": "edit 1:1\nfoo\nend_of_edit"}, {"action": ""}, {"action": "submit"}]}
    calls = list(read_openai(traj, "run.traj"))
    assert [c.tool_name for c in calls] == ["edit", "submit"]
    assert calls[0].raw_arguments == "edit 1:1\nfoo\nend_of_edit"
    assert calls[0].arguments is None
    assert calls[0].indeterminate == "SWE-agent action is a command string, not structured arguments"


def test_a_responses_request_body_is_detected_and_read(tmp_path: Path) -> None:
    body = {"model": "gpt-4.1", "input": [
        {"role": "user", "content": "weather?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]}
    path = tmp_path / "request.json"
    path.write_text(json.dumps(body))
    (call,) = read_traces([str(path)])
    assert (call.format, call.tool_name, call.arguments, call.result, call.model) == (
        "openai", "get_weather", {"city": "Rome"}, "sunny", "gpt-4.1")


def test_a_bare_list_of_messages_is_one_conversation() -> None:
    messages = [
        {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                              "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "1", "content": "ok"},
    ]
    (call,) = read_openai(messages, "m.json", model="gpt-4o")
    assert (call.tool_name, call.arguments, call.result, call.model, call.source) == (
        "f", {}, "ok", "gpt-4o", "m.json[0].tool_calls[0]")


def test_legacy_function_call_pairs_its_result_by_name() -> None:
    messages = [
        {"role": "assistant", "content": None,
         "function_call": {"name": "lookup", "arguments": '{"q": "x"}'}},
        {"role": "function", "name": "lookup", "content": "found"},
    ]
    (call,) = read_openai(messages, "legacy.json")
    assert (call.tool_name, call.arguments) == ("lookup", {"q": "x"})
    assert (call.call_id, call.result) == (None, "found")


def test_a_call_without_a_name_is_kept_and_marked() -> None:
    messages = [{"role": "assistant", "tool_calls": [{"id": "x", "function": {"arguments": "{}"}}]}]
    (call,) = read_openai(messages, "noname.json")
    assert call.tool_name == "" and call.indeterminate == "tool name missing"

