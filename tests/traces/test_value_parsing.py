"""Arguments, ids, times and names as real trace files write them."""

from __future__ import annotations

import base64
import dataclasses
from datetime import datetime, timezone

import pytest

from decider.replay.traces import TraceCall
from decider.replay.traces._parse import (
    model_from_filename,
    normalize_id,
    parse_arguments,
    parse_time,
    split_mcp_name,
    to_int,
)
from decider.replay.traces.model import new_call


def test_json_string_arguments_are_parsed() -> None:
    assert parse_arguments('{"path": "/tmp", "n": 2}') == ({"path": "/tmp", "n": 2}, None)


def test_object_arguments_are_taken_as_they_are() -> None:
    assert parse_arguments({"city": "Oslo"}) == ({"city": "Oslo"}, None)


def test_python_repr_arguments_are_read_without_eval() -> None:
    assert parse_arguments("{'topic': 'programming', 'safe': True, 'n': None}") == (
        {"topic": "programming", "safe": True, "n": None},
        None,
    )


def test_python_expression_is_not_executed() -> None:
    args, why = parse_arguments("{'x': __import__('os').getcwd()}")
    assert args is None
    assert why is not None and "neither JSON nor a Python literal" in why


def test_double_encoded_json_is_decoded_once_more() -> None:
    assert parse_arguments('"{\\"city\\": \\"Berlin\\"}"') == ({"city": "Berlin"}, None)


def test_input_wrapper_is_removed_only_when_the_instrumentation_adds_it() -> None:
    wrapped = '{"input": {"city": "Berlin"}}'
    assert parse_arguments(wrapped, unwrap_input=True) == ({"city": "Berlin"}, None)
    assert parse_arguments(wrapped) == ({"input": {"city": "Berlin"}}, None)


def test_input_str_wrapper_is_always_removed_when_it_holds_an_object() -> None:
    assert parse_arguments({"input_str": '{"path": "/etc"}'}) == ({"path": "/etc"}, None)
    assert parse_arguments({"input_str": "ls -la"}) == ({"input_str": "ls -la"}, None)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "arguments absent from the trace"),
        ("", "arguments are an empty string"),
        ('["/tmp/b.txt"]', "arguments are a JSON array, not an object"),
        ("42", "arguments are a number, not an object"),
        ('"just text"', "arguments are a string, not an object"),
        (["a"], "arguments are a JSON array, not an object"),
    ],
)
def test_arguments_that_are_not_an_object_are_indeterminate(raw: object, reason: str) -> None:
    assert parse_arguments(raw) == (None, reason)


def test_unparseable_arguments_give_the_parser_error_as_reason() -> None:
    args, why = parse_arguments('{"path": "/tmp/a.txt"')
    assert args is None
    assert why == ("arguments are neither JSON nor a Python literal "
                   "(Expecting ',' delimiter: line 1 column 22 (char 21))")


def test_hex_ids_are_lowercased() -> None:
    assert normalize_id("5B8EFFF798038103D269B633813FC60C") == "5b8efff798038103d269b633813fc60c"
    assert normalize_id("eee19b7ec3c1b174") == "eee19b7ec3c1b174"


def test_base64_ids_become_hex() -> None:
    trace = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    span = bytes.fromhex("b7ad6b7169203331")
    assert normalize_id(base64.b64encode(trace).decode()) == trace.hex()
    assert normalize_id(base64.b64encode(span).decode()) == span.hex()
    assert normalize_id(base64.b64encode(trace).decode().rstrip("=")) == trace.hex()


def test_other_ids_are_kept() -> None:
    assert normalize_id("c0ffee") == "c0ffee"
    assert normalize_id("call_abc-1") == "call_abc-1"
    assert normalize_id("") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-12-22T10:46:19.093Z", datetime(2025, 12, 22, 10, 46, 19, 93000, tzinfo=timezone.utc)),
        ("2025-04-30T16:32:57.821635", datetime(2025, 4, 30, 16, 32, 57, 821635, tzinfo=timezone.utc)),
        (1735725600, datetime(2025, 1, 1, 10, 0, tzinfo=timezone.utc)),
        (1735725600500, datetime(2025, 1, 1, 10, 0, 0, 500000, tzinfo=timezone.utc)),
        (1735725600000123, datetime(2025, 1, 1, 10, 0, 0, 123, tzinfo=timezone.utc)),
        (1735725600000123456, datetime(2025, 1, 1, 10, 0, 0, 123, tzinfo=timezone.utc)),
        ("yesterday", None),
        (None, None),
    ],
)
def test_times_are_aware_utc(value: object, expected: datetime | None) -> None:
    assert parse_time(value) == expected


def test_int64_strings_are_numbers() -> None:
    assert to_int("321") == 321
    assert to_int("3.0") == 3
    assert to_int("n/a") is None


def test_mcp_names_split_into_server_and_tool() -> None:
    assert split_mcp_name("mcp__weather__get_weather") == ("weather", "get_weather")
    assert split_mcp_name("mcp__github__create__issue") == ("github", "create__issue")
    assert split_mcp_name("get_weather") == (None, "get_weather")
    assert split_mcp_name("mcp__broken") == (None, "mcp__broken")


def test_model_named_in_a_file_name() -> None:
    assert model_from_filename("/x/tau-bench_airline_gpt-4o_trajectories.json") == "gpt-4o"
    name = "claude-sonnet-4-20250514_Qwen3-Embedding-0.6B.json.gz"
    assert model_from_filename(name) == "claude-sonnet-4-20250514"
    assert model_from_filename("run_output.jsonl") is None


def test_trace_call_is_frozen_with_optional_fields_defaulting_to_none() -> None:
    call = TraceCall("get_weather", arguments={"city": "Oslo"})
    assert call.indeterminate is None and call.model is None and call.started_at is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        call.tool_name = "other"  # type: ignore[misc]


def test_the_readers_fast_constructor_builds_the_same_call() -> None:
    values = {"tool_name": "t", "arguments": {"a": 1}, "raw_arguments": '{"a": 1}', "source": "f:1",
              "format": "mcp"}
    assert new_call(values) == TraceCall(**values)
    assert {f.name for f in dataclasses.fields(TraceCall)} >= {
        "tool_name", "arguments", "raw_arguments", "indeterminate", "call_id", "agent", "agent_fields",
        "model", "server", "session_id", "trace_id", "tokens_in", "tokens_out", "cost", "started_at",
        "ended_at",
        "result", "is_error", "label", "source", "format",
    }
