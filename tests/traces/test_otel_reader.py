"""Format B: OTLP JSON, Jaeger JSON and Langfuse exports, through the OTel GenAI attribute keys."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from decider.replay.traces import TraceCall, TraceFormatError, read_otel, read_traces

from .conftest import FIXTURES

OTEL = FIXTURES / "otel"
NOT_RECORDED = "arguments not recorded (gen_ai.tool.call.arguments is opt-in content)"


def _read(name: str) -> list[TraceCall]:
    return list(read_traces([str(OTEL / name)]))


def _by_name(calls: list[TraceCall]) -> dict[str, TraceCall]:
    return {c.tool_name: c for c in calls}


def test_otlp_execute_tool_spans_are_calls_in_time_order() -> None:
    calls = _read("otlp_agent.json")
    assert [c.tool_name for c in calls] == [
        "refund_payment", "create_issue", "search_docs", "lookup_customer", "read_file"]
    assert {c.format for c in calls} == {"otel"}


def test_otlp_call_fields_come_from_the_genai_attributes() -> None:
    refund = _read("otlp_agent.json")[0]
    assert refund.arguments == {"amount": 2500, "currency": "EUR"}
    assert refund.call_id == "call_r"
    assert refund.trace_id == "5b8efff798038103d269b633813fc60c"  # written in upper case in the file
    assert refund.started_at == datetime(2025, 1, 1, 10, 0, 2, 500000, tzinfo=timezone.utc)
    assert refund.ended_at == datetime(2025, 1, 1, 10, 0, 3, tzinfo=timezone.utc)
    assert refund.is_error is True  # status code 2 and error.type
    assert refund.source == f"{OTEL / 'otlp_agent.json'} span eee19b7ec3c1b176"


def test_agent_and_session_come_from_the_invoke_agent_ancestor() -> None:
    refund = _read("otlp_agent.json")[0]
    assert refund.agent == "billing-agent"
    assert refund.agent_fields is None  # a name, not decider's full identity
    assert refund.session_id == "conv-1"
    assert refund.context == {"user_id": "alice"}


def test_model_and_tokens_come_from_the_chat_span_that_asked_for_the_call() -> None:
    refund, issue = _read("otlp_agent.json")[:2]
    # gen_ai.request.model is "unknown"; the real name is in gen_ai.response.model.
    assert refund.model == issue.model == "gpt-4o-2024-08-06"
    assert (refund.tokens_in, refund.tokens_out) == (321, 42)
    assert (issue.tokens_in, issue.tokens_out) == (0, 0)  # same response: counted once


def test_missing_arguments_are_indeterminate_and_mcp_names_give_the_server() -> None:
    issue = _read("otlp_agent.json")[1]
    assert (issue.tool_name, issue.server) == ("create_issue", "github")
    assert issue.arguments is None and issue.raw_arguments is None
    assert issue.indeterminate == NOT_RECORDED
    assert issue.result == '{"number": 17}'


def test_mcp_client_span_inside_the_tool_span_is_not_a_second_call() -> None:
    names = [c.tool_name for c in _read("otlp_agent.json")]
    assert names.count("create_issue") == 1


def test_openinference_tool_span_with_python_repr_input() -> None:
    docs = _by_name(_read("otlp_agent.json"))["search_docs"]
    assert docs.arguments == {"query": "refund policy", "limit": 3, "exact": True}
    assert docs.raw_arguments == "{'query': 'refund policy', 'limit': 3, 'exact': True}"
    assert docs.result == "3 results"
    assert docs.agent == "ops-bot"  # no agent span: the resource's service.name


def test_openllmetry_tool_span_with_wrapped_input() -> None:
    customer = _by_name(_read("otlp_agent.json"))["lookup_customer"]
    assert customer.arguments == {"customer_id": "c-9"}
    assert customer.raw_arguments == ('{"inputs": {"customer_id": "c-9"}, "tags": [], "metadata": {}, '
                                      '"kwargs": {}}')  # kept as the file held it
    assert customer.result == '{"name": "Ann"}'


def test_mcp_server_span_names_its_server_not_an_agent() -> None:
    read_file = _by_name(_read("otlp_agent.json"))["read_file"]
    assert read_file.server == "filesystem-mcp"
    assert read_file.agent is None
    assert read_file.arguments == {"path": "/etc/passwd"}


def test_collector_jsonl_with_base64_ids_and_the_parent_on_a_later_line() -> None:
    (deploy,) = _read("otlp_collector_base64.jsonl")
    assert deploy.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert deploy.agent == "deployer" and deploy.session_id == "sess-9"
    # Linked by time to the earlier chat span of the same agent; old token keys are read.
    assert deploy.model == "claude-3-5-haiku"
    assert (deploy.tokens_in, deploy.tokens_out) == (1000, 50)
    # `input` is a real argument name here: only LangSmith's wrapper is removed.
    assert deploy.arguments == {"input": {"env": "prod"}}
    assert deploy.source.startswith(f"{OTEL / 'otlp_collector_base64.jsonl'}:1 span ")


def test_traces_with_only_chat_spans_give_the_calls_the_model_asked_for() -> None:
    calls = _read("otlp_chat_only.json")
    assert [(c.tool_name, c.call_id) for c in calls] == [
        ("query_db", "call_q"), ("query_db", "call_q2"), ("send_sms", "call_sms"), ("web_search", "call_ws"),
        ("open_url", "call_ou")]
    q, q2, sms, search, url = calls
    assert q.arguments == {"sql": "select 1"} and q2.arguments == {"sql": "drop table users"}
    assert (q.model, q.tokens_in, q.tokens_out, q2.tokens_in) == ("gpt-4o", 10, 5, 0)
    assert sms.arguments == {"to": "+4712345678", "text": "hi"} and sms.model == "gpt-3.5-turbo"
    assert search.arguments == {"q": "decider"} and search.model == "gpt-4.1" and search.tokens_in == 77
    assert url.arguments is None and url.raw_arguments == "not json at all"
    assert url.indeterminate == "arguments are not valid JSON (Expecting value: line 1 column 1 (char 0))"
    assert q.result is None and q.is_error is None  # asked for; its execution is not in the trace


def test_jaeger_spans_with_processes_and_nested_agents() -> None:
    block, notify = _read("jaeger_packetpanic.json")
    assert (block.tool_name, block.arguments, block.agent, block.is_error) == (
        "block_ip", {"ip": "10.0.0.7"}, "detector", True)
    assert (notify.tool_name, notify.arguments, notify.agent, notify.is_error) == (
        "notify", {"channel": "#sec"}, "supervisor", False)
    assert block.session_id == notify.session_id == "incident-12"
    assert block.started_at == datetime(2025, 1, 1, 10, 0, 3, tzinfo=timezone.utc)
    assert block.ended_at == datetime(2025, 1, 1, 10, 0, 3, 500000, tzinfo=timezone.utc)
    # The chat span belongs to the supervisor, so only the supervisor's call takes its model.
    assert (notify.model, notify.tokens_in, notify.tokens_out) == ("gpt-4o", 200, 30)
    assert block.model is None


def test_langfuse_export_reads_every_tool_observation() -> None:
    calls = _read("langfuse_export.trace.json")
    assert [c.tool_name for c in calls] == [
        "lookup", "create_ticket", "legacy_tool", "final_answer", "ReadTool"]
    assert {c.session_id for c in calls} == {"s-1"}
    assert {json.dumps(c.context) for c in calls} == {'{"user_id": "u-1", "user_request": "Find x"}'}
    assert {json.dumps(c.label, sort_keys=True) for c in calls} == {'{"helpfulness": 0.5, "safety": 1}'}
    assert {c.agent for c in calls} == {"support-agent"}
    assert {c.trace_id for c in calls} == {"c0ffee00c0ffee00c0ffee00c0ffee00"}


def test_langfuse_argument_shapes() -> None:
    calls = _by_name(_read("langfuse_export.trace.json"))
    assert calls["lookup"].arguments == {"q": "x"}  # Python repr
    # LangSmith's {"input": {...}} wrapper is removed
    assert calls["create_ticket"].arguments == {"summary": "Broken login", "priority": "high"}
    assert calls["create_ticket"].server == "jira"
    assert calls["legacy_tool"].arguments == {"path": "/etc"}  # LangChain input_str
    assert calls["final_answer"].arguments == {"input": {"text": "done"}}  # a real `input` argument
    assert calls["ReadTool"].arguments is None
    assert calls["ReadTool"].indeterminate == NOT_RECORDED


def test_langfuse_model_tokens_cost_and_errors() -> None:
    calls = _by_name(_read("langfuse_export.trace.json"))
    lookup = calls["lookup"]
    assert (lookup.model, lookup.tokens_in, lookup.tokens_out) == ("gpt-4o-mini", 100, 20)
    assert lookup.cost == 0.00003
    assert calls["create_ticket"].is_error is True  # level ERROR
    assert lookup.is_error is False and lookup.result == "found x"
    assert lookup.started_at == datetime(2025, 6, 1, 10, 0, 2, 100000, tzinfo=timezone.utc)


def test_langfuse_generations_alone_give_their_tool_calls_once() -> None:
    weather, hello = _read("langfuse_chat_only.trace.json")
    # ai.generateText repeats its doGenerate child's output: one call, not two.
    assert (weather.tool_name, weather.call_id) == ("getWeather", "call_v")
    assert weather.arguments == {"location": "Paris"}
    assert (weather.model, weather.tokens_in, weather.tokens_out, weather.cost) == ("gpt-5", 62, 85, 0.0009)
    assert (hello.tool_name, hello.call_id, hello.arguments, hello.model) == (
        "say_hello", None, {"name": "Ann"}, "gemini-2.0-flash")


def test_a_document_of_another_kind_is_a_format_error() -> None:
    with pytest.raises(TraceFormatError, match=r"^x\.json: not OTLP JSON"):
        list(read_otel({"spans_please": []}, "x.json"))
