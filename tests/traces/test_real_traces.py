"""End to end over the recorded real traces in ../shared/traces (never copied into the repo).

The expected counts were verified independently of the readers, with jq over the raw files:
tau-bench `[.[].traj[] | select(.role=="assistant") | (.tool_calls // [])[]] | length` = 1164;
OpenHands, per line, agent events with `action` and `tool_call_metadata` = 23, 33, 49;
Langfuse, per file, observations of type TOOL or named `tool.*` (Koog) = the numbers below.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from decider.replay.traces import TraceCall, read_traces

TAU = "tau-bench_airline_gpt-4o_trajectories.json"
OPENHANDS = "openhands_codeact_multi-swe-bench_output.jsonl"
LANGFUSE_CALLS = {
    "claude-agent-2025-12-22.trace.json": 2,
    "csharp-agent-with-gemini-2026-03-09.trace.json": 2,
    "google-adk-2025-08-28.trace.json": 1,
    "koog-2025-08-26.trace.json": 2,
    "microsoft-agent-2025-12-17.trace.json": 1,
    "openai-agents-2025-09-30.trace.json": 1,
    "pydantic-ai-tools-2025-12-04.trace.json": 3,
    "vercel-aisdk-2025-11-17.trace.json": 1,
}


# The first user message of each file (SPEC §10: `context.user_request`), checked by reading the raw
# files: tau-bench `traj[1].content` (the simulated user's opening), OpenHands the first `message`
# action from the user, Langfuse `trace.input` or the first model input's user message.
USER_REQUESTS = {
    TAU: "Hi! I'm looking to book a flight from New York to Seattle on May 20th.",
    "claude-agent-2025-12-22.trace.json": "What's the weather like in Berlin and New York?",
    "csharp-agent-with-gemini-2026-03-09.trace.json":
        "What are my month over month performance insights the past quarter, by cost, displays, clicks, CTR, "
        "sales, CVR? Please split by campaign taxonomy",
    "google-adk-2025-08-28.trace.json": "hi",
    "koog-2025-08-26.trace.json": "Greet and say goodbye to the user in the same message. Use provided tools to "
                                  "generate a proper greeting. The user name is Bob.",
    "microsoft-agent-2025-12-17.trace.json": "What's the weather in Tokyo?",
    "openai-agents-2025-09-30.trace.json": "What's the weather in Tokyo?",
    "pydantic-ai-tools-2025-12-04.trace.json": "Select and call THREE of the available tools to get joke "
                                               "suggestions about 'programming'.",
    "vercel-aisdk-2025-11-17.trace.json": "What is the weather like today in San Francisco?",
}


def _read(path: Path) -> list[TraceCall]:
    return list(read_traces([str(path)]))


@pytest.fixture(scope="module")
def tau(shared_traces: Path) -> list[TraceCall]:
    return _read(shared_traces / TAU)


@pytest.fixture(scope="module")
def openhands(shared_traces: Path) -> list[TraceCall]:
    return _read(shared_traces / OPENHANDS)


def _langfuse(shared_traces: Path, name: str) -> list[TraceCall]:
    return _read(shared_traces / "langfuse-exports" / name)


# --- tau-bench (format A) ------------------------------------------------------------------------


def test_tau_bench_has_1164_calls_in_200_trajectories(tau: list[TraceCall]) -> None:
    assert len(tau) == 1164
    assert len({c.session_id for c in tau}) == 182  # 18 of the 200 runs made no tool call
    assert {c.format for c in tau} == {"openai"}
    assert {c.model for c in tau} == {"gpt-4o"}  # from the file name
    assert all(c.indeterminate is None and c.arguments is not None for c in tau)
    assert all(c.result is not None for c in tau)  # every call has its tool message


def test_tau_bench_tool_names(tau: list[TraceCall]) -> None:
    assert Counter(c.tool_name for c in tau) == {
        "get_reservation_details": 377, "search_direct_flight": 141, "get_user_details": 120,
        "update_reservation_flights": 104, "calculate": 96, "think": 92, "cancel_reservation": 69,
        "book_reservation": 53, "transfer_to_human_agents": 48, "search_onestop_flight": 38,
        "update_reservation_baggages": 14, "send_certificate": 8, "list_all_airports": 2,
        "update_reservation_passengers": 2}
    assert sum(c.is_error is True for c in tau) == 73  # tool results starting "Error: "


def test_tau_bench_spot_checks(tau: list[TraceCall]) -> None:
    first = tau[0]
    assert (first.tool_name, first.arguments, first.call_id) == (
        "get_user_details", {"user_id": "mia_li_3668"}, "call_oIHazX6yQrB8hUwl4cRilFKj")
    assert first.session_id == "task-0-trial-0"
    assert first.context == {"user_id": "mia_li_3668", "user_request": USER_REQUESTS[TAU]}
    assert first.label == {"reward": 0.0}
    assert first.source.endswith(f"{TAU}[0].traj[6].tool_calls[0]")
    run3 = [c for c in tau if c.session_id == "task-3-trial-0"]
    assert len(run3) == 20
    assert (run3[0].tool_name, run3[0].arguments, run3[0].call_id) == (
        "get_user_details", {"user_id": "sofia_kim_7287"}, "call_I3WHVqSB8LfMWiSb44Q4ohBh")
    assert run3[0].context is not None and run3[0].context["user_id"] == "sofia_kim_7287"


# --- OpenHands (format C1) -----------------------------------------------------------------------


def test_openhands_has_105_calls(openhands: list[TraceCall]) -> None:
    assert len(openhands) == 105
    per_run = Counter(c.session_id for c in openhands)
    assert per_run == {"ponylang__ponyc-4595": 23, "ponylang__ponyc-4593": 33, "ponylang__ponyc-4588": 49}
    assert Counter(c.tool_name for c in openhands) == {
        "str_replace_editor": 52, "execute_bash": 49, "think": 2, "finish": 2}
    assert all(c.indeterminate is None for c in openhands)


def test_openhands_spot_checks(openhands: list[TraceCall]) -> None:
    first = openhands[0]
    assert (first.tool_name, first.arguments, first.call_id) == (
        "execute_bash", {"command": "ls -l /workspace/ponylang__ponyc__0.1"}, "toolu_01")
    assert (first.agent, first.model, first.tokens_in, first.tokens_out) == (
        "CodeActAgent", "meta-llama/llama-4-maverick", 5920, 128)
    assert first.result is not None and first.result.startswith("total 300")  # type: ignore[union-attr]
    assert first.label == {"confirmation_state": "confirmed"}
    last = openhands[-1]
    assert (last.session_id, last.tool_name, last.arguments) == (
        "ponylang__ponyc-4588", "execute_bash", {"command": "apt-get install -y libgtest-dev"})
    assert (last.tokens_in, last.tokens_out) == (27127, 55)


# --- Langfuse exports (format B3) ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "count"), sorted(LANGFUSE_CALLS.items()))
def test_each_langfuse_export_has_its_calls(shared_traces: Path, name: str, count: int) -> None:
    calls = _langfuse(shared_traces, name)
    assert len(calls) == count
    assert all(c.format == "otel" and c.arguments is not None and c.indeterminate is None for c in calls)


def test_the_langfuse_folder_has_13_calls(shared_traces: Path) -> None:
    assert len(_read(shared_traces / "langfuse-exports")) == sum(LANGFUSE_CALLS.values()) == 13


def test_claude_agent_sdk_mcp_calls_are_unwrapped(shared_traces: Path) -> None:
    berlin, new_york = _langfuse(shared_traces, "claude-agent-2025-12-22.trace.json")
    assert (berlin.tool_name, berlin.server) == ("get_weather", "weather")
    assert berlin.arguments == {"city": "Berlin"}
    assert berlin.raw_arguments == '{"input":{"city":"Berlin"}}'
    assert new_york.arguments == {"city": "New York"}
    assert berlin.model == "claude-sonnet-4-5-20250929" and (berlin.tokens_in, berlin.tokens_out) == (5, 53)
    assert berlin.session_id == "6fb9b4b8-dd4d-4d41-8d4f-c0c0799a6559"


def test_pydantic_ai_calls(shared_traces: Path) -> None:
    calls = _langfuse(shared_traces, "pydantic-ai-tools-2025-12-04.trace.json")
    assert [c.tool_name for c in calls] == [
        "get_pun_suggestion", "get_dad_joke_suggestion", "get_one_liner_suggestion"]
    assert all(c.arguments == {"topic": "programming"} and c.agent == "joke_agent" for c in calls)
    assert calls[0].call_id == "call_X0OSgjUukT5inyEQvuZQnHrk"
    assert [(c.tokens_in, c.tokens_out) for c in calls] == [(265, 73), (0, 0), (0, 0)]


def test_csharp_agent_keeps_its_real_input_argument(shared_traces: Path) -> None:
    report, final = _langfuse(shared_traces, "csharp-agent-with-gemini-2026-03-09.trace.json")
    assert report.tool_name == "get_custom_report"
    assert report.arguments is not None and report.arguments["timeDimension"] == "Month"
    assert report.arguments["filters"] == {"dateRange": {"from_date": "2025-10-01", "to_date": "2025-12-31"}}
    assert final.tool_name == "final_result" and final.arguments is not None
    assert final.arguments["input"]["response_status"] == "NoDataFound"
    assert (report.agent, report.session_id, report.context) == (
        "agentic-clientinsights", "9714061f-20c0-4d98-9220-1dc7df15c3c2",
        {"user_id": "g.aprozeanu", "user_request": USER_REQUESTS["csharp-agent-with-gemini-2026-03-09.trace.json"]})


def test_other_framework_spot_checks(shared_traces: Path) -> None:
    (hello,) = _langfuse(shared_traces, "google-adk-2025-08-28.trace.json")
    assert (hello.tool_name, hello.arguments, hello.agent, hello.model) == (
        "say_hello", {}, "hello_agent", "gemini-2.0-flash")
    assert (hello.session_id, hello.context) == ("demo-session", {"user_id": "demo-user", "user_request": "hi"})
    bye, hi = _langfuse(shared_traces, "koog-2025-08-26.trace.json")
    assert (bye.tool_name, bye.arguments) == ("ByeTool", {"name": "Bob"})
    assert bye.call_id == "call_dOeEHJDI0liHrCdFWTpkTsuO"
    assert (hi.tool_name, hi.result, hi.model) == ("HelloTool", "Hello my darling Bob!", "gpt-4o")
    (tokyo,) = _langfuse(shared_traces, "microsoft-agent-2025-12-17.trace.json")
    assert (tokyo.tool_name, tokyo.arguments, tokyo.call_id) == (
        "get_weather", {"location": "Tokyo, Japan"}, "call_CwaJHuXTm9dmHFQPlVbqyzJ0")
    (agents,) = _langfuse(shared_traces, "openai-agents-2025-09-30.trace.json")
    assert (agents.arguments, agents.agent) == ({"city": "Tokyo"}, "Hello world")
    assert agents.model == "gpt-4.1-2025-04-14"
    (vercel,) = _langfuse(shared_traces, "vercel-aisdk-2025-11-17.trace.json")
    assert (vercel.tool_name, vercel.arguments, vercel.call_id, vercel.model) == (
        "getWeather", {"location": "San Francisco"}, "call_DgKARp7a7IhJPDczfifMp6Ra", "gpt-5")


# --- all of them ---------------------------------------------------------------------------------


def test_the_whole_folder_reads_every_call_and_skips_the_readme(shared_traces: Path) -> None:
    calls = _read(shared_traces)
    assert len(calls) == 1164 + 105 + 13
    assert Counter(c.format for c in calls) == {"openai": 1164, "openhands": 105, "otel": 13}


def test_reading_is_fast_enough_for_replay(shared_traces: Path) -> None:
    # Replay must sustain 20,000 calls/s end to end; reading is a fraction of that budget. The
    # bound here is loose (shared CI machines) and catches accidental quadratic work.
    start = time.perf_counter()
    n = len(_read(shared_traces))
    assert n / (time.perf_counter() - start) > 3000


@pytest.mark.parametrize("name", sorted(n for n in USER_REQUESTS if n != TAU))
def test_langfuse_exports_carry_the_users_first_message_as_user_request(shared_traces: Path, name: str) -> None:
    calls = _langfuse(shared_traces, name)
    assert {(c.context or {}).get("user_request") for c in calls} == {USER_REQUESTS[name]}


def test_every_tau_bench_and_openhands_call_carries_its_runs_user_request(
        tau: list[TraceCall], openhands: list[TraceCall]) -> None:
    assert all(c.context and c.context.get("user_request") for c in tau)
    # One request per run: the opening message differs between runs.
    assert len({c.context["user_request"] for c in tau if c.context}) > 100
    requests = {c.session_id: (c.context or {}).get("user_request") for c in openhands}
    assert len(requests) == 3
    assert all(r and r.startswith("<uploaded_files>") for r in requests.values())
