"""decider's own JSONL decision log, replayed as the requests it recorded."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from decider.replay.traces import TraceCall, TraceFormatError, read_decider_log, read_traces

from .conftest import FIXTURES

LOG = FIXTURES / "decider" / "decisions.jsonl"


def _read() -> list[TraceCall]:
    return list(read_traces([str(LOG)]))


def test_each_record_is_one_call() -> None:
    calls = _read()
    assert [(c.tool_name, c.server, c.call_id) for c in calls] == [
        ("refund_payment", "mcp://billing", "call_r"), ("read_file", None, None),
        ("send_email", "mcp://mail", "c-3"), ("shell", "local", "c-4")]
    assert {c.format for c in calls} == {"decider"}
    assert [c.source for c in calls] == [f"{LOG}:{n}" for n in (1, 2, 3, 4)]


def test_the_full_agent_identity_is_kept() -> None:
    refund = _read()[0]
    assert refund.agent == "billing-agent"
    assert refund.agent_fields == {
        "id": "billing-agent", "instance_id": "pod-7", "owner": "alice@example.com", "team": "payments",
        "workflow": "refunds", "model": "gpt-4o", "session_id": "sess-1", "labels": {"env": "prod"},
        "capabilities": ["refund"]}
    assert (refund.model, refund.session_id) == ("gpt-4o", "sess-1")


def test_request_fields_context_and_the_recorded_outcome() -> None:
    refund = _read()[0]
    assert refund.arguments == {"amount": 2500, "currency": "EUR"}
    assert refund.request_fields == {"id": "req-1", "environment": "production", "estimated_cost": 0.02}
    assert refund.cost == 0.02 and refund.risk_tier == 3
    assert refund.context == {"ticket": "T-9"}
    assert refund.label == {"outcome": "require_approval", "decision_id": "01JV8Z3Q4K5M6N7P8Q9R0S1T2U",
                            "deciding_rule": "payments/large-refund"}
    assert refund.started_at == datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def test_arguments_stored_as_json_text_and_protobuf_json_spelling() -> None:
    _, read_file, email, _ = _read()
    assert read_file.arguments == {"path": "/etc/passwd"}
    assert read_file.label == {"outcome": "deny", "decision_id": "01JV8Z3Q4K5M6N7P8Q9R0S1T2V"}
    assert (email.tool_name, email.agent, email.session_id, email.risk_tier, email.cost) == (
        "send_email", "mailer", "sess-3", 1, 0.001)


def test_masked_arguments_are_indeterminate() -> None:
    shell = _read()[3]
    assert shell.arguments is None and shell.raw_arguments == "***masked***"
    assert shell.indeterminate == "arguments are not valid JSON (Expecting value: line 1 column 1 (char 0))"


def test_the_flat_row_form_is_read_too() -> None:
    row = {"decision_id": "d1", "tool_name": "t", "tool_server": "s", "args": '{"a": 1}', "agent_id": "bot",
           "team": "x", "owner": "o", "model": "m", "session_id": "s1", "agent_labels": '{"k": "v"}',
           "agent_capabilities": "[]", "call_id": "c", "outcome": "allow"}
    (call,) = read_decider_log(row, "rows.json")
    assert call.agent_fields == {"id": "bot", "owner": "o", "team": "x", "model": "m", "session_id": "s1",
                                 "labels": {"k": "v"}}
    assert call.arguments == {"a": 1}


def test_a_line_that_is_not_a_decision_names_its_line() -> None:
    lines = ['{"decision_id": "d1", "tool_name": "t", "outcome": "allow", "args": {}}', '{"tool_name": "t"}']
    with pytest.raises(TraceFormatError, match=r"^log\.jsonl:2: not a decision record"):
        list(read_decider_log(lines, "log.jsonl"))
